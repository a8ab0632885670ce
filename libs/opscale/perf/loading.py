"""How long an instance takes to become ready: model load times, cold and warm.

A cold start launches the engine container and streams the weights from remote storage (object store
or registry); a warm start finds the weights in host memory or pulls them from a peer over the data
centre network, and skips most of the start-up. Planners compare the two when they choose between
launching a fresh replica and migrating a warm one. Pure arithmetic: no I/O, no clock.
"""

from __future__ import annotations

from typing import Literal, get_args

from pydantic import BaseModel, ConfigDict, Field

from opscale.model import ModelSpec, Sku

LoadSource = Literal["cold", "warm"]


class LoadTimeParams(BaseModel):
    """Load-time calibration. Defaults are typical of vLLM on cloud GPU VMs."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    cold_start_s: float = Field(
        30.0, ge=0, description="Container start, engine initialisation and CUDA graph capture, seconds.")
    remote_storage_gbps: float = Field(
        1.5, gt=0, description="Weight download bandwidth from remote storage per instance, GB/s.")
    warm_start_s: float = Field(
        3.0, ge=0, description="Engine start-up that a warm start still pays, seconds.")
    warm_transfer_gbps: float = Field(
        12.0, gt=0, description="Weight transfer bandwidth per GPU from host memory or a peer, GB/s; "
                                "the tp shards load in parallel.")


def load_time_s(
    model: ModelSpec, sku: Sku, tp: int, source: LoadSource, params: LoadTimeParams | None = None,
) -> float:
    """Seconds from "start" to "ready" for `model` on `tp` GPUs of `sku`.

    cold: cold_start_s + weight_bytes / remote_storage_gbps (the host's download is shared by the shards);
    warm: warm_start_s + weight_bytes / (tp * warm_transfer_gbps).
    Example: Llama-3-8B (16.1 GB) on one GPU: cold 30 + 10.7 = 40.7 s, warm 3 + 1.3 = 4.3 s.

    Raises ValueError for an unknown source, a bad tp, or weights that do not fit the GPUs' memory.
    """
    if source not in get_args(LoadSource):
        raise ValueError(f"load source must be 'cold' or 'warm', got {source!r}")
    if isinstance(tp, bool) or not isinstance(tp, int) or tp < 1:
        raise ValueError(f"tp must be a positive integer, got {tp!r}")
    weight_gb = model.weight_bytes / 1e9
    if weight_gb >= tp * sku.gpu_memory_gb:
        raise ValueError(f"{model.name} weights ({weight_gb:.1f} GB) do not fit {tp} x {sku.name} "
                         f"({tp * sku.gpu_memory_gb:g} GB)")
    p = params if params is not None else LoadTimeParams()
    if source == "cold":
        return p.cold_start_s + weight_gb / p.remote_storage_gbps
    return p.warm_start_s + weight_gb / (tp * p.warm_transfer_gbps)

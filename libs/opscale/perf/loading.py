"""How long an instance takes to become ready: model load times, cold and warm.

A cold start launches the engine container and streams the weights from remote storage (object store
or registry); a warm start finds the weights in host memory or pulls them from a peer over the data
centre network, and skips most of the start-up. Planners compare the two when they choose between
launching a fresh replica and migrating a warm one.

Which one a start gets depends on where the weights are: `HostWeightCache` tracks the models whose
weights a host keeps in memory (page cache or pinned buffers) after an instance stops, and
`choose_load` turns that and the presence of a peer serving the model into a source and a time.
Operator replicas load only their operators' weights (`weights_load_time_s`; see
`opscale.perf.operators.group_load_time_s`). Pure arithmetic and bookkeeping: no I/O, no clock.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
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
    return weights_load_time_s(model.weight_bytes, sku, tp, source, params, what=f"{model.name} weights")


def weights_load_time_s(
    weight_bytes: float, sku: Sku, tp: int, source: LoadSource, params: LoadTimeParams | None = None, *,
    what: str = "weights",
) -> float:
    """`load_time_s` for `weight_bytes` of weights (a whole model, or one operator group's share);
    `what` names them in errors."""
    if source not in get_args(LoadSource):
        raise ValueError(f"load source must be 'cold' or 'warm', got {source!r}")
    if isinstance(tp, bool) or not isinstance(tp, int) or tp < 1:
        raise ValueError(f"tp must be a positive integer, got {tp!r}")
    if weight_bytes < 0:
        raise ValueError(f"{what}: weight bytes must be >= 0, got {weight_bytes!r}")
    weight_gb = weight_bytes / 1e9
    if weight_gb >= tp * sku.gpu_memory_gb:
        raise ValueError(f"{what} ({weight_gb:.1f} GB) do not fit {tp} x {sku.name} "
                         f"({tp * sku.gpu_memory_gb:g} GB)")
    p = params if params is not None else LoadTimeParams()
    if source == "cold":
        return p.cold_start_s + weight_gb / p.remote_storage_gbps
    return p.warm_start_s + weight_gb / (tp * p.warm_transfer_gbps)


def attach_load_time_s(weight_bytes: float, tp: int, params: LoadTimeParams | None = None) -> float:
    """Seconds for an elastic operator replica to join a running engine (OpScale's runtime shape,
    PAPERS.md §1.6): the engine process is up, so no start-up is paid, only its operators' `weight_bytes`
    over the warm path (host memory or a peer), the `tp` shards in parallel. The Qwen2-7B MLP
    (11.4 GB) on one GPU takes 0.95 s at the default 12 GB/s; its projections 0.13 s."""
    if isinstance(tp, bool) or not isinstance(tp, int) or tp < 1:
        raise ValueError(f"tp must be a positive integer, got {tp!r}")
    if weight_bytes < 0:
        raise ValueError(f"weight bytes must be >= 0, got {weight_bytes!r}")
    p = params if params is not None else LoadTimeParams()
    return weight_bytes / 1e9 / (tp * p.warm_transfer_gbps)


def prefetch_time_s(model: ModelSpec, params: LoadTimeParams | None = None) -> float:
    """Seconds to stage `model`'s weights from remote storage into a host's memory ahead of need (no
    engine start, no GPU held), after which an instance of it on that host loads warm."""
    p = params if params is not None else LoadTimeParams()
    return model.weight_bytes / 1e9 / p.remote_storage_gbps


@dataclass(frozen=True, slots=True)
class LoadChoice:
    """How an instance will load, how long it takes, and why (a reason fit for a decision log)."""

    source: LoadSource
    load_s: float
    reason: str


def choose_load(
    model: ModelSpec, sku: Sku, tp: int, *, in_host_memory: bool, peer_available: bool,
    params: LoadTimeParams | None = None,
) -> LoadChoice:
    """Warm when the host holds the weights in memory or a peer serving the model can send them
    (SageServe's warm migration), else cold from remote storage."""
    if in_host_memory:
        return LoadChoice("warm", load_time_s(model, sku, tp, "warm", params), "weights in host memory")
    if peer_available:
        return LoadChoice("warm", load_time_s(model, sku, tp, "warm", params), "weights from a peer")
    return LoadChoice("cold", load_time_s(model, sku, tp, "cold", params), "no warm copy: remote storage")


class HostWeightCache:
    """The models whose weights one host keeps in memory, within `capacity_gb` of host RAM set aside
    for them; the least recently used are dropped first.

    The shell owns one per host: `loaded` when an instance of a model starts or stops on it (its
    weights passed through host memory), `has` to pick the load source, `stage` to fetch a model's
    weights ahead of need. Mutable bookkeeping: no clock of its own (`stage` takes the shell's timer).
    """

    def __init__(self, capacity_gb: float) -> None:
        if not capacity_gb >= 0:
            raise ValueError(f"host weight cache capacity_gb must be >= 0, got {capacity_gb!r}")
        self.capacity_gb = capacity_gb
        self._models: OrderedDict[str, float] = OrderedDict()  # name -> GB, least recently used first
        self.used_gb = 0.0
        self._staging: set[str] = set()

    def __contains__(self, model_name: str) -> bool:
        return model_name in self._models

    @property
    def models(self) -> tuple[str, ...]:
        """Cached model names, least recently used first."""
        return tuple(self._models)

    def has(self, model_name: str) -> bool:
        return model_name in self._models

    def loaded(self, model: ModelSpec) -> bool:
        """Record that `model`'s weights went through this host's memory. Returns False (nothing kept)
        when they alone exceed the capacity."""
        weight_gb = model.weight_bytes / 1e9
        if model.name in self._models:
            self._models.move_to_end(model.name)
            return True
        if weight_gb > self.capacity_gb:
            return False
        while self.used_gb + weight_gb > self.capacity_gb:
            _, dropped_gb = self._models.popitem(last=False)
            self.used_gb -= dropped_gb
        self._models[model.name] = weight_gb
        self.used_gb += weight_gb
        return True

    def drop(self, model_name: str) -> None:
        """Forget a model's weights (memory reclaimed, host restarted)."""
        weight_gb = self._models.pop(model_name, None)
        if weight_gb is not None:
            self.used_gb -= weight_gb

    def stage(self, model: ModelSpec, after: Callable[[float, Callable[[], None]], object], *,
              time_scale: float = 1.0, on_staged: Callable[[str], None] | None = None) -> bool:
        """Start fetching `model`'s weights from remote storage into this host's memory; `after(delay,
        fn)` is the shell's timer (the simulator's loop, asyncio's call_later). Returns False when they
        are here or on their way already."""
        if model.name in self._models or model.name in self._staging:
            return False
        self._staging.add(model.name)

        def staged() -> None:
            self._staging.discard(model.name)
            self.loaded(model)
            if on_staged is not None:
                on_staged(model.name)
        after(prefetch_time_s(model) * time_scale, staged)
        return True

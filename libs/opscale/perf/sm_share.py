"""Pricing an operator on a fraction of a GPU: spatial partitioning by SM share.

NVIDIA MPS lets each client process run on a set fraction of a GPU's SMs
(`CUDA_MPS_ACTIVE_THREAD_PERCENTAGE`, or `CUDA_MPS_ENABLE_PER_CTX_DEVICE_MULTIPROCESSOR_PARTITIONING`;
MPS documentation, docs.nvidia.com/deploy/mps, §4.2.5-4.2.6), so several operator replicas share one
GPU at once. What a partition of share s in (0, 1] gets:

- Compute: its SMs, so compute-bound time scales as 1 / s.
- HBM bandwidth: MPS does not partition it (nor L2); a partition's kernels pull what the others leave.
  A few SMs can draw much of it when the neighbours are idle (Nexus, arXiv 2507.06608: GPU resources
  show diminishing returns past a saturation point; MuxServe, arXiv 2404.02015, §2: decode gains little
  from more SMs), but when every co-located partition is memory-bound at once they split it. The
  default here is the conservative law, a share in proportion to the SMs: bandwidth(s) = max(s, floor)
  with `bandwidth_floor` = 0. A floor > 0 states how much a small partition may count on.
- Interference: co-located partitions still contend for L2, the memory controllers and the block
  scheduler. Measured slowdowns: vLLM, two MPS clients per A100 (60% SMs each): throughput -7.5%,
  TTFT +1.4%, TPOT +19.5% (gopebble.com case study "NVIDIA MPS vs dedicated GPU allocation for LLM
  inference"); MPS under memory contention about 30% slower (Villarrubia et al., arXiv 2604.22430);
  interference through caches and bandwidth characterised by Elvinger et al., SoCC'25 (arXiv
  2501.16909). The default `interference` = 0.10 multiplies a partition's kernel time by 1.10 whenever
  it shares its GPU. It is charged to every replica below a whole GPU, wherever it is placed: the
  planner's allowance, so a plan's latency holds wherever contention stays within it.
- Contention by neighbour (placement, `contention_slowdown`): the same case study shows memory-bound work
  suffering far more than compute-bound work (TPOT, decode, +19.5% against TTFT, prefill, +1.4%, with
  each client on 60% of the SMs). So a partition's kernel time grows by `memory_interference` x its own
  HBM-bound fraction x the neighbours' HBM load, plus `compute_interference` x its compute-bound
  fraction x the neighbours' compute load, where a neighbour's load is its SM share x the fraction of
  time its kernels run x the fraction of that which is HBM-bound (or compute-bound). The defaults fit
  the case study: 0.195 / 0.6 and 0.014 / 0.6 (both clients busy, one neighbour on 60% of the SMs).
  Qwen2-7B on an H100: two busy memory-bound decode halves of a GPU slow each other by 16%, above the
  10% allowance; a prefill quarter (8 x 1K-token prompts, HBM busy 20% of its kernel time) beside a busy
  decode three-quarters by 5%, the decode by 1.6%, both under it. The placement checks the latency
  budget with these slowdowns in place of the allowance (`opscale.planning.operators.placement`). The
  linear law and its two coefficients are an assumption fitted to one case study, to be replaced by
  co-location measurements.
- Memory: partitions share the GPU's memory; placement must fit the sum of their weights, KV caches
  and workspaces (the planner's placement does). MPS can cap it per client
  (`CUDA_MPS_PINNED_DEVICE_MEM_LIMIT`).

Fixed costs (the per-iteration overhead and kernel launch floors) are CPU-side and do not scale with s.

The price is taken from the roofline, never a second way: a partition is the same GPU with its peak
FLOP/s scaled by s and its bandwidth by bandwidth(s) (`partition_sku`), priced by
`opscale.perf.operators.RooflineOperatorModel`; a measured profile at s = 1 is scaled by the
roofline's ratio (`opscale.perf.operator_profiles`).

Pure arithmetic: no I/O, no clock.
"""

from __future__ import annotations

import dataclasses
import math

from pydantic import BaseModel, ConfigDict, Field, field_validator

from opscale.model import Sku

DEFAULT_SM_SHARES = (0.25, 0.5, 0.75, 1.0)


class SmShareParams(BaseModel):
    """How a spatial partition of a GPU is priced (see the module docstring for the sources)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    shares: tuple[float, ...] = Field(
        DEFAULT_SM_SHARES, description="SM shares a replica may run on (fractions of a GPU in (0, 1]); "
                                       "(1.0,) disables spatial sharing.")
    bandwidth_floor: float = Field(
        0.0, ge=0, le=1, description="Least HBM bandwidth share a partition counts on: bandwidth(s) = "
                                     "max(s, floor). 0 is proportional, the conservative law.")
    interference: float = Field(
        0.10, ge=0, description="Kernel-time penalty of a partition that shares its GPU (0.10: 10% "
                                "slower), charged to every replica below a whole GPU by the planner.")
    memory_interference: float = Field(
        0.325, ge=0, description="Placement: kernel-time penalty of an HBM-bound partition per unit of its "
                                 "neighbours' HBM load (SM share x busy fraction x HBM-bound fraction).")
    compute_interference: float = Field(
        0.023, ge=0, description="Placement: kernel-time penalty of a compute-bound partition per unit of its "
                                 "neighbours' compute load.")

    @field_validator("shares")
    @classmethod
    def _shares(cls, value: tuple[float, ...]) -> tuple[float, ...]:
        if not value:
            raise ValueError("shares must name at least one SM share")
        for s in value:
            if not (0 < s <= 1 and math.isfinite(s)):
                raise ValueError(f"shares must lie in (0, 1], got {s!r}")
        return tuple(sorted(set(value)))


def bandwidth_share(share: float, params: SmShareParams) -> float:
    """The HBM bandwidth fraction a partition of `share` of the SMs counts on."""
    check_share(share)
    return min(1.0, max(share, params.bandwidth_floor))


def slowdown(share: float, params: SmShareParams) -> float:
    """Kernel-time factor for co-location: 1 on a whole GPU, 1 + interference below it."""
    check_share(share)
    return 1.0 if share >= 1.0 else 1.0 + params.interference


def contention_slowdown(memory_fraction: float, neighbour_memory_load: float, neighbour_compute_load: float,
                        params: SmShareParams) -> float:
    """Kernel-time factor of a partition whose kernels are HBM-bound `memory_fraction` of their time,
    beside neighbours putting `neighbour_memory_load` and `neighbour_compute_load` on the GPU (see the
    module docstring): 1 when alone."""
    m = min(1.0, max(0.0, memory_fraction))
    return (1.0 + params.memory_interference * m * neighbour_memory_load
            + params.compute_interference * (1.0 - m) * neighbour_compute_load)


def partition_sku(sku: Sku, share: float, params: SmShareParams) -> Sku:
    """The roof a partition of `share` of `sku`'s SMs runs under: peak FLOP/s x share, bandwidth x
    bandwidth(share), and the same memory, power and price figures (the GPU's, shared)."""
    check_share(share)
    if share >= 1.0:
        return sku
    return dataclasses.replace(sku, peak_tflops=sku.peak_tflops * share,
                               mem_bandwidth_gbps=sku.mem_bandwidth_gbps * bandwidth_share(share, params))


def partition_engine_sku(sku: Sku, share: float, params: SmShareParams) -> Sku:
    """A whole engine run on a partition of `share` of one `sku` GPU, as a Sku its latency model and
    meter take: the partition's roof (`partition_sku`) with the co-location slowdown on every kernel
    (both roofs divided by `slowdown`, so a roofline kernel takes that much longer; the CPU-side
    per-iteration overhead does not change), and `share` of the GPU's memory, power and price. Priced
    by the roofline, it gives the operator planner's own stage prices at that share."""
    if share >= 1.0:
        return sku
    roof, slow = partition_sku(sku, share, params), slowdown(share, params)
    return dataclasses.replace(roof, peak_tflops=roof.peak_tflops / slow,
                               mem_bandwidth_gbps=roof.mem_bandwidth_gbps / slow,
                               gpu_memory_gb=sku.gpu_memory_gb * share, idle_power_w=sku.idle_power_w * share,
                               max_power_w=sku.max_power_w * share, price_usd_per_h=sku.price_usd_per_h * share,
                               spot_price_usd_per_h=sku.spot_price_usd_per_h * share)


def check_share(share: float) -> None:
    if not (0 < share <= 1 and math.isfinite(share)):
        raise ValueError(f"sm share must lie in (0, 1], got {share!r}")

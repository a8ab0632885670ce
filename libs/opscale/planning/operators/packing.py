"""Packing operator replicas onto whole GPUs: each replica asks for an SM share and memory; a GPU holds
replicas whose shares sum to at most 1 and whose memory sums to at most its usable memory.

A replica of `tp` > 1 GPUs, or of a whole GPU's SMs, takes whole GPUs of its own. The others are packed
by best fit decreasing over two dimensions: largest dominant share (max of SM share and memory
fraction) first, each onto the open GPU it leaves the least room on, a new GPU only when none has room
(OpScale's "open a GPU only if no feasible spot exists", PAPERS.md §1.6). Vector bin packing is
NP-hard; best fit decreasing is the usual heuristic, and the lower bound `ceil(max(sum of shares,
sum of memory fractions))` is reported beside it.

Contention and locality (issue 14 item 5) are not weighed here: the planner charges every partition
below a whole GPU the co-location slowdown wherever it lands (`opscale.perf.sm_share`).

Pure arithmetic: no I/O, no clock.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass

_EPS = 1e-9


@dataclass(frozen=True, slots=True)
class ReplicaDemand:
    """One replica of a stage: `label` names it (phase/stage#index), `share` of each of its `tp` GPUs'
    SMs, `memory_bytes` on each of them."""

    label: str
    share: float
    memory_bytes: float
    tp: int = 1

    @property
    def whole(self) -> bool:
        return self.tp > 1 or self.share >= 1.0 - _EPS


@dataclass(frozen=True, slots=True)
class GpuSlot:
    """One GPU and the replicas on it (a replica of tp > 1 appears on each of its GPUs)."""

    replicas: tuple[str, ...]
    sm_share: float
    memory_bytes: float


@dataclass(frozen=True, slots=True)
class Packing:
    gpu_memory_bytes: float
    slots: tuple[GpuSlot, ...]
    lower_bound: int

    @property
    def gpus(self) -> int:
        return len(self.slots)


def pack(demands: Iterable[ReplicaDemand], gpu_memory_bytes: float) -> Packing:
    """Whole-GPU replicas on GPUs of their own, the rest best fit decreasing (see the module docstring).

    Raises ValueError naming the replica whose demand no GPU can hold."""
    if not gpu_memory_bytes > 0:
        raise ValueError(f"gpu_memory_bytes must be positive, got {gpu_memory_bytes!r}")
    slots: list[GpuSlot] = []
    parts: list[ReplicaDemand] = []
    for d in demands:
        if not 0 < d.share <= 1 or d.memory_bytes < 0 or d.memory_bytes > gpu_memory_bytes * (1 + _EPS):
            raise ValueError(f"replica {d.label!r}: share {d.share!r} and {d.memory_bytes / 1e9:.2f} GB do not fit "
                             f"one GPU of {gpu_memory_bytes / 1e9:.2f} GB")
        if d.whole:
            slots.extend(GpuSlot((d.label,), 1.0, d.memory_bytes) for _ in range(d.tp))
        else:
            parts.append(d)
    whole = len(slots)
    parts.sort(key=lambda d: (-max(d.share, d.memory_bytes / gpu_memory_bytes), d.label))
    open_sm: list[float] = []
    open_mem: list[float] = []
    open_names: list[list[str]] = []
    for d in parts:
        best, best_left = -1, math.inf
        for i, (sm, mem) in enumerate(zip(open_sm, open_mem, strict=True)):
            if sm + d.share <= 1 + _EPS and mem + d.memory_bytes <= gpu_memory_bytes * (1 + _EPS):
                left = (1 - sm - d.share) + (gpu_memory_bytes - mem - d.memory_bytes) / gpu_memory_bytes
                if left < best_left:
                    best, best_left = i, left
        if best < 0:
            open_sm.append(d.share)
            open_mem.append(d.memory_bytes)
            open_names.append([d.label])
        else:
            open_sm[best] += d.share
            open_mem[best] += d.memory_bytes
            open_names[best].append(d.label)
    slots.extend(GpuSlot(tuple(n), sm, mem) for n, sm, mem in zip(open_names, open_sm, open_mem, strict=True))
    frac = max(sum(d.share for d in parts), sum(d.memory_bytes for d in parts) / gpu_memory_bytes)
    return Packing(gpu_memory_bytes, tuple(slots), whole + math.ceil(frac - _EPS))

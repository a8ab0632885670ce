"""The routing-policy contract: what a policy sees of an instance, how it chooses, and the load index
the router keeps of every pool.

Every policy answers `choose(request, candidates)`, a plain function of the list it is given. The
hooks a policy may offer besides (an index of its own, a choice from the router's `LoadIndex`, a region
choice, a note on each dispatch) are declared in opscale.routing.hooks. Nothing here does I/O or reads
a clock. On the router's per-request path (`LoadIndex`, `Candidate`): the compiled build compiles it.
"""

from __future__ import annotations

import heapq
from dataclasses import dataclass
from typing import Protocol

from opscale.model import Request, Role


@dataclass(slots=True)
class Candidate:
    """A ready instance as the router sees it. Mutable on purpose: the router owns and updates
    `outstanding_tokens`, `outstanding_prefill_tokens` and `in_flight` on every dispatch and completion,
    copies `kv_usage` from each node-agent heartbeat (`InstanceStatus.kv_used_frac`, 0..1; 0 until the
    first heartbeat that carries it), and policies read them.

    `outstanding_prefill_tokens` counts the prompt tokens of requests routed here and not yet finished:
    the router learns of completion, not of the end of prefill, so it is an upper bound on the prefill
    queue ahead of a new request.

    While a newly ready instance is in its slow-start window (RouterConfig.slow_start_s), both include
    a phantom load the router adds and lets decay, `slow_start_tokens` and `slow_start_prefill_tokens`
    of them, so that every policy ranking by them ramps its share up rather than sending it every request
    until it holds as much as the others; its real load is the difference.
    """

    instance_id: str
    model: str
    region: str
    endpoint: str
    agent_id: str
    outstanding_tokens: int = 0
    in_flight: int = 0
    kv_usage: float = 0.0
    outstanding_prefill_tokens: int = 0
    sku: str = ""
    tp: int = 1
    role: Role = Role.UNIFIED
    # The host's switches (its agent's heartbeat): leaf, mini-pod, big-pod; "" when not configured.
    # pd_pairing prefers the decode instance nearest the prefill one.
    s0: str = ""
    s1: str = ""
    s2: str = ""
    # The KV the router has sent here and not seen finish: prompt plus output tokens of each routed,
    # unfinished request (its footprint once decoded), and what the cache holds (the heartbeat's; 0:
    # unknown). Between heartbeats `kv_usage` is stale; this is what the router itself knows.
    kv_inflight_tokens: int = 0
    kv_capacity_tokens: int = 0
    slow_start_tokens: int = 0
    slow_start_prefill_tokens: int = 0

    def kv_estimate(self) -> float:
        """KV usage as the router can best tell: the heartbeat's, or the share of the cache its routed,
        unfinished requests will fill, whichever is larger (the heartbeat lags a burst by seconds)."""
        kv = self.kv_usage
        kv = kv if 0.0 <= kv <= 1.0 else (1.0 if kv > 1.0 else 0.0)  # NaN and negatives count as empty
        cap = self.kv_capacity_tokens
        if cap > 0:
            routed = self.kv_inflight_tokens / cap
            if routed > kv:
                kv = routed if routed < 1.0 else 1.0
        return kv


class LoadIndex:
    """The loads of a list of candidates, in candidate order, for policies that choose the least.
    The router that owns the candidates keeps it in step with every dispatch and completion.

    A heap of (load, position) entries. `set` only records the new load and marks the candidate
    changed; `first_min` pushes one fresh entry per changed candidate, then drops stale entries (whose
    load is no longer their candidate's) from the top. So a change costs a list store and a set insert,
    a query a few heap operations in C (heapq), and a decision over 1000 candidates about as much as
    over 10; an index nobody queries costs nothing more. Ties go to the lowest position, as `min` over
    the list would choose. When the heap holds over 8 entries per candidate (mostly stale: those of
    candidates whose load fell since) it is rebuilt from the loads: O(n), at most once every 7n
    changes, rare enough to stay out of the decision-time p99.

    Example: LoadIndex([5, 3, 3, 7]).first_min() == 1; after set(1, 9), first_min() == 2.
    """

    __slots__ = ("_loads", "_heap", "_changed")

    def __init__(self, loads: list[int]) -> None:
        if not loads:
            raise ValueError("a load index needs at least one candidate")
        self._loads = list(loads)
        self._changed: set[int] = set()
        self._rebuild()

    def _rebuild(self) -> None:
        self._heap = [(load, i) for i, load in enumerate(self._loads)]
        heapq.heapify(self._heap)
        self._changed.clear()

    def __len__(self) -> int:
        return len(self._loads)

    def __getitem__(self, i: int) -> int:
        return self._loads[i]

    def set(self, i: int, load: int) -> None:
        """Candidate `i` now has load `load`."""
        self._loads[i] = load
        self._changed.add(i)

    def first_min(self) -> int:
        """The index of the first candidate with the least load."""
        heap, loads, changed = self._heap, self._loads, self._changed
        if changed:
            if len(heap) + len(changed) > 8 * len(loads) + 64:
                self._rebuild()
                heap = self._heap
            else:
                push = heapq.heappush
                for i in changed:
                    push(heap, (loads[i], i))
                changed.clear()
        load, i = heap[0]
        while loads[i] != load:  # stale: that candidate's load has changed since
            heapq.heappop(heap)
            load, i = heap[0]
        return i

    def least(self) -> int:
        """The least load."""
        return self._loads[self.first_min()]


class RoutingPolicy(Protocol):
    name: str

    def choose(self, request: Request, candidates: list[Candidate]) -> Candidate:
        """Pick one of `candidates` (never empty)."""
        ...


class CandidateIndex(Protocol):
    """A policy's incremental view of one pool's candidates (one list, fixed order)."""

    def update(self, i: int) -> None:
        """Candidate `i`'s load, in-flight count or KV usage changed: bring the index up to date."""
        ...


class RegionLoad(Protocol):
    """What a region-choosing policy sees of one region's pool of a model (the router's `LoadIndex`)."""

    def least(self) -> int:
        """The fewest outstanding tokens of any ready instance of the model in this region."""
        ...

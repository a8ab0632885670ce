"""Load-based routing policies (join-shortest-queue, least KV, power of two choices, round-robin,
random) and the load index with which a router lets them choose without scanning every candidate."""

from __future__ import annotations

import heapq
import random
from collections.abc import Callable
from dataclasses import dataclass, field
from operator import attrgetter

from opscale.model import Request
from opscale.routing.base import Candidate

# attrgetter runs in C: a scan of 1000 candidates costs about half of a Python key function's
_outstanding = attrgetter("outstanding_tokens")


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


class KeyedLoadIndex(LoadIndex):
    """A LoadIndex over `key(candidate)`, which re-reads a candidate on `update(i)`: the
    CandidateIndex of the policies that choose the candidate with the least key."""

    __slots__ = ("_candidates", "_key")

    def __init__(self, candidates: list[Candidate], key: Callable[[Candidate], int]) -> None:
        super().__init__([key(c) for c in candidates])
        self._candidates = candidates
        self._key = key

    def update(self, i: int) -> None:
        self._loads[i] = self._key(self._candidates[i])  # `set`, inlined: this runs per dispatch
        self._changed.add(i)


@dataclass(slots=True)
class JoinShortestQueue:
    """Send the request to the instance with the fewest outstanding tokens (prompt tokens not yet
    prefilled plus output tokens not yet generated, as the router accounts them). Ties go to the first
    candidate, so the choice is deterministic."""

    name: str = "jsq_tokens"

    def choose(self, request: Request, candidates: list[Candidate]) -> Candidate:
        return min(candidates, key=_outstanding)

    def choose_by_load(self, request: Request, loads: LoadIndex) -> int:
        """The same choice as `choose`, as an index into the candidates, for a caller that keeps their
        outstanding tokens in a LoadIndex (the router keeps one per pool whatever the policy, so this
        policy needs no index of its own): the first least-loaded, found without scanning them all."""
        return loads.first_min()


# Outstanding tokens fill the low bits of a least-KV key; 2**40 tokens is far beyond any instance.
KV_LOAD_BITS = 40
_KV_LOAD_MAX = (1 << KV_LOAD_BITS) - 1


@dataclass(slots=True)
class LeastKvUsage:
    """Send the request to the instance with the least KV-cache usage, as the last heartbeat reported
    it, in steps of `kv_step` (0.05: 5 % of the cache); within a step, to the fewest outstanding tokens.

    Why the steps and the tie-break: KV usage changes only with heartbeats (seconds apart) while
    requests arrive every few milliseconds; ranking by the raw fraction alone would send every request
    between two heartbeats to the same instance. Outstanding tokens, which the router updates on every
    dispatch, spread that burst over the instances whose caches are about equally full.
    """

    kv_step: float = 0.05
    name: str = "least_kv"
    _key: Callable[[Candidate], int] = field(init=False, repr=False)

    def __post_init__(self) -> None:
        if not 0.0 < self.kv_step <= 1.0:
            raise ValueError(f"least_kv: kv_step must be in (0, 1], got {self.kv_step!r}")
        steps = 1.0 / self.kv_step

        def key(c: Candidate) -> int:
            kv = c.kv_usage
            kv = kv if 0.0 <= kv <= 1.0 else (1.0 if kv > 1.0 else 0.0)  # NaN and negatives count as empty
            load = c.outstanding_tokens
            return (int(kv * steps) << KV_LOAD_BITS) | (load if load < _KV_LOAD_MAX else _KV_LOAD_MAX)

        self._key = key

    def rank(self, candidate: Candidate) -> int:
        """The ranking key: KV step in the high bits, outstanding tokens in the low ones (less is better)."""
        return self._key(candidate)

    def choose(self, request: Request, candidates: list[Candidate]) -> Candidate:
        return min(candidates, key=self._key)

    def build_index(self, candidates: list[Candidate], loads: LoadIndex | None = None) -> KeyedLoadIndex:
        return KeyedLoadIndex(candidates, self._key)

    def choose_indexed(self, request: Request, candidates: list[Candidate], index: KeyedLoadIndex) -> int:
        return index.first_min()


@dataclass(slots=True)
class PowerOfTwoChoices:
    """Sample two distinct candidates at random and send the request to the one with fewer outstanding
    tokens (the first on a tie). O(1) per decision, and with no global minimum it avoids herding many
    routers onto one instance. Seeded, so a simulation replays exactly."""

    seed: int = 0
    name: str = "power_of_two"
    _rng: random.Random = field(init=False, repr=False)

    def __post_init__(self) -> None:
        self._rng = random.Random(self.seed)

    def choose(self, request: Request, candidates: list[Candidate]) -> Candidate:
        n = len(candidates)
        if n == 1:
            return candidates[0]
        draw = self._rng.randrange
        i = draw(n)
        j = draw(n - 1)
        if j >= i:
            j += 1  # distinct from i, and still uniform over the others
        a, b = candidates[i], candidates[j]
        return a if a.outstanding_tokens <= b.outstanding_tokens else b


@dataclass(slots=True)
class RandomChoice:
    """Send the request to a candidate drawn uniformly at random (seeded): the load-blind reference."""

    seed: int = 0
    name: str = "random"
    _rng: random.Random = field(init=False, repr=False)

    def __post_init__(self) -> None:
        self._rng = random.Random(self.seed)

    def choose(self, request: Request, candidates: list[Candidate]) -> Candidate:
        return candidates[self._rng.randrange(len(candidates))]


@dataclass(slots=True)
class RoundRobin:
    """Rotate over the candidates of each (model, region), whatever their load."""

    name: str = "round_robin"
    _next: dict[tuple[str, str], int] = field(default_factory=dict)

    def choose(self, request: Request, candidates: list[Candidate]) -> Candidate:
        key = (candidates[0].model, candidates[0].region)
        i = self._next.get(key, 0)
        self._next[key] = i + 1
        return candidates[i % len(candidates)]

"""Load-based routing policies (join-shortest-queue, least KV, power of two choices, round-robin,
random), and `KeyedLoadIndex`: the load index (opscale.routing.base.LoadIndex) over a key of each
candidate, with which they choose without scanning every candidate."""

from __future__ import annotations

import random
from collections.abc import Callable
from dataclasses import dataclass, field
from operator import attrgetter

from opscale.model import Request
from opscale.routing.base import Candidate, LoadIndex

# attrgetter runs in C: a scan of 1000 candidates costs about half of a Python key function's
_outstanding = attrgetter("outstanding_tokens")


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
    # Rank on `Candidate.kv_estimate()` (the heartbeat's usage, or the share the router's own routed,
    # unfinished requests will fill, whichever is larger) instead of the heartbeat's alone: P/D pairing
    # does, because between two heartbeats one emptied decode instance would otherwise take every
    # hand-off of a burst and overflow its cache (the requests then wait seconds for admission).
    estimate_in_flight: bool = False
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

        def estimated_key(c: Candidate) -> int:
            load = c.outstanding_tokens
            return (int(c.kv_estimate() * steps) << KV_LOAD_BITS) | (load if load < _KV_LOAD_MAX else _KV_LOAD_MAX)

        self._key = estimated_key if self.estimate_in_flight else key

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

"""Prefix affinity: consistent hashing with bounded loads (Mirrokni, Thorup and Zadimoghaddam, 2018).

Requests that share a prompt prefix should land on the instance that already holds that prefix's KV
blocks, so the request's first prefix hash is placed on a hash ring of the candidates (each at
`replicas` points). Walking clockwise from it, the request goes to the first candidate whose in-flight
count is below the bound ceil(c * (m + 1) / n), where m requests are in flight on n candidates and c is
`load_factor` (1.25: no instance takes more than 25 % above the mean). Some candidate is always below
the bound, so the walk ends; a request without prefix hashes goes to the least-loaded candidate.

Example: 4 candidates, 7 requests in flight, c = 1.25 -> bound ceil(1.25 * 8 / 4) = 3; a prefix whose
home instance already runs 3 requests moves on to the next instance on the ring.
"""

from __future__ import annotations

import bisect
import hashlib
import math
from dataclasses import dataclass, field
from operator import attrgetter

from opscale.model import Request
from opscale.routing.base import Candidate, LoadIndex

_MASK64 = (1 << 64) - 1
# Ring points are cached per instance id; past this many ids (instances come and go over days) the
# cache starts again rather than growing without bound.
_POINTS_CACHE_MAX = 100_000
_NEAR = 32  # ring points looked at in one slice before walking on step by step
_outstanding = attrgetter("outstanding_tokens")


def ring_points(instance_id: str, replicas: int) -> tuple[int, ...]:
    """The ring positions of one instance: a stable digest (Python's str hash changes per process)."""
    return tuple(int.from_bytes(hashlib.blake2b(f"{instance_id}#{k}".encode(), digest_size=8).digest(), "big")
                 for k in range(replicas))


_JUMP_BITS = 12  # the ring's jump table has 2**12 entries


@dataclass(slots=True)
class _Ring:
    """Sorted ring positions, the candidate (position in the pool's list) at each, and a jump table:
    `jump[b]` is the first point whose top _JUMP_BITS bits are >= b, so a lookup bisects a few points
    rather than the whole ring (a bisection over 32 000 Python ints misses the cache at every step)."""

    points: list[int]
    owners: list[int]
    jump: list[int]

    @classmethod
    def of(cls, placed: list[tuple[int, int]]) -> _Ring:
        placed.sort()
        points = [p for p, _ in placed]
        shift = 64 - _JUMP_BITS
        jump = [bisect.bisect_left(points, b << shift) for b in range(1 << _JUMP_BITS)]
        jump.append(len(points))
        return cls(points, [i for _, i in placed], jump)

    def first_at_or_after(self, home: int) -> int:
        b = home >> (64 - _JUMP_BITS)
        return bisect.bisect_left(self.points, home, self.jump[b], self.jump[b + 1])


class PrefixAffinityIndex:
    """The ring of one pool, its in-flight counts and their total, and its least-loaded fallback: the
    router's own load index when it passes one, else one kept here."""

    __slots__ = ("candidates", "ring", "in_flight", "total_in_flight", "fallback", "_own_fallback")

    def __init__(self, candidates: list[Candidate], ring: _Ring, loads: LoadIndex | None) -> None:
        self.candidates = candidates
        self.ring = ring
        self.in_flight = [c.in_flight for c in candidates]  # a plain list: the walk reads it per step
        self.total_in_flight = sum(self.in_flight)
        self._own_fallback = loads is None
        self.fallback = loads if loads is not None else LoadIndex([c.outstanding_tokens for c in candidates])

    def update(self, i: int) -> None:
        cand = self.candidates[i]
        now = cand.in_flight
        self.total_in_flight += now - self.in_flight[i]
        self.in_flight[i] = now
        if self._own_fallback:
            self.fallback.set(i, cand.outstanding_tokens)


@dataclass(slots=True)
class PrefixAffinity:
    """See the module docstring. `prefix_blocks`: how many leading prefix hashes form the affinity key
    (1: the first block, typically the system prompt)."""

    load_factor: float = 1.25
    replicas: int = 32
    prefix_blocks: int = 1
    name: str = "prefix_affinity"
    _points: dict[str, tuple[int, ...]] = field(default_factory=dict, repr=False)
    _plain: tuple[tuple[str, ...], _Ring] | None = field(default=None, repr=False)

    def __post_init__(self) -> None:
        if not (self.load_factor > 1.0 and math.isfinite(self.load_factor)):
            raise ValueError(f"prefix_affinity: load_factor must be a number above 1, got {self.load_factor!r}")
        if self.replicas < 1:
            raise ValueError(f"prefix_affinity: replicas must be >= 1, got {self.replicas!r}")
        if self.prefix_blocks < 1:
            raise ValueError(f"prefix_affinity: prefix_blocks must be >= 1, got {self.prefix_blocks!r}")

    def home(self, request: Request) -> int | None:
        """The request's position on the ring, or None when it has no prefix hashes."""
        hashes = request.prefix_hashes
        if not hashes:
            return None
        # Trace prefix ids are often small consecutive integers: the hash of a tuple of ints spreads them
        # over the ring, in C, and unlike a str hash it is the same in every process.
        return hash(hashes[:self.prefix_blocks]) & _MASK64

    def bound(self, total_in_flight: int, n: int) -> int:
        """The most requests one candidate may hold once this request is placed."""
        return math.ceil(self.load_factor * (total_in_flight + 1) / n)

    # -- the indexed path (the router's) ------------------------------------------------------

    def build_index(self, candidates: list[Candidate], loads: LoadIndex | None = None) -> PrefixAffinityIndex:
        return PrefixAffinityIndex(candidates, self._ring(candidates), loads)

    def choose_indexed(self, request: Request, candidates: list[Candidate], index: PrefixAffinityIndex) -> int:
        hashes = request.prefix_hashes
        if not hashes:
            return index.fallback.first_min()
        # `home` and `bound`, inlined: this runs per request
        home = hash(hashes[:self.prefix_blocks]) & _MASK64
        bound = math.ceil(self.load_factor * (index.total_in_flight + 1) / len(candidates))
        return self._walk(index.ring, index.in_flight, home, bound)

    # -- the plain path -----------------------------------------------------------------------

    def choose(self, request: Request, candidates: list[Candidate]) -> Candidate:
        home = self.home(request)
        if home is None:
            return min(candidates, key=_outstanding)
        ids = tuple(c.instance_id for c in candidates)
        if self._plain is None or self._plain[0] != ids:  # the ring of the last list asked about, reused
            self._plain = (ids, self._ring(candidates))
        in_flight = [c.in_flight for c in candidates]
        return candidates[self._walk(self._plain[1], in_flight, home, self.bound(sum(in_flight), len(candidates)))]

    # -- shared -------------------------------------------------------------------------------

    def _ring(self, candidates: list[Candidate]) -> _Ring:
        points = self._points
        if len(points) > _POINTS_CACHE_MAX:
            points.clear()
        placed: list[tuple[int, int]] = []
        for i, c in enumerate(candidates):
            mine = points.get(c.instance_id)
            if mine is None:
                mine = points[c.instance_id] = ring_points(c.instance_id, self.replicas)
            placed.extend((p, i) for p in mine)
        return _Ring.of(placed)

    @staticmethod
    def _walk(ring: _Ring, in_flight: list[int], home: int, bound: int) -> int:
        """Clockwise from `home`, the first candidate below `bound` (wrapping round the ring once)."""
        owners = ring.owners
        size = len(owners)
        start = ring.first_at_or_after(home)
        near = owners[start:start + _NEAR]  # a short slice first: the walk is usually a few steps
        for i in near:
            if in_flight[i] < bound:
                return i
        for step in range(len(near), size):  # then on round the ring, wrapping past its end
            i = owners[(start + step) % size]
            if in_flight[i] < bound:
                return i
        # unreachable while in-flight counts are consistent (their sum is below n * bound); stay total
        return owners[start % size]

"""The routing-policy contract: what a policy sees of an instance, and the two ways it may choose.

Every policy answers `choose(request, candidates)`, a plain function of the list it is given. A policy
that keeps an incremental structure (a load index, a hash ring) also offers `build_index` and
`choose_indexed`: the router builds the index when a pool's membership changes, tells it which
candidate changed after every dispatch, completion and heartbeat, and then asks for a choice without a
scan over every candidate. Nothing here does I/O or reads a clock.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol, runtime_checkable

from opscale.model import Request, Role

if TYPE_CHECKING:
    from opscale.routing.policies import LoadIndex


@dataclass(slots=True)
class Candidate:
    """A ready instance as the router sees it. Mutable on purpose: the router owns and updates
    `outstanding_tokens`, `outstanding_prefill_tokens` and `in_flight` on every dispatch and completion,
    copies `kv_usage` from each node-agent heartbeat (`InstanceStatus.kv_used_frac`, 0..1; 0 until the
    first heartbeat that carries it), and policies read them.

    `outstanding_prefill_tokens` counts the prompt tokens of requests routed here and not yet finished:
    the router learns of completion, not of the end of prefill, so it is an upper bound on the prefill
    queue ahead of a new request.
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


@runtime_checkable
class IndexedRoutingPolicy(Protocol):
    """A policy whose choice comes from an index the router keeps in step with its candidates."""

    name: str

    def choose(self, request: Request, candidates: list[Candidate]) -> Candidate: ...

    def build_index(self, candidates: list[Candidate], loads: LoadIndex | None = None) -> CandidateIndex:
        """An index over `candidates` (never empty), as they are now. `loads`, when given, is the
        caller's own index of the same candidates' outstanding tokens, kept current by the caller: the
        policy may read it (rather than keep a copy of the same numbers) but must not change it."""
        ...

    def choose_indexed(self, request: Request, candidates: list[Candidate], index: CandidateIndex) -> int:
        """The same kind of choice as `choose`, as a position in `candidates`, read from `index`."""
        ...

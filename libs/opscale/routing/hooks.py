"""The hooks a routing policy may offer besides `choose`, as protocols the router core checks once,
when it is built (`isinstance`), rather than probing for methods by name on every decision:

- `IndexedRoutingPolicy`: it keeps an incremental structure (a load index, a hash ring): the router
  builds the index when a pool's membership changes, tells it which candidate changed after every
  dispatch, completion and heartbeat, and then asks for a choice without a scan over every candidate;
- `LoadRoutingPolicy`: it chooses from the router's own `LoadIndex` of outstanding tokens;
- `RegionRoutingPolicy`: it picks the region first and leaves the instance to an inner policy;
- `NotingRoutingPolicy`: it adds a note to the reason of each dispatch it chose;
- `KvRoutingPolicy`: it follows the instances' KV caches (a global prefix index): the router hands it
  every KvEventBatch, every dispatch, and every instance that leaves.

They are apart from opscale.routing.base because that module is compiled in the optional compiled
build, and a compiled class cannot be a runtime-checkable protocol.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Protocol, runtime_checkable

from opscale.model import Request
from opscale.model.kv_events import KvEventBatch
from opscale.routing.base import Candidate, CandidateIndex, LoadIndex, RegionLoad, RoutingPolicy


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


@runtime_checkable
class LoadRoutingPolicy(Protocol):
    """A policy that chooses the least-loaded candidate by outstanding tokens, which the router keeps
    in a `LoadIndex` per pool whatever the policy: it needs no index of its own."""

    name: str

    def choose(self, request: Request, candidates: list[Candidate]) -> Candidate: ...

    def choose_by_load(self, request: Request, loads: LoadIndex) -> int:
        """The same choice as `choose`, as a position in the pool that `loads` indexes."""
        ...


@runtime_checkable
class RegionRoutingPolicy(Protocol):
    """A policy that picks the region to serve a request in; `inner` then picks the instance there."""

    name: str
    inner: RoutingPolicy

    def choose(self, request: Request, candidates: list[Candidate]) -> Candidate: ...

    def choose_region(self, request: Request, regions: Mapping[str, RegionLoad],
                      weights: Mapping[str, float] | None) -> str | None:
        """The region for `request` among `regions` (each ready one's load), given the newest plan's
        routing `weights` for the request's (model, origin region); None when none can serve it."""
        ...


@runtime_checkable
class NotingRoutingPolicy(Protocol):
    """A policy with something to say about the instance it chose (slo_aware: a TTFT at risk)."""

    def note(self, request: Request, chosen: Candidate) -> str | None:
        """A note for the dispatch reason of `request`, sent to `chosen`; None when there is nothing to say."""
        ...


@runtime_checkable
class KvRoutingPolicy(Protocol):
    """A policy that routes on what each instance's KV cache holds (kv_aware)."""

    def observe_kv(self, batch: KvEventBatch, known: bool) -> None:
        """An instance's KV events; `known`: the router knows that instance (else they are dropped)."""
        ...

    def routed(self, request: Request, chosen: Candidate) -> None:
        """`request` was dispatched to `chosen` (whichever path chose it)."""
        ...

    def forget_instance(self, instance_id: str) -> None:
        """The instance left the router's candidates: forget what it held."""
        ...

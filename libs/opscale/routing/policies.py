"""First routing policies: join-shortest-queue on outstanding tokens, and round-robin."""

from __future__ import annotations

from dataclasses import dataclass, field
from operator import attrgetter

from opscale.model import Request
from opscale.routing.base import Candidate

# attrgetter runs in C: a scan of 1000 candidates costs about half of a Python key function's
_outstanding = attrgetter("outstanding_tokens")


@dataclass(slots=True)
class JoinShortestQueue:
    """Send the request to the instance with the fewest outstanding tokens (prompt tokens not yet
    prefilled plus output tokens not yet generated, as the router accounts them). Ties go to the first
    candidate, so the choice is deterministic."""

    name: str = "jsq_tokens"

    def choose(self, request: Request, candidates: list[Candidate]) -> Candidate:
        return min(candidates, key=_outstanding)


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

"""The routing-policy contract."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

from opscale.model import Request


@dataclass(slots=True)
class Candidate:
    """A ready instance as the router sees it. Mutable on purpose: the router owns and updates
    `outstanding_tokens` on every dispatch and completion, and policies read it."""

    instance_id: str
    model: str
    region: str
    endpoint: str
    agent_id: str
    outstanding_tokens: int = 0
    in_flight: int = 0


class RoutingPolicy(Protocol):
    name: str

    def choose(self, request: Request, candidates: list[Candidate]) -> Candidate:
        """Pick one of `candidates` (never empty)."""
        ...

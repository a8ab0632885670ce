"""An in-process bus with NATS subject semantics and a configurable delivery latency.

`*` matches one token and `>` the rest, as on NATS, so services subscribe with the same patterns in
both runtimes. Delivery is scheduled on the event loop `latency_s` after publication.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from opscale.runtime.sim.loop import EventLoop


def subject_matches(pattern: str, subject: str) -> bool:
    """NATS wildcard match. Example: `opscale.heartbeat.>` matches `opscale.heartbeat.eu.a1`."""
    p_tokens, s_tokens = pattern.split("."), subject.split(".")
    for i, tok in enumerate(p_tokens):
        if tok == ">":
            return len(s_tokens) > i
        if i >= len(s_tokens) or (tok != "*" and tok != s_tokens[i]):
            return False
    return len(p_tokens) == len(s_tokens)


class InProcessBus:
    __slots__ = ("loop", "latency_s", "_subs", "_route_cache", "published")

    def __init__(self, loop: EventLoop, latency_s: float = 0.001) -> None:
        self.loop = loop
        self.latency_s = latency_s
        self._subs: list[tuple[str, Callable[[str, Any], None]]] = []
        self._route_cache: dict[str, list[Callable[[str, Any], None]]] = {}
        self.published = 0

    def subscribe(self, pattern: str, handler: Callable[[str, Any], None]) -> None:
        self._subs.append((pattern, handler))
        self._route_cache.clear()

    def publish(self, subject: str, event: Any) -> None:
        self.published += 1
        handlers = self._route_cache.get(subject)
        if handlers is None:
            handlers = [h for p, h in self._subs if subject_matches(p, subject)]
            self._route_cache[subject] = handlers
        after, latency_s = self.loop.after, self.latency_s
        for handler in handlers:
            after(latency_s, handler, subject, event)

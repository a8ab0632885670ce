"""What every service core is to the shells that host it: a named state machine with
`handle(event, now_s)` and `tick(now_s)`, each returning the actions for the shell to perform.

The router, aggregator, forecaster, planner and node-agent cores all have this shape; the simulation
(opscale.runtime.sim.world) and the live runtime (opscale.runtime.live.host) type the cores they host
with it. It belongs here, with the cores, rather than in either shell, so neither shell owns the other's
contract.
"""

from __future__ import annotations

from typing import Any, Protocol

from opscale.services.actions import Action


class ServiceCore(Protocol):
    """A sans-I/O service. It never awaits, sleeps or reads a clock: `now_s` comes from the shell."""

    @property
    def name(self) -> str:
        """The service's name in logs and decision records (`Log.service`)."""
        ...

    def handle(self, event: Any, now_s: float) -> list[Action]:
        """React to one event (a bus message, a command, a request); return what to do."""
        ...

    def tick(self, now_s: float) -> list[Action]:
        """Periodic work: windows to close, plans to publish, deadlines to enforce."""
        ...

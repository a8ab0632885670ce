"""One router host, all its cores: `router.workers` processes share the API and gRPC ports.

The parent (`opscale serve router` with workers other than 1) starts one `opscale serve router` child per
worker and supervises them as `opscale up` does its children. Each worker binds the ports with
SO_REUSEPORT, so the kernel spreads new connections over them; each is pinned to a core of its own and is
a router replica in its own right: its own id (`<router_id>-w<i>`, hence its own durable consumers, so
every worker gets every heartbeat and plan) and its own ops port (`ops_port + i`: each worker's
/metrics). Workers decide apart, as two routers behind one address do.
"""

from __future__ import annotations

import logging
import os

from opscale.runtime.live.settings import RouterSettings

log = logging.getLogger(__name__)

WORKER_INDEX_ENV = "OPSCALE_ROUTER_WORKER_INDEX"


def usable_cores() -> list[int]:
    """The cores this process may run on (its affinity mask, where the platform has one)."""
    if hasattr(os, "sched_getaffinity"):
        return sorted(os.sched_getaffinity(0))
    return list(range(os.cpu_count() or 1))


def worker_count(settings: RouterSettings) -> int:
    """How many workers the settings ask for: `workers`, or one per usable core for 0."""
    return settings.workers or len(usable_cores())


def as_worker(settings: RouterSettings) -> RouterSettings:
    """A worker's settings: its own router id and ops port. Unchanged for a router that is not a worker."""
    i = settings.worker_index
    if i < 0:
        return settings
    core = settings.core.model_copy(update={"router_id": f"{settings.core.router_id}-w{i}"})
    return settings.model_copy(update={"core": core, "ops_port": settings.ops_port + i if settings.ops_port else 0})


def pin_to_core(index: int) -> int | None:
    """Pin this process to the `index`-th usable core (round robin); the core, or None where the
    platform cannot pin."""
    cores = usable_cores()
    if not hasattr(os, "sched_setaffinity") or not cores:
        return None
    core = cores[index % len(cores)]
    os.sched_setaffinity(0, {core})
    return core

"""Literal-input builders shared by the core unit tests."""

from __future__ import annotations

from opscale.model import InstanceState, InstanceStatus, Request, RequestOutcome, Role
from opscale.services.events import AgentHeartbeat


def req(i: int, model: str = "m", region: str = "eu", tier: str = "interactive", t: float = 0.0,
        prompt: int = 100, output: int = 10) -> Request:
    return Request(f"r{i}", model, tier, region, t, prompt, output)


def status(instance_id: str, model: str = "m", state: InstanceState = InstanceState.READY, *,
           role: Role = Role.UNIFIED, **kw: float) -> InstanceStatus:
    return InstanceStatus(instance_id, model, "H100-80GB", 1, role, state, endpoint=f"http://x/{instance_id}", **kw)


def heartbeat(agent_id: str, region: str, *statuses: InstanceStatus, at_s: float = 0.0, epoch: int = 0,
              gpus: int = 8, sku: str = "H100-80GB") -> AgentHeartbeat:
    return AgentHeartbeat(agent_id, region, sku, gpus, f"{agent_id}:50051", epoch, at_s, tuple(statuses))


def outcome(i: int, *, arrival: float, ttft: float, e2e: float, out: int = 10, tier: str = "interactive",
            model: str = "m", region: str = "eu", status_: str = "ok") -> RequestOutcome:
    return RequestOutcome(f"r{i}", model, tier, region, region, "i1", arrival, arrival + ttft, arrival + e2e, 100, out,
                          status_)

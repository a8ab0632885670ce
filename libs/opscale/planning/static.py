"""Static provisioning: a fixed replica count per pool, whatever the load (the peak-provisioning
baseline users run today). A disaggregated deployment's prefill and decode pools each get their own
maximum (or `replicas`)."""

from __future__ import annotations

from opscale.model import Observation
from opscale.planning.base import DeploymentSpec, Effects


class StaticPolicy:
    name = "static"

    def __init__(self, deployments: list[DeploymentSpec], replicas: int | None = None) -> None:
        self.deployments = {d.model: d for d in deployments}
        self.replicas = replicas

    def initial_state(self) -> None:
        return None

    def decide(self, observation: Observation, state: None, now_s: float) -> Effects:
        desired = {}
        for key in observation.pools:
            spec = self.deployments.get(key.model)
            if spec is not None:
                desired[key] = self.replicas if self.replicas is not None else spec.pool(key.role).max_replicas
        return Effects(desired, None, {k: "static" for k in desired})

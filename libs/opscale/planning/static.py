"""Static provisioning: a fixed replica count per pool, whatever the load (the peak-provisioning
baseline users run today). A disaggregated deployment's prefill and decode pools each get their own
maximum (or `replicas`). `vms` holds a fixed number of VMs per (region, SKU, purchase) through the
planner's VM actuator (`Effects.vm_counts`): a fixed fleet the planner buys and keeps, rather than one
made of hosts started by hand."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field

from opscale.cloud import VmCount
from opscale.model import Observation
from opscale.planning.base import DeploymentSpec, Effects


class StaticConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")
    replicas: int | None = Field(None, ge=0, description="Instances per pool; None: each pool's max_replicas")
    vms: list[VmCount] = Field(default_factory=list, description="VMs to hold per (region, SKU, purchase); "
                                 "empty: leave the fleet's VMs as they are")


class StaticPolicy:
    name = "static"

    def __init__(self, deployments: list[DeploymentSpec], replicas: int | None = None,
                 vm_counts: dict[tuple[str, str, str], int] | None = None) -> None:
        self.deployments = {d.model: d for d in deployments}
        self.replicas = replicas
        self.vm_counts = dict(vm_counts or {})

    def initial_state(self) -> None:
        return None

    def decide(self, observation: Observation, state: None, now_s: float) -> Effects:
        desired = {}
        for key in observation.pools:
            spec = self.deployments.get(key.model)
            if spec is not None:
                desired[key] = self.replicas if self.replicas is not None else spec.pool(key.role).max_replicas
        return Effects(desired, None, {k: "static" for k in desired}, vm_counts=dict(self.vm_counts))

"""The planner's desired state, published under a monotonically increasing epoch."""

from __future__ import annotations

from dataclasses import dataclass, field

from opscale.model.instance import InstanceSpec
from opscale.model.observation import PoolKey


@dataclass(frozen=True, slots=True)
class Plan:
    """Desired state at one epoch.

    `assignments` maps an agent id to the instances it should run; it is the one owner of "what should
    run where" (replica counts per pool are derived from it). `routing_weights` maps (model, origin
    region) to the share of demand each serving region should take.

    `withdrawn` maps an assigned instance id to when it was withdrawn from discovery by a soft scale-in:
    its agent keeps it running (it is still assigned) but routers send it no new request, and the
    planner either restores it (drops it from `withdrawn`: it serves again at once, with no load) or, once
    its watch window has passed, unassigns it (then it drains and stops like any scale-in).

    `ready_ratio_tolerance` maps a disaggregated model to the tolerance of its Ready-ratio gate: while one
    role's ready instances outnumber their share of the plan's P/D split by more than this fraction,
    routers hold back the newly ready instances of that role (opscale.routing.ready_gate). A model it
    does not name has no gate.
    """

    epoch: int
    created_s: float
    assignments: dict[str, tuple[InstanceSpec, ...]] = field(default_factory=dict)
    agent_regions: dict[str, str] = field(default_factory=dict)
    routing_weights: dict[tuple[str, str], dict[str, float]] = field(default_factory=dict)
    vm_counts: dict[tuple[str, str, str], int] = field(default_factory=dict)  # (region, sku, purchase)
    reason: str = ""
    # agent id -> models whose weights it stages into host memory: where the plan expects to scale out next
    prestage: dict[str, tuple[str, ...]] = field(default_factory=dict)
    withdrawn: dict[str, float] = field(default_factory=dict)  # instance id -> withdrawn at (s)
    ready_ratio_tolerance: dict[str, float] = field(default_factory=dict)  # model -> gate tolerance

    def discoverable(self) -> dict[str, InstanceSpec]:
        """The assigned instances routers may send new requests to: all but the withdrawn ones."""
        return {iid: s for iid, s in self.instances().items() if iid not in self.withdrawn}

    def replicas(self) -> dict[PoolKey, int]:
        counts: dict[PoolKey, int] = {}
        for agent_id, specs in self.assignments.items():
            region = self.agent_regions.get(agent_id, "")
            for spec in specs:
                key = PoolKey(spec.model, region, spec.role)
                counts[key] = counts.get(key, 0) + 1
        return counts

    def instances(self) -> dict[str, InstanceSpec]:
        return {s.instance_id: s for specs in self.assignments.values() for s in specs}

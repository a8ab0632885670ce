"""The simulated world's hosts as VMs, bought and released through the cloud model (`opscale.cloud`).

`SimVmFleet` acts on the planner's `Plan.vm_counts` ((region, SKU, purchase) -> VMs) through a
`SimulatedActuator`, driven on the world's clock by a `CloudDriver`:

- the fleet in place when the run starts (the scenario's hosts) is adopted as running VMs, and is the
  target until a plan names one (a plan with no VM counts leaves the fleet's VMs as they are);
- a pool short of its target asks the cloud for VMs; a refusal (quota, a SKU the region does not sell)
  is a logged decision with the cloud's reason, never an error; the pool asks again at the next plan,
  notice or VM gone (which frees quota);
- a VM boots for its SKU's provisioning delay and holds nothing meanwhile: its node-agent joins the
  world (`SimWorld.add_host`) when it is RUNNING, and the planner, which places only on agents that have
  sent a heartbeat, can place on it from its first heartbeat on;
- a pool above its target for `scale_in_delay_s` without a break (Kubernetes' cluster autoscaler waits
  10 minutes, its scale-down-unneeded-time, so that a dip does not return VMs that take minutes to boot
  again) gives back VMs still booting first, then the running VMs that hold the fewest GPUs of the plan,
  newest first; a running one drains first (its agent is reclaimed with
  `release_drain_s` of notice, so the planner moves its instances at once) and is released once its
  engines are gone or the notice has run out;
- a spot preemption notice drains the host through the world's reclaim path (`SimWorld.reclaim_host`:
  requests still on it at the deadline go back to the routers), and the pool is topped up again at once
  (a VM under notice no longer counts towards its pool);
- billing is the cloud's, per VM-second (`opscale.cloud.billing`).

A request is lost to a preemption when it is dropped and was either displaced by one (in flight on the
host when it went) or dropped for want of capacity (not for its own size or model) having arrived while
a preemption left its pool short: from the notice until the deadline or the pool's next VM joining,
whichever is later. A preemption is survived when it lost no request.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from opscale.cloud import CloudDriver, CloudEvent, CloudEventKind, SimulatedActuator, SimulatedCloud
from opscale.model import Plan, Purchase, Vm, VmState
from opscale.runtime.sim.world import SimWorld
from opscale.services import subjects
from opscale.services.events import PlanPublished
from opscale.services.node_agent import NodeAgentCore

PoolId = tuple[str, str, str]  # (region, sku, purchase)
# (agent id, region, sku) -> the node-agent of a host that has just booted
AgentFactory = Callable[[str, str, str], NodeAgentCore]

# Drop causes (opscale.runtime.sim.world.DROP_CAUSES) that a want of capacity explains; the others are a
# request's own (too long, a model nobody serves)
CAPACITY_DROPS = frozenset({"queue_full", "no_capacity_in_time", "dispatch_failed", "unfinished"})
_CHECK_DRAINED_S = 2.0  # how often a draining VM is looked at (the agents' heartbeat period)


@dataclass(frozen=True, slots=True)
class InitialVm:
    """A host of the fleet in place when the run starts, and how it was bought."""

    agent_id: str
    region: str
    sku: str
    purchase: Purchase


@dataclass(slots=True)
class _Preemption:
    """One spot preemption: its notice, deadline, the requests it displaced, and how long its pool was
    short (None: no VM of the pool has joined since)."""

    vm_id: str
    pool: PoolId
    notice_s: float
    deadline_s: float
    displaced: frozenset[str] = frozenset()
    short_until_s: float | None = None

    def lost(self, drops: list[tuple[str, float, str]], end_s: float) -> set[str]:
        """The dropped requests this preemption explains (see the module docstring)."""
        until = self.short_until_s if self.short_until_s is not None else end_s
        return {request_id for request_id, arrival_s, cause in drops
                if request_id in self.displaced
                or (cause in CAPACITY_DROPS and self.notice_s <= arrival_s <= until)}


class SimVmFleet:
    """See the module docstring. Built before the run starts; everything happens on the world's loop."""

    def __init__(self, world: SimWorld, cloud: SimulatedCloud, new_agent: AgentFactory,
                 initial: list[InitialVm], release_drain_s: float = 300.0, scale_in_delay_s: float = 600.0) -> None:
        self.world = world
        self.cloud = cloud
        self.new_agent = new_agent
        self.release_drain_s = release_drain_s
        self.scale_in_delay_s = scale_in_delay_s
        self._over_since: dict[PoolId, float] = {}  # pool -> since when it has held more VMs than its target
        self._plan: Plan | None = None
        self.driver = CloudDriver(world.loop, SimulatedActuator(cloud), self._on_event)
        self.agent_of: dict[str, str] = {}  # vm id -> its host's agent id (once it runs)
        self._draining: dict[str, float] = {}  # vm id -> when its drain must end
        self._hosts_per_kind: dict[tuple[str, str], int] = {}  # (region, sku) -> agents named so far
        self.target: dict[PoolId, int] = {}
        self.boots = 0  # VMs requested during the run that came up
        self.refusals: list[str] = []  # why VM requests were refused
        self.preempted: list[_Preemption] = []
        now = world.loop.now_s
        for vm in initial:
            result = cloud.request(vm.region, vm.sku, vm.purchase, now, booted=True)
            if result.vm is None:
                raise ValueError(f"the initial host {vm.agent_id!r} cannot be a VM: {result.reason}")
            self.agent_of[result.vm.vm_id] = vm.agent_id
            key = (vm.region, vm.sku.casefold())
            self._hosts_per_kind[key] = self._hosts_per_kind.get(key, 0) + 1
            pool = (vm.region, vm.sku, vm.purchase.value)
            self.target[pool] = self.target.get(pool, 0) + 1
        self.until_s = float("inf")
        self.driver.start()  # the adopted VMs' RUNNING events flow through the loop like any other
        world.bus.subscribe(subjects.PLANS_ALL, self._on_plan)

    # -- plans ---------------------------------------------------------------------------------

    def _on_plan(self, subject: str, event: Any) -> None:
        if isinstance(event, PlanPublished):
            self.act_on(event.plan)

    def act_on(self, plan: Plan) -> None:
        """A plan was published: its VM counts, when it has any, become the fleet's target."""
        if not plan.vm_counts:
            return  # no VM counts: the fleet's VMs stay as they are
        target = {(region, sku, str(purchase)): int(n) for (region, sku, purchase), n in plan.vm_counts.items()}
        self._plan = plan
        if target != self.target:
            self.target = target
            self.converge()

    def converge(self) -> None:
        """Bring every pool towards its target: buy what is short, drain and give back what has been over
        for the scale-in delay."""
        now = self.world.loop.now_s
        vms = self.driver.current()
        pools = set(self.target) | {(v.region, v.sku, v.purchase.value) for v in vms if v.live}
        for pool in sorted(pools):
            region, sku, purchase = pool
            want = self.target.get(pool, 0)
            live = [v for v in vms if v.live and (v.region, v.sku, v.purchase.value) == pool]
            staying = [v for v in live if v.vm_id not in self._draining]
            if len(staying) < want:
                # the actuator counts draining VMs as live until they are released: ask past them
                result = self.driver.ensure(region, sku, Purchase(purchase), want + len(live) - len(staying))
                if result.refused:
                    message = (f"vms: {region}/{sku}/{purchase}: {result.refused} of {want - len(staying)} VM(s) "
                               f"refused: {result.reason}")
                    self.refusals.append(result.reason)
                    self.world.observer.decision("cloud", message, {"pool": "/".join(pool),
                                                                    "refused": result.refused}, now)
                for vm_id in result.started:
                    self.world.observer.decision("cloud", f"vms: {vm_id} requested ({region}/{sku}/{purchase})",
                                                 None, now)
            if len(staying) <= want:
                self._over_since.pop(pool, None)
                continue
            since = self._over_since.setdefault(pool, now)
            if now - since < self.scale_in_delay_s:
                if since == now:  # look again once the delay has passed
                    self.world.loop.at(now + self.scale_in_delay_s, self.converge)
                continue
            del self._over_since[pool]
            for vm in self._release_order(staying, self._plan)[:len(staying) - want]:
                self._let_go(vm, now)

    def _release_order(self, vms: list[Vm], plan: Plan | None) -> list[Vm]:
        """VMs still booting first (they hold nothing), then those holding the fewest GPUs of the plan,
        newest first (the oldest hold the warmest caches)."""
        assignments = plan.assignments if plan is not None else {}

        def held_gpus(vm: Vm) -> int:
            return sum(spec.gpus for spec in assignments.get(self.agent_of.get(vm.vm_id, ""), ()))
        return sorted(vms, key=lambda v: (v.state is not VmState.PROVISIONING, held_gpus(v), -v.requested_s,
                                          v.vm_id))

    def _let_go(self, vm: Vm, now_s: float) -> None:
        agent_id = self.agent_of.get(vm.vm_id)
        if agent_id is None or agent_id not in self.world.agents:
            self.driver.release(vm.vm_id)  # still booting: nothing to drain
            self.world.observer.decision("cloud", f"vms: {vm.vm_id} released while booting", None, now_s)
            return
        self._draining[vm.vm_id] = now_s + self.release_drain_s
        self.world.observer.decision("cloud", f"vms: {vm.vm_id} ({agent_id}) drains before its release", None, now_s)
        self.world.reclaim_host(agent_id, self.release_drain_s)
        self.world.loop.after(_CHECK_DRAINED_S, self._check_drained, vm.vm_id)

    def _check_drained(self, vm_id: str) -> None:
        deadline = self._draining.get(vm_id)
        if deadline is None:
            return
        agent_id = self.agent_of.get(vm_id, "")
        now = self.world.loop.now_s
        if agent_id in self.world.agents and self.world.engines_on(agent_id) and now < deadline:
            self.world.loop.after(_CHECK_DRAINED_S, self._check_drained, vm_id)
            return
        del self._draining[vm_id]
        self.world.remove_host(agent_id)
        self.driver.release(vm_id)

    def gpu_price(self, agent_id: str) -> float | None:
        """USD per GPU-hour the VM of host `agent_id` is billed at; None for a host that is no VM."""
        vm_id = next((v for v, a in self.agent_of.items() if a == agent_id), None)
        return None if vm_id is None else self.cloud.price(vm_id)

    def preempt(self, agent_id: str, notice_s: float) -> None:
        """The cloud reclaims the spot VM of host `agent_id` now, with `notice_s` of notice (a scenario's
        `spot_preemption` fault): handled as a drawn preemption is."""
        now = self.world.loop.now_s
        vm_id = next((v for v, a in self.agent_of.items() if a == agent_id), None)
        vm = self.cloud.vm(vm_id) if vm_id is not None else None
        if vm is None or vm.state is not VmState.RUNNING or vm.notice_s is not None:
            self.world.observer.decision("cloud", f"vms: host {agent_id} is already going; nothing to preempt",
                                         None, now)
            return
        self.cloud.preempt(vm.vm_id, now, notice_s)
        self.driver.start()  # its notice flows through the loop now

    # -- cloud events --------------------------------------------------------------------------

    def _on_event(self, event: CloudEvent) -> None:
        vm, now = event.vm, self.world.loop.now_s
        if event.kind is CloudEventKind.RUNNING:
            if vm.vm_id in self.agent_of:
                return  # an adopted host: its agent is already in the world
            key = (vm.region, vm.sku.casefold())
            self._hosts_per_kind[key] = n = self._hosts_per_kind.get(key, 0) + 1
            agent_id = f"{vm.region}-{vm.sku.lower()}-{n}"
            self.agent_of[vm.vm_id] = agent_id
            self.boots += 1
            pool = (vm.region, vm.sku, vm.purchase.value)
            for preemption in self.preempted:
                if preemption.pool == pool and preemption.short_until_s is None:
                    preemption.short_until_s = max(now, preemption.deadline_s)
            self.world.observer.decision("cloud", f"vms: {vm.vm_id} running after {now - vm.requested_s:.0f} s; "
                                                  f"host {agent_id} joins", None, now)
            self.world.add_host(self.new_agent(agent_id, vm.region, vm.sku), self.until_s)
        elif event.kind is CloudEventKind.PREEMPTION_NOTICE:
            agent_id = self.agent_of.get(vm.vm_id)
            deadline = vm.deadline_s if vm.deadline_s is not None else now
            preemption = _Preemption(vm.vm_id, (vm.region, vm.sku, vm.purchase.value), now, deadline)
            self.preempted.append(preemption)
            self.world.observer.decision("cloud", f"vms: {vm.vm_id} preemption notice, gone at {deadline:.0f} s",
                                         None, now)
            self._draining.pop(vm.vm_id, None)  # the cloud ends it now, whatever we meant to do
            if agent_id is not None and agent_id in self.world.agents:
                # Noted before the world terminates the host at the same instant (the loop keeps order).
                self.world.loop.at(deadline, self._note_displaced, preemption, agent_id)
                self.world.reclaim_host(agent_id, max(0.0, deadline - now))
            self.converge()  # a VM under notice no longer counts: its pool buys a replacement now
        elif event.kind is CloudEventKind.TERMINATED:
            agent_id = self.agent_of.get(vm.vm_id)
            if agent_id is not None:
                self.world.remove_host(agent_id)
            self.converge()  # its quota is free again: a pool the quota held back may grow now

    def _note_displaced(self, preemption: _Preemption, agent_id: str) -> None:
        preemption.displaced = frozenset(self.world.requests_on(agent_id))

    # -- results -------------------------------------------------------------------------------

    def summary(self, end_s: float, drops: list[tuple[str, float, str]]) -> dict[str, Any]:
        """What the fleet did and cost up to `end_s`; `drops`: (id, arrival, cause) of each dropped request."""
        account = self.driver.actuator.cloud.account(end_s)
        by_kind: dict[str, dict[str, float]] = {}
        for line in account.lines:
            kind = by_kind.setdefault(f"{line.sku}/{line.purchase.value}",
                                      {"vms": 0, "vm_hours": 0.0, "gpu_hours": 0.0, "cost_usd": 0.0, "preemptions": 0})
            kind["vms"] += line.vms
            kind["vm_hours"] += line.vm_hours
            kind["gpu_hours"] += line.gpu_hours
            kind["cost_usd"] += line.cost_usd
            kind["preemptions"] += line.preemptions
        lost: set[str] = set()
        survived = 0
        for preemption in self.preempted:
            mine = preemption.lost(drops, end_s)
            survived += not mine
            lost |= mine
        return {
            "vm_hours": account.vm_hours, "gpu_hours": account.gpu_hours, "cost_usd": account.cost_usd,
            "by_sku_purchase": by_kind, "lines": account.as_dict()["lines"],
            "boots": self.boots, "refusals": len(self.refusals),
            "preemptions": len(self.preempted), "preemptions_survived": survived,
            "requests_displaced_by_preemptions": sum(len(p.displaced) for p in self.preempted),
            "requests_lost_to_preemptions": len(lost),
        }

"""Place desired replica counts onto agents (hosts), keeping every instance that stays: HeteroScale's
topology-aware, heterogeneous scheduler (PAPERS.md §3.6), one placement cycle per call.

The cycle:
1. Topology discovery: the hosts (AgentSlot) carry their switches (S0 leaf, S1 mini-pod, S2 big-pod) and
   their RDMA subgroup priority (low, medium, high; opscale.model.RdmaPriority).
2. Requests, sorted: every scale-in first (the GPUs it frees serve this cycle's scale-outs), then the
   scale-outs, the largest (in GPUs) first, so that a big group finds a domain before small ones fragment it.
3. Options: a disaggregated deployment's prefill and decode instances of one region form deployment
   groups, each bound to one scheduling domain (`DeploymentSpec.scheduling_domain`: one S1 or one S2 switch).
   An instance grows an existing group in its domain; when every group is full, a new group is created in
   another domain of the region (the paper's "create a group in another compatible domain": the service
   keeps serving, each group keeps its P/D traffic under one switch). A one-role spill group draws the
   next instance of the other role, so it becomes a pair. The first group of a region goes only to a
   domain with room for the pools' minimum counts.
4. Scoring: a new group's domain is the one where a trial placement of the request's remaining instances
   leaves the fewest unplaced, uses the fewest compatible (non-preferred) SKUs, then the fewest high-, then
   medium-priority GPUs, spans the fewest S1s (P and D under one mini-pod move KV ~20% faster), and leaves
   the least free capacity behind (best fit: big empty domains stay whole for big groups). Inside a domain
   a host is chosen by: the preferred SKU before compatible ones (each with its own tp), low priority
   before high, an S1 that already holds the group's instances (P and D under one mini-pod), a host holding the weights in memory (loads
   warm, seconds instead of minutes), the most free GPUs (losing one host loses little of a pool), the id.
5. Virtual deduction: every choice is taken off the cycle's view of free GPUs at once, so the later
   requests of the same cycle see it gone; the view is rebuilt from the heartbeats next cycle.

Scale-in removes instances in high-priority subgroups first (the scarce pools are freed first), then those
not yet serving (still loading), then those of the smallest group (a spill group dissolves before the main
one shrinks), then the newest.

`topology_aware=False` is the same scheduler blind to the network: no groups, domains or priorities; each
instance goes to the host of the right SKU with the most free GPUs (warm first), scale-in removes loading
then newest. A unified deployment has no P/D pair to bind: its instances go anywhere in the region, by
priority and then as above. Instances carry the SKU and tp they really run with (InstanceSpec.sku), named
`<model>-<region>-<seq>` (unified) or `<model>-<region>-<role>-<seq>`. Whatever cannot be placed is
reported with a reason, not dropped silently: the VM layer turns that shortfall into capacity.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

from opscale.model import InstanceSpec, InstanceState, PoolKey, RdmaPriority, Role
from opscale.planning.base import DeploymentSpec


@dataclass(frozen=True, slots=True)
class AgentSlot:
    agent_id: str
    region: str
    sku: str
    gpus_total: int
    warm_models: frozenset[str] = frozenset()  # weights in host memory: an instance of these loads warm
    s0: str = ""  # switches above the host ("" unknown: every unknown counts as one switch)
    s1: str = ""
    s2: str = ""
    rdma_priority: RdmaPriority = RdmaPriority.LOW

    def switch(self, tier: str) -> str:
        """Its S1 or S2 switch (`tier` "s1" or "s2")."""
        return self.s1 if tier == "s1" else self.s2


@dataclass(frozen=True, slots=True)
class PlacementResult:
    assignments: dict[str, tuple[InstanceSpec, ...]]
    next_seq: int
    unplaced: dict[PoolKey, int]
    reasons: dict[PoolKey, str] = field(default_factory=dict)  # why each pool of `unplaced` fell short


def place(desired: dict[PoolKey, int], current: dict[str, tuple[InstanceSpec, ...]], agents: list[AgentSlot],
          deployments: dict[str, DeploymentSpec], states: dict[str, InstanceState], next_seq: int, *,
          topology_aware: bool = True, sku_mix: SkuMix | None = None,
          reserve: Mapping[PoolKey, float] | None = None) -> PlacementResult:
    """Return new assignments that realise `desired`, changing as little as possible (see the module
    docstring for the cycle). `sku_mix` (Effects.sku_mix) overrides a pool's order of SKUs: see `SkuMix`.
    `reserve`: GPU-equivalents a new instance of the pool takes on its host besides its own GPUs (the
    share of the pool's operator replicas it will carry, which attach on the same host)."""
    cycle = _Cycle(agents, current, deployments, topology_aware, next_seq, sku_mix=sku_mix, reserve=reserve)
    for key, want in sorted(desired.items(), key=lambda kv: str(kv[0])):
        have = len(cycle.members(key))
        if want < have:
            cycle.shrink(key, have - want, states)
    grow: dict[tuple[str, str], dict[Role, int]] = {}
    for key, want in desired.items():
        have = len(cycle.members(key))
        if want > have:
            grow.setdefault((key.model, key.region), {})[key.role] = want - have
    # The largest requests first (first-fit decreasing): a big group picks its domain before small ones
    # fragment it. Ties by name, so the result is deterministic.
    order = sorted(grow.items(), key=lambda kv: (-cycle.gpus_wanted(kv[0][0], kv[1]), kv[0]))
    for (model, region), needs in order:
        cycle.grow(model, region, needs)
    return cycle.result()


def prestage(prepare: dict[PoolKey, int], assignments: dict[str, tuple[InstanceSpec, ...]],
             agents: list[AgentSlot], deployments: dict[str, DeploymentSpec], *,
             topology_aware: bool = True, sku_mix: SkuMix | None = None) -> dict[str, tuple[str, ...]]:
    """Where to stage weights ahead of a scale-out: for each pool that may grow to `prepare` replicas,
    the hosts that placement would give the extra instances (by the same rule as `place`), when they do
    not hold the model's weights already. Returns {agent id: models}, sorted."""
    # A host running the model holds its weights; a staged host counts as warm from here on, so a second
    # extra instance goes beside the first rather than staging a third host.
    cycle = _Cycle(agents, assignments, deployments, topology_aware, 0, placed_is_warm=True, sku_mix=sku_mix)
    staged: dict[str, set[str]] = {}
    for key, want in sorted(prepare.items(), key=lambda kv: str(kv[0])):
        if key.model not in deployments:
            continue
        extra = want - len(cycle.members(key))
        if extra > 0:
            for host in cycle.grow(key.model, key.region, {key.role: extra}):
                if key.model not in cycle.warm_before[host]:
                    staged.setdefault(host, set()).add(key.model)
    return {agent_id: tuple(sorted(models)) for agent_id, models in sorted(staged.items())}


# pool -> instances per (SKU, tp) a policy chose (Effects.sku_mix). A pool named here grows on the (SKU, tp)
# furthest below its count first (then the other counted ones, then the deployment's other choices, in its
# order) and shrinks on one above its count first; (SKU, tp) the deployment does not offer are ignored.
# Example: mix {(A100, 4): 1, (H100, 2): 2}, running 1 on A100 -> the next two go to H100 hosts.
SkuMix = dict[PoolKey, dict[tuple[str, int], int]]

Option = tuple[str, int]  # (SKU, tp)


def mix_order(own: list[Option], mix: dict[Option, int] | None, have: dict[Option, int]) -> list[Option]:
    """A pool's (SKU, tp) choices `own` (the deployment's order), best first for its next instance when it
    runs `have` and a policy asked for `mix` (see `SkuMix`; SKUs compared without case)."""
    if not mix:
        return list(own)
    want = {(sku.casefold(), tp): n for (sku, tp), n in mix.items()}
    held = {(sku.casefold(), tp): n for (sku, tp), n in have.items()}

    def rank(i: int) -> tuple[int, int, int]:
        choice = (own[i][0].casefold(), own[i][1])
        wanted = want.get(choice, 0)
        short = wanted - held.get(choice, 0)
        return (0 if short > 0 else 1 if wanted > 0 else 2, -short, i)

    return [own[i] for i in sorted(range(len(own)), key=rank)]


def mix_outcome(own: list[Option], mix: dict[Option, int] | None, have: dict[Option, int],
                replicas: int) -> dict[Option, int]:
    """Instances per (SKU, tp) once placement has brought a pool running `have` to `replicas` with `mix`
    asked for, room permitting: running instances stay where they are, a scale-in takes from an option
    above its count first (else the least preferred), a scale-out follows `mix_order`. What a policy that
    buys VMs per SKU must hold room for. Keys are spelled as in `own`."""
    spelled = {(sku.casefold(), tp): (sku, tp) for sku, tp in own}
    counts: dict[Option, int] = {}
    for (sku, tp), n in have.items():
        option = spelled.get((sku.casefold(), tp), (sku, tp))
        counts[option] = counts.get(option, 0) + n
    want = {spelled.get((sku.casefold(), tp), (sku, tp)): n for (sku, tp), n in (mix or {}).items()}
    order = list(own) + [o for o in counts if o not in own]
    while sum(counts.values()) > replicas:
        held = [o for o in reversed(order) if counts.get(o, 0) > 0]
        victim = next((o for o in held if counts[o] > want.get(o, 0)), held[0])
        counts[victim] -= 1
    while sum(counts.values()) < replicas:
        best = mix_order(own, mix, counts)[0]
        counts[best] = counts.get(best, 0) + 1
    return {o: n for o, n in counts.items() if n}


# (SKU rank, priority rank, outside the group's S1s, cold, -free GPUs, agent id): the least is the best
_HostRank = tuple[int, int, bool, bool, int, str]


class _Cycle:
    """One placement cycle's view of the fleet: what runs where and how many GPUs each host has free.
    Every placement and removal updates it at once (virtual deduction)."""

    def __init__(self, agents: list[AgentSlot], current: dict[str, tuple[InstanceSpec, ...]],
                 deployments: dict[str, DeploymentSpec], aware: bool, next_seq: int,
                 placed_is_warm: bool = False, sku_mix: SkuMix | None = None,
                 reserve: Mapping[PoolKey, float] | None = None) -> None:
        self.agents = {a.agent_id: a for a in agents}
        self.reserve = {key: r for key, r in (reserve or {}).items() if r > 0}
        self.sku_mix = {key: {(sku.casefold(), tp): n for (sku, tp), n in mix.items()}
                        for key, mix in (sku_mix or {}).items() if mix}
        self.deployments = deployments
        self.aware = aware
        self.next_seq = next_seq
        self.placed_is_warm = placed_is_warm
        self.runs: dict[str, list[InstanceSpec]] = {a.agent_id: list(current.get(a.agent_id, ())) for a in agents}
        # an instance's attached operator replicas hold GPUs of its host too (gpu_equivalents: tp without any)
        self.free = {a.agent_id: a.gpus_total - sum(s.gpu_equivalents for s in self.runs[a.agent_id]) for a in agents}
        self.warm_before = {a.agent_id: set(a.warm_models) | ({s.model for s in self.runs[a.agent_id]}
                                                              if placed_is_warm else set()) for a in agents}
        self.warm = {a: set(models) for a, models in self.warm_before.items()}
        self.by_region: dict[str, list[AgentSlot]] = {}
        for a in sorted(agents, key=lambda a: a.agent_id):
            self.by_region.setdefault(a.region, []).append(a)
        self.unplaced: dict[PoolKey, int] = {}
        self.reasons: dict[PoolKey, str] = {}

    # -- the view ------------------------------------------------------------------------------

    def members(self, key: PoolKey) -> list[tuple[str, InstanceSpec]]:
        return [(a.agent_id, s) for a in self.by_region.get(key.region, ()) for s in self.runs[a.agent_id]
                if s.model == key.model and s.role == key.role]

    def choices(self, dep: DeploymentSpec, key: PoolKey) -> list[tuple[str, int]]:
        """The (SKU, tp) an instance of `key` may take, best first (see `SkuMix`)."""
        own = dep.pool(key.role).choices()
        mix = self.sku_mix.get(key)
        return mix_order(own, mix, self._mix_counts(key)) if mix else own

    def _mix_counts(self, key: PoolKey) -> dict[tuple[str, int], int]:
        have: dict[tuple[str, int], int] = {}
        for _, spec in self.members(key):
            choice = (spec.sku.casefold(), spec.tp)
            have[choice] = have.get(choice, 0) + 1
        return have

    def gpus_wanted(self, model: str, needs: dict[Role, int]) -> int:
        dep = self.deployments[model]
        return sum(n * dep.pool(role).tp for role, n in needs.items())

    def _add(self, agent_id: str, spec: InstanceSpec, extra: float = 0.0) -> None:
        self.runs[agent_id].append(spec)
        self.free[agent_id] -= spec.gpus + extra
        if self.placed_is_warm:
            self.warm[agent_id].add(spec.model)

    def result(self) -> PlacementResult:
        frozen = {a: tuple(sorted(specs, key=lambda s: s.instance_id)) for a, specs in self.runs.items()}
        return PlacementResult(frozen, self.next_seq, self.unplaced, self.reasons)

    # -- groups --------------------------------------------------------------------------------

    def _tier(self, dep: DeploymentSpec) -> str | None:
        """The switch tier that bounds `dep`'s groups, or None when it has none (blind, unified, 'none')."""
        if not self.aware or not dep.disaggregated or dep.scheduling_domain == "none":
            return None
        return dep.scheduling_domain

    def _group_sizes(self, dep: DeploymentSpec, region: str, tier: str) -> dict[str, dict[Role, int]]:
        """Its groups in `region`: domain -> instances per role."""
        groups: dict[str, dict[Role, int]] = {}
        for a in self.by_region.get(region, ()):
            for s in self.runs[a.agent_id]:
                if s.model == dep.model:
                    roles = groups.setdefault(a.switch(tier), {})
                    roles[s.role] = roles.get(s.role, 0) + 1
        return groups

    def _domains(self, dep: DeploymentSpec, region: str, tier: str) -> dict[str, list[AgentSlot]]:
        """The domains its groups may use in `region`: switch -> its hosts."""
        domains: dict[str, list[AgentSlot]] = {}
        for a in self.by_region.get(region, ()):
            name = a.switch(tier)
            if not dep.domains or name in dep.domains:
                domains.setdefault(name, []).append(a)
        return domains

    # -- scale-in ------------------------------------------------------------------------------

    def shrink(self, key: PoolKey, count: int, states: dict[str, InstanceState]) -> None:
        dep = self.deployments.get(key.model)
        tier = self._tier(dep) if dep is not None else None
        sizes = ({d: sum(r.values()) for d, r in self._group_sizes(dep, key.region, tier).items()}
                 if dep is not None and tier is not None else {})

        def victim_rank(member: tuple[str, InstanceSpec]) -> tuple[int, bool, int, int]:
            agent, spec = self.agents[member[0]], member[1]
            serving = states.get(spec.instance_id) == InstanceState.READY
            if not self.aware:  # not-ready first (they serve nobody yet), then the newest
                return (0, serving, 0, -instance_seq(spec.instance_id))
            group = sizes.get(agent.switch(tier), 0) if tier is not None else 0
            return (-agent.rdma_priority.rank, serving, group, -instance_seq(spec.instance_id))

        mix = self.sku_mix.get(key)
        for _ in range(count):
            members = self.members(key)
            if not members:
                return
            if mix:  # an instance on a (SKU, tp) above the policy's count goes first
                have = self._mix_counts(key)
                agent_id, spec = min(members, key=lambda m: (
                    have[(m[1].sku.casefold(), m[1].tp)] <= mix.get((m[1].sku.casefold(), m[1].tp), 0),
                    victim_rank(m)))  # noqa: B023 - used at once, within this iteration
            else:
                agent_id, spec = min(members, key=victim_rank)
            self.runs[agent_id].remove(spec)
            self.free[agent_id] += spec.gpu_equivalents

    # -- scale-out -----------------------------------------------------------------------------

    def grow(self, model: str, region: str, needs: dict[Role, int]) -> list[str]:
        """Place `needs` more instances of `model` in `region`; the hosts they went to, in order."""
        dep = self.deployments[model]
        tier = self._tier(dep)
        hosts: list[str] = []
        blocked: set[Role] = set()
        remaining = dict(needs)
        for role in _interleave(needs):
            key = PoolKey(model, region, role)
            placed = None if role in blocked else (
                self._grow_in_groups(dep, key, remaining, tier) if tier is not None
                else self._best_host(dep, key, self.by_region.get(region, ()), set()))
            remaining[role] -= 1
            if placed is None:
                blocked.add(role)  # nothing smaller will fit either: the rest of this role is short too
                self.unplaced[key] = self.unplaced.get(key, 0) + 1
                self.reasons.setdefault(key, self._why(dep, key, tier))
                continue
            agent_id, sku, tp, extra = placed
            prefix = f"{model}-{region}-" if role is Role.UNIFIED else f"{model}-{region}-{role}-"
            self._add(agent_id, InstanceSpec(f"{prefix}{self.next_seq:05d}", model, sku, tp, role), extra)
            self.next_seq += 1
            hosts.append(agent_id)
        return hosts

    def _grow_in_groups(self, dep: DeploymentSpec, key: PoolKey, remaining: dict[Role, int],
                        tier: str) -> tuple[str, str, int, float] | None:
        domains = self._domains(dep, key.region, tier)
        groups = {d: roles for d, roles in self._group_sizes(dep, key.region, tier).items() if d in domains}
        # Grow a group: one that lacks this role first (a spill group becomes a pair), then the largest.
        for name in sorted(groups, key=lambda d: (key.role in groups[d], -sum(groups[d].values()), d)):
            host = self._best_host(dep, key, domains[name], self._group_s1(dep, domains[name]))
            if host is not None:
                return host
        # Every group is full (or there is none yet): create one in the best other domain.
        first = not groups
        floor = ({role: dep.pool(role).min_replicas for role in dep.roles()} if first else {})
        floor[key.role] = max(1, floor.get(key.role, 0))
        options = [(score, name) for name, members in domains.items() if name not in groups
                   for score in [self._trial(dep, key.region, members, floor, remaining)] if score is not None]
        if not options:
            return None
        best = min(options)
        members = domains[best[1]]
        return self._best_host(dep, key, members, self._group_s1(dep, members))

    def _trial(self, dep: DeploymentSpec, region: str, members: list[AgentSlot], floor: dict[Role, int],
               remaining: dict[Role, int]) -> tuple[int, int, int, int, int, int] | None:
        """The score of a new group on `members` (a domain's hosts), or None when it lacks room for
        `floor`: (unplaced, on compatible SKUs, high-priority GPUs, medium-priority GPUs, S1s spanned,
        GPUs left free), from placing `remaining` there on a copy of the view."""
        if not fits(dep, members, self.free, floor):
            return None
        free = {a.agent_id: self.free[a.agent_id] for a in members}
        by_id = {a.agent_id: a for a in members}
        s1s: set[str] = set()
        unplaced = compatible = high = medium = 0
        for role in _interleave(remaining):
            key = PoolKey(dep.model, region, role)
            host = _pick(dep, key, members, free, self.warm, s1s, True, self.choices(dep, key))
            if host is None:
                unplaced += 1
                continue
            agent_id, sku, tp = host
            agent = by_id[agent_id]
            free[agent_id] -= tp
            compatible += sku.casefold() != dep.pool(role).sku.casefold()
            high += tp * (agent.rdma_priority is RdmaPriority.HIGH)
            medium += tp * (agent.rdma_priority is RdmaPriority.MEDIUM)
            s1s.add(agent.s1)
        return unplaced, compatible, high, medium, len(s1s), sum(free.values())

    def _group_s1(self, dep: DeploymentSpec, members: list[AgentSlot]) -> set[str]:
        """The S1s of `members` that run `dep`'s instances: the group stays compact under them, so that its
        prefill and decode instances share a mini-pod (KV moves ~20% faster than across one)."""
        return {a.s1 for a in members for s in self.runs[a.agent_id] if s.model == dep.model}

    def _best_host(self, dep: DeploymentSpec, key: PoolKey, members: Iterable[AgentSlot],
                   partner_s1: set[str]) -> tuple[str, str, int, float] | None:
        """The host, SKU and tp of one more instance of `key`, and the GPUs it holds there besides its
        own: the pool's `reserve` on a host with room for both, else on any host with room for it alone."""
        members = list(members)
        extra = self.reserve.get(key, 0.0)
        if extra > 0:
            host = _pick(dep, key, members, self.free, self.warm, partner_s1, self.aware, self.choices(dep, key),
                         extra)
            if host is not None:
                return (*host, extra)
        host = _pick(dep, key, members, self.free, self.warm, partner_s1, self.aware, self.choices(dep, key))
        return None if host is None else (*host, 0.0)

    def _why(self, dep: DeploymentSpec, key: PoolKey, tier: str | None) -> str:
        skus = "/".join(sku for sku, _ in dep.pool(key.role).choices())
        if tier is None:
            return f"no host of {skus} in region {key.region} has room"
        groups = sorted(self._group_sizes(dep, key.region, tier))
        if not groups:
            need = ", ".join(f"{dep.pool(r).min_replicas} {r.value}" for r in dep.roles())
            return f"no {tier} domain of region {key.region} has room for the group's minimum ({need}) on {skus}"
        return (f"its {tier} group(s) {groups} are full and no other {tier} domain of region {key.region} has "
                f"room on {skus}")


def _pick(dep: DeploymentSpec, key: PoolKey, members: Iterable[AgentSlot], free: Mapping[str, float],
          warm: dict[str, set[str]], partner_s1: set[str], aware: bool,
          order: list[tuple[str, int]] | None = None, extra: float = 0.0) -> tuple[str, str, int] | None:
    """The best host of `members` for one instance of `key` (see the module docstring), with the SKU and
    tp it runs there; None when none has room. `order`: the (SKU, tp) choices best first (default: the
    deployment's)."""
    choices = {sku.casefold(): (rank, sku, tp)
               for rank, (sku, tp) in enumerate(order if order is not None else dep.pool(key.role).choices())}
    best: tuple[_HostRank, str, int] | None = None
    for agent in members:
        choice = choices.get(agent.sku.casefold())
        if choice is None:
            continue
        rank_sku, sku, tp = choice
        room = free[agent.agent_id]
        if room < tp + extra - 1e-9:
            continue
        cold = key.model not in warm.get(agent.agent_id, ())
        if aware:
            rank: _HostRank = (rank_sku, agent.rdma_priority.rank, agent.s1 not in partner_s1, cold, -room,
                               agent.agent_id)
        else:
            rank = (rank_sku, 0, False, cold, -room, agent.agent_id)
        if best is None or rank < best[0]:
            best = (rank, sku, tp)
    return None if best is None else (best[0][5], best[1], best[2])


def fits(dep: DeploymentSpec, members: Iterable[AgentSlot], free: Mapping[str, float], counts: dict[Role, int]) -> bool:
    """Whether `counts` instances per role of `dep` fit on `members` with `free` GPUs each (placed by the
    same rule as a cycle, preferred SKUs first): the room test of a new group's domain, and of a scenario's
    domains at load time."""
    members = list(members)
    left = {a.agent_id: free[a.agent_id] for a in members}
    for role in _interleave(counts):
        host = _pick(dep, PoolKey(dep.model, "", role), members, left, {}, set(), True)
        if host is None:
            return False
        left[host[0]] -= host[2]
    return True


def _interleave(needs: dict[Role, int]) -> list[Role]:
    """The roles of `needs` instances in the order to place them: each role spread evenly over the
    sequence (2 prefill, 4 decode: D P D D P D), so a group short of room still gets both roles."""
    slots = [((i + 0.5) / n, role.value, role) for role, n in needs.items() if n > 0 for i in range(n)]
    return [role for _, _, role in sorted(slots)]


def instance_seq(instance_id: str) -> int:
    """The sequence number instance ids end with (placement names them so); newer is larger, -1 for none."""
    tail = instance_id.rsplit("-", 1)[-1]
    return int(tail) if tail.isdigit() else -1


def next_seq_after(assignments: dict[str, tuple[InstanceSpec, ...]]) -> int:
    """The sequence number to use after every instance in `assignments` (for a restarted planner)."""
    return 1 + max((instance_seq(s.instance_id) for specs in assignments.values() for s in specs), default=0)

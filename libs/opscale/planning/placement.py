"""Place desired replica counts onto agents (hosts), keeping every instance that stays.

Scale-out puts a new instance on an agent of the right region and SKU whose heartbeat says it holds the
model's weights in host memory (it loads warm there, in seconds instead of minutes from remote storage),
else on any; among those, the one with the most free GPUs, which spreads a pool over hosts so that losing
one host loses little of it (ties by agent id, so the result is deterministic). A disaggregated
deployment's prefill and decode pools are placed each with its own SKU and TP (DeploymentSpec.pool),
their instances marked with their role and named `<model>-<region>-<role>-<seq>`. Scale-in removes instances that are not yet serving first
(still loading), then the newest. Whatever cannot be placed is reported, not dropped silently: the VM
layer turns that shortfall into capacity.
"""

from __future__ import annotations

from dataclasses import dataclass

from opscale.model import InstanceSpec, InstanceState, PoolKey, Role
from opscale.planning.base import DeploymentSpec, RolePoolSpec


@dataclass(frozen=True, slots=True)
class AgentSlot:
    agent_id: str
    region: str
    sku: str
    gpus_total: int
    warm_models: frozenset[str] = frozenset()  # weights in host memory: an instance of these loads warm


@dataclass(frozen=True, slots=True)
class PlacementResult:
    assignments: dict[str, tuple[InstanceSpec, ...]]
    next_seq: int
    unplaced: dict[PoolKey, int]


def place(desired: dict[PoolKey, int], current: dict[str, tuple[InstanceSpec, ...]], agents: list[AgentSlot],
          deployments: dict[str, DeploymentSpec], states: dict[str, InstanceState], next_seq: int) -> PlacementResult:
    """Return new assignments that realise `desired`, changing as little as possible."""
    by_id = {a.agent_id: a for a in agents}
    assignments: dict[str, list[InstanceSpec]] = {a.agent_id: [] for a in agents}
    for agent_id, specs in current.items():
        if agent_id in assignments:
            assignments[agent_id].extend(specs)
    unplaced: dict[PoolKey, int] = {}

    for key, want in sorted(desired.items(), key=lambda kv: str(kv[0])):
        members = [(agent_id, s) for agent_id, specs in assignments.items() for s in specs
                   if s.model == key.model and s.role == key.role and by_id[agent_id].region == key.region]
        have = len(members)
        if want < have:
            # not-ready first (they serve nobody yet), then the newest of the ready ones
            loading = [m for m in members if states.get(m[1].instance_id) != InstanceState.READY]
            ready = sorted((m for m in members if states.get(m[1].instance_id) == InstanceState.READY),
                           key=lambda m: _seq(m[1].instance_id), reverse=True)
            for agent_id, spec in (loading + ready)[: have - want]:
                assignments[agent_id].remove(spec)
        elif want > have:
            shape = deployments[key.model].pool(key.role)
            prefix = f"{key.model}-{key.region}-" if key.role is Role.UNIFIED else f"{key.model}-{key.region}-{key.role}-"
            for _ in range(want - have):
                host = _best_host(key, shape, agents, assignments)
                if host is None:
                    unplaced[key] = unplaced.get(key, 0) + 1
                    continue
                instance_id = f"{prefix}{next_seq:05d}"
                next_seq += 1
                assignments[host].append(InstanceSpec(instance_id, key.model, shape.sku, shape.tp, key.role))
    frozen = {a: tuple(sorted(specs, key=lambda s: s.instance_id)) for a, specs in assignments.items()}
    return PlacementResult(frozen, next_seq, unplaced)


def prestage(prepare: dict[PoolKey, int], assignments: dict[str, tuple[InstanceSpec, ...]],
             agents: list[AgentSlot], deployments: dict[str, DeploymentSpec]) -> dict[str, tuple[str, ...]]:
    """Where to stage weights ahead of a scale-out: for each pool that may grow to `prepare` replicas,
    the hosts that placement would give the extra instances (by the same rule as `place`), when they do
    not hold the model's weights already. Returns {agent id: models}, sorted."""
    by_id = {a.agent_id: a for a in agents}
    trial: dict[str, list[InstanceSpec]] = {a.agent_id: list(assignments.get(a.agent_id, ())) for a in agents}
    # A host running the model holds its weights; a staged host counts as warm from here on, so a second
    # extra instance goes beside the first rather than staging a third host.
    warm = {a.agent_id: set(a.warm_models) | {s.model for s in trial[a.agent_id]} for a in agents}
    staged: dict[str, set[str]] = {}
    for key, want in sorted(prepare.items(), key=lambda kv: str(kv[0])):
        dep = deployments.get(key.model)
        if dep is None:
            continue
        shape = dep.pool(key.role)
        have = sum(1 for agent_id, specs in trial.items() for s in specs
                   if s.model == key.model and s.role == key.role and by_id[agent_id].region == key.region)
        slots = [AgentSlot(a.agent_id, a.region, a.sku, a.gpus_total, frozenset(warm[a.agent_id])) for a in agents]
        for n in range(want - have):
            host = _best_host(key, shape, slots, trial)
            if host is None:
                break
            trial[host].append(InstanceSpec(f"prestage-{n}", key.model, shape.sku, shape.tp, key.role))
            if key.model not in warm[host]:
                warm[host].add(key.model)
                staged.setdefault(host, set()).add(key.model)
                slots = [AgentSlot(a.agent_id, a.region, a.sku, a.gpus_total, frozenset(warm[a.agent_id]))
                         for a in agents]
    return {agent_id: tuple(sorted(models)) for agent_id, models in sorted(staged.items())}


def _best_host(key: PoolKey, shape: RolePoolSpec, agents: list[AgentSlot],
               assignments: dict[str, list[InstanceSpec]]) -> str | None:
    best: tuple[bool, int, str] | None = None  # (cold, -free GPUs, agent id): the least is the best
    for agent in agents:
        if agent.region != key.region or agent.sku.lower() != shape.sku.lower():
            continue
        free = agent.gpus_total - sum(s.gpus for s in assignments[agent.agent_id])
        if free < shape.tp:
            continue
        rank = (key.model not in agent.warm_models, -free, agent.agent_id)
        if best is None or rank < best:
            best = rank
    return None if best is None else best[2]


def _seq(instance_id: str) -> int:
    tail = instance_id.rsplit("-", 1)[-1]
    return int(tail) if tail.isdigit() else -1


def next_seq_after(assignments: dict[str, tuple[InstanceSpec, ...]]) -> int:
    """The sequence number to use after every instance in `assignments` (for a restarted planner)."""
    return 1 + max((_seq(s.instance_id) for specs in assignments.values() for s in specs), default=0)

"""Place desired replica counts onto agents (hosts), keeping every instance that stays.

Scale-out puts a new instance on the agent of the right region and SKU with the most free GPUs (ties by
agent id, so the result is deterministic). Scale-in removes instances that are not yet serving first
(still loading), then the newest. Whatever cannot be placed is reported, not dropped silently: the VM
layer turns that shortfall into capacity.
"""

from __future__ import annotations

from dataclasses import dataclass

from opscale.model import InstanceSpec, InstanceState, PoolKey
from opscale.planning.base import DeploymentSpec


@dataclass(frozen=True, slots=True)
class AgentSlot:
    agent_id: str
    region: str
    sku: str
    gpus_total: int


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
            dep = deployments[key.model]
            for _ in range(want - have):
                host = _best_host(key, dep, agents, assignments)
                if host is None:
                    unplaced[key] = unplaced.get(key, 0) + 1
                    continue
                instance_id = f"{key.model}-{key.region}-{next_seq:05d}"
                next_seq += 1
                assignments[host].append(InstanceSpec(instance_id, key.model, dep.sku, dep.tp, key.role))
    frozen = {a: tuple(sorted(specs, key=lambda s: s.instance_id)) for a, specs in assignments.items()}
    return PlacementResult(frozen, next_seq, unplaced)


def _best_host(key: PoolKey, dep: DeploymentSpec, agents: list[AgentSlot],
               assignments: dict[str, list[InstanceSpec]]) -> str | None:
    best: tuple[int, str] | None = None
    for agent in agents:
        if agent.region != key.region or agent.sku.lower() != dep.sku.lower():
            continue
        free = agent.gpus_total - sum(s.gpus for s in assignments[agent.agent_id])
        if free >= dep.tp and (best is None or (-free, agent.agent_id) < (-best[0], best[1])):
            best = (free, agent.agent_id)
    return None if best is None else best[1]


def _seq(instance_id: str) -> int:
    tail = instance_id.rsplit("-", 1)[-1]
    return int(tail) if tail.isdigit() else -1


def next_seq_after(assignments: dict[str, tuple[InstanceSpec, ...]]) -> int:
    """The sequence number to use after every instance in `assignments` (for a restarted planner)."""
    return 1 + max((_seq(s.instance_id) for specs in assignments.values() for s in specs), default=0)

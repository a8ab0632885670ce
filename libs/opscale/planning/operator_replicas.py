"""Spreading a pool's elastic operator replicas over its base instances (OpScale's runtime shape).

An operator-level policy says, per pool, how many replicas of each operator stage the pool should run
on top of its base (monolithic) instances (`Effects.operator_replicas`). Placement first places the
base instances; this then attaches the replicas to them (`InstanceSpec.operator_replicas`), in the GPUs
each base instance's host has left over, so a host never holds more than it has:

- a replica stays on the base instance it is on (moving one costs a load), as far as the new total
  and an even spread allow: no base keeps more than its share (total / bases, rounded up for the bases
  that run the most), so a new base gets its share instead of joining bare beside bases that carry
  every replica (the router sends it as many requests); a stage whose shape changed (tp, SM share or
  batch cap) starts over;
- a new replica goes to the base instance with the fewest of that stage whose host has room for it;
- what no host has room for is reported unplaced.

Room on a host is its GPUs less its base instances' GPUs less the GPU-equivalents (replicas x tp x SM
share) of the replicas already attached there. Pure: no I/O, no clock.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, replace

from opscale.model import InstanceSpec, OperatorReplicas, PoolKey

_EPS = 1e-9


@dataclass(frozen=True, slots=True)
class AttachResult:
    assignments: dict[str, tuple[InstanceSpec, ...]]
    unplaced: dict[PoolKey, dict[str, int]]  # pool -> stage name -> replicas no host had room for


def attach_operator_replicas(assignments: dict[str, tuple[InstanceSpec, ...]],
                             wanted: dict[PoolKey, tuple[OperatorReplicas, ...]],
                             agents: Iterable[tuple[str, str, int]]) -> AttachResult:
    """`assignments` with each pool's `wanted` replicas attached (see the module docstring); `agents`
    are (agent id, region, GPUs). A pool not in `wanted` keeps no operator replicas."""
    hosts = {agent_id: (region, gpus) for agent_id, region, gpus in agents}
    room = {a: float(hosts[a][1] if a in hosts else 0) - sum(s.tp for s in specs) for a, specs in assignments.items()}
    attached: dict[str, list[OperatorReplicas]] = {}
    unplaced: dict[PoolKey, dict[str, int]] = {}
    for key in sorted(wanted, key=str):
        bases = sorted(((s.instance_id, a, s) for a, specs in assignments.items() for s in specs
                        if hosts.get(a, ("", 0))[0] == key.region and s.model == key.model and s.role == key.role),
                       key=lambda t: t[0])
        agent_of = {iid: agent_id for iid, agent_id, _ in bases}
        for stage in sorted(wanted[key], key=lambda r: r.name):
            unit = stage.gpu_equivalents / stage.replicas
            counts: dict[str, int] = {}
            left = stage.replicas
            had = {iid: next((r.replicas for r in spec.operator_replicas
                              if r.name == stage.name and replace(r, replicas=stage.replicas) == stage), 0)
                   for iid, _, spec in bases}
            fair = _even_spread(stage.replicas, [iid for iid, _, _ in bases], had)
            for iid, agent_id, _ in bases:  # keep what runs, as far as the total, the room and the spread allow
                keep = max(0, min(had[iid], left, fair[iid], int((room[agent_id] + _EPS) // unit)))
                counts[iid] = keep
                room[agent_id] -= keep * unit
                left -= keep
            while left > 0:
                fits = [iid for iid, _, _ in bases if room[agent_of[iid]] + _EPS >= unit]
                if not fits:
                    unplaced.setdefault(key, {})[stage.name] = left
                    break
                iid = min(fits, key=lambda i: (counts[i], i))
                counts[iid] += 1
                room[agent_of[iid]] -= unit
                left -= 1
            for iid, n in counts.items():
                if n > 0:
                    attached.setdefault(iid, []).append(replace(stage, replicas=n))
    new: dict[str, tuple[InstanceSpec, ...]] = {}
    for agent_id, specs in assignments.items():
        out = []
        for spec in specs:
            reps = tuple(sorted(attached.get(spec.instance_id, ()), key=lambda r: r.name))
            out.append(spec if spec.operator_replicas == reps else replace(spec, operator_replicas=reps))
        new[agent_id] = tuple(out)
    return AttachResult(new, unplaced)


def _even_spread(total: int, bases: list[str], had: dict[str, int]) -> dict[str, int]:
    """Each base's share of `total` replicas spread evenly (floor or ceil of total / bases); the larger
    shares go to the bases that run the most already, so the fewest replicas move."""
    if not bases:
        return {}
    each, more = divmod(total, len(bases))
    ranked = sorted(bases, key=lambda iid: (-had.get(iid, 0), iid))
    return {iid: each + (i < more) for i, iid in enumerate(ranked)}

"""Soft scale-in (HeteroScale, PAPERS.md §3.5): a scale-in first withdraws instances from discovery,
keeps them running and watches them for a window; wanted back within it, they serve again at once
(no load, no cold start), else they are stopped.

Where the fact lives: `Plan.withdrawn` (instance id -> when it was withdrawn). A withdrawn instance stays
in `Plan.assignments`, so its agent keeps it running; routers send it no new request (it is not in
`Plan.discoverable()`); the planner counts it apart (`PoolObservation.withdrawn`, not `ready`), so a
policy sees the capacity it asked for. This module turns one decision's desired counts into that
state, before placement, and placement itself never sees the difference:

- a pool asked for more than its discoverable instances restores withdrawn ones first (the most
  recently withdrawn first), and only then has new ones placed;
- a pool asked for fewer gives up its not-yet-ready instances outright (they serve nobody), then
  withdraws ready ones, the newest first (placement's own scale-in order), when the window is > 0;
- a withdrawn instance whose window has passed is unassigned: from then on it is an ordinary scale-in
  (drained, then stopped).

The desired counts handed on to placement include the withdrawn instances kept, so placement neither
removes them nor places their replacements. Pure: no I/O, no clock.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from opscale.model import InstanceSpec, InstanceState, PoolKey
from opscale.planning.placement import instance_seq


@dataclass(frozen=True, slots=True)
class SoftScaleIn:
    """What to hand to placement, and the new withdrawn set."""

    desired: dict[PoolKey, int]  # per pool: discoverable wanted plus withdrawn kept
    assignments: dict[str, tuple[InstanceSpec, ...]]  # the current ones less those whose window passed
    withdrawn: dict[str, float]  # instance id -> withdrawn at (s)
    restored: tuple[str, ...] = ()
    newly_withdrawn: tuple[str, ...] = ()
    expired: tuple[str, ...] = ()
    notes: dict[PoolKey, str] = field(default_factory=dict)


def soft_scale_in(desired: dict[PoolKey, int], current: dict[str, tuple[InstanceSpec, ...]],
                  agent_regions: dict[str, str], states: dict[str, InstanceState], withdrawn: dict[str, float],
                  window_s: float, now_s: float) -> SoftScaleIn:
    """Apply one decision's `desired` counts to the withdrawn set (see the module docstring).
    `withdrawn` is the plan's; `window_s` 0 withdraws nothing new and lets every withdrawn instance go."""
    assigned = {s.instance_id for specs in current.values() for s in specs}
    # An instance no longer assigned (its host went away) is no longer withdrawn either.
    kept = {iid: at for iid, at in withdrawn.items() if iid in assigned}
    expired = {iid for iid, at in kept.items() if window_s <= 0 or now_s - at >= window_s}
    restored: list[str] = []
    added: list[str] = []
    notes: dict[PoolKey, str] = {}
    adjusted = dict(desired)
    for key, want in sorted(desired.items(), key=lambda kv: str(kv[0])):
        members = [s for agent, specs in current.items() if agent_regions.get(agent) == key.region
                   for s in specs if s.model == key.model and s.role == key.role]
        # Most recently withdrawn first. One just past its window still runs: wanted back now, it is
        # restored rather than replaced by a new one.
        hidden = sorted((s.instance_id for s in members if s.instance_id in kept),
                        key=lambda iid: (kept[iid], instance_seq(iid)), reverse=True)
        active = [s for s in members if s.instance_id not in kept]
        if want > len(active) and hidden:
            back = hidden[: want - len(active)]
            restored.extend(back)
            hidden = hidden[len(back):]
            for iid in back:
                del kept[iid]
                expired.discard(iid)
            notes[key] = f"restored {len(back)} withdrawn instance(s) at once"
        elif want < len(active) and window_s > 0:
            not_ready = sum(1 for s in active if states.get(s.instance_id) != InstanceState.READY)
            ready = sorted((s.instance_id for s in active if states.get(s.instance_id) == InstanceState.READY),
                           key=instance_seq, reverse=True)
            go = ready[: max(0, len(active) - want - not_ready)]
            for iid in go:
                kept[iid] = now_s
            added.extend(go)
            hidden.extend(go)
            if go:
                notes[key] = f"withdrew {len(go)} instance(s) from discovery for {window_s:g} s"
        adjusted[key] = want + sum(1 for iid in hidden if iid not in expired)
    for iid in expired:
        kept.pop(iid, None)
    remaining = {agent: tuple(s for s in specs if s.instance_id not in expired) for agent, specs in current.items()}
    return SoftScaleIn(adjusted, remaining, kept, tuple(restored), tuple(added), tuple(sorted(expired)), notes)

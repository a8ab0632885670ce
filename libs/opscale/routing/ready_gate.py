"""HeteroScale's Ready-ratio gate (PAPERS.md §3.5): prefill and decode instances of a disaggregated
service become ready out of order (decode loads first, say, while prefill is still loading); while one
role's ready instances are over-represented against the P/D split the plan asks for, discovery of that
role's *newly* ready instances pauses, so the under-represented role is not flooded with the traffic
the extra instances would attract. Once the other role catches up the paused ones are released.

Where it runs: in the router, on its own candidate set, whenever that set changes (a heartbeat, a plan,
a failure). The router already learns readiness there, in the simulator as in the live stack, so the
gate acts the moment an instance turns ready instead of at the planner's next period. What drives it
comes from the plan: the target split is the plan's discoverable P and D counts of the service (the
split the planning policy asked for, after placement), and the tolerance is `Plan.ready_ratio_tolerance`
for the model (set by a policy that wants the gate, heteroscale; absent: no gate).

Rules, for ready counts p and d against the plan's P and D (both > 0):
- decode may have at most max(1, ceil(p x D/P x (1 + tolerance))) discoverable instances, prefill at
  most max(1, ceil(d x P/D x (1 + tolerance))); at the plan's own split both hold, so a converged
  service is never gated;
- only instances never yet admitted are held back (newest id last to be admitted): an instance that
  already serves is not hidden again when the other role loses one (that would cut capacity, not
  protect it).
"""

from __future__ import annotations

import math
from collections.abc import Collection, Sequence


def allowed(other_ready: int, own_planned: int, other_planned: int, tolerance: float) -> int:
    """How many ready instances of one role may be discoverable beside `other_ready` of the other role."""
    return max(1, math.ceil(other_ready * own_planned / other_planned * (1.0 + tolerance) - 1e-9))


def paused(prefill: Sequence[str], decode: Sequence[str], admitted: Collection[str], planned: tuple[int, int],
           tolerance: float) -> set[str]:
    """The ready instances (ids, in admission order) the gate holds back from discovery; see the module
    docstring. `planned` is the plan's (prefill, decode) count of the service."""
    planned_p, planned_d = planned
    if planned_p <= 0 or planned_d <= 0:
        return set()
    for own, other, own_planned, other_planned in ((decode, prefill, planned_d, planned_p),
                                                   (prefill, decode, planned_p, planned_d)):
        limit = allowed(len(other), own_planned, other_planned, tolerance)
        if len(own) > limit:  # this role is over-represented: hold back its newest not-yet-admitted ones
            serving = sum(1 for iid in own if iid in admitted)
            newcomers = [iid for iid in own if iid not in admitted]
            return set(newcomers[max(0, limit - serving):])
    return set()

"""Guards that compose around any scaling policy. Each is a small pure function.

A non-finite or negative target means "no decision": the current count stands.
"""

from __future__ import annotations

import math
from collections.abc import Iterable


def sanitize(target: float, current: int) -> int:
    """NaN, infinite or negative targets keep the current count; others round up."""
    if not math.isfinite(target) or target < 0:
        return current
    return math.ceil(target - 1e-9)


def clamp(target: int, lo: int, hi: int) -> int:
    return max(lo, min(hi, target))


def cold_start(target: int, expected: int, waiting: int) -> int:
    """Zero instances expected and requests waiting: scale to at least one now, whatever the delays."""
    if expected == 0 and waiting > 0:
        return max(1, target)
    return target


def stabilised_down(recommendations: Iterable[tuple[float, int]], now_s: float, window_s: float,
                    fallback: int) -> int:
    """Kubernetes-style scale-down stabilisation: the highest recommendation of the last `window_s`
    seconds, so a brief dip does not remove capacity that is needed again a minute later."""
    recent = [r for t, r in recommendations if now_s - t <= window_s]
    return max(recent) if recent else fallback


def survivors_absorb(demand_rps: float, capacity_rps: float, survivors: int, max_util: float) -> bool:
    """True when `survivors` instances carry the demand at no more than `max_util` each. Checking the
    survivors (N-1 carry N/(N-1) of the load) is what prevents 2 <-> 1 oscillation."""
    if survivors <= 0:
        return demand_rps <= 0
    return demand_rps <= survivors * capacity_rps * max_util


def limit_step_down(target: int, current: int, max_step: int) -> int:
    """Remove at most `max_step` instances in one decision."""
    return max(target, current - max_step)

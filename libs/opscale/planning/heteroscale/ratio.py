"""Splitting a number of instances into prefill and decode at a target P/D ratio, within role bounds.

The split depends on the total alone, never on the counts before it, so rounding cannot accumulate:
each role gets the nearest whole number to its exact share, and a disaggregated service with any
instances has at least one of each role. Each role is then within one instance of its exact share.

Example: at 1:3 (a prefill share of 1/4), 10 instances split 3P/7D (2.5 rounds half up to 3);
11 split 3P/8D; 1 becomes 1P/1D, because neither role serves alone. A required capacity becomes a total by
`covering_total`, so that neither role is rounded below its share of it.

Both counts grow with the total (by 0 or 1 each per added instance), which is what lets bounds be met by
moving the total: a total is raised until the split meets both minimums and lowered until it fits both
maximums. Only bounds that no total can satisfy at this ratio (say, at least 5 prefill but at most 4
decode at 1:3) are met by clamping each role, off the ratio as far as those bounds force and no further.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class RoleBounds:
    min_prefill: int = 0
    max_prefill: int = 1 << 20
    min_decode: int = 0
    max_decode: int = 1 << 20


def prefill_share(pd_ratio: float) -> float:
    """The share of a P/D group's instances that prefill: P / (P + D) at P = pd_ratio x D."""
    return pd_ratio / (1.0 + pd_ratio)


def split(total: int, pd_ratio: float) -> tuple[int, int]:
    """(prefill, decode) for `total` instances at the ratio; at least one of each when total > 0."""
    if total <= 0:
        return 0, 0
    total = max(total, 2)
    prefill = math.floor(total * prefill_share(pd_ratio) + 0.5)
    prefill = min(max(prefill, 1), total - 1)
    return prefill, total - prefill


def covering_total(required: float, pd_ratio: float) -> int:
    """The fewest instances whose split gives each role at least its share of `required` instances.

    Proportional control asks for `required` instances of the P/D group; rounding each role to the
    nearest count would leave one role short of its share (9 instances at 1:3 split 2P/7D, and the two
    prefill instances then carry 2.25 instances' worth of prompts). Both roles must cover their share,
    so the total grows until they do: 9 required at 1:3 gives 10 (3P/7D), still within one instance of
    the ratio. Never fewer than ceil(required)."""
    if not required > 0:
        return 0
    share = prefill_share(pd_ratio)
    need_prefill = math.ceil(required * share - 1e-9)
    need_decode = math.ceil(required * (1.0 - share) - 1e-9)
    total = max(math.ceil(required - 1e-9), need_prefill + need_decode - 1, 1)
    while True:
        prefill, decode = split(total, pd_ratio)
        if prefill >= need_prefill and decode >= need_decode:
            return total
        total += 1


def arrange(total: int, pd_ratio: float, bounds: RoleBounds) -> tuple[int, int]:
    """The split of the total nearest to `total` that meets the bounds at the ratio, clamped per role
    only where no total meets them."""
    lowest = _first_total(lambda n: _meets_minimums(split(n, pd_ratio), bounds),
                          bounds.min_prefill + bounds.min_decode)
    highest = _last_total_within_maximums(pd_ratio, bounds)
    # Bounds that conflict at this ratio (lowest > highest) leave the total at the highest that fits the
    # maximums; the clamp below then raises the short role to its minimum.
    total = min(max(total, lowest), highest) if lowest <= highest else highest
    prefill, decode = split(total, pd_ratio)
    return (min(max(prefill, bounds.min_prefill), bounds.max_prefill),
            min(max(decode, bounds.min_decode), bounds.max_decode))


def ratio_error(prefill: int, decode: int, pd_ratio: float) -> float:
    """How many prefill instances the pair is off its exact share of P + D (the decode error is the same
    amount the other way)."""
    return prefill - (prefill + decode) * prefill_share(pd_ratio)


def _meets_minimums(pair: tuple[int, int], bounds: RoleBounds) -> bool:
    return pair[0] >= bounds.min_prefill and pair[1] >= bounds.min_decode


def _first_total(ok: Callable[[int], bool], minimum_hint: int) -> int:
    """The smallest total for which the monotone predicate `ok` holds (it holds for every larger one)."""
    lo, hi = 0, max(2, minimum_hint)
    while not ok(hi):
        lo, hi = hi, hi * 2
    while lo < hi:
        mid = (lo + hi) // 2
        if ok(mid):
            hi = mid
        else:
            lo = mid + 1
    return lo


def _last_total_within_maximums(pd_ratio: float, bounds: RoleBounds) -> int:
    """The largest total whose split fits under both maximums (0 when none does: then clamping rules)."""
    def fits(n: int) -> bool:
        prefill, decode = split(n, pd_ratio)
        return prefill <= bounds.max_prefill and decode <= bounds.max_decode

    lo, hi = 0, bounds.max_prefill + bounds.max_decode
    while lo < hi:
        mid = (lo + hi + 1) // 2
        if fits(mid):
            lo = mid
        else:
            hi = mid - 1
    return lo

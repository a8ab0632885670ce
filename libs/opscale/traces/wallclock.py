"""Wall-clock timestamps ("2023-11-16 18:15:46.6805900", ISO 8601 with an optional zone) as exact
offsets from a reference, for traces whose arrivals are dates.

Seconds since the epoch need ~17 significant digits at 100 ns resolution, more than a float holds, so
a timestamp is kept as (whole seconds as an int, fraction as a float) and only the difference from the
first row becomes a float. Python's datetime parser also stops at microseconds; Azure writes 7 digits.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import date

_PATTERN = re.compile(
    r"\s*(\d{4})-(\d{2})-(\d{2})[ T](\d{2}):(\d{2}):(\d{2})(?:\.(\d{1,9}))?"
    r"\s*(Z|[+-]\d{2}(?::?\d{2})?)?\s*$")


@dataclass(frozen=True, slots=True)
class WallTime:
    whole_s: int  # seconds since 0001-01-01 in UTC (or in the writer's zone when none is given)
    fraction_s: float

    def seconds_since(self, origin: WallTime) -> float:
        return (self.whole_s - origin.whole_s) + (self.fraction_s - origin.fraction_s)


def parse_wall_time(raw: str) -> WallTime:
    """Parse `YYYY-MM-DD[ T]HH:MM:SS[.fraction][Z|±HH[:MM]]`; ValueError explains a bad value."""
    match = _PATTERN.match(raw)
    if match is None:
        raise ValueError(f"expected a date and time like 2023-11-16 18:15:46.6805900, got {raw!r}")
    year, month, day, hour, minute, second = (int(g) for g in match.groups()[:6])
    fraction, zone = match.group(7), match.group(8)
    try:
        days = date(year, month, day).toordinal()
    except ValueError as exc:
        raise ValueError(f"not a calendar date in {raw!r}: {exc}") from None
    if hour > 23 or minute > 59 or second > 60:
        raise ValueError(f"not a time of day in {raw!r}")
    whole_s = days * 86_400 + hour * 3600 + minute * 60 + second - _zone_offset_s(zone)
    return WallTime(whole_s, float(f"0.{fraction}") if fraction else 0.0)


def _zone_offset_s(zone: str | None) -> int:
    if not zone or zone == "Z":
        return 0
    sign = -1 if zone[0] == "-" else 1
    digits = zone[1:].replace(":", "")
    hours = int(digits[:2])
    minutes = int(digits[2:4]) if len(digits) > 2 else 0
    return sign * (hours * 3600 + minutes * 60)

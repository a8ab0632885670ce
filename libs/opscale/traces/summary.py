"""Streaming statistics of a trace: counts, span, mean and peak arrival rate, token percentiles.

Memory: one counter per distinct token count (exact percentiles; at most tens of thousands of
entries) and one arrival count per `bin_s` bin of the trace's span (a week at 60 s is 10,080 bins).

Example: arrivals at 0, 0.5 and 2.0 s with bin_s=1 give requests=3, duration_s=2.0,
mean_rate_rps=1.5 (3 / 2 s), peak_rate_rps=2.0 (two arrivals in [0, 1)), rate_rps=[2.0, 0.0, 1.0].
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Iterable
from dataclasses import asdict, dataclass, field
from typing import Any

from opscale.model import Request
from opscale.traces.reading import ReadStats

PERCENTILES = (50, 90, 99)


@dataclass(slots=True)
class TraceSummary:
    requests: int
    first_arrival_s: float | None
    last_arrival_s: float | None
    duration_s: float
    mean_rate_rps: float | None
    peak_rate_rps: float
    bin_s: float
    prompt_tokens: dict[str, float | None]
    output_tokens: dict[str, float | None]
    models: dict[str, int]
    tiers: dict[str, int]
    regions: dict[str, int]
    rate_rps: list[float] = field(repr=False)
    records: int | None = None
    invalid_records: int | None = None
    failed_records: int | None = None
    invalid_examples: list[str] = field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


def summarize(requests: Iterable[Request], *, bin_s: float = 60.0, stats: ReadStats | None = None) -> TraceSummary:
    """Read `requests` once and summarise them; `stats` (filled by the reader while reading) adds
    the record, invalid and failed counts."""
    if not (bin_s > 0 and math.isfinite(bin_s)):
        raise ValueError(f"bin_s must be a positive number of seconds, got {bin_s!r}")
    count = 0
    first_s: float | None = None
    last_s: float | None = None
    bins: list[int] = []
    prompts: Counter[int] = Counter()
    outputs: Counter[int] = Counter()
    models: Counter[str] = Counter()
    tiers: Counter[str] = Counter()
    regions: Counter[str] = Counter()
    for r in requests:
        if first_s is None:
            first_s = r.arrival_s
        last_s = r.arrival_s
        slot = int((r.arrival_s - first_s) // bin_s)
        if slot >= len(bins):
            bins.extend([0] * (slot + 1 - len(bins)))
        bins[slot] += 1
        prompts[r.prompt_tokens] += 1
        outputs[r.output_tokens] += 1
        models[r.model] += 1
        tiers[r.tier] += 1
        regions[r.region] += 1
        count += 1
    duration_s = (last_s - first_s) if first_s is not None and last_s is not None else 0.0
    return TraceSummary(
        requests=count, first_arrival_s=first_s, last_arrival_s=last_s, duration_s=duration_s,
        mean_rate_rps=count / duration_s if duration_s > 0 else None,
        peak_rate_rps=max(bins, default=0) / bin_s, bin_s=bin_s,
        prompt_tokens=_percentiles(prompts), output_tokens=_percentiles(outputs),
        models=dict(models.most_common()), tiers=dict(tiers.most_common()), regions=dict(regions.most_common()),
        rate_rps=[b / bin_s for b in bins],
        records=stats.records if stats else None, invalid_records=stats.invalid if stats else None,
        failed_records=stats.failed if stats else None,
        invalid_examples=list(stats.examples) if stats else [])


def _percentiles(counts: Counter[int]) -> dict[str, float | None]:
    keys = {f"p{q}": None for q in PERCENTILES} | {"mean": None}
    total = sum(counts.values())
    if not total:
        return keys  # type: ignore[return-value]
    result: dict[str, float | None] = {f"p{q}": weighted_percentile(counts, q, total) for q in PERCENTILES}
    result["mean"] = sum(v * c for v, c in counts.items()) / total
    return result


def weighted_percentile(counts: Counter[int], q: float, total: int | None = None) -> float:
    """The q-th percentile of the multiset `counts` (value -> occurrences), interpolating linearly
    between closest ranks like `opscale.stats.percentile`.

    Example: {1: 1, 2: 1, 3: 1, 4: 1} at 50 gives 2.5.
    """
    n = total if total is not None else sum(counts.values())
    rank = (n - 1) * min(100.0, max(0.0, q)) / 100.0
    lo_rank = math.floor(rank)
    frac = rank - lo_rank
    lo_value = hi_value = None
    seen = 0
    for value in sorted(counts):
        seen += counts[value]
        if lo_value is None and seen > lo_rank:
            lo_value = value
        if seen > lo_rank + 1 or (seen > lo_rank and lo_rank + 1 > n - 1):
            hi_value = value
            break
    assert lo_value is not None
    hi_value = lo_value if hi_value is None else hi_value
    return float(lo_value + (hi_value - lo_value) * frac)

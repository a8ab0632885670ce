"""The latency figures of a set of requests: TTFT, TBT and E2E percentiles under one set of key names.

Role: the one builder of the keys `ttft_p50_s` ... `e2e_p99_s`, shared by the simulator's result.json
(opscale.experiments.collector) and the load generator's report (opscale.reporting.latency_report), so
the two line up key for key and `opscale loadgen compare` reads both alike. What a latency is belongs to
`RequestOutcome` (`ttft_s`, `tbt_s`, `e2e_s`); this module only gathers those values and summarises them.
It must not judge SLOs or count requests: each caller has its own counts.

It is on the simulator's per-request path (the optional compiled build compiles it): the latencies are
kept as raw doubles, three per completed request, so a million-request run stays small.

Worked example: two completed requests with TTFT 0.5 s and 3.0 s, TBT 0.1 s both, E2E 1.4 s and 3.9 s
give ttft_p50_s 1.75, ttft_p90_s 2.75, ttft_p99_s 2.975, tbt_p50_s = tbt_p90_s = tbt_p99_s = 0.1,
e2e_p50_s 2.65, e2e_p90_s 3.65, e2e_p99_s 3.875 (linear interpolation between closest ranks); with no
request every figure is None.
"""

from __future__ import annotations

from array import array
from collections.abc import Sequence

from opscale.model.request import RequestOutcome
from opscale.stats import percentile_sorted

LATENCY_METRICS = ("ttft", "tbt", "e2e")
PERCENTILES = (50, 90, 99)
LATENCY_KEYS = tuple(f"{metric}_p{q}_s" for metric in LATENCY_METRICS for q in PERCENTILES)


class LatencySamples:
    """The TTFT, TBT and E2E (seconds) of completed requests, in the order they were added."""

    __slots__ = ("ttft", "tbt", "e2e")

    def __init__(self) -> None:
        self.ttft: array[float] = array("d")
        self.tbt: array[float] = array("d")
        self.e2e: array[float] = array("d")

    def add(self, outcome: RequestOutcome) -> None:
        """Each latency the request has (a one-token answer has no TBT; a request with no first token
        has no TTFT). The caller decides which requests count: completed ones."""
        ttft_s = outcome.ttft_s
        if ttft_s is not None:
            self.ttft.append(ttft_s)
        tbt_s = outcome.tbt_s
        if tbt_s is not None:
            self.tbt.append(tbt_s)
        e2e_s = outcome.e2e_s
        if e2e_s is not None:
            self.e2e.append(e2e_s)

    def of(self, metric: str) -> array[float]:
        """The samples of `metric` ("ttft", "tbt" or "e2e")."""
        if metric == "ttft":
            return self.ttft
        if metric == "tbt":
            return self.tbt
        if metric == "e2e":
            return self.e2e
        raise ValueError(f"latency metric must be one of {', '.join(LATENCY_METRICS)}, got {metric!r}")

    def figures(self) -> dict[str, float | None]:
        """The percentiles of these samples under `LATENCY_KEYS`."""
        return latency_figures((self,))


def latency_figures(parts: Sequence[LatencySamples]) -> dict[str, float | None]:
    """The percentiles (`PERCENTILES`) of TTFT, TBT and E2E over the requests of all `parts` together,
    keyed `ttft_p50_s`, `ttft_p90_s`, ... `e2e_p99_s` (`LATENCY_KEYS`, in that order); None where no
    request has the latency."""
    out: dict[str, float | None] = {}
    for metric in LATENCY_METRICS:
        ordered: list[float] = []
        for part in parts:
            ordered += sorted(part.of(metric))
        if len(parts) > 1:
            ordered.sort()  # one sorted run per part: Timsort merges them rather than sorting afresh
        for q in PERCENTILES:
            out[f"{metric}_p{q}_s"] = percentile_sorted(ordered, q)
    return out

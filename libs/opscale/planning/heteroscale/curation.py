"""HeteroScale's workload-centric curation (Algorithm 1, PAPERS.md §3.5), the arithmetic of it: given a
way to stress-test a service at a constant load (`Probe`), find the highest load that meets its latency
objectives, at each candidate P/D split of an instance budget, and from those the best P/D ratio and the
per-instance TPS targets the `heteroscale` policy scales on.

Pure: a probe is any function from an arrival rate to a measured `LoadPoint`; the simulator-driven
probe lives in opscale.experiments (stress.py), a live load test could be another. No I/O, no clock.

Units follow the controller (opscale.planning.heteroscale.config): capacity is counted in instances of
the P/D group, both roles alike, so `decode_tps_per_instance` is the group's decode TPS at the target
load divided by its prefill + decode instances (PAPERS.md §5: the target is ~80% of the highest TPS
meeting the objectives, `target_from_stress_test`).

Example: at 2P/6D the highest SLO-meeting load gives 12,000 decode tokens/s; the target is
0.8 x 12,000 / 8 = 1,200 decode TPS per instance, and pd_ratio 2/6 = 1:3.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from fractions import Fraction
from typing import Any, Literal

from opscale.planning.heteroscale.config import STRESS_TEST_TARGET_FRACTION, target_from_stress_test

Objective = Literal["per_gpu", "per_dollar"]


@dataclass(frozen=True, slots=True)
class LoadPoint:
    """What one constant-load stress run measured. TPS figures are whole-group rates (tokens/s over the
    measured window); latencies are p99 over the requests that arrived in it; `meets` says whether every
    objective held and nothing was dropped."""

    rate_rps: float
    decode_tps: float
    prefill_tps: float
    prefill_missed_tps: float
    ttft_p99_s: float | None
    tbt_p99_s: float | None
    completed: int
    dropped: int
    meets: bool


Probe = Callable[[float], LoadPoint]


@dataclass(frozen=True, slots=True)
class Bisection:
    """The highest rate found meeting the objectives (`best`, None when even the lowest probed failed),
    and every probe made, in order."""

    best: LoadPoint | None
    probes: tuple[LoadPoint, ...]


def max_rate_meeting(probe: Probe, start_rps: float, *, rel_tol: float = 0.03, max_probes: int = 24,
                     min_rps: float = 1e-3) -> Bisection:
    """Bracket the highest rate at which `probe` meets its objectives, then bisect to `rel_tol`.

    From `start_rps`, the rate doubles while it meets (or halves while it fails) until a met rate and a
    failed one bracket the edge; the bracket is then halved until hi / lo - 1 <= rel_tol. Stress results
    are noisy, so this finds *an* edge, the one nearest the start; a seeded probe makes it repeatable.
    """
    if not start_rps > 0:
        raise ValueError(f"start_rps: must be > 0, got {start_rps}")
    if not 0 < rel_tol < 1:
        raise ValueError(f"rel_tol: must be in (0, 1), got {rel_tol}")
    probes: list[LoadPoint] = []

    def run(rate: float) -> LoadPoint:
        point = probe(rate)
        probes.append(point)
        return point

    first = run(start_rps)
    best: LoadPoint | None = first if first.meets else None
    lo, hi = (start_rps, None) if first.meets else (None, start_rps)
    while (lo is None or hi is None) and len(probes) < max_probes:
        rate = lo * 2 if lo is not None else hi / 2  # type: ignore[operator]
        if rate < min_rps:
            return Bisection(None, tuple(probes))
        point = run(rate)
        if point.meets:
            lo, best = rate, point
        else:
            hi = rate
    while lo is not None and hi is not None and hi / lo - 1 > rel_tol and len(probes) < max_probes:
        mid = (lo + hi) / 2
        point = run(mid)
        if point.meets:
            lo, best = mid, point
        else:
            hi = mid
    return Bisection(best, tuple(probes))


@dataclass(frozen=True, slots=True)
class Split:
    """One candidate P/D split: instance counts and what the group costs (GPUs, $/h)."""

    prefill: int
    decode: int
    gpus: int
    usd_per_h: float

    @property
    def ratio(self) -> float:
        return self.prefill / self.decode

    @property
    def label(self) -> str:
        return ratio_label(self.prefill, self.decode)


def ratio_label(prefill: int, decode: int) -> str:
    """'P:D' in lowest terms: 2 prefill and 6 decode instances are '1:3'."""
    f = Fraction(prefill, decode)
    return f"{f.numerator}:{f.denominator}"


def budget_splits(instances: int) -> list[tuple[int, int]]:
    """Every split of an instance budget into at least one prefill and one decode instance."""
    if instances < 2:
        raise ValueError(f"instances: a P/D group needs at least 2, got {instances}")
    return [(p, instances - p) for p in range(1, instances)]


@dataclass(frozen=True, slots=True)
class SplitResult:
    split: Split
    bisection: Bisection

    @property
    def best(self) -> LoadPoint | None:
        return self.bisection.best

    def decode_tps_per(self, objective: Objective) -> float:
        """The highest SLO-meeting decode TPS per GPU or per $/h; 0 when no load met the objectives."""
        best = self.best
        if best is None:
            return 0.0
        return best.decode_tps / (self.split.gpus if objective == "per_gpu" else self.split.usd_per_h)


def best_split(results: Sequence[SplitResult], objective: Objective = "per_gpu") -> SplitResult:
    """The split with the most SLO-meeting decode TPS per GPU (or per $/h); ties go to the first."""
    if not results:
        raise ValueError("results: no split was stress-tested")
    chosen = max(results, key=lambda r: r.decode_tps_per(objective))
    if chosen.best is None:
        raise ValueError("no split met the latency objectives at any load probed; check the objectives and the "
                         "service's SKUs")
    return chosen


@dataclass(frozen=True, slots=True)
class CuratedService:
    """Algorithm 1's result for one service: the chosen P/D ratio and per-instance targets (the
    `heteroscale` policy's parameters), and the measured table behind them."""

    model: str
    objective: Objective
    target_fraction: float
    chosen: SplitResult
    table: tuple[SplitResult, ...] = field(default=())

    @property
    def pd_ratio(self) -> float:
        return self.chosen.split.ratio

    def _per_instance(self, tps: float) -> float:
        return target_from_stress_test(tps, self.target_fraction) / (self.chosen.split.prefill
                                                                      + self.chosen.split.decode)

    @property
    def decode_tps_per_instance(self) -> float:
        assert self.chosen.best is not None  # best_split refuses a split that never met the objectives
        return self._per_instance(self.chosen.best.decode_tps)

    @property
    def prefill_missed_tps_per_instance(self) -> float:
        assert self.chosen.best is not None
        return self._per_instance(self.chosen.best.prefill_missed_tps)

    def params(self) -> dict[str, Any]:
        """The policy's parameters for this service: what `heteroscale`'s per-service config takes."""
        return {"decode_tps_per_instance": round(self.decode_tps_per_instance, 3),
                "prefill_missed_tps_per_instance": round(self.prefill_missed_tps_per_instance, 3),
                "pd_ratio": self.chosen.split.label}

    def measured(self) -> list[dict[str, Any]]:
        """The table behind the choice, one row per split, plain data."""
        rows = []
        for r in self.table:
            best = r.best
            rows.append({"ratio": r.split.label, "prefill": r.split.prefill, "decode": r.split.decode,
                         "gpus": r.split.gpus, "usd_per_h": r.split.usd_per_h,
                         "max_rate_rps": best.rate_rps if best else 0.0,
                         "decode_tps": best.decode_tps if best else 0.0,
                         "decode_tps_per_gpu": r.decode_tps_per("per_gpu"),
                         "decode_tps_per_usd_h": r.decode_tps_per("per_dollar"),
                         "decode_tps_per_decode_instance": best.decode_tps / r.split.decode if best else 0.0,
                         "at_max": asdict(best) if best else None, "probes": len(r.bisection.probes)})
        return rows


def curate(model: str, results: Sequence[SplitResult], objective: Objective = "per_gpu",
           target_fraction: float = STRESS_TEST_TARGET_FRACTION) -> CuratedService:
    """Choose the best split of `results` and derive the service's targets from it."""
    return CuratedService(model, objective, target_fraction, best_split(results, objective), tuple(results))

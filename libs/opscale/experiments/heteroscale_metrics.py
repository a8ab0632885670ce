"""The heteroscale-metrics study (PAPERS.md §3.4): which signal can a disaggregated service be scaled on?

A fixed fleet (P prefill + D decode instances) serves one workload mix under a load ramp (and steps); every
`window_s` each candidate signal is read as the planner would see it: the engines' own reports over the
window (what heartbeats carry), summed (rates, queues) or averaged (utilisation, KV use) per role, and
TTFT/TBT p99 over the requests finished in the window. Each series is scored against the offered load
(signal_stats): SNR, R² of a linear fit, elasticity (log-log slope: 1 means proportional), cross-correlation
lag and step response; a signal that is linear, proportional and well above its noise "works".

GPU utilisation here is nvidia-smi's: the fraction of the window the engine spent in iterations
(`busy_frac`); a decode engine iterates whenever any sequence decodes, whatever the batch, so it reads
near 1 from light load on. That, not any tuning of this study, is what makes it fail.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from opscale.engine import SimEngine
from opscale.experiments import signal_stats as st
from opscale.experiments.heteroscale_study_config import MetricsStudyConfig
from opscale.experiments.stress import constant_probe, run_fleet
from opscale.experiments.stress_traffic import LOAD_START_S, RateSchedule, schedule_requests
from opscale.model import RequestOutcome, Role
from opscale.planning.heteroscale.curation import max_rate_meeting
from opscale.stats import percentile_sorted

# (name, what it is) in report order
SIGNALS: tuple[tuple[str, str], ...] = (
    ("decode_tps", "decode tokens/s, decode pool (sum)"),
    ("prefill_tps", "prompt tokens/s prefilled, prefix hits included (sum)"),
    ("prefill_missed_tps", "prompt tokens/s computed: prefix-cache misses (sum)"),
    ("decode_gpu_util", "decode GPU utilisation, time busy (mean)"),
    ("prefill_gpu_util", "prefill GPU utilisation, time busy (mean)"),
    ("decode_sm_activity", "decode SM activity, FLOPs over peak (mean)"),
    ("prefill_sm_activity", "prefill SM activity, FLOPs over peak (mean)"),
    ("decode_kv_usage", "decode KV-cache use (mean)"),
    ("ttft_p99_s", "TTFT p99 of requests finished in the window"),
    ("tbt_p99_s", "TBT p99 of requests finished in the window"),
    ("queue_length", "requests queued in the engines (sum)"),
)


@dataclass(slots=True)
class SignalSeries:
    """Per window (stamped at its end, seconds from the start of the load): offered load and each signal."""

    t_s: list[float] = field(default_factory=list)
    load_rps: list[float] = field(default_factory=list)
    signals: dict[str, list[float]] = field(default_factory=lambda: {name: [] for name, _ in SIGNALS})


def window_sampler(series: SignalSeries, schedule: RateSchedule, window_s: float
                   ) -> Callable[[float, dict[str, SimEngine], list[RequestOutcome]], None]:
    """The run_fleet callback that appends one window of every signal to `series`."""
    seen = [0]  # outcomes already windowed

    def sample(now_s: float, engines: dict[str, SimEngine], outcomes: list[RequestOutcome]) -> None:
        t = now_s - LOAD_START_S
        series.t_s.append(t)
        series.load_rps.append(schedule.mean_rate(t - window_s, t))
        reports = {role: [e.report(now_s) for e in engines.values() if e.role is role]
                   for role in (Role.PREFILL, Role.DECODE)}
        pre, dec = reports[Role.PREFILL], reports[Role.DECODE]
        finished = outcomes[seen[0]:]
        seen[0] = len(outcomes)
        ttft = sorted(o.ttft_s for o in finished if o.status == "ok" and o.ttft_s is not None)
        tbt = sorted(x for o in finished if o.status == "ok" and (x := o.tbt_s) is not None)
        values = {
            "decode_tps": sum(r.decode_tps for r in dec),
            "prefill_tps": sum(r.prefill_tps for r in pre),
            "prefill_missed_tps": sum(r.prefill_missed_tps for r in pre),
            "decode_gpu_util": _mean([r.busy_frac for r in dec]),
            "prefill_gpu_util": _mean([r.busy_frac for r in pre]),
            "decode_sm_activity": _mean([r.sm_activity for r in dec]),
            "prefill_sm_activity": _mean([r.sm_activity for r in pre]),
            "decode_kv_usage": _mean([r.kv_used_frac for r in dec]),
            "ttft_p99_s": _nan_none(percentile_sorted(ttft, 99.0)),
            "tbt_p99_s": _nan_none(percentile_sorted(tbt, 99.0)),
            "queue_length": float(sum(r.queued for r in pre + dec)),
        }
        for name, value in values.items():
            series.signals[name].append(value)

    return sample


def _mean(values: list[float]) -> float:
    return sum(values) / len(values) if values else math.nan


def _nan_none(value: float | None) -> float:
    return math.nan if value is None else value


def score(series: SignalSeries, config: MetricsStudyConfig) -> list[dict[str, Any]]:
    """Each signal's figures and verdict (one dict per signal, SIGNALS order)."""
    load = np.asarray(series.load_rps)
    t = np.asarray(series.t_s)
    th = config.thresholds
    rows = []
    for name, what in SIGNALS:
        y = np.asarray(series.signals[name], dtype=float)
        ok = np.isfinite(y)
        x, yy = load[ok], y[ok]
        fit = st.linear_fit(x, yy) if len(x) >= 2 and np.ptp(x) > 0 else None
        elastic = st.elasticity(x, yy)
        snr = st.snr(x, yy)
        lag = st.xcorr_lag(load[ok], yy, config.max_lag_windows)
        steps = {f"{s:g}": st.step_response(t[ok], yy, s, config.load.settle_s) for s in config.load.steps_s}
        light, peak = st.load_levels(x, yy) or (None, None)
        reasons = []
        if fit is None or fit.r2 < th.min_r2:
            reasons.append(f"not linear in load (R² {fit.r2:.2f} < {th.min_r2:g})" if fit else "no fit")
        if elastic is None or not th.elasticity[0] <= elastic <= th.elasticity[1]:
            reasons.append("not proportional to load (elasticity "
                           f"{'n/a' if elastic is None else f'{elastic:.2f}'} outside {th.elasticity[0]:g}-"
                           f"{th.elasticity[1]:g})")
        if not snr >= th.min_snr:
            reasons.append(f"swing too small for its noise (SNR {snr:.1f} < {th.min_snr:g})")
        rows.append({
            "name": name, "what": what,
            "result": {
                "snr": snr, "r2": fit.r2 if fit else None, "elasticity": elastic,
                # a signal that does not move with the load has no lag to speak of
                "lag_s": lag * config.window_s if lag is not None and snr > 0 else None,
                "step_response_s": steps,
                "light_load_level": light, "peak_level": peak,
                "light_over_peak": light / peak if peak else None,
                "noise_std": st.noise_std(yy), "windows": int(ok.sum()),
                "verdict": "works" if not reasons else "fails", "reasons": reasons,
                "paper": config.paper.get(name),
            },
        })
    return rows


@dataclass(slots=True)
class MetricsOutcome:
    config: MetricsStudyConfig
    series: SignalSeries
    rows: list[dict[str, Any]]
    peak_rps: float
    peak_source: str
    lengths: str
    requests: int
    wall_s: float


def run_metrics_study(config: MetricsStudyConfig, data_dir: Path | None = None,
                      log: Callable[[str], None] | None = None) -> MetricsOutcome:
    started = time.perf_counter()
    say = log or (lambda _: None)
    service = config.service.service()
    sampler = config.mix.sampler(data_dir if data_dir is not None else config.data_dir)
    p, d = config.prefill_instances, config.decode_instances
    if config.load.peak_rps is not None:
        peak, peak_source = config.load.peak_rps, "config"
    else:
        say(f"finding the {p}P/{d}D fleet's highest SLO-meeting rate ({sampler.source})")
        edge = max_rate_meeting(constant_probe(service, sampler, p, d, config.probe.settings(config.seed)), 2.0,
                                rel_tol=config.probe.rel_tol).best
        if edge is None:
            raise ValueError(f"service: the {p}P/{d}D fleet meets the tier's objectives at no rate probed")
        peak, peak_source = edge.rate_rps, "stress test (highest rate meeting TTFT and TBT p99)"
    schedule = RateSchedule(points=tuple((t, f * peak) for t, f in config.load.points))
    say(f"ramp to {peak:.2f} req/s over {schedule.duration_s:g} s")
    series = SignalSeries()
    run = run_fleet(service, p, d, schedule_requests(schedule, sampler, service.model, service.tier.name, config.seed),
                    LOAD_START_S + schedule.duration_s, seed=config.seed, window_s=config.window_s,
                    on_window=window_sampler(series, schedule, config.window_s), report_window_s=config.window_s)
    return MetricsOutcome(config, series, score(series, config), peak, peak_source, sampler.source,
                          len(run.outcomes), time.perf_counter() - started)

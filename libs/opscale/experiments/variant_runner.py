"""Run an experiment's variants, each in its own process, and collect what the reports need.

`run_variant` is a top-level function taking and returning plain picklable values, so it runs the same in
this process (parallel=1) and in a spawned worker. A variant that fails (a bad policy name, a crash, a
dead worker) becomes an outcome carrying its error; the others still complete. Processes live here, in
the experiment layer: each run inside is the ordinary single-threaded, deterministic simulation.

Each variant writes <out>/<variant>/result.json (run_scenario's result plus `variant` and `ttft_cdf`)
and its load_vs_capacity.png; the experiment-wide table and plots are written from the outcomes.
"""

from __future__ import annotations

import multiprocessing
import traceback
from collections.abc import Callable
from concurrent.futures import Future, ProcessPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from opscale.experiments.comparison import ExperimentConfig, Variant, variant_scenario
from opscale.experiments.scenario import Scenario
from opscale.model import Role

# Percentiles at which each tier's TTFT distribution is kept for the CDF plot: fine in the tail, where
# policies differ. 0 and 100 are the minimum and maximum.
CDF_PERCENTILES: tuple[float, ...] = (*range(0, 90, 2), *(90 + i * 0.5 for i in range(18)), 99.2, 99.4, 99.6,
                                      99.8, 99.9, 100.0)

ProgressFn = Callable[[str, float, float], None]  # (variant, simulated now, simulated end)


@dataclass(slots=True)
class Timeline:
    """What the experiment plots need from a run, per sample: demand and ready GPUs per region, and
    ready GPUs per SKU."""

    at_s: list[float] = field(default_factory=list)
    demand_gpus: dict[str, list[float]] = field(default_factory=dict)  # region -> GPUs the arrivals need
    ready_gpus: dict[str, list[float]] = field(default_factory=dict)  # region -> GPUs of ready instances
    gpus_by_sku: dict[str, list[float]] = field(default_factory=dict)  # SKU -> GPUs of ready instances


@dataclass(slots=True)
class VariantOutcome:
    name: str
    policy: str
    result: dict[str, Any] | None = None
    error: str | None = None
    timeline: Timeline | None = None

    @property
    def ok(self) -> bool:
        return self.error is None


@dataclass(frozen=True, slots=True)
class VariantJob:
    """Everything a worker needs, as plain data."""

    variant: dict[str, Any]
    base: dict[str, Any]
    hours: float | None
    out_dir: str


def run_experiment(config: ExperimentConfig, base: Scenario, out: Path, *, parallel: int | None = None,
                   hours: float | None = None, progress: ProgressFn | None = None) -> list[VariantOutcome]:
    """Run every variant (in `parallel` processes; 1: in this process), in the config's order."""
    workers = min(parallel or config.workers(), len(config.variants))
    jobs = [VariantJob(v.model_dump(), base.model_dump(mode="json"), hours, str(out / v.name))
            for v in config.variants]
    if workers <= 1:
        return [run_variant(job, progress) for job in jobs]
    context = multiprocessing.get_context("spawn")
    with context.Manager() as manager:
        queue = manager.Queue()
        with ProcessPoolExecutor(max_workers=workers, mp_context=context) as pool:
            futures = [pool.submit(run_variant_reporting, job, queue) for job in jobs]
            _relay_progress(futures, queue, progress)
            return [_outcome_of(future, job) for future, job in zip(futures, jobs, strict=True)]


def run_variant_reporting(job: VariantJob, queue: Any) -> VariantOutcome:
    """`run_variant` in a worker, reporting progress through a manager queue."""
    return run_variant(job, lambda name, now_s, end_s: queue.put((name, now_s, end_s)))


def run_variant(job: VariantJob, progress: ProgressFn | None = None) -> VariantOutcome:
    """Build the variant's scenario, run it, write its result.json and plot; any failure is the outcome's
    error (the exception's type and message; the traceback's last frame for crashes)."""
    from opscale.experiments.runner import run_scenario

    variant = Variant.model_validate(job.variant)
    try:
        scenario = variant_scenario(Scenario.model_validate(job.base), variant, job.hours)
        report = (lambda now_s, end_s: progress(variant.name, now_s, end_s)) if progress else None
        run = run_scenario(scenario, report)
        result = {**run.result, "variant": variant.name, "ttft_cdf": _ttft_cdf(run)}
        run.result = result
        _write_variant(run, Path(job.out_dir))
        return VariantOutcome(variant.name, variant.policy, result, None, _timeline(run))
    except ValueError as exc:  # bad input: a policy or field the message names
        return VariantOutcome(variant.name, variant.policy, error=str(exc))
    except Exception as exc:  # a crash: keep the others running, and say where it happened
        where = traceback.extract_tb(exc.__traceback__)[-1]
        return VariantOutcome(variant.name, variant.policy,
                              error=f"{type(exc).__name__}: {exc} (at {Path(where.filename).name}:{where.lineno})")


def _relay_progress(futures: list[Future[VariantOutcome]], queue: Any, progress: ProgressFn | None) -> None:
    import queue as queue_module

    while not all(f.done() for f in futures):
        try:
            name, now_s, end_s = queue.get(timeout=0.2)
        except queue_module.Empty:
            continue
        if progress is not None:
            progress(name, now_s, end_s)


def _outcome_of(future: Future[VariantOutcome], job: VariantJob) -> VariantOutcome:
    try:
        return future.result()
    except Exception as exc:  # the worker died (killed, out of memory): the variant failed, not the experiment
        return VariantOutcome(job.variant["name"], job.variant["policy"],
                              error=f"worker process failed: {type(exc).__name__}: {exc}")


def _ttft_cdf(run: Any) -> dict[str, list[list[float]]]:
    """Per tier, [percentile, TTFT s] pairs at CDF_PERCENTILES: a compact, exact sample of the distribution."""
    from opscale.stats import percentile_sorted

    cdf: dict[str, list[list[float]]] = {}
    for tier in run.result["tiers"]:
        ttft = run.collector.latencies(tier, "ttft")
        if ttft:
            cdf[tier] = [[p, percentile_sorted(ttft, p)] for p in CDF_PERCENTILES]
    return cdf


def _write_variant(run: Any, out: Path) -> None:
    from opscale.experiments.report import write_outputs

    write_outputs(run, out)


def _timeline(run: Any) -> Timeline:
    """Demand and ready capacity in GPUs, per region and per SKU, at each sample of the run. Demand is the
    arrivals over the sample interval divided by what one instance sustains at the deployment's typical
    lengths (the planner's capacity model), times its GPUs: the GPUs the traffic needs."""
    scenario: Scenario = run.scenario
    per_instance = _instance_rps(scenario)
    deployments = {d.model: d for d in scenario.deployments}
    timeline = Timeline()
    regions = scenario.regions()
    skus = sorted({sku for d in scenario.deployments for sku in d.skus()})
    for series in (timeline.demand_gpus, timeline.ready_gpus):
        series.update({r: [] for r in regions})
    timeline.gpus_by_sku.update({s: [] for s in skus})
    for point in run.collector.timeline:
        timeline.at_s.append(point.at_s)
        demand = dict.fromkeys(regions, 0.0)
        ready = dict.fromkeys(regions, 0.0)
        by_sku = dict.fromkeys(skus, 0.0)
        for pool, arrivals in point.arrivals_per_min.items():
            model, region = pool.split("/", 1)
            dep = deployments.get(model)
            if dep is not None and region in demand:  # a disaggregated deployment needs both its pools
                demand[region] += sum(arrivals / scenario.sample_interval_s / per_instance[(model, role)]
                                      * dep.pool(role).tp for role in dep.roles())
        for pool, count in point.instances.items():
            model, region, *role = pool.split("/")  # "model/region", or "model/region/role" (disaggregated)
            dep = deployments.get(model)
            if dep is not None and region in ready:
                shape = dep.pool(Role(role[0]) if role else Role.UNIFIED)
                ready[region] += count * shape.tp
                by_sku[shape.sku] += count * shape.tp
        for region in regions:
            timeline.demand_gpus[region].append(demand[region])
            timeline.ready_gpus[region].append(ready[region])
        for sku in skus:
            timeline.gpus_by_sku[sku].append(by_sku[sku])
    return timeline


def _instance_rps(scenario: Scenario) -> dict[tuple[str, Role], float]:
    from opscale.perf import LatencyModels, default_catalog, load_profiles
    from opscale.planning import capacity_estimator

    profiles = load_profiles(scenario.profiles_dir) if scenario.profiles_dir is not None else None
    capacity = capacity_estimator(scenario.tier_specs(), default_catalog(), LatencyModels(profiles), scenario.engine)
    rates = {}
    for d in scenario.deployments:
        for role in d.roles():
            shape = d.pool(role)
            rates[(d.model, role)] = capacity(d.model, shape.sku, shape.tp, d.typical_prompt_tokens,
                                              d.typical_output_tokens, role)
    return rates

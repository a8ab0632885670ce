"""Run an experiment's variants, each over one or more seeds, and collect what the reports need.

`run_variant` is a top-level function taking and returning plain picklable values, so it runs the same in
this process, in a spawned worker and in a Ray task (executors.py chooses where). A variant that fails
(a bad policy name, a crash, a dead worker) becomes an outcome carrying its error; the others still
complete. Each task returns its files (result.json, load_vs_capacity.png) as bytes and this process
writes them, so the outputs are assembled the same way whatever ran the tasks.

With one seed each variant writes <out>/<variant>/result.json (run_scenario's result plus `variant` and
`ttft_cdf`) and its load_vs_capacity.png. With `seeds` N > 1, seed k (0 <= k < N) runs the base scenario
with every seed in it (the scenario's, and its workload's or shaped workload's) plus k, so seed 0 is the
base itself; each run writes <out>/<variant>/seed-<its scenario seed>/. The experiment-wide table and
plots are written from the outcomes.
"""

from __future__ import annotations

import traceback
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from opscale.experiments.comparison import ExperimentConfig, ExperimentError, Variant, variant_scenario
from opscale.experiments.executors import DEFAULT_EXECUTOR, ExecutorOptions, ProgressFn, make_executor
from opscale.experiments.scenario import Scenario
from opscale.model import Role

# Percentiles at which each tier's TTFT distribution is kept for the CDF plot: fine in the tail, where
# policies differ. 0 and 100 are the minimum and maximum.
CDF_PERCENTILES: tuple[float, ...] = (*range(0, 90, 2), *(90 + i * 0.5 for i in range(18)), 99.2, 99.4, 99.6,
                                      99.8, 99.9, 100.0)

# A task's progress (ProgressFn) is reported under its label: the variant's name, or "variant seed-S".


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
    """One variant's run (one seed), or a variant over its seeds: then `result`, `timeline` and `seed` are
    the base seed's (the run a one-seed experiment makes), `seeds` holds every seed's run, and `error` is
    the first seed's failure (the variant failed if any seed did)."""

    name: str
    policy: str
    result: dict[str, Any] | None = None
    error: str | None = None
    timeline: Timeline | None = None
    seed: int | None = None
    label: str = ""  # the task's name in progress reports
    files: dict[str, bytes] = field(default_factory=dict)  # written by the caller, then dropped
    seeds: list[VariantOutcome] = field(default_factory=list)

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
    seed_offset: int = 0
    label: str = ""


def run_seeds(base: Scenario, seeds: int) -> list[int]:
    """The scenario seeds an experiment over `seeds` seeds runs: the base's, then one more each."""
    return [base.seed + k for k in range(seeds)]


def plan_jobs(config: ExperimentConfig, base: Scenario, out: Path, *, hours: float | None = None,
              seeds: int = 1) -> list[VariantJob]:
    """One job per variant and seed, variants in the config's order, each variant's seeds together."""
    if seeds < 1:
        raise ExperimentError(f"--seeds must be at least 1, got {seeds}")
    dumped = base.model_dump(mode="json")
    jobs = []
    for variant in config.variants:
        for offset, seed in enumerate(run_seeds(base, seeds)):
            folder, label = ((out / variant.name, variant.name) if seeds == 1
                             else (out / variant.name / f"seed-{seed}", f"{variant.name} seed-{seed}"))
            jobs.append(VariantJob(variant.model_dump(), dumped, hours, str(folder), offset, label))
    return jobs


def task_labels(config: ExperimentConfig, base: Scenario, seeds: int = 1) -> list[str]:
    """The names under which the tasks report progress: the variants', or "variant seed-S" per seed."""
    return [job.label for job in plan_jobs(config, base, Path(), seeds=seeds)]


def run_experiment(config: ExperimentConfig, base: Scenario, out: Path, *, parallel: int | None = None,
                   hours: float | None = None, progress: ProgressFn | None = None,
                   executor: str = DEFAULT_EXECUTOR, address: str | None = None,
                   seeds: int = 1) -> list[VariantOutcome]:
    """Run every variant over `seeds` seeds on `executor` (pool: `parallel` processes, 1: this process;
    serial: this process; ray: a local Ray, or the cluster at `address`); one outcome per variant, in the
    config's order."""
    jobs = plan_jobs(config, base, out, hours=hours, seeds=seeds)
    runner = make_executor(executor, ExecutorOptions(workers=min(parallel or config.workers(), len(jobs)),
                                                     address=address))
    runs: list[VariantOutcome] = runner.map(run_variant, jobs, progress, _lost)
    from opscale.experiments.report import write_files

    for job, run in zip(jobs, runs, strict=True):
        if run.files:
            write_files(run.files, Path(job.out_dir))
            run.files = {}
    if seeds == 1:
        return runs
    return [_over_seeds(runs[i:i + seeds]) for i in range(0, len(runs), seeds)]


def run_variant(job: VariantJob, progress: ProgressFn | None = None) -> VariantOutcome:
    """Build the variant's scenario, run it, render its result.json and plot; any failure is the outcome's
    error (the exception's type and message; the traceback's last frame for crashes)."""
    from opscale.experiments.report import render_outputs
    from opscale.experiments.runner import run_scenario

    variant = Variant.model_validate(job.variant)
    label = job.label or variant.name
    failed = VariantOutcome(variant.name, variant.policy, label=label)
    try:
        scenario = variant_scenario(Scenario.model_validate(job.base), variant, job.hours, job.seed_offset)
        failed.seed = scenario.seed
        report = (lambda now_s, end_s: progress(label, now_s, end_s)) if progress else None
        run = run_scenario(scenario, report)
        result = {**run.result, "variant": variant.name, "ttft_cdf": _ttft_cdf(run)}
        run.result = result
        return VariantOutcome(variant.name, variant.policy, result, None, _timeline(run), scenario.seed, label,
                              render_outputs(run))
    except ValueError as exc:  # bad input: a policy or field the message names
        failed.error = str(exc)
    except Exception as exc:  # a crash: keep the others running, and say where it happened
        where = traceback.extract_tb(exc.__traceback__)[-1]
        failed.error = f"{type(exc).__name__}: {exc} (at {Path(where.filename).name}:{where.lineno})"
    return failed


def _lost(job: VariantJob, exc: Exception) -> VariantOutcome:
    """The outcome of a job whose worker died (killed, out of memory, a lost node)."""
    return VariantOutcome(job.variant["name"], job.variant["policy"], label=job.label or job.variant["name"],
                          error=f"worker process failed: {type(exc).__name__}: {exc}")


def _over_seeds(runs: list[VariantOutcome]) -> VariantOutcome:
    first = runs[0]
    errors = [f"seed {r.seed}: {r.error}" if r.seed is not None else r.error for r in runs if not r.ok]
    return VariantOutcome(first.name, first.policy, first.result, errors[0] if errors else None, first.timeline,
                          first.seed, first.name, seeds=runs)


def _ttft_cdf(run: Any) -> dict[str, list[list[float]]]:
    """Per tier, [percentile, TTFT s] pairs at CDF_PERCENTILES: a compact, exact sample of the distribution."""
    from opscale.stats import percentile_sorted

    cdf: dict[str, list[list[float]]] = {}
    for tier in run.result["tiers"]:
        ttft = run.collector.latencies(tier, "ttft")
        if ttft:
            cdf[tier] = [[p, percentile_sorted(ttft, p)] for p in CDF_PERCENTILES]
    return cdf


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

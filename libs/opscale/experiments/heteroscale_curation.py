"""HeteroScale's Algorithm 1 run in the simulator: stress-test a service's workload at every P/D split of an
instance budget (stress.py's constant-load probe, bisected on the rate), then choose the ratio and the
per-instance targets (opscale.planning.heteroscale.curation). `opscale heteroscale curate` and the
heteroscale-ratio study both call `sweep_splits`.

The curated file is the `heteroscale` policy's per-service parameters as a plain mapping
`{model: {decode_tps_per_instance, prefill_missed_tps_per_instance, pd_ratio}}`, with the measured table
as YAML comments above it (kept with the config, ignored by loaders) and in a JSON file beside it.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from opscale.experiments.comparison import ExperimentError, find_experiment, load_experiment, variant_scenario
from opscale.experiments.scenario import Scenario, load_scenario
from opscale.experiments.stress import DEFAULT_PROBE, ProbeSettings, Service, constant_probe
from opscale.experiments.stress_traffic import MixSampler, WorkloadMix
from opscale.planning.heteroscale.curation import (
    CuratedService,
    Objective,
    Split,
    SplitResult,
    budget_splits,
    curate,
    max_rate_meeting,
)
from opscale.traces import LengthDistribution

SplitProgress = Callable[[Split, SplitResult], None]


def sweep_splits(service: Service, sampler: MixSampler, splits: Sequence[tuple[int, int]], *,
                 settings: ProbeSettings = DEFAULT_PROBE, start_rps: float = 2.0, rel_tol: float = 0.03,
                 progress: SplitProgress | None = None) -> list[SplitResult]:
    """The highest SLO-meeting load of each (prefill, decode) split. Each bisection starts from the last
    split's edge, scaled by the change in instances: neighbouring splits have near edges, so few probes."""
    results: list[SplitResult] = []
    start = start_rps
    for prefill, decode in splits:
        gpus, usd = service.split_cost(prefill, decode)
        split = Split(prefill, decode, gpus, usd)
        bisection = max_rate_meeting(constant_probe(service, sampler, prefill, decode, settings), start,
                                     rel_tol=rel_tol)
        result = SplitResult(split, bisection)
        results.append(result)
        if bisection.best is not None:
            start = bisection.best.rate_rps
        if progress is not None:
            progress(split, result)
    return results


@dataclass(frozen=True, slots=True)
class Curation:
    """A curated service and how it was measured."""

    service: CuratedService
    mix_source: str
    settings: ProbeSettings
    instances: int


def curate_service(service: Service, sampler: MixSampler, *, instances: int = 8, objective: Objective = "per_gpu",
                   settings: ProbeSettings = DEFAULT_PROBE, rel_tol: float = 0.03,
                   progress: SplitProgress | None = None) -> Curation:
    """Algorithm 1 for one service: every split of `instances`, the best by `objective`."""
    results = sweep_splits(service, sampler, budget_splits(instances), settings=settings, rel_tol=rel_tol,
                           progress=progress)
    return Curation(curate(service.model, results, objective), sampler.source, settings, instances)


def write_curated(curations: Sequence[Curation], out: Path) -> list[Path]:
    """`out` (YAML: the per-service parameters, the measured table in comments) and `out` with suffix
    .table.json (the table as data)."""
    params = {c.service.model: c.service.params() for c in curations}
    lines = ["# HeteroScale per-service parameters from a simulated stress test (Algorithm 1; `opscale heteroscale",
             "# curate`). decode_tps_per_instance and prefill_missed_tps_per_instance are per instance of the P/D",
             "# group (both roles counted), at target_fraction of the highest load meeting the tier's TTFT/TBT p99."]
    for c in curations:
        s = c.service
        lines.append(f"# {s.model}: lengths {c.mix_source}; {c.instances} instances split every way; objective "
                     f"{s.objective}; target_fraction {s.target_fraction:g}; chosen {s.chosen.split.label}")
        lines.append("#   ratio  P/D   max req/s  decode TPS  per GPU  per $/h  TTFT p99  TBT p99")
        for row in s.measured():
            at = row["at_max"] or {}
            lines.append(f"#   {row['ratio']:>5}  {row['prefill']}/{row['decode']}  {row['max_rate_rps']:9.2f}  "
                         f"{row['decode_tps']:10.0f}  {row['decode_tps_per_gpu']:7.0f}  {row['decode_tps_per_usd_h']:7.0f}"
                         f"  {_s(at.get('ttft_p99_s'))}  {_s(at.get('tbt_p99_s'))}")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text("\n".join(lines) + "\n" + yaml.safe_dump(params, sort_keys=False))
    table = out.with_suffix(".table.json")
    table.write_text(json.dumps({c.service.model: curation_record(c) for c in curations}, indent=2))
    return [out, table]


def curation_record(c: Curation) -> dict[str, Any]:
    s = c.service
    return {"params": s.params(), "objective": s.objective, "target_fraction": s.target_fraction,
            "lengths": c.mix_source, "instances": c.instances, "chosen": s.chosen.split.label,
            "probe": {"warmup_s": c.settings.warmup_s, "measure_s": c.settings.measure_s,
                      "drain_s": c.settings.drain_s, "seed": c.settings.seed},
            "table": s.measured()}


def _s(value: float | None) -> str:
    return f"{value:7.3f}s" if value is not None else "      -"


def curation_scenario(path: Path, variant: str | None = None) -> Scenario:
    """The scenario a curation reads: the scenario YAML at `path`; with `variant`, that variant of the
    experiment config `path` (a file or a shipped name), so an experiment's curated parameters are
    measured on the deployments and tiers its variant runs."""
    if variant is None:
        return load_scenario(path)
    config, base = load_experiment(find_experiment(str(path)))
    chosen = next((v for v in config.variants if v.name == variant), None)
    if chosen is None:
        raise ExperimentError(f"--variant: {variant!r} is not a variant of {config.name}; variants: "
                              f"{[v.name for v in config.variants]}")
    return variant_scenario(base, chosen)


def scenario_mix(scenario: Any, model: str, lengths: str | None = None) -> tuple[WorkloadMix, Path | None]:
    """The length mix of `model`'s traffic in a scenario, and the data directory it reads: `lengths` (a
    trace file under the data directory) when given; else the file of its shaped stream; else its synthetic
    workload's lognormals; else lognormals around the deployment's typical lengths. A file comes with the
    lognormal fallback of the scenario, used when the file is absent."""
    deployment = next((d for d in scenario.deployments if d.model == model), None)
    if deployment is None:
        raise ValueError(f"--model: {model!r} has no deployment in the scenario; deployed: "
                         f"{[d.model for d in scenario.deployments]}")
    prompt = LengthDistribution(median_tokens=deployment.typical_prompt_tokens, sigma=0.5, max_tokens=32_768)
    output = LengthDistribution(median_tokens=deployment.typical_output_tokens, sigma=0.5, max_tokens=32_768)
    data_dir = None
    if scenario.shaped is not None:
        data_dir = scenario.shaped.data_dir
        stream = next((s for s in scenario.shaped.streams if s.model == model), None)
        fallback = scenario.shaped.fallback
        prompt, output = fallback.prompt_tokens, fallback.output_tokens
        if stream is not None:
            lengths = lengths or stream.lengths
            return WorkloadMix(name=model, lengths=lengths, prompt_tokens=prompt, output_tokens=output,
                               max_prompt_tokens=stream.max_prompt_tokens,
                               max_output_tokens=stream.max_output_tokens), data_dir
    elif scenario.workload is not None:
        prompt, output = scenario.workload.prompt_tokens, scenario.workload.output_tokens
    return WorkloadMix(name=model, lengths=lengths, prompt_tokens=prompt, output_tokens=output,
                       max_prompt_tokens=prompt.max_tokens, max_output_tokens=output.max_tokens), data_dir

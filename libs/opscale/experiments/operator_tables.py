"""The `operators` experiment's tables beside its variants (issue 14 item 8): operator-level against
model-level autoscaling, in the simulated world and on the operator planner's queueing model.

From the variants' results (the simulated world, the same traffic and seed for each): per variant the
GPUs held (mean and peak), GPU-hours, energy and SLO attainment per tier, and GPU-hours and energy per
model.

From the planner (the policies' own objects, built from the operator variant's and the model variant's
policy parameters, on the scenario's tiers: the same M/M/R queueing model and objective for both):
- over the traffic: each pool's expected arrival rate per shape window (`shaped_workload.window_rates`),
  planned at both levels, window after window as the policy re-plans (the operator level keeps its
  partition and shares); GPU-hours (packed GPUs x time), GPU-equivalents per phase (prefill, decode) and
  energy (the plans' power x time), per model;
- at the traffic's mean and peak rate: GPUs per phase and power at both levels;
- throughput at a fixed GPU budget: the highest arrival rate whose plan fits the budget and meets the
  objective on the queueing model, per level (bisection; the budget is the model-level plan's GPUs at
  the peak rate unless `fixed_gpus` names it);
- the scale-up latency table (`planning.operators.scaleup`);
- the greedy search's gap to the exhaustive oracle on small cases.
Token lengths are each deployment's typical ones (what the policies plan for before traffic is seen).

Pure: reads the shaped workload's shape files, no clock.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from opscale.experiments.comparison import ExperimentConfig
from opscale.experiments.operator_tables_config import OperatorTablesConfig
from opscale.experiments.scenario import Scenario
from opscale.experiments.shaped_workload import window_rates
from opscale.experiments.summary import SummarySection
from opscale.experiments.variant_runner import VariantOutcome
from opscale.planning.base import DeploymentSpec
from opscale.planning.operators import OperatorPlan, OperatorPlanner
from opscale.planning.operators.dag import Phase
from opscale.planning.operators.policy import OperatorScalingPolicy, StageTargets
from opscale.planning.operators.scaleup import PAPER_QWEN2_7B_S, scaleup_table
from opscale.planning.registry import make_planning_policy

TablesProgress = Callable[[int, int], None]  # (steps done, steps in all)
SECTION_KEY = "operators"
_LEVELS = ("operator", "model")


@dataclass(slots=True)
class _Totals:
    """One level's plans integrated over time: GPU-seconds (packed), GPU-equivalent-seconds per phase, joules."""

    gpu_s: float = 0.0
    phase_gpu_s: dict[str, float] | None = None
    energy_j: float = 0.0
    peak_gpus: int = 0

    def add(self, plan: OperatorPlan, seconds: float) -> None:
        self.gpu_s += plan.gpus * seconds
        phases = self.phase_gpu_s if self.phase_gpu_s is not None else dict.fromkeys(("prefill", "decode"), 0.0)
        phases["prefill"] += plan.prefill.gpus * seconds
        phases["decode"] += plan.decode.gpus * seconds
        self.phase_gpu_s = phases
        self.energy_j += plan.energy.power_w * seconds
        self.peak_gpus = max(self.peak_gpus, plan.gpus)

    def figures(self, span_s: float) -> dict[str, Any]:
        phases = self.phase_gpu_s or {}
        return {"gpu_hours": self.gpu_s / 3600, "mean_gpus": self.gpu_s / span_s if span_s > 0 else 0.0,
                "peak_gpus": self.peak_gpus, "energy_kwh": self.energy_j / 3.6e6,
                "phase_gpu_hours": {p: s / 3600 for p, s in phases.items()}}


def operator_tables(config: ExperimentConfig, base: Scenario, outcomes: list[VariantOutcome],
                    progress: TablesProgress | None = None) -> SummarySection:
    """The tables of `config.operators` for `base` (its duration as run) and the variants' `outcomes`.
    Raises ValueError naming the field when the scenario cannot give them (no shaped traffic, a
    disaggregated deployment, an objective the planner cannot meet)."""
    tables = config.operators
    if tables is None:
        raise ValueError("operators: the experiment config has no 'operators' section")
    if base.shaped is None:
        raise ValueError("operators: the planner's tables need a 'shaped' workload in the base scenario (its "
                         "rates per window)")
    policies = {level: _policy(config, base, name)
                for level, name in zip(_LEVELS, (tables.operator_variant, tables.model_variant), strict=True)}
    unified = [d for d in base.deployments if not d.disaggregated]
    models: dict[str, Any] = {}
    steps = len(unified) * 4
    for i, deployment in enumerate(unified):
        models[deployment.model] = _model_tables(tables, base, deployment, policies,
                                                 lambda k, i=i: progress(i * 4 + k, steps) if progress else None)
    data = {
        "objective": {"ttft_slo_s": policies["operator"].objective.ttft_slo_s,
                      "tbt_slo_s": policies["operator"].objective.tbt_slo_s},
        "variants": _variant_rows(outcomes, [d.model for d in base.deployments]),
        "models": models,
        "by_phase": _by_phase(models),
        "by_model": _by_model(tables, outcomes, models),
        "paper": tables.paper.model_dump(),
        "beside_paper": _beside_paper(tables, outcomes, models),
    }
    return SummarySection(SECTION_KEY, data, _markdown(tables, data, [t.name for t in base.tiers]))


def _policy(config: ExperimentConfig, base: Scenario, variant_name: str) -> OperatorScalingPolicy:
    variant = next(v for v in config.variants if v.name == variant_name)  # the config checked it is there
    if variant.policy not in ("operator_level", "model_level"):
        raise ValueError(f"operators: variant {variant_name!r} runs {variant.policy!r}; the planner's tables "
                         f"compare 'operator_level' and 'model_level'")
    # The tables compare the two planners on the same rates: a variant's headroom (a margin on the observed
    # rate, which its run in the simulated world pays for in GPU-hours) is left out of them.
    params = {**variant.policy_params, "headroom": 1.0}
    policy = make_planning_policy(variant.policy, list(base.deployments), lambda *a, **k: 1.0,
                                  tiers=base.tier_specs(), **params)
    assert isinstance(policy, OperatorScalingPolicy)
    return policy


def _model_tables(tables: OperatorTablesConfig, base: Scenario, deployment: DeploymentSpec,
                  policies: dict[str, OperatorScalingPolicy], step: Callable[[int], None]) -> dict[str, Any]:
    assert base.shaped is not None
    regions = [r for r in base.shaped.regions() if not deployment.regions or r in deployment.regions]
    windows = {r: window_rates(base.shaped, deployment.model, r) for r in regions}
    span_s = max((w[-1][1] for w in windows.values() if w), default=0.0)
    # Over the traffic: every pool re-planned window after window, as the policy would.
    totals = {level: _Totals() for level in _LEVELS}
    for region_windows in windows.values():
        previous: dict[str, StageTargets | None] = dict.fromkeys(_LEVELS)
        for lo_s, hi_s, rps in region_windows:
            for level in _LEVELS:
                found = _targets(policies[level], deployment, rps, previous[level])
                previous[level] = found
                totals[level].add(found.plan, hi_s - lo_s)
    step(1)
    rates = [rps for w in windows.values() for _, _, rps in w]
    spans = [hi - lo for w in windows.values() for lo, hi, _ in w]
    mean_rps = sum(r * s for r, s in zip(rates, spans, strict=True)) / sum(spans) if spans else 0.0
    peak_rps = max(rates, default=0.0)
    at_rates = [_at_rate(policies, deployment, label, rps) for label, rps in (("mean", mean_rps), ("peak", peak_rps))
                if rps > 0]
    step(2)
    budget = tables.fixed_gpus.get(deployment.model)
    if budget is None:
        budget = _targets(policies["model"], deployment, peak_rps, None).plan.gpus
    sustained = {level: _max_rps(policies[level], deployment, budget, tables.max_rps) for level in _LEVELS}
    step(3)
    planner = policies["operator"].planner(deployment.model)
    oracle = [_oracle_case(policies["operator"], planner, deployment, rps) for rps in tables.oracle_rps]
    step(4)
    op, ml = (totals[level].figures(span_s) for level in _LEVELS)
    return {
        "sku": deployment.sku, "tp": deployment.tp, "prompt_tokens": deployment.typical_prompt_tokens,
        "output_tokens": deployment.typical_output_tokens, "mean_rps": mean_rps, "peak_rps": peak_rps,
        "over_traffic": {"operator_level": op, "model_level": ml,
                         "gpu_hours_ratio": _ratio(op["gpu_hours"], ml["gpu_hours"]),
                         "energy_ratio": _ratio(op["energy_kwh"], ml["energy_kwh"])},
        "at_rates": at_rates,
        "throughput_at_fixed_gpus": {"gpus": budget, "operator_level_rps": sustained["operator"],
                                     "model_level_rps": sustained["model"],
                                     "ratio": _ratio(sustained["operator"], sustained["model"])},
        "scaleup": scaleup_table(planner.model, planner.sku, deployment.tp, policies["operator"].config.load),
        "oracle": {"cases": oracle, "worst_gap": max((c["gap"] for c in oracle), default=None)},
    }


def _targets(policy: OperatorScalingPolicy, deployment: DeploymentSpec, rps: float,
             previous: StageTargets | None) -> StageTargets:
    workload = policy.workload(deployment, rps, rps * deployment.typical_prompt_tokens,
                               rps * deployment.typical_output_tokens)
    return policy.targets(deployment.model, workload, previous)


def _at_rate(policies: dict[str, OperatorScalingPolicy], deployment: DeploymentSpec, label: str,
             rps: float) -> dict[str, Any]:
    row: dict[str, Any] = {"rate": label, "rps": rps}
    for level in _LEVELS:
        plan = _targets(policies[level], deployment, rps, None).plan
        row[f"{level}_level"] = {"gpus": plan.gpus, "gpu_cost": plan.gpu_cost, "prefill_gpus": plan.prefill.gpus,
                                 "decode_gpus": plan.decode.gpus, "power_w": plan.energy.power_w,
                                 "meets_slo": plan.meets_slo,
                                 "stages": {p.value: [f"{s.name} x{s.replicas}" + (f" sm{s.share:g}" if s.share < 1 else "")
                                                      for s in plan.phase(p).stages] for p in Phase}}
    return row


def _max_rps(policy: OperatorScalingPolicy, deployment: DeploymentSpec, gpus: int, max_rps: float) -> float | None:
    """The highest arrival rate (within 1%) whose plan packs onto at most `gpus` GPUs and meets the
    objective on the queueing model; None when even the least rate planned does not fit."""

    def fits(rps: float) -> bool:
        try:
            plan = _targets(policy, deployment, rps, None).plan
        except ValueError:  # more replicas than allowed, or no plan meets the objective at this rate
            return False
        return plan.gpus <= gpus and plan.meets_slo

    lo = policy.config.min_rps
    if not fits(lo):
        return None
    hi = lo * 2
    while hi < max_rps and fits(hi):
        lo, hi = hi, hi * 2
    hi = min(hi, max_rps)
    if fits(hi):
        return hi
    while hi / lo > 1.01:
        mid = (lo * hi) ** 0.5
        lo, hi = (mid, hi) if fits(mid) else (lo, mid)
    return lo


def _oracle_case(policy: OperatorScalingPolicy, planner: OperatorPlanner, deployment: DeploymentSpec,
                 rps: float) -> dict[str, Any]:
    workload = policy.workload(deployment, rps, rps * deployment.typical_prompt_tokens,
                               rps * deployment.typical_output_tokens)
    greedy, oracle = planner.plan(workload), planner.oracle(workload)
    return {"rps": rps, "greedy_gpus": greedy.gpus, "oracle_gpus": oracle.gpus,
            "gap": greedy.gpus / oracle.gpus - 1, "greedy_cost": greedy.gpu_cost, "oracle_cost": oracle.gpu_cost,
            "cost_gap": greedy.gpu_cost / oracle.gpu_cost - 1}


def _variant_rows(outcomes: list[VariantOutcome], models: list[str]) -> list[dict[str, Any]]:
    rows = []
    for o in outcomes:
        r = o.result
        if not o.ok or r is None:
            rows.append({"name": o.name, "ok": False, "error": o.error})
            continue
        by_model = {m: {"gpu_hours": sum(p["gpu_hours"] for k, p in r["pools"].items() if k.startswith(f"{m}/")),
                        "energy_kwh": sum(p.get("energy_kwh", 0.0) for k, p in r["pools"].items()
                                          if k.startswith(f"{m}/"))}
                    for m in models}
        rows.append({"name": o.name, "ok": True, "mean_gpus": r.get("mean_gpus"), "peak_gpus": r.get("peak_gpus"),
                     "gpu_hours": r["gpu_hours"], "energy_kwh": r["energy_kwh"],
                     "slo_attainment": {t: v["slo_attainment"] for t, v in r["tiers"].items()},
                     "by_model": by_model})
    return rows


def _by_phase(models: dict[str, Any]) -> dict[str, Any]:
    """Per phase, over every model: the planner's GPU-equivalent-hours at both levels and the saving."""
    out = {}
    for phase in ("prefill", "decode"):
        op = sum(m["over_traffic"]["operator_level"]["phase_gpu_hours"][phase] for m in models.values())
        ml = sum(m["over_traffic"]["model_level"]["phase_gpu_hours"][phase] for m in models.values())
        out[phase] = {"operator_level_gpu_hours": op, "model_level_gpu_hours": ml, "ratio": _ratio(op, ml)}
    return out


def _by_model(tables: OperatorTablesConfig, outcomes: list[VariantOutcome],
              models: dict[str, Any]) -> dict[str, Any]:
    """Per model, operator level / model level: GPU-hours and energy in the simulated world and on the
    planner's model, and throughput at the fixed GPU budget."""
    results = {o.name: o.result for o in outcomes if o.ok and o.result is not None}
    op, ml = results.get(tables.operator_variant), results.get(tables.model_variant)

    def simulated(model: str, key: str) -> float | None:
        if op is None or ml is None:
            return None
        mine, base = (sum(p.get(key, 0.0) for k, p in r["pools"].items() if k.startswith(f"{model}/"))
                      for r in (op, ml))
        return _ratio(mine, base)

    return {name: {"simulated_gpu_hours_ratio": simulated(name, "gpu_hours"),
                   "simulated_energy_ratio": simulated(name, "energy_kwh"),
                   "planner_gpu_hours_ratio": m["over_traffic"]["gpu_hours_ratio"],
                   "planner_energy_ratio": m["over_traffic"]["energy_ratio"],
                   "throughput_ratio": m["throughput_at_fixed_gpus"]["ratio"]}
            for name, m in models.items()}


def _beside_paper(tables: OperatorTablesConfig, outcomes: list[VariantOutcome],
                  models: dict[str, Any]) -> dict[str, Any]:
    results = {o.name: o.result for o in outcomes if o.ok and o.result is not None}
    op, ml = results.get(tables.operator_variant), results.get(tables.model_variant)
    sim = {}
    if op is not None and ml is not None:
        sim = {"gpu_hours_ratio": _ratio(op["gpu_hours"], ml["gpu_hours"]),
               "energy_ratio": _ratio(op["energy_kwh"], ml["energy_kwh"])}
    planner_gpu_h = {lvl: sum(m["over_traffic"][f"{lvl}_level"]["gpu_hours"] for m in models.values()) for lvl in _LEVELS}
    planner_kwh = {lvl: sum(m["over_traffic"][f"{lvl}_level"]["energy_kwh"] for m in models.values()) for lvl in _LEVELS}
    return {
        "paper_gpu_ratio": 1 - tables.paper.fewer_gpus_pct / 100,
        "paper_energy_ratio": 1 - tables.paper.less_energy_pct / 100,
        "paper_throughput_ratio": tables.paper.throughput_ratio,
        "simulated_world": sim,
        "planner": {"gpu_hours_ratio": _ratio(planner_gpu_h["operator"], planner_gpu_h["model"]),
                    "energy_ratio": _ratio(planner_kwh["operator"], planner_kwh["model"]),
                    "throughput_ratio": {m: t["throughput_at_fixed_gpus"]["ratio"] for m, t in models.items()}},
    }


def _ratio(a: float | None, b: float | None) -> float | None:
    return None if a is None or b is None or b == 0 else a / b


# --- summary.md ---------------------------------------------------------------------------------------


def _markdown(tables: OperatorTablesConfig, data: dict[str, Any], tiers: list[str]) -> str:
    obj = data["objective"]
    models = data["models"]
    lines = ["## Operator level against model level", "",
             f"Both policies plan on the same M/M/R queueing model against TTFT p99 {obj['ttft_slo_s']:g} s and "
             f"TBT {obj['tbt_slo_s']:g} s (the strictest latency tier).", "",
             "### In the simulated world (per variant)", "",
             "| variant | GPUs mean | GPUs peak | GPU-h | energy kWh | " + " | ".join(f"SLO {t}" for t in tiers)
             + " | " + " | ".join(f"GPU-h {m} | kWh {m}" for m in models) + " |",
             "|" + "---|" * (5 + len(tiers) + 2 * len(models))]
    for row in data["variants"]:
        if not row["ok"]:
            lines.append(f"| {row['name']} | **failed**: {_cell(row['error'])} |")
            continue
        per_model = " | ".join(f"{row['by_model'][m]['gpu_hours']:.1f} | {row['by_model'][m]['energy_kwh']:.1f}"
                               for m in models)
        lines.append(f"| {row['name']} | {_num(row['mean_gpus'], '{:.1f}')} | {_num(row['peak_gpus'], '{:.0f}')} | "
                     f"{row['gpu_hours']:.1f} | {row['energy_kwh']:.1f} | "
                     + " | ".join(_pct(row["slo_attainment"].get(t)) for t in tiers) + f" | {per_model} |")
    lines += ["", "### On the planner's queueing model, over the traffic (each window's expected rate)", "",
              "| model | level | GPUs mean | GPUs peak | GPU-h | prefill GPU-h | decode GPU-h | energy kWh |",
              "|---|---|---|---|---|---|---|---|"]
    for name, m in models.items():
        for level in ("operator_level", "model_level"):
            t = m["over_traffic"][level]
            lines.append(f"| {name} | {level} | {t['mean_gpus']:.2f} | {t['peak_gpus']} | {t['gpu_hours']:.2f} | "
                         f"{t['phase_gpu_hours']['prefill']:.2f} | {t['phase_gpu_hours']['decode']:.2f} | "
                         f"{t['energy_kwh']:.2f} |")
        t = m["over_traffic"]
        lines.append(f"| {name} | operator / model | | | {_x(t['gpu_hours_ratio'])} | | | {_x(t['energy_ratio'])} |")
    lines += ["", "By model (operator / model level): " + "; ".join(
        f"{name} GPU-h {_x(v['simulated_gpu_hours_ratio'])} simulated, {_x(v['planner_gpu_hours_ratio'])} planned, "
        f"energy {_x(v['simulated_energy_ratio'])} simulated, {_x(v['planner_energy_ratio'])} planned"
        for name, v in data["by_model"].items()) + "."]
    lines += ["", "By phase, all models (GPU-equivalents before packing, operator / model level): "
              + "; ".join(f"{p} {v['operator_level_gpu_hours']:.2f} / {v['model_level_gpu_hours']:.2f} GPU-h "
                          f"({_x(v['ratio'])})" for p, v in data["by_phase"].items()) + ".", "",
              "### At the traffic's mean and peak rate", "",
              "| model | rate | req/s | GPUs operator / model | prefill | decode | power W operator / model |",
              "|---|---|---|---|---|---|---|"]
    for name, m in models.items():
        for row in m["at_rates"]:
            op, ml = row["operator_level"], row["model_level"]
            lines.append(f"| {name} | {row['rate']} | {row['rps']:.2f} | {op['gpus']} / {ml['gpus']} | "
                         f"{op['prefill_gpus']:.2f} / {ml['prefill_gpus']:.0f} | {op['decode_gpus']:.2f} / "
                         f"{ml['decode_gpus']:.0f} | {op['power_w']:.0f} / {ml['power_w']:.0f} |")
    lines += ["", "### Throughput at a fixed GPU budget (the planner's queueing model)", "",
              "The highest arrival rate whose plan fits the GPUs and meets the objective, per level.", "",
              "| model | GPUs | operator level req/s | model level req/s | ratio | paper |", "|---|---|---|---|---|---|"]
    for name, m in models.items():
        t = m["throughput_at_fixed_gpus"]
        lines.append(f"| {name} | {t['gpus']} | {_num(t['operator_level_rps'], '{:.2f}')} | "
                     f"{_num(t['model_level_rps'], '{:.2f}')} | {_x(t['ratio'])} | {tables.paper.throughput_ratio:g}x |")
    lines += ["", "### Scale-up latency (from the weight bytes moved)", "",
              "| model | tp | one operator (a layer's MLP) | 50% of the operators | all operators | full replica warm | "
              "full replica cold |", "|---|---|---|---|---|---|---|"]
    for name, m in models.items():
        s = m["scaleup"]
        lines.append(f"| {name} | {s['tp']} | {_s(s['one_operator_s'])} | {_s(s['half_operators_s'])} | "
                     f"{_s(s['all_operators_s'])} | {_s(s['full_replica_warm_s'])} | {_s(s['full_replica_cold_s'])} |")
    p = PAPER_QWEN2_7B_S
    lines.append(f"| OpScale, Qwen2-7B (PAPERS.md §1.6) | | {_s(p['one_operator_s'])} | {_s(p['half_operators_s'])} | "
                 f"{_s(p['all_operators_s'])} | {_s(p['full_replica_s'])} | |")
    lines += ["", "### The greedy search against the exhaustive oracle (packed GPUs)", "",
              "| model | req/s | greedy | oracle | gap |", "|---|---|---|---|---|"]
    for name, m in models.items():
        for c in m["oracle"]["cases"]:
            lines.append(f"| {name} | {c['rps']:g} | {c['greedy_gpus']} | {c['oracle_gpus']} | {c['gap'] * 100:+.1f}% |")
    b = data["beside_paper"]
    sim, planner = b["simulated_world"], b["planner"]
    throughput = "; ".join(f"{m} {_x(r)}" for m, r in planner["throughput_ratio"].items())
    lines += ["", "### Beside P1's figures (operator level / model level)", "",
              "| published figure (PAPERS.md §1.5) | paper | ours, simulated world | ours, planner's model |",
              "|---|---|---|---|",
              f"| up to {tables.paper.fewer_gpus_pct:g}% fewer GPUs at equal SLOs | {_x(b['paper_gpu_ratio'])} GPUs | "
              f"{_x(sim.get('gpu_hours_ratio'))} GPU-h | {_x(planner['gpu_hours_ratio'])} GPU-h |",
              f"| {tables.paper.less_energy_pct:g}% less energy | {_x(b['paper_energy_ratio'])} | "
              f"{_x(sim.get('energy_ratio'))} | {_x(planner['energy_ratio'])} |",
              f"| {tables.paper.throughput_ratio:g}x throughput at fixed GPUs | {tables.paper.throughput_ratio:g}x | "
              f"- | {throughput} |"]
    return "\n".join(lines) + "\n"


def _cell(text: str | None) -> str:
    return (text or "failed").replace("|", "\\|").replace("\n", " ")


def _num(value: float | None, fmt: str) -> str:
    return "-" if value is None else fmt.format(value)


def _pct(value: float | None) -> str:
    return "-" if value is None else f"{value * 100:.2f}%"


def _x(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.2f}x"


def _s(value: float) -> str:
    return f"{value * 1000:.0f} ms" if value < 1 else f"{value:.2f} s"

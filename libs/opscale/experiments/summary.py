"""An experiment's summary: summary.md (a Markdown table, one row per variant, then the published figures
beside ours) and summary.json (the same numbers, machine-readable). A failed variant is a row with its
error. Pure formatting: the numbers come from the variants' results.

Example of a reference row: claim "up to 25% fewer GPU-hours", baseline `sageserve_reactive` at 100
GPU-hours and `sageserve_lt_u` at 88 give ours = -12.0%.
"""

from __future__ import annotations

import json
import math
import operator
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from opscale.experiments.comparison import AcceptanceCheck, ExperimentConfig, ReferenceFigure
from opscale.experiments.report import _jsonable
from opscale.experiments.scenario import Scenario
from opscale.experiments.seed_intervals import CONFIDENCE, seed_intervals
from opscale.experiments.variant_runner import VariantOutcome


@dataclass(frozen=True, slots=True)
class SummarySection:
    """More than the variants' table: `data` under `key` in summary.json, `markdown` appended to summary.md."""

    key: str
    data: dict[str, Any]
    markdown: str


_RELATIONS = {"<": operator.lt, "<=": operator.le, ">": operator.gt, ">=": operator.ge}


def metric_value(result: dict[str, Any] | None, metric: str) -> float | None:
    """`metric` of a result: a key, or a dotted path of keys (`tiers.interactive.slo_attainment`); None when
    absent or not a number."""
    value: Any = result
    for key in metric.split("."):
        if not isinstance(value, dict):
            return None
        value = value.get(key)
    return float(value) if isinstance(value, int | float) and not isinstance(value, bool) else None


def acceptance_rows(checks: list[AcceptanceCheck], outcomes: list[VariantOutcome]) -> list[dict[str, Any]]:
    """Each check with both values, the bound and `passed` (None when a variant failed or lacks the metric)."""
    results = {o.name: o.result for o in outcomes if o.ok}
    rows = []
    for check in checks:
        ours = metric_value(results.get(check.variant), check.metric)
        base = metric_value(results.get(check.baseline), check.metric)
        bound = None if base is None else check.factor * base
        passed = None if ours is None or bound is None else bool(_RELATIONS[check.relation](ours, bound))
        rows.append({**check.model_dump(), "ours": ours, "baseline_value": base, "bound": bound, "passed": passed})
    return rows


def latency_tier(base: Scenario) -> str:
    """The tier whose latency the table shows: the first without a deadline (interactive), else the first."""
    interactive = [t.name for t in base.tiers if t.deadline_s is None]
    return (interactive or [t.name for t in base.tiers])[0]


def change_pct(outcomes: list[VariantOutcome], metric: str, variant: str, baseline: str,
               change: str = "relative") -> float | None:
    """Change of `metric` from `baseline` to `variant`: relative, percent of the baseline; or `points`,
    the difference of two fractions in percentage points (0.50 -> 0.62 is +12). None when either failed,
    or a relative change from 0."""
    results = {o.name: o.result for o in outcomes if o.ok and o.result is not None}
    ours, base = metric_value(results.get(variant), metric), metric_value(results.get(baseline), metric)
    if ours is None or base is None:
        return None
    if change == "points":
        return (ours - base) * 100.0
    return (ours - base) / base * 100.0 if base != 0 else None


def reference_rows(figures: list[ReferenceFigure], outcomes: list[VariantOutcome]) -> list[dict[str, Any]]:
    return [{**f.model_dump(), "ours_change_pct": {v: change_pct(outcomes, f.metric, v, f.baseline, f.change)
                                                   for v in f.variants}}
            for f in figures]


def summary_json(config: ExperimentConfig, base: Scenario, outcomes: list[VariantOutcome],
                 sources: dict[str, dict[str, str]], sections: Sequence[SummarySection] = (),
                 spreads: Spreads | None = None) -> dict[str, Any]:
    spreads = variant_intervals(outcomes) if spreads is None else spreads
    return _jsonable({
        "experiment": config.name, "scenario": base.name, "seed": base.seed, "duration_s": base.duration_s,
        "traffic_sources": sources,
        "variants": [{"name": o.name, "policy": o.policy, "ok": o.ok, "error": o.error,
                      "result": {k: v for k, v in (o.result or {}).items() if k != "ttft_cdf"} or None,
                      **_over_seeds_json(o, spreads)}
                     for o in outcomes],
        **({"seeds": seeds} if (seeds := _seeds_run(outcomes)) else {}),
        "reference": reference_rows(config.reference, outcomes),
        "acceptance": acceptance_rows(config.acceptance, outcomes),
        **{section.key: section.data for section in sections},
    })


def summary_markdown(config: ExperimentConfig, base: Scenario, outcomes: list[VariantOutcome],
                     sources: dict[str, dict[str, str]], sections: Sequence[SummarySection] = (),
                     spreads: Spreads | None = None) -> str:
    lat = latency_tier(base)
    tiers = [t.name for t in base.tiers]
    lines = [f"# Experiment: {config.name}", ""]
    if config.description:
        lines += [config.description.strip(), ""]
    done = [o.result for o in outcomes if o.ok and o.result is not None]
    requests = f", {done[0]['requests']:,} requests" if done else ""
    lines += [f"Scenario: {base.name}; seed {base.seed}; {base.duration_s / 3600:g} simulated hours{requests}; "
              f"the same traffic for every variant.", ""]
    seeds = _seeds_run(outcomes)
    if seeds:
        lines += [f"Run over {len(seeds)} seeds ({', '.join(map(str, seeds))}): the table shows seed {seeds[0]}, "
                  f"\"Over the seeds\" below the mean and {CONFIDENCE:.0%} interval of each figure.", ""]
    if sources:
        lines += ["Traffic sources:", ""]
        lines += [f"- {model}: rate shape {s['rate_shape']}; lengths {s['lengths']}" for model, s in sources.items()]
        lines.append("")
    # KV columns only where some variant moved KV between instances (a disaggregated deployment).
    kv = any("kv_effective_gbps" in (o.result or {}) for o in outcomes)
    deadline = {t.name for t in base.tiers if t.deadline_s is not None}
    header = ["variant", "policy", *(f"deadline {t}" if t in deadline else f"SLO {t}" for t in tiers),
              f"TTFT p99 {lat}", f"TBT p99 {lat}",
              "GPU-h", "cost $", "$/M output tokens", "GPU util", "SM activity", "energy kWh", "cold starts",
              "scaling GPU-s", "scaling actions", "oscillations/h", *(("KV GB/s", "KV mean") if kv else ()),
              "wall s"]
    lines += ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    for o in outcomes:
        lines.append("| " + " | ".join(_row(o, tiers, lat, len(header), kv)) + " |")
    lines += _vm_lines(outcomes)
    if config.reference:
        # A saving only counts with the SLO kept: each of ours is shown with its latency tier's attainment.
        slo = {o.name: o.result.get("tiers", {}).get(lat, {}).get("slo_attainment")
               for o in outcomes if o.ok and o.result is not None}
        lines += ["", "## Beside the published figures", "",
                  f"| published figure | source | metric | paper | ours (vs baseline; SLO {lat}) |",
                  "|---|---|---|---|---|"]
        for row in reference_rows(config.reference, outcomes):
            unit = " pp" if row["change"] == "points" else "%"
            paper = "-" if row["paper_change_pct"] is None else f"{row['paper_change_pct']:+.1f}{unit}"
            ours = "; ".join(f"{v} {_pct(p, unit)} (SLO {_percent(slo.get(v))})"
                             for v, p in row["ours_change_pct"].items())
            lines.append(f"| {row['claim']} | {row['source']} | {row['metric']} | {paper} | "
                         f"{ours}; vs {row['baseline']} (SLO {_percent(slo.get(row['baseline']))}) |")
        lines += ["", "The paper's figures are for its own fleet and traffic; ours are for the simulated fleet "
                  "above. Compare the direction and rough size, not the digits."]
    if seeds:
        spreads = variant_intervals(outcomes) if spreads is None else spreads
        lines += ["", *_over_seeds_markdown(outcomes, spreads, tiers, lat, len(seeds))]
    for section in sections:
        lines += ["", section.markdown.rstrip()]
    if config.acceptance:
        lines += ["", "## Acceptance checks", "", "| check | metric | ours | bound | result |", "|---|---|---|---|---|"]
        for row in acceptance_rows(config.acceptance, outcomes):
            verdict = {True: "**PASS**", False: "**FAIL**", None: "n/a (a variant failed)"}[row["passed"]]
            bound = f"{row['relation']} {row['factor']:g} x {row['baseline']} = {_number(row['bound'], '{:.4g}')}"
            lines.append(f"| {row['claim']} | {row['metric']} | {row['variant']} {_number(row['ours'], '{:.4g}')} | "
                         f"{bound} | {verdict} |")
    return "\n".join(lines) + "\n"


def write_summary(out: Path, config: ExperimentConfig, base: Scenario, outcomes: list[VariantOutcome],
                  sources: dict[str, dict[str, str]], sections: Sequence[SummarySection] = (),
                  spreads: Spreads | None = None) -> list[Path]:
    out.mkdir(parents=True, exist_ok=True)
    spreads = variant_intervals(outcomes) if spreads is None else spreads
    md, js = out / "summary.md", out / "summary.json"
    md.write_text(summary_markdown(config, base, outcomes, sources, sections, spreads))
    js.write_text(json.dumps(summary_json(config, base, outcomes, sources, sections, spreads), indent=2,
                             sort_keys=True) + "\n")
    return [md, js]


def _seeds_run(outcomes: list[VariantOutcome]) -> list[int]:
    """The seeds of a run over several seeds (the first variant's that ran), else []."""
    for o in outcomes:
        seeds = [run.seed for run in o.seeds if run.seed is not None]
        if seeds:
            return seeds
    return []


# Per variant run over several seeds: each figure's interval over its seeds (`seed_intervals`).
Spreads = dict[str, dict[str, dict[str, Any]]]


def variant_intervals(outcomes: Sequence[VariantOutcome]) -> Spreads:
    """Each variant run over several seeds, by name: `seed_intervals` over the seeds that ran. Computed once
    per summary and passed to its parts (the tables, summary.json, the combined section)."""
    return {o.name: seed_intervals(seed_results(o)) for o in outcomes if o.seeds}


def seed_results(o: VariantOutcome) -> list[dict[str, Any]]:
    """The results of `o`'s seeds that ran."""
    return [run.result for run in o.seeds if run.ok and run.result is not None]


def _over_seeds_json(o: VariantOutcome, spreads: Spreads) -> dict[str, Any]:
    """A variant run over several seeds: each seed's status, and each figure's interval over the seeds."""
    if not o.seeds:
        return {}
    return {"seeds": [{"seed": run.seed, "ok": run.ok, "error": run.error} for run in o.seeds],
            "interval": spreads[o.name]}


# The figures shown over the seeds beside SLO attainment and TTFT: (column, result.json path, format).
_SEED_COLUMNS: tuple[tuple[str, str, str], ...] = (
    ("GPU-h", "gpu_hours", "{:.1f}"), ("cost $", "cost_usd", "{:,.0f}"), ("energy kWh", "energy_kwh", "{:.1f}"),
    ("scaling GPU-s", "scaling_gpu_s", "{:,.0f}"), ("cold starts", "cold_starts", "{:.1f}"),
)


def _over_seeds_markdown(outcomes: list[VariantOutcome], spreads: Spreads, tiers: list[str], lat: str,
                         seeds: int) -> list[str]:
    header = ["variant", "seeds ok", *(f"SLO {t}" for t in tiers), f"TTFT p99 {lat}", *(c for c, _, _ in _SEED_COLUMNS)]
    lines = [f"## Over the seeds ({seeds}; mean [{CONFIDENCE:.0%} interval, Student t])", "",
             "| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    for o in outcomes:
        spread = spreads.get(o.name, {})
        cells = [o.name, f"{len(seed_results(o))} / {len(o.seeds)}"]
        cells += [_interval(spread.get(f"tiers.{t}.slo_attainment"), lambda v: f"{v * 100:.2f}%") for t in tiers]
        cells.append(_interval(spread.get(f"tiers.{lat}.ttft_p99_s"), _seconds))
        cells += [_interval(spread.get(path), fmt.format) for _, path, fmt in _SEED_COLUMNS]
        lines.append("| " + " | ".join(cells) + " |")
    return lines


def _interval(figure: dict[str, Any] | None, fmt: Any) -> str:
    if figure is None:
        return "-"
    if figure["low"] is None:
        return fmt(figure["mean"])
    return f"{fmt(figure['mean'])} [{fmt(figure['low'])}, {fmt(figure['high'])}]"


def _row(o: VariantOutcome, tiers: list[str], lat: str, width: int, kv: bool = False) -> list[str]:
    if not o.ok or o.result is None:
        error = (o.error or "failed").replace("|", "\\|").replace("\n", " ")
        return [o.name, o.policy, f"**failed**: {error}", *("" for _ in range(width - 3))]
    r = o.result
    tier_results = r.get("tiers", {})
    slo = [_percent(tier_results.get(t, {}).get("slo_attainment")) for t in tiers]
    lat_block = tier_results.get(lat, r)
    per_token = r.get("usd_per_m_output_tokens")
    kv_cells = (_number(r.get("kv_effective_gbps"), "{:.1f}"), _seconds(r.get("kv_transfer_mean_s"))) if kv else ()
    return [o.name, o.policy, *slo, _seconds(lat_block.get("ttft_p99_s")), _seconds(lat_block.get("tbt_p99_s")),
            f"{r['gpu_hours']:.1f}", f"{r['cost_usd']:,.0f}", _number(per_token, "{:.2f}"),
            _percent(r.get("mean_gpu_util"), 1), _percent(r.get("mean_sm_activity"), 1), f"{r['energy_kwh']:.1f}",
            str(r["cold_starts"]), f"{r['scaling_gpu_s']:,.0f}", str(r["scaling_actions"]), f"{r['oscillations']:.2f}",
            *kv_cells, f"{r['wall_s']:.0f}"]


def _percent(value: float | None, digits: int = 2) -> str:
    return "-" if value is None else f"{value * 100:.{digits}f}%"


def _pct(value: float | None, unit: str = "%") -> str:
    return "n/a" if value is None or not math.isfinite(value) else f"{value:+.1f}{unit}"


def _number(value: float | None, fmt: str) -> str:
    return "-" if value is None else fmt.format(value)


def _seconds(value: float | None) -> str:
    if value is None:
        return "-"
    if value < 0.01:
        return f"{value * 1000:.1f} ms"
    return f"{value * 1000:.0f} ms" if value < 1 else f"{value:.2f} s"


def _vm_lines(outcomes: list[VariantOutcome]) -> list[str]:
    """The VM table, for variants whose hosts were VMs (result.json's `vms`); nothing when none were.
    VM-hours and cost are what the cloud billed, idle GPUs included (GPU-h above counts engines only)."""
    rows = [(o.name, o.result["vms"]) for o in outcomes if o.ok and o.result is not None and "vms" in o.result]
    if not rows:
        return []
    lines = ["", "## VMs", "", "| variant | VM-h | VM cost $ | by SKU / purchase (VM-h, $) | boots | refused | "
             "preemptions (survived) | requests lost to preemptions |", "|---|---|---|---|---|---|---|---|"]
    for name, vms in rows:
        kinds = "; ".join(f"{kind} {k['vm_hours']:.1f} h, ${k['cost_usd']:,.0f}"
                          for kind, k in sorted(vms["by_sku_purchase"].items()))
        lines.append(f"| {name} | {vms['vm_hours']:.1f} | {vms['cost_usd']:,.0f} | {kinds} | {vms['boots']} | "
                     f"{vms['refusals']} | {vms['preemptions']} ({vms['preemptions_survived']}) | "
                     f"{vms['requests_lost_to_preemptions']} |")
    return lines

"""What the two HeteroScale studies write: summary.json (the experiments' shape: `variants[]` with `name`
and `result`; a variant is a signal, or a mix), summary.md and PNG plots.

- heteroscale-metrics: `signals_vs_load.png` (each signal, normalised to its largest window, against the
  offered load), `signals_over_time.png` (the load and the signals over the run), and `series.json`;
- heteroscale-ratio: `tps_vs_ratio.png` (each mix's highest SLO-meeting throughput against the P/D ratio,
  normalised to its best, the best marked).
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

from opscale.experiments.heteroscale_metrics import SIGNALS, MetricsOutcome
from opscale.experiments.heteroscale_ratio import RatioOutcome
from opscale.experiments.report import _jsonable
from opscale.planning.heteroscale.curation import best_split

# PAPERS.md §3.5: "optimum ranges 1P/5D to 9P/1D with length mix, hardware and SLO priority".
PAPER_RATIO_RANGE = "1P/5D to 9P/1D (PAPERS.md §3.5)"


def write_metrics(out: Path, outcome: MetricsOutcome) -> list[Path]:
    out.mkdir(parents=True, exist_ok=True)
    c = outcome.config
    summary = {
        "experiment": c.name, "study": c.study, "seed": c.seed, "model": c.service.model,
        "fleet": {"prefill": {"instances": c.prefill_instances, **c.service.prefill.model_dump()},
                  "decode": {"instances": c.decode_instances, **c.service.decode.model_dump()}},
        "tier": c.service.tier.model_dump(), "lengths": outcome.lengths, "window_s": c.window_s,
        "peak_rps": outcome.peak_rps, "peak_source": outcome.peak_source,
        "load_points": [[t, f * outcome.peak_rps] for t, f in c.load.points],
        "requests": outcome.requests, "thresholds": c.thresholds.model_dump(), "wall_s": outcome.wall_s,
        "variants": outcome.rows,
    }
    paths = [out / "summary.json", out / "summary.md", out / "series.json"]
    paths[0].write_text(json.dumps(_jsonable(summary), indent=2))
    paths[1].write_text(_metrics_markdown(summary))
    series = {"t_s": outcome.series.t_s, "load_rps": outcome.series.load_rps, "signals": outcome.series.signals}
    paths[2].write_text(json.dumps(_jsonable(series)))
    paths += _metrics_plots(out, outcome)
    return paths


def _fmt(value: Any, spec: str = ".2f") -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-"
    if isinstance(value, float) and math.isinf(value):
        return "inf"
    return format(value, spec)


def _metrics_markdown(summary: dict[str, Any]) -> str:
    fleet = summary["fleet"]
    lines = [f"# Experiment: {summary['experiment']}", "",
             f"{summary['model']}: {fleet['prefill']['instances']} prefill ({fleet['prefill']['sku']}) + "
             f"{fleet['decode']['instances']} decode ({fleet['decode']['sku']}) instances; lengths "
             f"{summary['lengths']}; load ramp to {summary['peak_rps']:.2f} req/s ({summary['peak_source']}); "
             f"{summary['requests']} requests; {summary['window_s']:g} s windows; {summary['wall_s']:.1f} s wall.", "",
             "| signal | SNR | R² | elasticity | lag | step response | off-peak/peak | ours | paper (§3.4) |",
             "|---|---|---|---|---|---|---|---|---|"]
    for row in summary["variants"]:
        r = row["result"]
        steps = ", ".join("-" if v is None else f"{v:.1f} s" for v in r["step_response_s"].values()) or "-"
        lag = "-" if r["lag_s"] is None else f"{r['lag_s']:.0f} s"
        lines.append(f"| {row['name']} | {_fmt(r['snr'], '.1f')} | {_fmt(r['r2'])} | {_fmt(r['elasticity'])} | "
                     f"{lag} | {steps} | {_fmt(r['light_over_peak'])} | {r['verdict']} | "
                     f"{r['paper'] or '-'} |")
    th = summary["thresholds"]
    lines += ["", f"A signal works when R² >= {th['min_r2']:g}, elasticity in {th['elasticity'][0]:g}-"
              f"{th['elasticity'][1]:g} (proportional to load) and SNR >= {th['min_snr']:g} (peak/off-peak swing "
              "over window-to-window noise). Reasons for each failure:", ""]
    lines += [f"- {row['name']}: {'; '.join(row['result']['reasons'])}" for row in summary["variants"]
              if row["result"]["reasons"]]
    return "\n".join(lines) + "\n"


def _metrics_plots(out: Path, outcome: MetricsOutcome) -> list[Path]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    s = outcome.series
    verdicts = {row["name"]: row["result"] for row in outcome.rows}
    cols = 4
    rows = math.ceil(len(SIGNALS) / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(4 * cols, 3.2 * rows), sharex=True)
    flat = list(axes.flat)
    for ax, (name, _) in zip(flat, SIGNALS, strict=False):
        y = s.signals[name]
        top = max((v for v in y if math.isfinite(v)), default=0.0)
        norm = [v / top if top > 0 and math.isfinite(v) else math.nan for v in y]
        r = verdicts[name]
        ax.scatter(s.load_rps, norm, s=6, color="tab:green" if r["verdict"] == "works" else "tab:red")
        ax.set_title(f"{name}\nR² {_fmt(r['r2'])}, SNR {_fmt(r['snr'], '.1f')}, el. {_fmt(r['elasticity'])}",
                     fontsize=9)
        ax.set_ylim(-0.05, 1.1)
        ax.grid(alpha=0.3)
    for ax in flat[len(SIGNALS):]:
        ax.axis("off")
    for ax in flat[-cols:]:
        ax.set_xlabel("offered load (req/s)")
    fig.suptitle(f"{outcome.config.name}: each signal / its largest window, against the load "
                 "(green: works as a proportional signal)")
    fig.tight_layout()
    vs_load = out / "signals_vs_load.png"
    fig.savefig(vs_load, dpi=80)
    plt.close(fig)

    fig, ax = plt.subplots(figsize=(10, 4))
    peak = max(s.load_rps) or 1.0
    ax.plot(s.t_s, [v / peak for v in s.load_rps], color="black", lw=2, label="offered load")
    for name in ("decode_tps", "decode_gpu_util", "prefill_gpu_util", "decode_sm_activity", "tbt_p99_s"):
        y = s.signals[name]
        top = max((v for v in y if math.isfinite(v)), default=0.0)
        ax.plot(s.t_s, [v / top if top > 0 else math.nan for v in y], lw=1, label=name)
    ax.set_xlabel("time since the load began (s)")
    ax.set_ylabel("normalised to its largest window")
    ax.legend(fontsize=8, ncol=3)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    over_time = out / "signals_over_time.png"
    fig.savefig(over_time, dpi=80)
    plt.close(fig)
    return [vs_load, over_time]


def write_ratio(out: Path, outcome: RatioOutcome) -> list[Path]:
    out.mkdir(parents=True, exist_ok=True)
    c = outcome.config
    variants = []
    for m in outcome.mixes:
        cur = m.curated
        variants.append({"name": m.name, "result": {
            "lengths": m.lengths, "mean_prompt_tokens": m.mean_prompt_tokens,
            "mean_output_tokens": m.mean_output_tokens, "best_ratio": cur.chosen.split.label,
            "best_ratio_per_gpu": best_split(cur.table, "per_gpu").split.label,
            "best_ratio_per_dollar": best_split(cur.table, "per_dollar").split.label,
            "best_split": {"prefill": cur.chosen.split.prefill, "decode": cur.chosen.split.decode},
            "max_rate_rps": cur.chosen.best.rate_rps if cur.chosen.best else None,
            "params": cur.params(), "table": cur.measured(), "wall_s": m.wall_s}})
    summary = {"experiment": c.name, "study": c.study, "seed": c.seed, "model": c.service.model,
               "prefill": c.service.prefill.model_dump(), "decode": c.service.decode.model_dump(),
               "tier": c.service.tier.model_dump(), "instances": c.instances, "objective": c.objective,
               "probe": c.probe.model_dump(), "paper_range": PAPER_RATIO_RANGE, "wall_s": outcome.wall_s,
               "variants": variants}
    paths = [out / "summary.json", out / "summary.md", out / "tps_vs_ratio.png"]
    paths[0].write_text(json.dumps(_jsonable(summary), indent=2))
    paths[1].write_text(_ratio_markdown(summary))
    _ratio_plot(paths[2], summary)
    return paths


def _ratio_markdown(summary: dict[str, Any]) -> str:
    variants = summary["variants"]
    labels = [row["ratio"] for row in variants[0]["result"]["table"]] if variants else []
    lines = [f"# Experiment: {summary['experiment']}", "",
             f"{summary['model']}: prefill on {summary['prefill']['sku']} (tp {summary['prefill']['tp']}), decode on "
             f"{summary['decode']['sku']} (tp {summary['decode']['tp']}); {summary['instances']} instances split every "
             f"way; highest rate with TTFT p99 <= {summary['tier']['ttft_slo_s']:g} s and TBT p99 <= "
             f"{summary['tier']['tbt_slo_s']:g} s; best by decode TPS {summary['objective'].replace('_', ' ')}; "
             f"{summary['wall_s']:.0f} s wall. Paper's optima: {summary['paper_range']}.", "",
             "Decode TPS within SLO (tokens/s) per P:D:", "",
             "| mix (mean prompt / output) | " + " | ".join(labels) + " | best per GPU | best per $ |",
             "|---|" + "---|" * (len(labels) + 2)]
    for v in variants:
        r = v["result"]
        cells = [f"**{_fmt(row['decode_tps'], '.0f')}**" if row["ratio"] == r["best_ratio"]
                 else _fmt(row["decode_tps"], ".0f") for row in r["table"]]
        lines.append(f"| {v['name']} ({r['mean_prompt_tokens']:.0f} / {r['mean_output_tokens']:.0f}) | "
                     + " | ".join(cells) + f" | {r['best_ratio_per_gpu']} | {r['best_ratio_per_dollar']} |")
    lines += ["", "Lengths: " + "; ".join(f"{v['name']}: {v['result']['lengths']}" for v in variants), ""]
    return "\n".join(lines)


def _ratio_plot(path: Path, summary: dict[str, Any]) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8, 4.5))
    for v in summary["variants"]:
        rows = v["result"]["table"]
        top = max(row["decode_tps"] for row in rows) or 1.0
        xs = [row["prefill"] / row["decode"] for row in rows]
        line, = ax.plot(xs, [row["decode_tps"] / top for row in rows], marker="o", label=v["name"])
        best = next(row for row in rows if row["ratio"] == v["result"]["best_ratio"])
        ax.scatter([best["prefill"] / best["decode"]], [best["decode_tps"] / top], s=160, facecolors="none",
                   edgecolors=line.get_color(), linewidths=2)
    rows = summary["variants"][0]["result"]["table"] if summary["variants"] else []
    ax.set_xscale("log")
    ax.set_xticks([row["prefill"] / row["decode"] for row in rows], [row["ratio"] for row in rows])
    ax.minorticks_off()
    ax.set_xlabel("P:D ratio (prefill : decode instances)")
    ax.set_ylabel("max TPS within SLO / the mix's best")
    ax.set_title(f"{summary['experiment']}: {summary['model']}, {summary['instances']} instances "
                 f"(P {summary['prefill']['sku']}, D {summary['decode']['sku']})")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=80)
    plt.close(fig)

"""Reports of a run: the summary table, result.json and the load-versus-capacity plot."""

from __future__ import annotations

import io
import json
import math
from pathlib import Path
from typing import TYPE_CHECKING, Any, BinaryIO

from rich.console import Console
from rich.table import Table

if TYPE_CHECKING:
    from opscale.experiments.runner import RunResult


def _fmt_s(value: float | None) -> str:
    if value is None:
        return "-"
    return f"{value * 1000:.0f} ms" if value < 1 else f"{value:.2f} s"


def print_summary(run: RunResult, console: Console) -> None:
    """Per-tier latency and SLO (one column per tier, so it fits a narrow terminal), then the fleet."""
    r = run.result
    columns = [*r["tiers"].items(), ("all", r)]
    table = Table(title=f"{run.scenario.name} | policy {r['policy']} | seed {r['seed']}", title_justify="left")
    table.add_column("", no_wrap=True)
    for name, _ in columns:
        table.add_column(name, justify="right", no_wrap=True)
    rows: list[tuple[str, str]] = [
        ("requests", "requests"), ("completed", "completed"), ("dropped", "dropped"),
        ("TTFT p50", "ttft_p50_s"), ("TTFT p99", "ttft_p99_s"), ("TBT p50", "tbt_p50_s"), ("TBT p99", "tbt_p99_s"),
        ("E2E p50", "e2e_p50_s"), ("E2E p99", "e2e_p99_s"), ("SLO attained", "slo_attainment")]
    for label, key in rows:
        cells = []
        for _, t in columns:
            value = t[key]
            if key == "slo_attainment":
                cells.append(f"{value * 100:.2f}%")
            elif key.endswith("_s"):
                cells.append(_fmt_s(value))
            else:
                cells.append(f"{value:,}")
        table.add_row(label, *cells)
    console.print(table)
    fleet = Table(title="fleet", title_justify="left", show_header=False)
    fleet.add_column("", no_wrap=True)
    fleet.add_column("", justify="right", no_wrap=True)
    for label, value in (
            ("GPU-hours", f"{r['gpu_hours']:.1f}"), ("cost", f"${r['cost_usd']:,.0f}"),
            ("energy", f"{r['energy_kwh']:.1f} kWh"),
            # Two figures, not one: a decode engine is busy all the time at a small fraction of its compute.
            ("GPU utilisation (time busy, as nvidia-smi)", f"{r['mean_gpu_util'] * 100:.0f}%"),
            ("SM activity (compute used / peak)", f"{r['mean_sm_activity'] * 100:.1f}%"),
            ("scaling actions (plans that change replicas)", str(r["scaling_actions"])),
            ("cold starts / warm migrations", f"{r['cold_starts']} / {r['warm_migrations']}"),
            ("GPU-seconds spent loading", f"{r['scaling_gpu_s']:,.0f}"),
            ("oscillations per hour", f"{r['oscillations']:.2f}"),
            ("prompt tokens from prefix caches (GPU / host)",
             f"{r['prefix_hit_tokens']:,} / {r.get('prefix_host_hit_tokens', 0):,}"),
            ("simulated / wall", f"{r['simulated_s'] / 3600:.2f} h / {r['wall_s']:.1f} s")):
        fleet.add_row(label, value)
    console.print(fleet)
    _print_drops(run, console)
    # One column per pool, its name over three lines, so that it fits a narrow terminal as the tiers do.
    pools = Table(title="pools (token rates: means over the run)", title_justify="left")
    pools.add_column("", no_wrap=True)
    for name in r["pools"]:
        pools.add_column(name.replace("/", "\n"), justify="right", no_wrap=True)
    for label, key, fmt in (
            ("GPU-hours", "gpu_hours", "{:.1f}"), ("GPU util (time busy)", "gpu_util", "{:.0%}"),
            ("SM activity", "sm_activity", "{:.1%}"), ("decode tokens/s", "decode_tps", "{:,.0f}"),
            ("prefill tokens/s", "prefill_tps", "{:,.0f}"), ("  of them computed", "prefill_missed_tps", "{:,.0f}")):
        pools.add_row(label, *(fmt.format(p[key]) for p in r["pools"].values()))
    console.print(pools)


def _print_drops(run: RunResult, console: Console) -> None:
    """Dropped requests by cause, and what to do about the one a fleet choice causes."""
    from opscale.experiments.scenario import context_hint
    from opscale.runtime.sim.world import DROP_CAUSES

    r = run.result
    causes = r.get("dropped_by_cause") or {}
    for cause, n in causes.items():
        console.print(f"dropped: {n:,} {cause} ({DROP_CAUSES.get(cause, cause)})")
    if "longer_than_context" in causes:
        hint = context_hint(run.scenario)
        if hint is not None:
            console.print(f"[yellow]hint: {hint}[/yellow]", highlight=False)


def write_outputs(run: RunResult, out: Path) -> list[Path]:
    return write_files(render_outputs(run), out)


def render_outputs(run: RunResult) -> dict[str, bytes]:
    """A run's files by name, rendered in memory: result.json and load_vs_capacity.png. Whoever ran the
    run (this process, a worker, a Ray node) returns them, and the caller writes them where it chose."""
    plot = io.BytesIO()
    plot_load_vs_capacity(run, plot)
    return {"result.json": (json.dumps(_jsonable(run.result), indent=2, sort_keys=True) + "\n").encode(),
            "load_vs_capacity.png": plot.getvalue()}


def write_files(files: dict[str, bytes], out: Path) -> list[Path]:
    out.mkdir(parents=True, exist_ok=True)
    paths = [out / name for name in files]
    for path, data in zip(paths, files.values(), strict=True):
        path.write_bytes(data)
    return paths


def _jsonable(value: Any) -> Any:
    """Round floats so reruns compare byte for byte; NaN and infinities become null."""
    if isinstance(value, float):
        return round(value, 9) if math.isfinite(value) else None
    if isinstance(value, dict):
        return {k: _jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_jsonable(v) for v in value]
    return value


def plot_load_vs_capacity(run: RunResult, path: Path | BinaryIO) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    timeline = run.collector.timeline
    pools = sorted({p for pt in timeline for p in (*pt.arrivals_per_min, *pt.instances)})
    fig, axes = plt.subplots(len(pools) + 1, 1, figsize=(10, 2.4 * (len(pools) + 1)), sharex=True)
    axes = list(axes) if len(pools) else [axes]
    interval = run.scenario.sample_interval_s
    for ax, pool in zip(axes, pools, strict=False):
        t = [pt.at_s / 60 for pt in timeline]
        load = [pt.arrivals_per_min.get(pool, 0) / interval for pt in timeline]
        ready = [pt.instances.get(pool, 0) for pt in timeline]
        ax.plot(t, load, color="tab:blue", label="arrivals (req/s)")
        ax.set_ylabel("req/s", color="tab:blue")
        twin = ax.twinx()
        twin.step(t, ready, where="post", color="tab:orange", label="ready instances")
        twin.set_ylabel("instances", color="tab:orange")
        twin.set_ylim(bottom=0)
        ax.set_title(pool, fontsize=9)
    total = axes[-1]
    # Operator replicas (operator-level runs) hold GPU-equivalents beside their instances' GPUs.
    total.step([pt.at_s / 60 for pt in timeline], [pt.gpus + pt.operator_gpus for pt in timeline], where="post",
               color="tab:green")
    total.set_ylabel("GPUs held")
    total.set_xlabel("simulated minutes")
    total.set_title("GPUs held by instances and operator replicas (all pools)", fontsize=9)
    fig.suptitle(f"load vs capacity: {run.scenario.name}, policy {run.result['policy']}")
    fig.tight_layout()
    fig.savefig(path, dpi=110, format="png")
    plt.close(fig)

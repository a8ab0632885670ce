"""An experiment's PNG plots, every variant on the same axes:
- demand_vs_capacity.png: per region, the GPUs the arrivals need (the same traffic for all) and each
  variant's ready GPUs over time;
- ttft_cdf.png: the latency tier's TTFT distribution per variant (log time axis);
- gpus_by_sku.png: per GPU SKU, each variant's ready GPUs over time.
Failed variants have nothing to draw and are left out.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from matplotlib.axes import Axes

    from opscale.experiments.variant_runner import VariantOutcome


def write_plots(out: Path, outcomes: list[VariantOutcome], latency_tier: str, title: str) -> list[Path]:
    import matplotlib

    matplotlib.use("Agg")
    done = [o for o in outcomes if o.ok and o.timeline is not None and o.result is not None]
    if not done:
        return []
    out.mkdir(parents=True, exist_ok=True)
    paths = [out / "demand_vs_capacity.png", out / "ttft_cdf.png", out / "gpus_by_sku.png"]
    _demand_vs_capacity(paths[0], done, title)
    _ttft_cdf(paths[1], done, latency_tier, title)
    _gpus_by_sku(paths[2], done, title)
    return paths


def _hours(outcome: VariantOutcome) -> list[float]:
    assert outcome.timeline is not None
    return [t / 3600 for t in outcome.timeline.at_s]


def _panels(count: int, height: float) -> tuple[object, list[Axes]]:
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(count, 1, figsize=(11, height * count), sharex=True, squeeze=False)
    return fig, [row[0] for row in axes]


def _save(fig: object, path: Path, title: str) -> None:
    import matplotlib.pyplot as plt

    fig.suptitle(title)  # type: ignore[attr-defined]
    fig.tight_layout()  # type: ignore[attr-defined]
    fig.savefig(path, dpi=100)  # type: ignore[attr-defined]
    plt.close(fig)  # type: ignore[arg-type]


def _demand_vs_capacity(path: Path, done: list[VariantOutcome], title: str) -> None:
    first = done[0].timeline
    assert first is not None
    regions = sorted(first.demand_gpus)
    fig, axes = _panels(len(regions), 2.8)
    for ax, region in zip(axes, regions, strict=True):
        ax.plot(_hours(done[0]), first.demand_gpus[region], color="black", linewidth=1.6,
                label="demand (GPUs needed at the modelled capacity)")
        for o in done:
            assert o.timeline is not None
            ax.step(_hours(o), o.timeline.ready_gpus[region], where="post", linewidth=0.9, label=o.name)
        ax.set_title(region, fontsize=9)
    _label_gpu_panels(axes)
    _save(fig, path, f"demand vs ready capacity per region: {title}")


def _ttft_cdf(path: Path, done: list[VariantOutcome], tier: str, title: str) -> None:
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(9, 5))
    for o in done:
        assert o.result is not None
        points = o.result.get("ttft_cdf", {}).get(tier)
        if points:
            ax.plot([max(s, 1e-4) for _, s in points], [p / 100 for p, _ in points], label=o.name)
    ax.set_xscale("log")
    ax.set_xlabel(f"TTFT (s), tier {tier}")
    ax.set_ylabel("fraction of requests")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=8)
    _save(fig, path, f"TTFT CDF: {title}")


def _gpus_by_sku(path: Path, done: list[VariantOutcome], title: str) -> None:
    # Every SKU any variant ran on: variants may deploy on different SKUs (a colocated fleet on one, a
    # disaggregated one on two), and a variant that never used a SKU draws zero GPUs of it.
    skus = sorted({sku for o in done if o.timeline is not None for sku in o.timeline.gpus_by_sku})
    fig, axes = _panels(len(skus), 2.8)
    for ax, sku in zip(axes, skus, strict=True):
        for o in done:
            assert o.timeline is not None
            hours = _hours(o)
            ax.step(hours, o.timeline.gpus_by_sku.get(sku) or [0] * len(hours), where="post", linewidth=0.9,
                    label=o.name)
        ax.set_title(f"{sku}: GPUs of ready instances", fontsize=9)
    _label_gpu_panels(axes)
    _save(fig, path, f"GPUs by SKU: {title}")


def _label_gpu_panels(axes: list[Axes]) -> None:
    for ax in axes:
        ax.set_ylabel("GPUs")
        ax.set_ylim(bottom=0)
    axes[0].legend(fontsize=7, ncol=3, loc="upper left")
    axes[-1].set_xlabel("simulated hours")

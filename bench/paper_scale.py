"""Wall time and memory of one experiment variant at a config's scale (default: sageserve at `paper`,
SageServe's 3 regions x 40 DGX-A100 servers, 4 models, a week of traffic).

Runs the variant in this process, as `opscale experiment run CONFIG --scale NAME --variants V
--parallel 1` does, and reports the requests simulated, simulated hours, wall seconds, peak resident
memory (resource.getrusage's ru_maxrss of this process) and requests per wall-clock second.

Baseline, measured in the same run first: the same variant at the config's default scale for the same
simulated hours (capped by `--baseline-hours`), so `speed_ratio` (the scaled run's requests per wall
second over the baseline's) says what the larger fleet costs per request, whatever the machine. The
baseline's peak memory is that of the process before the scaled run starts.

    python bench/paper_scale.py                                  # reactive, the whole week: long
    python bench/paper_scale.py --hours 0.5 --variant sageserve_mip_multi
    python bench/paper_scale.py --data-dir ../shared/data       # the real ServeGen shapes and lengths

Prints one JSON object as the last line of stdout. Timings are reported, never asserted.
"""

from __future__ import annotations

import argparse
import json
import resource
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _machine import machine  # noqa: E402

from opscale.experiments.comparison import (  # noqa: E402
    find_experiment,
    load_experiment,
    scaled_base,
    select_variants,
    variant_scenario,
)
from opscale.experiments.pipeline import with_data_dir  # noqa: E402
from opscale.experiments.runner import run_scenario  # noqa: E402


def _peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: KiB


def _run(config: str, scale: str | None, variant: str, hours: float | None, data_dir: Path | None) -> dict[str, Any]:
    exp, base = load_experiment(find_experiment(config))
    exp = select_variants(exp, [variant])
    base = with_data_dir(scaled_base(exp, base, scale), data_dir)
    scenario = variant_scenario(base, exp.variants[0], hours)
    started = time.perf_counter()
    result = run_scenario(scenario).result
    wall_s = time.perf_counter() - started
    return {"scale": scale or "default", "requests": result["requests"], "dropped": result["dropped"],
            "simulated_h": round(result["simulated_s"] / 3600, 3), "wall_s": round(wall_s, 1),
            "peak_rss_mb": round(_peak_rss_mb(), 1), "requests_per_wall_s": round(result["requests"] / wall_s),
            "slo_attainment": result["slo_attainment"], "gpu_hours": round(result["gpu_hours"], 1)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", default="sageserve")
    parser.add_argument("--scale", default="paper")
    parser.add_argument("--variant", default="reactive")
    parser.add_argument("--hours", type=float, default=None, help="Simulated hours (default: the scale's)")
    parser.add_argument("--baseline-hours", type=float, default=0.5, help="Most simulated hours of the baseline")
    parser.add_argument("--data-dir", type=Path, default=None, help="Real data (default: the config's)")
    args = parser.parse_args()
    exp, base = load_experiment(find_experiment(args.config))
    scaled_h = (args.hours if args.hours is not None else scaled_base(exp, base, args.scale).duration_s / 3600)
    baseline_h = min(scaled_h, args.baseline_hours)
    print(f"baseline: {args.variant} at the default scale for {baseline_h:g} simulated h", file=sys.stderr)
    baseline = _run(args.config, None, args.variant, baseline_h, args.data_dir)
    print(f"{args.variant} at scale {args.scale} for {scaled_h:g} simulated h", file=sys.stderr)
    scaled = _run(args.config, args.scale, args.variant, args.hours, args.data_dir)
    print(json.dumps({"bench": "paper_scale", "config": args.config, "variant": args.variant, "scaled": scaled,
                      "baseline": baseline,
                      "speed_ratio": round(scaled["requests_per_wall_s"] / baseline["requests_per_wall_s"], 3),
                      "machine": machine()}))


if __name__ == "__main__":
    main()

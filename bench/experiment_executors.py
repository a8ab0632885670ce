"""Wall time of one experiment on each executor: the local process pool (the baseline, the default) against
a local Ray, and optionally in this process (serial).

Runs a shipped experiment config (default `sageserve`, shortened with `--hours`) `--repeats` times on
each executor, alternating, so that a machine whose load changes during the run weighs on both alike.
Reports per executor its wall times, the sum of its runs' own `wall_s` (the simulations alone: the rest
is starting workers, rendering plots and the summary), the median wall time's ratio to the pool's, and
`same_results`: whether every result.json and summary.json is the same bytes as the pool's apart from
the wall-time lines, as it must be.

    python bench/experiment_executors.py                                  # sageserve, 0.25 h, pool vs ray
    python bench/experiment_executors.py --hours 0.1 --repeats 3 --executors pool ray serial

Needs the `ray` extra for the ray executor. Prints progress on stderr and one JSON object as the last
line of stdout. Timings are reported, never asserted.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _machine import machine  # noqa: E402

from opscale.experiments.comparison import find_experiment, load_experiment  # noqa: E402
from opscale.experiments.pipeline import run_and_write  # noqa: E402

WALL_LINE = re.compile(rb'^\s*"wall_s": [^\n]*\n', re.MULTILINE)
BASELINE = "pool"


def json_files(out: Path) -> dict[str, bytes]:
    return {str(p.relative_to(out)): WALL_LINE.sub(b"", p.read_bytes()) for p in sorted(out.rglob("*.json"))}


def runs_wall_s(out: Path) -> float:
    return sum(json.loads(p.read_text())["wall_s"] for p in out.rglob("result.json"))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", default="sageserve", help="a shipped config's name, or a YAML path")
    parser.add_argument("--hours", type=float, default=0.25, help="simulated hours of traffic")
    parser.add_argument("--parallel", type=int, default=None, help="runs at once (default: the cores)")
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--executors", nargs="+", default=[BASELINE, "ray"])
    parser.add_argument("--data-dir", type=Path, default=None)
    args = parser.parse_args()
    executors = [BASELINE, *(e for e in args.executors if e != BASELINE)]
    config, base = load_experiment(find_experiment(args.config))
    figures: dict[str, dict[str, Any]] = {e: {"wall_s": [], "runs_wall_s": [], "same_results": True}
                                          for e in executors}
    with tempfile.TemporaryDirectory(prefix="bench-executors-") as scratch:
        for repeat in range(args.repeats):
            reference: dict[str, bytes] | None = None
            for executor in executors:
                out = Path(scratch) / f"{executor}-{repeat}"
                load = os.getloadavg()[0]
                print(f"repeat {repeat + 1}/{args.repeats}: {executor} (load average {load:.1f})", file=sys.stderr)
                started = time.perf_counter()
                run_and_write(config, base, out, parallel=args.parallel, hours=args.hours, data_dir=args.data_dir,
                              executor=executor)
                figures[executor]["wall_s"].append(round(time.perf_counter() - started, 2))
                figures[executor]["runs_wall_s"].append(round(runs_wall_s(out), 2))
                files = json_files(out)
                reference = files if reference is None else reference
                figures[executor]["same_results"] &= files == reference
    pool_median = statistics.median(figures[BASELINE]["wall_s"])
    for entry in figures.values():
        entry["median_wall_s"] = statistics.median(entry["wall_s"])
        entry["wall_vs_pool"] = round(entry["median_wall_s"] / pool_median, 3)
    print(json.dumps({"bench": "experiment_executors", "machine": machine(), "config": args.config,
                      "hours": args.hours, "variants": len(config.variants), "repeats": args.repeats,
                      "baseline": BASELINE, "load_average_end": round(os.getloadavg()[0], 1),
                      "executors": figures}))


if __name__ == "__main__":
    main()

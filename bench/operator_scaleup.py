"""Scale-up latency of operator replicas against a full replica, and a load step at both levels
(issue 14 item 6; PAPERS.md §1.6: OpScale measures 0.03 s for one operator, 0.18 s for 50% of the
operators, 0.33 s for all of them and 10.68 s for a full Qwen2-7B replica).

The table is `opscale.planning.operators.scaleup.scaleup_table` (from the weight bytes moved; see
its docstring), the one the `operators` experiment reports.

The step: Poisson arrivals stepping x6 (5 -> 30 requests/s of ~2K-token prompts) on one pool,
run in the stage-queue world (`opscale.runtime.sim.operator_stages`) by `operator_level` and
`model_level` on the same seed: when the first capacity added after the step serves, when the last
TTFT miss after the step arrived (recovered_s), SLO attainment in the 15 s after the step and over
the run, GPU-hours (GPU-equivalents) and energy. Prints one JSON object as its last line.

    python bench/operator_scaleup.py
    python bench/operator_scaleup.py --model Qwen2-57B-A14B --ttft 2 --low 2 --high 12
"""

from __future__ import annotations

import argparse
import json
import random
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _machine import machine  # noqa: E402

from opscale.model import Request, TierSpec  # noqa: E402
from opscale.perf import default_catalog  # noqa: E402
from opscale.planning.base import DeploymentSpec  # noqa: E402
from opscale.planning.operators.scaleup import PAPER_QWEN2_7B_S  # noqa: E402
from opscale.planning.operators.scaleup import scaleup_table as scaleup_table_of  # noqa: E402
from opscale.planning.registry import make_planning_policy  # noqa: E402
from opscale.runtime.sim.operator_stages import StageWorld  # noqa: E402

PAPER = PAPER_QWEN2_7B_S


def scaleup_table(model_name: str, sku_name: str) -> dict[str, object]:
    catalog = default_catalog()
    return scaleup_table_of(catalog.model(model_name), catalog.sku(sku_name))


def step_run(model: str, sku: str, ttft: float, tbt: float, low: float, high: float, seed: int) -> dict[str, object]:
    step_s, end_s, until_s = 30.0, 60.0, 90.0
    rng = random.Random(seed)
    requests, t = [], 0.0
    while True:
        t += rng.expovariate(low if t < step_s else high)
        if t >= end_s:
            break
        requests.append(Request(f"r{len(requests)}", model, "interactive", "eu", t, rng.randint(1536, 2560),
                                rng.randint(8, 24)))
    deployment = DeploymentSpec(model=model, sku=sku, typical_prompt_tokens=2048, typical_output_tokens=16)
    tiers = {"interactive": TierSpec("interactive", ttft_slo_s=ttft, tbt_slo_s=tbt)}
    out: dict[str, object] = {}
    for level in ("operator", "model"):
        policy = make_planning_policy(f"{level}_level", [deployment], lambda *a, **k: 1.0, tiers=tiers)
        start = time.perf_counter()
        run = StageWorld(policy, model, region="eu", initial_rps=low).run(requests, until_s)  # type: ignore[arg-type]
        out[f"{level}_level"] = {
            "requests": run.requests, "completed": run.completed, "dropped": run.dropped,
            "double_counted": run.double_counted,
            "first_capacity_ready_s": run.first_ready_s(step_s, step_s + 10.0),
            "recovered_s": run.recovered_s(step_s, end_s),
            "slo_attainment_step_15s": run.slo_attainment(step_s, step_s + 15.0),
            "slo_attainment": run.slo_attainment(),
            "ttft_p99_s": run.ttft_quantile(0.99),
            "gpu_hours": run.gpu_hours, "energy_kwh": run.energy_kwh, "replica_starts": len(run.scale_ups),
            "wall_s": time.perf_counter() - start,
        }
    op, ml = out["operator_level"], out["model_level"]
    out["gpu_hours_ratio"] = op["gpu_hours"] / ml["gpu_hours"]  # type: ignore[index,operator]
    out["energy_ratio"] = op["energy_kwh"] / ml["energy_kwh"]  # type: ignore[index,operator]
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="Qwen2-7B")
    parser.add_argument("--sku", default="H100-80GB")
    parser.add_argument("--ttft", type=float, default=1.0)
    parser.add_argument("--tbt", type=float, default=0.1)
    parser.add_argument("--low", type=float, default=5.0)
    parser.add_argument("--high", type=float, default=30.0)
    parser.add_argument("--seed", type=int, default=5)
    args = parser.parse_args()
    result = {
        "scaleup": scaleup_table(args.model, args.sku),
        "paper_qwen2_7b": PAPER,
        "step": step_run(args.model, args.sku, args.ttft, args.tbt, args.low, args.high, args.seed),
        "machine": machine(),
    }
    print(json.dumps(result))


if __name__ == "__main__":
    main()

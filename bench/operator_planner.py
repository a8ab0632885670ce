"""Plan time and quality of the operator planner (`opscale.planning.operators`, issue 14 item 4).

For a range of loads on one model and SKU: the greedy operator-level plan's wall time per call
(`plan_p50_ms`, `plan_p99_ms`) as a controller would see it, under the interpreter's default garbage
collector, with no tuning (cost tables are built once per workload shape, as OpScale's profiles are,
and `cold_plan_ms` reports the first call that builds them). The model-level baseline's plans are timed
in the same loop, alternating with the operator-level ones so that a shared machine's noise falls on
both alike (`model_plan_*`, and the ratios `plan_*_over_model`). `plan_cpu_*` is the thread's CPU time,
free of the preemptions of a shared machine; `gc` counts the collector's passes (by generation) and
their longest pause during the timed plans; `plan_*_gc_frozen` repeats the timing after `gc.freeze()`
of the start-up heap, for comparison only. Quality: GPUs against the model-level baseline on the same
queueing model, and against the exhaustive oracle on the small cases (`oracle_gap`: the fraction of
extra GPUs over the oracle, worst over the cases; the exhaustive search is bounded by the greedy
answer's GPUs, which any better plan must undercut, so it is exact). OpScale reports 2.6 ms median /
3.2 ms p99 at 7B. Prints one JSON object as its last line.

    python bench/operator_planner.py --model Qwen2-7B --sku H100-80GB
    python bench/operator_planner.py --model Qwen2-57B-A14B --ttft 2
    python bench/operator_planner.py --shares 1          # whole GPUs only (no spatial sharing)
    python bench/operator_planner.py --bandwidth-floor 0.5 --interference 0.2   # sharing sensitivity

Operator-level stages may run on SM shares (`--shares`, MPS-style partitions priced by
`opscale.perf.sm_share`); their replicas, with both phases', are packed onto whole GPUs, and
`operator_gpus` is the packed count (`operator_gpu_cost` the GPU-equivalents before packing).
`oracle_gap` compares packed GPUs; `oracle_cost_gap` the pre-packing cost the oracle minimises.
`placed` is the placement's view (`opscale.planning.operators.placement`): hosts used, and the path
latencies with the contention its co-located replicas cause and the transfers of where they sit.
Power is the plan's predicted draw at its load (`opscale.planning.operators.energy`).
"""

from __future__ import annotations

import argparse
import gc
import json
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _machine import machine  # noqa: E402

from opscale.model import LatencyObjective  # noqa: E402
from opscale.perf import default_catalog  # noqa: E402
from opscale.perf.sm_share import SmShareParams  # noqa: E402
from opscale.planning.operators import OperatorPlanner, OperatorPlannerConfig, StagePlan, Workload  # noqa: E402

LOADS = (10, 20, 40, 60, 80, 100, 120, 160, 200, 240)  # requests/s: OpScale's 10-100 QPS and its sweeps
ORACLE_LOADS = (1, 2, 5, *LOADS)  # bounded by the greedy answer, the exhaustive search stays small here


def _pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


class _GcWatch:
    """Counts the collector's passes by generation and their longest pause while installed."""

    def __init__(self) -> None:
        self.passes = [0, 0, 0]
        self.longest_ms = 0.0
        self._start = 0.0

    def __call__(self, phase: str, info: dict[str, int]) -> None:
        if phase == "start":
            self._start = time.perf_counter()
        else:
            self.passes[info["generation"]] += 1
            self.longest_ms = max(self.longest_ms, (time.perf_counter() - self._start) * 1e3)


def _time_plans(planner: OperatorPlanner, args: argparse.Namespace) -> dict[str, list[float] | _GcWatch]:
    """Wall and thread-CPU milliseconds of `repeats` greedy plans per load, each followed by the
    model-level plan of the same load (CPU: the same plans without the preemptions of a shared machine)."""
    times: dict[str, list[float] | _GcWatch] = {"wall": [], "cpu": [], "model_wall": [], "model_cpu": []}
    watch = _GcWatch()
    gc.callbacks.append(watch)
    try:
        for rps in LOADS:
            workload = Workload(float(rps), args.prompt, args.output)
            for _ in range(args.repeats):
                for search, prefix in ((planner.plan, ""), (planner.model_level, "model_")):
                    start, start_cpu = time.perf_counter(), time.thread_time()
                    search(workload)
                    times[prefix + "wall"].append((time.perf_counter() - start) * 1e3)  # type: ignore[union-attr]
                    times[prefix + "cpu"].append((time.thread_time() - start_cpu) * 1e3)  # type: ignore[union-attr]
    finally:
        gc.callbacks.remove(watch)
    times["gc"] = watch
    return times


def _summary(timed: dict[str, list[float] | _GcWatch]) -> dict[str, object]:
    """The headline timings (default collector): percentiles, the model-level baseline's and the ratios."""
    out: dict[str, object] = {}
    for prefix in ("", "model_"):
        for kind, label in (("wall", "plan"), ("cpu", "plan_cpu")):
            values: list[float] = timed[prefix + kind]  # type: ignore[assignment]
            out[f"{prefix}{label}_p50_ms"] = round(statistics.median(values), 3)
            out[f"{prefix}{label}_p99_ms"] = round(_pct(values, 0.99), 3)
    for q in ("p50", "p99"):
        out[f"plan_{q}_over_model"] = round(out[f"plan_{q}_ms"] / out[f"model_plan_{q}_ms"], 2)  # type: ignore[operator]
    watch: _GcWatch = timed["gc"]  # type: ignore[assignment]
    out["plans_timed"] = len(timed["wall"])  # type: ignore[arg-type]
    out["gc"] = {"collector": "default (untuned)", "passes_by_generation": watch.passes,
                 "longest_pause_ms": round(watch.longest_ms, 3)}
    return out


def _stage(s: StagePlan) -> str:
    share = "" if s.share >= 1 else f" sm{s.share:g}"
    return f"{s.name} x{s.replicas} tp{s.tp}{share} b{s.batch}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="Qwen2-7B")
    parser.add_argument("--sku", default="H100-80GB")
    parser.add_argument("--ttft", type=float, default=1.0, help="TTFT p99 SLO, seconds (OpScale: 1 s at 7B)")
    parser.add_argument("--tbt", type=float, default=0.1, help="TBT p99 SLO, seconds (PAPERS.md §5 default)")
    parser.add_argument("--prompt", type=int, default=1024)
    parser.add_argument("--output", type=int, default=256)
    parser.add_argument("--repeats", type=int, default=50, help="timed plans per load")
    parser.add_argument("--shares", type=float, nargs="+", default=list(SmShareParams().shares),
                        help="SM shares a stage replica may run on")
    parser.add_argument("--bandwidth-floor", type=float, default=SmShareParams().bandwidth_floor)
    parser.add_argument("--interference", type=float, default=SmShareParams().interference)
    args = parser.parse_args()
    sharing = SmShareParams(shares=tuple(args.shares), bandwidth_floor=args.bandwidth_floor,
                            interference=args.interference)

    catalog = default_catalog()
    model, sku = catalog.model(args.model), catalog.sku(args.sku)
    planner = OperatorPlanner(model, sku, LatencyObjective(ttft_slo_s=args.ttft, tbt_slo_s=args.tbt),
                              OperatorPlannerConfig(sharing=sharing))

    start = time.perf_counter()
    planner.plan(Workload(LOADS[0], args.prompt, args.output))
    cold_ms = (time.perf_counter() - start) * 1e3

    # As a controller runs: the interpreter's default collector, untuned. Then, for comparison only,
    # with the start-up heap frozen (gc.freeze: kept out of later collections).
    timed = _time_plans(planner, args)
    gc.collect()
    gc.freeze()
    frozen = _time_plans(planner, args)
    gc.unfreeze()
    loads = []
    for rps in LOADS:
        workload = Workload(float(rps), args.prompt, args.output)
        plan = planner.plan(workload)
        base = planner.model_level(workload)
        loads.append({
            "rps": rps, "operator_gpus": plan.gpus, "model_gpus": base.gpus,
            "gpu_ratio": round(plan.gpus / base.gpus, 3),
            "operator_gpu_cost": round(plan.gpu_cost, 3), "packing_lower_bound": plan.packing.lower_bound,
            "operator_power_w": round(plan.energy.power_w, 1), "model_power_w": round(base.energy.power_w, 1),
            "energy_ratio": round(plan.energy.power_w / base.energy.power_w, 3),
            "operator_j_per_output_token": round(plan.energy.j_per_output_token, 4),
            "model_j_per_output_token": round(base.energy.j_per_output_token, 4),
            "prefill": {"operator_gpu_cost": round(plan.prefill.gpus, 3), "model_gpus": base.prefill.gpus,
                        "stages": [_stage(s) for s in plan.prefill.stages],
                        "ttft_pred_s": round(plan.prefill.latency_s, 4)},
            "decode": {"operator_gpu_cost": round(plan.decode.gpus, 3), "model_gpus": base.decode.gpus,
                       "stages": [_stage(s) for s in plan.decode.stages],
                       "tbt_pred_s": round(plan.decode.latency_s, 5)},
            "meets_slo": plan.meets_slo,
            "placed": {"hosts": plan.packing.hosts, "meets_slo": plan.packing.meets_slo,
                       "ttft_s": round(plan.packing.phases[0].latency_s, 4),
                       "tbt_s": round(plan.packing.phases[1].latency_s, 5)},
        })

    oracle_cases = []
    for rps in ORACLE_LOADS:
        workload = Workload(float(rps), args.prompt, args.output)
        greedy = planner.plan(workload)
        start = time.perf_counter()
        oracle = planner.oracle(workload)
        oracle_ms = (time.perf_counter() - start) * 1e3
        oracle_cases.append({"rps": rps, "greedy_gpus": greedy.gpus, "oracle_gpus": oracle.gpus,
                             "gap": round(greedy.gpus / oracle.gpus - 1, 4),
                             "greedy_cost": round(greedy.gpu_cost, 3), "oracle_cost": round(oracle.gpu_cost, 3),
                             "cost_gap": round(greedy.gpu_cost / oracle.gpu_cost - 1, 4),
                             "oracle_ms": round(oracle_ms, 2)})

    total_op = sum(r["operator_gpus"] for r in loads)
    total_model = sum(r["model_gpus"] for r in loads)
    result = {
        "bench": "operator_planner", "model": model.name, "sku": sku.name,
        "ttft_slo_s": args.ttft, "tbt_slo_s": args.tbt, "prompt_tokens": args.prompt, "output_tokens": args.output,
        **_summary(timed), "cold_plan_ms": round(cold_ms, 3),
        "plan_p50_ms_gc_frozen": round(statistics.median(frozen["wall"]), 3),  # type: ignore[arg-type]
        "plan_p99_ms_gc_frozen": round(_pct(frozen["wall"], 0.99), 3),  # type: ignore[arg-type]
        "oracle_gap": max(c["gap"] for c in oracle_cases),
        "oracle_cost_gap": max(c["cost_gap"] for c in oracle_cases), "oracle_cases": oracle_cases,
        "sharing": sharing.model_dump(mode="json"),
        "baseline": "model_level: whole-model replicas on the same M/M/R model (one stage per phase)",
        "gpu_ratio_over_loads": round(total_op / total_model, 3),
        "energy_ratio_over_loads": round(sum(r["operator_power_w"] for r in loads)
                                         / sum(r["model_power_w"] for r in loads), 3),
        "loads": loads,
        "paper": {"plan_p50_ms": 2.6, "plan_p99_ms": 3.2, "source": "OpScale, PAPERS.md §1.6 (7B)"},
        "machine": machine(),
    }
    print(json.dumps(result))


if __name__ == "__main__":
    main()

"""A unified engine on an SM-share partition of a GPU against the same engine on the whole GPU, at the
same arrival rate per GPU-equivalent (issue 14: why the `operator_level` policy plans a stage of every
operator on whole GPUs).

The operator planner prices a stage of every operator at SM share s on the partition's roof
(`opscale.perf.sm_share`); `partition_engine_sku` gives an engine exactly those prices (a unit test
checks it). This runs one simulated engine (opscale.engine.SimEngine) per case on Poisson arrivals with
lognormal lengths of the `operators` experiment's means (1155 prompt, 211 output tokens): the whole GPU
at `rate` req/s, and a partition of share s at s x `rate`. It reports SLO attainment (TTFT <= 1 s, mean
TBT <= 0.1 s), TTFT p99 and the engines' busy fraction. Prints one JSON object as its last line.

    python bench/sm_share_engine.py
    python bench/sm_share_engine.py --rates 14 18 22 --shares 0.5 0.25
"""

from __future__ import annotations

import argparse
import json
import math
import random
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _machine import machine  # noqa: E402

from opscale.engine import SimEngine  # noqa: E402
from opscale.engine.outputs import Finished  # noqa: E402
from opscale.model import Request  # noqa: E402
from opscale.perf import default_catalog  # noqa: E402
from opscale.perf.profiled import latency_model_for  # noqa: E402
from opscale.perf.sm_share import SmShareParams, partition_engine_sku  # noqa: E402

TTFT_S, TBT_S = 1.0, 0.1


def run(model_name: str, sku_name: str, share: float, rps: float, duration_s: float, seed: int) -> dict[str, float]:
    catalog = default_catalog()
    model = catalog.model(model_name)
    sku = partition_engine_sku(catalog.sku(sku_name), share, SmShareParams())
    engine = SimEngine("e", model, sku, 1, latency_model_for(model, sku, 1))
    engine.emit_first_tokens = False
    rng = random.Random(seed)
    requests, t = [], 0.0
    while True:
        t += rng.expovariate(rps)
        if t >= duration_s:
            break
        prompt = max(1, min(8192, int(rng.lognormvariate(math.log(1155) - 0.5, 1.0))))
        output = max(1, min(2048, int(rng.lognormvariate(math.log(211) - 0.5, 1.0))))
        requests.append(Request(f"r{len(requests)}", model.name, "interactive", "eu", t, prompt, output))
    met, ttfts = 0, []
    i = 0
    while True:
        next_s = engine.next_event_s()
        if i < len(requests) and (next_s is None or requests[i].arrival_s <= next_s):
            now = requests[i].arrival_s
            outputs = engine.advance(now)
            engine.submit(requests[i], now)
            i += 1
        elif next_s is not None:
            outputs = engine.advance(next_s)
        else:
            break
        for out in outputs:
            if isinstance(out, Finished):
                request = requests[int(out.request_id[1:])]
                ttft = out.first_token_s - request.arrival_s
                tbt = (out.at_s - out.first_token_s) / (out.output_tokens - 1) if out.output_tokens > 1 else 0.0
                ttfts.append(ttft)
                met += ttft <= TTFT_S and tbt <= TBT_S
    ttfts.sort()
    end_s = max(duration_s, engine.next_event_s() or 0.0)
    return {"share": share, "rps": rps, "rps_per_gpu": rps / share, "requests": len(requests),
            "slo_attainment": met / len(requests), "ttft_p99_s": ttfts[int(0.99 * (len(ttfts) - 1))],
            "busy_frac": engine.busy_s / end_s}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="Qwen2-7B")
    parser.add_argument("--sku", default="H100-80GB")
    parser.add_argument("--rates", type=float, nargs="+", default=[14.0, 18.0, 22.0],
                        help="req/s per GPU-equivalent")
    parser.add_argument("--shares", type=float, nargs="+", default=[0.5])
    parser.add_argument("--duration", type=float, default=600.0)
    parser.add_argument("--seed", type=int, default=1)
    args = parser.parse_args()
    cases = []
    for rate in args.rates:
        whole = run(args.model, args.sku, 1.0, rate, args.duration, args.seed)
        for share in args.shares:
            part = run(args.model, args.sku, share, rate * share, args.duration, args.seed)
            cases.append({"rps_per_gpu": rate, "whole": whole, "partition": part,
                          "slo_ratio": part["slo_attainment"] / whole["slo_attainment"]})
            print(f"{rate:5.1f} req/s per GPU: whole {whole['slo_attainment']:.4f}, share {share:g} "
                  f"{part['slo_attainment']:.4f}", file=sys.stderr)
    print(json.dumps({"bench": "sm_share_engine", "model": args.model, "sku": args.sku, "machine": machine(),
                      "cases": cases}))


if __name__ == "__main__":
    main()

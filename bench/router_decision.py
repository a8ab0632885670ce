"""Per-request routing decision time of the router core, with N ready instances.

Measures `RouterCore.handle(RequestArrived)` (the decision and its accounting) followed by the matching
`RequestFinished`, for each routing policy, against a baseline of the cheapest possible decision
(picking a fixed candidate) measured in the same run. Prints one JSON object as its last line.

    python bench/router_decision.py --instances 1000 --requests 20000
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _machine import machine  # noqa: E402

from opscale.model import InstanceState, InstanceStatus, Request, RequestOutcome, Role  # noqa: E402
from opscale.routing import RoutingPolicyName  # noqa: E402
from opscale.routing.base import Candidate  # noqa: E402
from opscale.services.events import AgentHeartbeat, RequestArrived, RequestFinished  # noqa: E402
from opscale.services.router import RouterConfig, RouterCore  # noqa: E402
from opscale.stats import percentile  # noqa: E402


class FirstCandidate:
    """Baseline: no choice at all, only the router's bookkeeping."""

    name = "first_candidate"

    def choose(self, request: Request, candidates: list[Candidate]) -> Candidate:
        return candidates[0]


def build_router(policy: object, instances: int) -> RouterCore:
    router = RouterCore(RouterConfig(policy="jsq_tokens"), policy=policy)  # type: ignore[arg-type]
    per_agent = 8
    for a in range(0, instances, per_agent):
        statuses = tuple(
            InstanceStatus(f"i{i}", "m", "H100-80GB", 1, Role.UNIFIED, InstanceState.READY, endpoint=f"http://h/{i}")
            for i in range(a, min(a + per_agent, instances)))
        router.handle(AgentHeartbeat(f"a{a}", "eu", "H100-80GB", 8, "", 1, 0.0, statuses), 0.0)
    return router


def measure(router: RouterCore, requests: int, in_flight: int) -> list[float]:
    samples: list[float] = []
    pending: list[RequestOutcome] = []
    clock = time.perf_counter_ns
    for n in range(requests):
        req = Request(f"r{n}", "m", "interactive", "eu", float(n), 100 + n % 900, 10 + n % 200)
        event = RequestArrived(req)
        t0 = clock()
        [dispatch] = router.handle(event, float(n))
        samples.append((clock() - t0) / 1000.0)
        pending.append(RequestOutcome(req.request_id, "m", "interactive", "eu", "eu", dispatch.instance_id, float(n),
                                      n + 0.1, n + 1.0, req.prompt_tokens, req.output_tokens))
        if len(pending) > in_flight:  # keep a steady number of requests in flight
            router.handle(RequestFinished(pending.pop(0)), float(n))
    return samples


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--instances", type=int, default=1000)
    parser.add_argument("--requests", type=int, default=20000)
    parser.add_argument("--in-flight", type=int, default=2000, help="requests kept in flight while measuring")
    ns = parser.parse_args()

    def row(policy: object) -> dict[str, float]:
        router = build_router(policy, ns.instances)
        measure(router, min(2000, ns.requests), ns.in_flight)  # warm-up
        s = measure(router, ns.requests, ns.in_flight)
        return {"decision_p50_us": percentile(s, 50), "decision_p99_us": percentile(s, 99),
                "decision_mean_us": sum(s) / len(s)}

    from opscale.routing import make_routing_policy

    baseline = row(FirstCandidate())
    policies = {name.value: row(make_routing_policy(name.value)) for name in RoutingPolicyName}
    result = {
        "benchmark": "router_decision", "instances": ns.instances, "requests": ns.requests,
        "machine": machine(), "baseline": {"policy": "first_candidate", **baseline}, "policies": policies,
        "decision_p99_us": {name: r["decision_p99_us"] for name, r in policies.items()},
        "target_p99_us": 50.0,
    }
    print(json.dumps(result))


if __name__ == "__main__":
    main()

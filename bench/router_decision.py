"""Per-request routing decision time of the router core, with N ready instances.

Measures `RouterCore.handle(RequestArrived)` (the decision and its accounting) for each routing policy
in the registry, with a steady number of requests in flight (completions are fed back between
arrivals, not timed), against a baseline of the cheapest possible decision (picking a fixed candidate)
measured in the same run. Two choices the router does not make per arrival are timed on their own:
`pd_pairing.choose_pair` (a prefill/decode pair from N/2 + N/2 candidates, with its index updates; the
hosts sit under switches, two hosts a leaf, four leaves a mini-pod, four mini-pods a big-pod, unless
`--no-switches`) and
`tier_priority.hold` (holding a request in a tier-priority queue of about N requests and taking the
next one out). Instances report spread KV usage and requests carry prefix hashes, so least_kv and
prefix_affinity take their real paths. `kv_aware.chat` times kv_aware on chat-shaped requests (8 prefix
blocks: one of 8 system prompts every instance holds, then a conversation's own blocks, held by one
instance) over a prefix index fed by KV events, which keep arriving between timed batches.

How it measures, so that other load on a shared machine falls on every row alike:
- rounds: every workload (the baseline included) runs ROUND requests in turn, round after round, so a
  burst of contention lands on all of them rather than on whichever ran at that moment;
- two clocks per decision: the thread's CPU clock (`decision_*`: what the decision costs while it
  runs; time this process spends descheduled does not count; reading the clock costs about 1 µs,
  included) and the wall clock (`wall_decision_*`: descheduling included);
- the garbage collector runs between batches of GC_BATCH requests, outside the timed region: otherwise
  a young-generation collection (every few hundred allocations, tens of µs) lands in about 1 % of the
  samples and the p99 measures the collector rather than the decision.
Prints one JSON object as its last line.

    python bench/router_decision.py --instances 1000 --requests 20000
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import sys
import time
from collections import deque
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _machine import machine  # noqa: E402

from opscale.model import InstanceState, InstanceStatus, Request, RequestOutcome, Role  # noqa: E402
from opscale.routing import RoutingPolicyName, make_hold_queue, make_routing_policy  # noqa: E402
from opscale.routing.base import Candidate  # noqa: E402
from opscale.routing.pd_pairing import PdPairing  # noqa: E402
from opscale.services.events import (  # noqa: E402
    AgentHeartbeat,
    KvBlockEvent,
    KvEventBatch,
    KvEventKind,
    RequestArrived,
    RequestFinished,
)
from opscale.services.router import RouterConfig, RouterCore  # noqa: E402
from opscale.stats import percentile  # noqa: E402

PER_AGENT = 8
GC_BATCH = 200  # requests per timed batch; a collection runs between batches
ROUND = 1000  # requests per workload per round


class FirstCandidate:
    """Baseline: no choice at all, only the router's bookkeeping."""

    name = "first_candidate"

    def choose(self, request: Request, candidates: list[Candidate]) -> Candidate:
        return candidates[0]


def request(n: int, tier: str = "interactive") -> Request:
    return Request(f"r{n}", "m", tier, "eu", float(n), 100 + n % 900, 10 + n % 200, prefix_hashes=(n % 257, n))


class Samples:
    """Decision times in µs on the thread's CPU clock and on the wall clock."""

    def __init__(self) -> None:
        self.cpu_us: list[float] = []
        self.wall_us: list[float] = []

    def add(self, cpu_ns: int, wall_ns: int) -> None:
        self.cpu_us.append(cpu_ns / 1000.0)
        self.wall_us.append(wall_ns / 1000.0)

    def summary(self) -> dict[str, float]:
        c, w = self.cpu_us, self.wall_us
        return {"decision_p50_us": percentile(c, 50), "decision_p99_us": percentile(c, 99),
                "decision_mean_us": sum(c) / len(c), "wall_decision_p50_us": percentile(w, 50),
                "wall_decision_p99_us": percentile(w, 99), "wall_decision_mean_us": sum(w) / len(w)}


def collect_between_batches(n: int) -> None:
    """Keep the collector out of the timed region: it is off while timing, and runs every GC_BATCH."""
    if n % GC_BATCH == 0:
        gc.collect(0)


CONVERSATIONS = 2000


def chat_request(n: int) -> Request:
    """A turn of conversation n % CONVERSATIONS: its system prompt's block, then 7 blocks of its own."""
    conv = n % CONVERSATIONS
    hashes = (conv % 8, *(10_000 + conv * 8 + k for k in range(7)))
    return Request(f"r{n}", "m", "interactive", "eu", float(n), 4096 + n % 500, 10 + n % 200, prefix_hashes=hashes)


class RouterWorkload:
    """Arrivals into a router of N instances, with `in_flight` requests kept running."""

    make_request: Callable[[int], Request] = staticmethod(request)

    def __init__(self, policy: object, instances: int, in_flight: int) -> None:
        self.router = RouterCore(RouterConfig(policy="jsq_tokens"), policy=policy)  # type: ignore[arg-type]
        for a in range(0, instances, PER_AGENT):
            statuses = tuple(
                InstanceStatus(f"i{i}", "m", "H100-80GB", 1, Role.UNIFIED, InstanceState.READY,
                               endpoint=f"http://h/{i}", kv_used_frac=(i * 37 % 100) / 100)
                for i in range(a, min(a + PER_AGENT, instances)))
            self.router.handle(AgentHeartbeat(f"a{a}", "eu", "H100-80GB", 8, "", 1, 0.0, statuses), 0.0)
        self.in_flight = in_flight
        self.pending: deque[RequestOutcome] = deque()
        self.next = 0

    def run(self, count: int, samples: Samples | None) -> None:
        router, pending = self.router, self.pending
        cpu, wall = time.thread_time_ns, time.perf_counter_ns
        for n in range(self.next, self.next + count):
            collect_between_batches(n)
            req = self.make_request(n)
            event = RequestArrived(req)
            w0, c0 = wall(), cpu()
            [dispatch] = router.handle(event, float(n))
            c1, w1 = cpu(), wall()
            if samples is not None:
                samples.add(c1 - c0, w1 - w0)
            pending.append(RequestOutcome(req.request_id, "m", "interactive", "eu", "eu", dispatch.instance_id,
                                          float(n), n + 0.1, n + 1.0, req.prompt_tokens, req.output_tokens))
            if len(pending) > self.in_flight:  # keep a steady number of requests in flight
                router.handle(RequestFinished(pending.popleft()), float(n))
        self.next += count


class KvChatWorkload(RouterWorkload):
    """kv_aware on chat turns; every instance holds the 8 system prompts, each conversation's blocks sit
    on one instance, and each instance re-reports a conversation between timed batches."""

    make_request = staticmethod(chat_request)

    def __init__(self, instances: int, in_flight: int) -> None:
        super().__init__(make_routing_policy("kv_aware"), instances, in_flight)
        self.instances = instances
        self.seq = [0] * instances
        for i in range(instances):
            convs = range(i, CONVERSATIONS, instances)
            events = (KvBlockEvent(KvEventKind.STORED, tuple(range(8)), None, (), 512, "GPU"),
                      *(KvBlockEvent(KvEventKind.STORED, chat_request(c).prefix_hashes[1:], c % 8, (), 512, "GPU")
                        for c in convs))
            self._publish(i, events)

    def _publish(self, i: int, events: tuple[KvBlockEvent, ...]) -> None:
        self.seq[i] += 1
        self.router.handle(KvEventBatch(f"i{i}", "m", 0.0, self.seq[i], events), 0.0)

    def run(self, count: int, samples: Samples | None) -> None:
        super().run(count, samples)
        for i in range(0, self.instances, 7):  # untimed: a few instances report between batches
            conv = (self.next + i) % CONVERSATIONS
            self._publish(i, (KvBlockEvent(KvEventKind.STORED, chat_request(conv).prefix_hashes[1:], conv % 8, (),
                                           512, "GPU"),))


class PairingWorkload:
    """choose_pair_indexed plus the index updates its dispatch and an earlier completion cause."""

    def __init__(self, instances: int, in_flight: int, switches: bool = True) -> None:
        self.policy = PdPairing()
        half = max(1, instances // 2)

        def where(i: int) -> dict[str, str]:
            host = i // PER_AGENT
            return {"s0": f"l{host // 2}", "s1": f"p{host // 8}", "s2": f"b{host // 32}"} if switches else {}

        self.prefill = [Candidate(f"p{i}", "m", "eu", "", f"a{i // PER_AGENT}", role=Role.PREFILL, **where(i))
                        for i in range(half)]
        self.decode = [Candidate(f"d{i}", "m", "eu", "", f"a{i // PER_AGENT}", role=Role.DECODE,
                                 kv_usage=(i * 37 % 100) / 100, **where(i)) for i in range(half)]
        self.index = self.policy.build_pair_index(self.prefill, self.decode)
        self.in_flight = in_flight
        self.pending: deque[tuple[int, int, int, int]] = deque()
        self.next = 0

    def run(self, count: int, samples: Samples | None) -> None:
        policy, index, prefill, decode, pending = self.policy, self.index, self.prefill, self.decode, self.pending
        cpu, wall = time.thread_time_ns, time.perf_counter_ns
        for n in range(self.next, self.next + count):
            collect_between_batches(n)
            req = request(n)
            w0, c0 = wall(), cpu()
            p, d = policy.choose_pair_indexed(req, index)
            prefill[p].outstanding_prefill_tokens += req.prompt_tokens
            decode[d].outstanding_tokens += req.output_tokens
            index.update_prefill(p)
            index.update_decode(d)
            c1, w1 = cpu(), wall()
            if samples is not None:
                samples.add(c1 - c0, w1 - w0)
            pending.append((p, d, req.prompt_tokens, req.output_tokens))
            if len(pending) > self.in_flight:
                p, d, prompt, output = pending.popleft()
                prefill[p].outstanding_prefill_tokens -= prompt
                decode[d].outstanding_tokens -= output
                index.update_prefill(p)
                index.update_decode(d)
        self.next += count


class HoldWorkload:
    """Hold one request in a tier-priority queue of `backlog` requests and take the next one out."""

    def __init__(self, backlog: int) -> None:
        self.queue = make_hold_queue("tier_priority", 120.0)
        for n in range(backlog):
            self.queue.push(request(n, self._tier(n)), n / 1000)
        self.next = backlog

    @staticmethod
    def _tier(n: int) -> str:
        return "batch" if n % 3 == 0 else "interactive"

    def run(self, count: int, samples: Samples | None) -> None:
        queue = self.queue
        cpu, wall = time.thread_time_ns, time.perf_counter_ns
        for n in range(self.next, self.next + count):
            collect_between_batches(n)
            req = request(n, self._tier(n))
            now_s = n / 1000
            w0, c0 = wall(), cpu()
            queue.push(req, now_s)
            queue.pop(now_s)
            c1, w1 = cpu(), wall()
            if samples is not None:
                samples.add(c1 - c0, w1 - w0)
        self.next += count


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--instances", type=int, default=1000)
    parser.add_argument("--requests", type=int, default=20000, help="timed requests per workload")
    parser.add_argument("--in-flight", type=int, default=2000, help="requests kept in flight while measuring")
    parser.add_argument("--no-switches", action="store_true", help="pd_pairing: hosts name no switches")
    ns = parser.parse_args()

    builders: dict[str, Callable[[], RouterWorkload | PairingWorkload | HoldWorkload]] = {
        "first_candidate": lambda: RouterWorkload(FirstCandidate(), ns.instances, ns.in_flight)}
    for name in RoutingPolicyName:
        builders[name.value] = lambda name=name: RouterWorkload(make_routing_policy(name.value), ns.instances,
                                                                ns.in_flight)
    builders["kv_aware.chat"] = lambda: KvChatWorkload(ns.instances, ns.in_flight)
    builders["pd_pairing.choose_pair"] = lambda: PairingWorkload(ns.instances, ns.in_flight, not ns.no_switches)
    builders["tier_priority.hold"] = lambda: HoldWorkload(ns.instances)
    workloads = {name: build() for name, build in builders.items()}
    samples = {name: Samples() for name in workloads}

    load_before = os.getloadavg()[0]
    gc.disable()  # collected between batches instead (see the module docstring)
    for workload in workloads.values():  # warm-up, untimed
        workload.run(min(2000, ns.requests), None)
    done = 0
    while done < ns.requests:  # rounds: every workload in turn (see the module docstring)
        count = min(ROUND, ns.requests - done)
        for name, workload in workloads.items():
            workload.run(count, samples[name])
        done += count
    gc.enable()

    baseline = samples.pop("first_candidate").summary()
    policies = {name: s.summary() for name, s in samples.items()}
    result = {
        "benchmark": "router_decision", "instances": ns.instances, "requests": ns.requests,
        "pairing_switches": not ns.no_switches,
        "machine": {**machine(), "load_avg_1m": [load_before, os.getloadavg()[0]]}, "baseline": {"policy": "first_candidate", **baseline}, "policies": policies,
        "decision_p99_us": {name: r["decision_p99_us"] for name, r in policies.items()},
        "wall_decision_p99_us": {name: r["wall_decision_p99_us"] for name, r in policies.items()},
        "target_p99_us": 50.0,
        "clock": "decision_*: thread CPU time; wall_decision_*: wall clock (includes descheduling)",
        "gc": f"collected every {GC_BATCH} requests, outside the timed region",
        "rounds": f"workloads take turns, {ROUND} requests each",
    }
    print(json.dumps(result))


if __name__ == "__main__":
    main()

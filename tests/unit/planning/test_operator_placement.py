"""Contention-aware placement of operator replicas (issue 14 item 5): a GPU never holds more than its
memory and SMs; a new GPU is opened only when no spot is feasible; interference never takes a placed
path over its budget; locality breaks ties (the same device, then NVLink, then the network); every
edge between GPUs is priced; replication is chosen over resharding."""

from __future__ import annotations

import pytest
from _operator_planners import CATALOG, H100, MOE_PLANNER, PLANNER
from hypothesis import given, settings
from hypothesis import strategies as st

from opscale.model import LatencyObjective
from opscale.perf.operators import Operator
from opscale.perf.sm_share import SmShareParams, contention_slowdown
from opscale.planning.operators import (
    RESHARD_COST_RATIO,
    GpuTopology,
    Locality,
    OperatorPlan,
    OperatorPlanner,
    OperatorPlannerConfig,
    Phase,
    PhasePlan,
    Placer,
    ReplicaDemand,
    StageLayout,
    StagePlan,
    Workload,
    grow_stage,
    mmr_wait,
    pack,
    reconfiguration_s,
)

pytestmark = pytest.mark.unit

GPU_BYTES = PLANNER.costs.memory_bytes(1)
ALL = frozenset(Operator)
ATTENTION = frozenset({Operator.ATTENTION})
REST = ALL - ATTENTION
SHAPES = st.sampled_from([(256, 64), (1024, 256), (4096, 128)])


def _planner(model_name: str, gpus_per_host: int) -> OperatorPlanner:
    ttft = 1.0 if model_name == "Qwen2-7B" else 2.0
    return OperatorPlanner(CATALOG.model(model_name), H100, LatencyObjective(ttft_slo_s=ttft, tbt_slo_s=0.1),
                           OperatorPlannerConfig(hosts=GpuTopology(gpus_per_host=gpus_per_host)))


PLANNERS = {(name, per): _planner(name, per) for name in ("Qwen2-7B", "Qwen2-57B-A14B") for per in (4, 8)}


def _stage(ops: frozenset[Operator], replicas: int, share: float, *, utilisation: float = 0.0,
           replica_bytes: float = 10e9, service_s: float = 0.01, batch: int = 8) -> StagePlan:
    """A stage consistent with the M/M/R model: its wait is the Erlang-C p99 at `utilisation`, and its
    kernels run for its whole service time."""
    mu = batch / service_s
    lam = utilisation * replicas * mu
    wait = mmr_wait(replicas, lam, mu, 0.99).quantile_wait_s if lam > 0 else 0.0
    return StagePlan(ops, 1, replicas, batch, service_s, 0.0, wait, 0.0, utilisation, share=share,
                     replica_bytes=replica_bytes, gpu_cost=replicas * share, arrival_rate=lam, busy_s=service_s)


def _phase(phase: Phase, budget_s: float, *stages: StagePlan) -> PhasePlan:
    return PhasePlan(phase, budget_s, stages)


def _placer(gpus_per_host: int = 8, sharing: SmShareParams | None = None) -> Placer:
    config = OperatorPlannerConfig(hosts=GpuTopology(gpus_per_host=gpus_per_host),
                                   sharing=sharing if sharing is not None else SmShareParams())
    return Placer(PLANNER.costs, PLANNER.dags, config, H100)


def _assert_within_capacity(plan: OperatorPlan, per_host: int) -> None:
    for slot in plan.packing.slots:
        assert slot.sm_share <= 1 + 1e-9
        assert slot.memory_bytes <= GPU_BYTES * (1 + 1e-9)
    per = {}
    for slot in plan.packing.slots:
        per[slot.host] = per.get(slot.host, 0) + 1
    assert all(n <= per_host for n in per.values())
    replicas = sum(s.replicas * s.tp for p in (plan.prefill, plan.decode) for s in p.stages)
    assert sum(len(slot.replicas) for slot in plan.packing.slots) == replicas


# --- capacity and budgets on real plans ------------------------------------------------------------------

@settings(max_examples=40, deadline=None)
@given(rps=st.floats(0.5, 200.0), shape=SHAPES, key=st.sampled_from(sorted(PLANNERS)))
def test_placement_never_overfills_a_gpu_or_a_host_and_interference_keeps_every_budget(
        rps: float, shape: tuple[int, int], key: tuple[str, int]) -> None:
    planner = PLANNERS[key]
    try:
        plan = planner.plan(Workload(rps, *shape))
    except ValueError:
        return  # beyond max_replicas for this shape: nothing placed
    _assert_within_capacity(plan, key[1])
    # Interference: with the slowdowns the co-located replicas actually cause (and the planner's own
    # transfers), every path still meets its budget.
    for placed in plan.packing.phases:
        phase = plan.phase(placed.phase)
        stages = [s for s in plan.packing.stages if s.phase is placed.phase]
        planned_transfer = sum(s.transfer_s for s in phase.stages)
        assert placed.latency_s - sum(s.transfer_s for s in stages) + planned_transfer <= placed.budget_s * (1 + 1e-9)
        assert all(s.slowdown >= 1.0 for s in stages)


@settings(max_examples=25, deadline=None)
@given(rps=st.floats(0.5, 150.0), shape=SHAPES)
def test_a_dense_plan_on_default_hosts_meets_its_budgets_as_placed(rps: float, shape: tuple[int, int]) -> None:
    plan = PLANNER.plan(Workload(rps, *shape))
    assert plan.packing.meets_slo  # transfers of where its replicas sit included


def test_placing_a_plan_prices_every_edge_between_gpus() -> None:
    # Qwen2-7B at 100 req/s splits decode into two stages of partitions: their edges cross GPUs.
    plan = PLANNER.plan(Workload(100.0, 1024, 256))
    split = [s for s in plan.packing.stages if s.phase is Phase.DECODE]
    assert len(split) == 2 and all(s.transfer_s > 0 for s in split)
    one = [s for s in plan.packing.stages if s.phase is Phase.PREFILL]
    assert len(one) == 1 and one[0].transfer_s == 0  # one stage: no edge leaves it


# --- best fit, interference and new GPUs -----------------------------------------------------------------

def test_contention_hurts_memory_bound_partitions_more_than_compute_bound_ones() -> None:
    params = SmShareParams()
    assert contention_slowdown(0.9, 0.0, 0.0, params) == 1.0  # alone
    decode_pair = contention_slowdown(1.0, 0.5, 0.0, params)  # two busy memory-bound halves
    prefill_pair = contention_slowdown(0.0, 0.0, 0.5, params)  # two busy compute-bound halves
    assert decode_pair > 1 + params.interference > prefill_pair > 1.0
    # The HBM-bound fraction of a decode stage exceeds that of a long-prompt prefill stage.
    costs = PLANNER.costs
    decode = costs.memory_bound_fraction(ALL, Phase.DECODE, 1, 64, 1152.0, 0.5)
    prefill = costs.memory_bound_fraction(ALL, Phase.PREFILL, 1, 4, 4096.0, 0.5)
    assert 0 <= prefill < decode <= 1


def _two_busy_decode_halves(budget_s: float) -> tuple[PhasePlan, PhasePlan]:
    decode = _stage(ALL, 2, 0.5, utilisation=0.9)
    return _phase(Phase.PREFILL, 1.0, _stage(ALL, 1, 1.0)), _phase(Phase.DECODE, budget_s, decode)


def test_a_gpu_is_opened_only_when_interference_leaves_no_feasible_spot() -> None:
    placer = _placer()
    workload = Workload(10.0, 1024, 256)
    prefill, decode = _two_busy_decode_halves(1.0)
    planned = decode.stages[0].latency_s
    # The two busy memory-bound halves slow each other past the planner's allowance...
    f = contention_slowdown(1.0, 0.5 * 0.9, 0.0, SmShareParams())
    assert f > 1 + SmShareParams().interference
    # ...so with no slack they get a GPU each, though SMs and memory would let them share one,
    tight = placer.place((prefill, _phase(Phase.DECODE, planned, *decode.stages)), workload)
    assert tight.gpus == 3 and tight.meets_slo
    assert all(s.slowdown == 1.0 for s in tight.stages)
    # ...and with slack to absorb the slowdown they share one GPU.
    loose = placer.place((prefill, _phase(Phase.DECODE, 2 * planned, *decode.stages)), workload)
    assert loose.gpus == 2 and loose.meets_slo
    shared = next(s for s in loose.stages if s.phase is Phase.DECODE)
    assert shared.slowdown == pytest.approx(f) and shared.latency_s <= 2 * planned


def test_without_interference_placement_is_the_best_fit_of_pack() -> None:
    # An idle plan (no kernel time) feels no contention: placement packs like the plain best fit.
    stages = (_stage(ATTENTION, 3, 0.25, replica_bytes=5e9), _stage(REST, 2, 0.5, replica_bytes=20e9))
    placed = _placer().place((_phase(Phase.PREFILL, 1.0, *stages),), Workload(1.0, 1024, 256))
    demands = [ReplicaDemand(f"r{k}{i}", s.share, s.replica_bytes) for k, s in enumerate(stages)
               for i in range(s.replicas)]
    assert placed.gpus == pack(demands, GPU_BYTES).gpus == 2


@settings(max_examples=60, deadline=None)
@given(items=st.lists(st.tuples(st.sampled_from([0.25, 0.5, 0.75]), st.floats(0.0, 1.0)), min_size=1, max_size=30))
def test_best_fit_opens_a_gpu_only_when_no_open_one_has_room(items: list[tuple[float, float]]) -> None:
    demands = [ReplicaDemand(f"r{i:02d}", s, m * GPU_BYTES) for i, (s, m) in enumerate(items)]
    packing = pack(demands, GPU_BYTES)
    by_label = {d.label: d for d in demands}
    order = sorted(demands, key=lambda d: (-max(d.share, d.memory_bytes / GPU_BYTES), d.label))
    rank = {d.label: i for i, d in enumerate(order)}
    for k, slot in enumerate(packing.slots):
        opener = by_label[slot.replicas[0]]
        for earlier in packing.slots[:k]:
            before = [by_label[n] for n in earlier.replicas if rank[n] < rank[opener.label]]
            sm = sum(d.share for d in before) + opener.share
            mem = sum(d.memory_bytes for d in before) + opener.memory_bytes
            assert sm > 1 + 1e-9 or mem > GPU_BYTES * (1 + 1e-9)  # it had no room there


# --- locality --------------------------------------------------------------------------------------------

def test_locality_breaks_ties_same_device_first() -> None:
    # Decode's 0.75 partition opens GPU 0; prefill's attention (0.75) cannot join it and opens GPU 1.
    # Prefill's other stage (0.25) fits either GPU equally well: it joins its partner on GPU 1.
    decode = _phase(Phase.DECODE, 1.0, _stage(ALL, 1, 0.75))
    prefill = _phase(Phase.PREFILL, 1.0, _stage(ATTENTION, 1, 0.75), _stage(REST, 1, 0.25))
    placed = _placer().place((decode, prefill), Workload(1.0, 1024, 256))
    slots = {label: k for k, slot in enumerate(placed.slots) for label in slot.replicas}
    assert placed.gpus == 2
    assert slots["prefill/attn_proj+lm_head+mlp#0"] == slots["prefill/attention#0"] == 1
    assert all(s.transfer_s == 0 for s in placed.stages)  # partners on one device: nothing moves


def test_locality_prefers_nvlink_to_the_network_when_costs_tie() -> None:
    # Hosts of two GPUs. Decode's three 0.75 partitions open GPUs 0 and 1 (host 0) and 2 (host 1);
    # prefill's attention partition opens GPU 3 (host 1). Its partner (0.25, 35 GB) cannot join it (40 GB
    # there) and fits each decode GPU equally well: it goes to GPU 2, over NVLink from its partner, not
    # to GPU 0 across the network.
    decode = _phase(Phase.DECODE, 1.0, _stage(ALL, 3, 0.75, replica_bytes=30e9))
    prefill = _phase(Phase.PREFILL, 1.0, _stage(ATTENTION, 1, 0.75, replica_bytes=40e9),
                     _stage(REST, 1, 0.25, replica_bytes=35e9))
    placer = _placer(gpus_per_host=2)
    placed = placer.place((decode, prefill), Workload(1.0, 1024, 256))
    index = {label: k for k, slot in enumerate(placed.slots) for label in slot.replicas}
    assert placed.gpus == 4 and index["prefill/attention#0"] == 3
    assert index["prefill/attn_proj+lm_head+mlp#0"] == 2
    assert placed.slots[2].host == placed.slots[3].host == 1
    # The edge between them is priced on the NVLink path of perf.transfer.
    rest = next(s for s in placed.stages if s.name == "attn_proj+lm_head+mlp")
    nvlink = placer.links[Locality.SAME_HOST]
    crossing = PLANNER.dags[Phase.PREFILL].crossings_between(REST, ATTENTION)
    tokens = 8 * 1024
    assert rest.transfer_s == pytest.approx(crossing.edges * nvlink.latency_s
                                            + crossing.bytes_per_token * tokens / (nvlink.gbps * 1e9))


def test_a_host_smaller_than_a_replica_is_refused_naming_the_field() -> None:
    planner = OperatorPlanner(CATALOG.model("Qwen2-57B-A14B"), H100, LatencyObjective(ttft_slo_s=2.0, tbt_slo_s=0.1),
                              OperatorPlannerConfig(hosts=GpuTopology(gpus_per_host=1)))
    with pytest.raises(ValueError, match="gpus_per_host=1"):
        planner.model_level(Workload(5.0, 1024, 256))


# --- replication over resharding -------------------------------------------------------------------------

def test_resharding_costs_eleven_replications_per_replica() -> None:
    running = StageLayout(tp=1, share=0.5, replicas=2)
    assert reconfiguration_s(running, StageLayout(1, 0.5, 5), 0.1) == pytest.approx(0.3)  # three new replicas
    assert reconfiguration_s(running, StageLayout(1, 0.5, 1), 0.1) == 0.0
    assert reconfiguration_s(running, StageLayout(2, 1.0, 1), 0.1) == pytest.approx(RESHARD_COST_RATIO * 0.1)
    assert reconfiguration_s(running, StageLayout(1, 1.0, 2), 0.1) == pytest.approx(2 * RESHARD_COST_RATIO * 0.1)


@settings(max_examples=50, deadline=None)
@given(replicas=st.integers(2, 16), grow=st.integers(1, 16), load_s=st.floats(0.01, 10.0))
def test_a_growing_stage_adds_replicas_at_its_tp_rather_than_reshard(replicas: int, grow: int, load_s: float) -> None:
    running = StageLayout(tp=1, share=1.0, replicas=replicas)
    replicate = StageLayout(1, 1.0, replicas + grow)
    # Even a reshard to tp 2 that serves the load on fewer GPUs loses: it costs 11 loads per replica.
    reshard = StageLayout(2, 1.0, max(1, (replicas + grow - 1) // 2))
    assert reshard.gpus < replicate.gpus
    assert reconfiguration_s(running, reshard, load_s) > reconfiguration_s(running, replicate, load_s)
    assert grow_stage(running, [reshard, replicate], load_s) == replicate
    # Only when no candidate keeps the running layout is a reshard chosen.
    assert grow_stage(running, [reshard], load_s) == reshard


def test_the_runtime_re_plan_replicates_at_the_running_layout() -> None:
    # A pool running the per-operator split re-plans at twice the load with its shares pinned: every
    # stage keeps its tp and share, so the move is replication only (no reshard cost).
    parts = [frozenset({op}) for op in Operator]
    low = PLANNER.plan_partition(Workload(20.0, 1024, 256), parts, parts)
    pinned = {(p.phase, s.operators): s.share for p in (low.prefill, low.decode) for s in p.stages}
    high = PLANNER.plan_partition(Workload(40.0, 1024, 256), parts, parts, shares=pinned)
    assert high.meets_slo
    for phase in Phase:
        for before, after in zip(low.phase(phase).stages, high.phase(phase).stages, strict=True):
            was = StageLayout(before.tp, before.share, before.replicas)
            now = StageLayout(after.tp, after.share, after.replicas)
            assert (now.tp, now.share) == (was.tp, was.share) and now.replicas >= was.replicas
            assert reconfiguration_s(was, now, 1.0) == now.replicas - was.replicas


def test_moe_plan_places_its_tensor_parallel_replicas_within_a_host() -> None:
    plan = MOE_PLANNER.plan(Workload(80.0, 1024, 256))
    hosts_of: dict[str, set[int]] = {}
    for slot in plan.packing.slots:
        for label in slot.replicas:
            hosts_of.setdefault(label, set()).add(slot.host)
    assert all(len(h) == 1 for h in hosts_of.values())  # a tp group's all-reduce stays on NVLink
    assert any(s.tp > 1 for p in (plan.prefill, plan.decode) for s in p.stages)


def test_a_host_of_no_gpus_is_refused_naming_the_field() -> None:
    with pytest.raises(ValueError, match="gpus_per_host"):
        OperatorPlannerConfig.model_validate({"hosts": {"gpus_per_host": 0}})
    with pytest.raises(ValueError, match="between_hosts"):
        OperatorPlannerConfig.model_validate({"hosts": {"between_hosts": "next_door"}})


@settings(max_examples=20, deadline=None)
@given(rps=st.floats(0.5, 200.0), shape=SHAPES)
def test_whole_gpu_replicas_are_placed_at_the_latency_the_planner_priced(rps: float, shape: tuple[int, int]) -> None:
    # Model level: one stage per phase on whole GPUs, so no neighbour and no edge between GPUs.
    plan = PLANNER.model_level(Workload(rps, *shape))
    assert plan.gpus == plan.gpu_cost
    for placed in plan.packing.phases:
        assert placed.latency_s == pytest.approx(plan.phase(placed.phase).latency_s)
    assert all(s.slowdown == 1.0 and s.transfer_s == 0.0 for s in plan.packing.stages)

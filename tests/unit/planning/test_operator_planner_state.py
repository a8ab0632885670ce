"""The operator planner keeps its stage prices, curves and frontiers across plans and re-aims them at each
plan's arrival rate (so that a plan allocates next to nothing): the state it keeps must never change a
plan, and the Erlang-C it steps forward incrementally must equal the queueing model's."""

from __future__ import annotations

import math

import pytest
from _operator_planners import H100, MOE_PLANNER, OBJECTIVE, QWEN7, QWEN57
from hypothesis import given, settings
from hypothesis import strategies as st

from opscale.model import LatencyObjective
from opscale.perf.operators import Operator
from opscale.planning.operators import OperatorPlan, OperatorPlanner, OperatorPlannerConfig, Phase, Workload
from opscale.planning.operators.queueing import mmr_wait

pytestmark = pytest.mark.unit

WORKLOADS = st.lists(st.tuples(st.floats(0.5, 150.0), st.sampled_from([(256, 64), (1024, 256), (2048, 128)])),
                     min_size=2, max_size=5)
SEARCHES = st.sampled_from(["plan", "model_level"])


def _shape(plan: OperatorPlan) -> tuple[object, ...]:
    """What a plan decides: per stage its families, tp, replicas, batch and share, and the GPUs it packs onto."""
    return (plan.gpus, tuple((tuple(sorted(s.operators)), s.tp, s.replicas, s.batch, s.share)
                             for p in (plan.prefill, plan.decode) for s in p.stages))


def _assert_same(a: OperatorPlan, b: OperatorPlan) -> None:
    # Decisions exactly; predicted numbers to rounding (a stage's price sums its families in the
    # iteration order of the first frozenset that named them, which the planner's history can change).
    assert _shape(a) == _shape(b)
    assert a.gpu_cost == pytest.approx(b.gpu_cost, rel=1e-12)
    for p, q in ((a.prefill, b.prefill), (a.decode, b.decode)):
        assert p.latency_s == pytest.approx(q.latency_s, rel=1e-12)


@settings(max_examples=15, deadline=None)
@given(workloads=WORKLOADS, searches=st.lists(SEARCHES, min_size=5, max_size=5),
       quantile=st.sampled_from([0.99, None]))
def test_a_planner_with_history_plans_exactly_as_a_fresh_one(
        workloads: list[tuple[float, tuple[int, int]]], searches: list[str], quantile: float | None) -> None:
    config = OperatorPlannerConfig(wait_quantile=quantile)
    warm = OperatorPlanner(QWEN7, H100, OBJECTIVE, config)
    for (rps, shape), search in zip(workloads, searches, strict=False):
        workload = Workload(rps, *shape)
        fresh = OperatorPlanner(QWEN7, H100, OBJECTIVE, config)
        _assert_same(getattr(warm, search)(workload), getattr(fresh, search)(workload))


def test_the_oracle_after_other_searches_plans_as_a_fresh_one() -> None:
    warm = OperatorPlanner(QWEN7, H100, OBJECTIVE)
    for rps in (30.0, 2.0, 12.5):
        workload = Workload(rps, 1024, 256)
        warm.plan(Workload(rps * 3, 1024, 256))
        _assert_same(warm.oracle(workload), OperatorPlanner(QWEN7, H100, OBJECTIVE).oracle(workload))


def test_a_kept_partition_replans_exactly_as_a_fresh_planner() -> None:
    prefill = [{Operator.ATTENTION, Operator.ATTN_PROJ}, {Operator.MLP, Operator.LM_HEAD}]
    decode = [{Operator.ATTENTION}, {Operator.ATTN_PROJ, Operator.MLP, Operator.LM_HEAD}]
    shares = {(Phase.DECODE, frozenset({Operator.ATTENTION})): 0.5}
    warm = OperatorPlanner(QWEN57, H100, LatencyObjective(ttft_slo_s=2.0, tbt_slo_s=0.1))
    for rps in (40.0, 5.0, 120.0, 40.0):
        workload = Workload(rps, 1024, 256)
        fresh = OperatorPlanner(QWEN57, H100, LatencyObjective(ttft_slo_s=2.0, tbt_slo_s=0.1))
        _assert_same(warm.plan(workload), fresh.plan(workload))  # interleaved with other searches
        _assert_same(warm.plan_partition(workload, prefill, decode, shares),
                     fresh.plan_partition(workload, prefill, decode, shares))


@settings(max_examples=30, deadline=None)
@given(rps=st.floats(0.5, 200.0), quantile=st.sampled_from([0.9, 0.99, None]), descending=st.booleans())
def test_the_incremental_erlang_c_is_the_queueing_model(rps: float, quantile: float | None, descending: bool) -> None:
    # The planner steps each batch size's Erlang-B recursion from the last R asked (and restarts for a
    # lower R); every curve's latency must be the queueing model's, computed from scratch.
    planner = OperatorPlanner(QWEN57, H100, LatencyObjective(ttft_slo_s=2.0, tbt_slo_s=0.1),
                              OperatorPlannerConfig(wait_quantile=quantile))
    planner.plan(Workload(rps, 1024, 256))
    curves = [c for c in planner._curves.values() if c is not None and c.epoch == planner._epoch]
    assert curves
    for curve in curves:
        counts = range(curve.r_min, curve.r_min + 6)
        for r in (reversed(counts) if descending else counts):
            expected = math.inf
            for i, option in enumerate(curve.shape.options):
                wait = mmr_wait(r, curve.lam, option.mu, 0.5 if quantile is None else quantile)
                if wait.utilisation >= 1 or curve.shape.fixed[i] + curve.kv_total / (r * curve.shape.tp) > curve.shape.gpu_bytes:
                    continue
                waited = wait.mean_wait_s if quantile is None else wait.quantile_wait_s
                expected = min(expected, waited + option.service_s + option.transfer_s)
            assert curve.latency(r) == pytest.approx(expected, rel=1e-9, abs=1e-12)


def test_moe_planner_state_is_shared_module_wide_without_changing_plans() -> None:
    # The module-wide planner of the other tests has planned other loads before: it still agrees.
    workload = Workload(77.0, 1024, 256)
    _assert_same(MOE_PLANNER.plan(workload), OperatorPlanner(QWEN57, H100, MOE_PLANNER.objective).plan(workload))

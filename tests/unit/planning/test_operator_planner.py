"""The operator planner's laws: plans meet their own budgets on the queueing model, more load never gets
fewer replicas, the greedy search is close to the exhaustive oracle and never worse than model-level
scaling, and bad configuration is refused naming the field. Also the operator DAG it prices."""

from __future__ import annotations

import dataclasses

import pytest
from _operator_planners import CATALOG, H100, MOE_PLANNER, OBJECTIVE, PLANNER, QWEN7, QWEN57, WHOLE
from hypothesis import example, given, settings
from hypothesis import strategies as st

from opscale.model import LatencyObjective
from opscale.perf.calibration import calibrated_params
from opscale.perf.operators import (
    ALL_OPERATORS,
    Operator,
    OperatorSplitLatencyModel,
    operator_weight_bytes,
    roofline_factory,
    single_group,
)
from opscale.perf.transfer import Link
from opscale.planning.operators import (
    NodeKind,
    OperatorPlanner,
    OperatorPlannerConfig,
    Phase,
    StageCosts,
    Workload,
    build_dag,
    cheapest_plan,
    partitions,
)

pytestmark = pytest.mark.unit



# --- the DAG ---------------------------------------------------------------------------------------------

def test_dense_dag_has_every_kernel_per_layer_and_weights_match_the_perf_model() -> None:
    dag = build_dag(QWEN7, Phase.PREFILL)
    kinds = {n.kind for n in dag.nodes}
    assert {NodeKind.EMBEDDING, NodeKind.QKV_PROJ, NodeKind.ATTENTION_PREFILL, NodeKind.O_PROJ, NodeKind.GATE_UP_PROJ,
            NodeKind.ACTIVATION, NodeKind.DOWN_PROJ, NodeKind.INPUT_NORM, NodeKind.LM_HEAD} <= kinds
    assert NodeKind.ATTENTION_DECODE not in kinds and NodeKind.EXPERTS not in kinds
    assert sum(n.kind is NodeKind.QKV_PROJ for n in dag.nodes) == QWEN7.layers
    # Weight-bearing kernels add up to the perf model's family weights (norms are the only extra bytes).
    for op in (Operator.ATTN_PROJ, Operator.MLP, Operator.LM_HEAD):
        assert dag.weight_bytes(op) == pytest.approx(operator_weight_bytes(QWEN7, op), rel=1e-3)
    assert dag.weight_bytes(Operator.ATTENTION) == 0
    names = {n.name for n in dag.nodes}
    assert all(e.src in names and e.dst in names for e in dag.edges)


def test_moe_dag_has_router_experts_and_shared_expert() -> None:
    dag = build_dag(QWEN57, "decode")
    kinds = {n.kind for n in dag.nodes}
    assert {NodeKind.ROUTER, NodeKind.EXPERTS, NodeKind.SHARED_EXPERT, NodeKind.ATTENTION_DECODE} <= kinds
    assert NodeKind.GATE_UP_PROJ not in kinds
    assert dag.weight_bytes(Operator.MLP) == pytest.approx(operator_weight_bytes(QWEN57, Operator.MLP), rel=1e-3)
    # Dispatch sends a token's hidden state to each of its k experts.
    dispatch = next(e for e in dag.edges if e.src == "L0.post_attn_norm" and e.dst == "L0.experts")
    assert dispatch.nbytes(10) == 10 * QWEN57.experts_per_token * QWEN57.hidden * QWEN57.bytes_per_param


def test_qwen2_57b_matches_its_published_size() -> None:
    assert QWEN57.params == pytest.approx(57.4e9, rel=0.01)
    assert QWEN57.active_params == pytest.approx(14.2e9, rel=0.01)


def test_crossings_vanish_for_the_whole_model_and_follow_the_layer_order() -> None:
    dag = build_dag(QWEN7, Phase.DECODE)
    assert dag.crossings(set(Operator)).edges == 0
    # Attention alone sends one edge per layer (to the output projection), a hidden state each.
    attention = dag.crossings({Operator.ATTENTION})
    assert attention.edges == QWEN7.layers
    assert attention.bytes_per_token == QWEN7.layers * QWEN7.hidden * QWEN7.bytes_per_param


def test_there_are_fifteen_ways_to_group_four_families() -> None:
    parts = partitions(list(Operator))
    assert len(parts) == 15 and len(set(parts)) == 15
    assert all(frozenset().union(*p) == frozenset(Operator) for p in parts)


# --- costs come from the perf model -------------------------------------------------------------------

@pytest.mark.parametrize("model", [QWEN7, CATALOG.model("Llama-3-8B")])
def test_a_whole_model_stage_costs_what_the_engine_model_says(model: object) -> None:
    # One stage holding every family is model-level serving: the same numbers as the engine's
    # operator-split latency model with a single group, so the planner has no cost model of its own.
    engine = OperatorSplitLatencyModel(roofline_factory(model, calibrated_params(H100.name)),  # type: ignore[arg-type]
                                       single_group(H100), Link(0.0, 1.0))
    costs = StageCosts(model, H100)  # type: ignore[arg-type]
    assert costs.prefill_s(ALL_OPERATORS, 1, 1, 1024) == pytest.approx(engine.prefill_s(1024), rel=1e-12)
    fixed_s, per_ctx_s = engine.decode_step_coeffs(32)
    assert costs.decode_s(ALL_OPERATORS, 1, 32, 1500.0) == pytest.approx(fixed_s + per_ctx_s * 32 * 1500, rel=1e-12)


def test_the_shared_expert_costs_extra_and_needs_two_h100s() -> None:
    costs = StageCosts(QWEN57, H100)
    mlp = frozenset({Operator.MLP})
    assert costs.tp_for(mlp) == 2 and costs.tp_for(frozenset({Operator.ATTENTION, Operator.ATTN_PROJ})) == 1
    no_shared = StageCosts(dataclasses.replace(QWEN57, shared_expert_intermediate=0), H100)
    assert costs.prefill_s(mlp, 2, 4, 1024) > no_shared.prefill_s(mlp, 2, 4, 1024)


# --- the laws of the planner -----------------------------------------------------------------------------

LOADS = st.floats(0.5, 150.0)
SHAPES = st.sampled_from([(256, 64), (1024, 256), (2048, 128)])


@settings(max_examples=40, deadline=None)
@given(rps=LOADS, shape=SHAPES)
def test_a_plan_meets_its_own_budget_on_the_queueing_model(rps: float, shape: tuple[int, int]) -> None:
    plan = PLANNER.plan(Workload(rps, *shape))
    assert plan.meets_slo
    for phase in (plan.prefill, plan.decode):
        assert phase.latency_s <= phase.budget_s
        assert {op for s in phase.stages for op in s.operators} == set(Operator)
        for stage in phase.stages:
            assert stage.utilisation < 1 and stage.replicas >= 1 and stage.batch >= 1


@settings(max_examples=40, deadline=None)
@given(rps=LOADS, more=st.floats(1.0, 3.0), shape=SHAPES)
@example(rps=94.0, more=96.0 / 94.0, shape=(256, 64))
@example(rps=79.0, more=1.25, shape=(2048, 128))
def test_more_load_never_gives_fewer_replicas(rps: float, more: float, shape: tuple[int, int]) -> None:
    low, high = PLANNER.plan(Workload(rps, *shape)), PLANNER.plan(Workload(rps * more, *shape))
    # With SM shares the law holds only to within one GPU today (a known gap, issue 14): packing the
    # shares onto whole GPUs is a best fit, not an optimum (94 req/s of 256/64 tokens packs onto 2 GPUs,
    # 96 req/s onto 1), and the planner returns the shared or the whole-GPU answer, whichever packs onto
    # fewer GPUs, so its GPU share can dip too (79 -> 98.75 req/s of 2048/128 tokens: 8.0 -> 7.94).
    assert high.gpus >= low.gpus - 1
    whole = WHOLE.plan(Workload(rps, *shape)), WHOLE.plan(Workload(rps * more, *shape))
    assert whole[1].gpus >= whole[0].gpus and whole[1].gpu_cost >= whole[0].gpu_cost - 1e-9
    # Per phase on whole GPUs. With SM shares a phase's cost may dip by a fraction of a GPU when the
    # planner switches between its shared and whole-GPU answers (whichever packs onto fewer GPUs);
    # the plan's total does not (test_operator_sharing).
    whole_low, whole_high = WHOLE.plan(Workload(rps, *shape)), WHOLE.plan(Workload(rps * more, *shape))
    assert whole_high.prefill.gpus >= whole_low.prefill.gpus and whole_high.decode.gpus >= whole_low.decode.gpus
    base_low, base_high = PLANNER.model_level(Workload(rps, *shape)), PLANNER.model_level(Workload(rps * more, *shape))
    assert base_high.gpus >= base_low.gpus


@settings(max_examples=25, deadline=None)
@given(rps=st.floats(0.5, 60.0), shape=SHAPES)
def test_greedy_is_within_five_percent_of_the_oracle_and_never_above_model_level(
        rps: float, shape: tuple[int, int]) -> None:
    workload = Workload(rps, *shape)
    greedy, oracle, base = PLANNER.plan(workload), PLANNER.oracle(workload), PLANNER.model_level(workload)
    assert oracle.meets_slo and oracle.gpus <= greedy.gpus <= base.gpus
    assert greedy.gpus <= 1.05 * oracle.gpus


@settings(max_examples=10, deadline=None)
@given(rps=st.floats(1.0, 150.0))
def test_moe_greedy_is_within_five_percent_of_the_oracle(rps: float) -> None:
    workload = Workload(rps, 1024, 256)
    greedy, oracle = MOE_PLANNER.plan(workload), MOE_PLANNER.oracle(workload)
    assert oracle.meets_slo and oracle.gpus <= greedy.gpus <= 1.05 * oracle.gpus


def test_moe_decode_splits_attention_from_the_experts_and_saves_gpus() -> None:
    # Decode of the MoE is KV-bound: attention replicas without the experts' 111 GB hold far more KV.
    workload = Workload(100.0, 1024, 256)
    plan, base = MOE_PLANNER.plan(workload), MOE_PLANNER.model_level(workload)
    assert plan.meets_slo and plan.gpus < base.gpus
    assert len(plan.decode.stages) > 1
    assert plan.decode.stage_of("mlp").tp == 2 and plan.decode.stage_of("attention").tp == 1


def test_split_stages_pay_their_transfers() -> None:
    plan = MOE_PLANNER.plan(Workload(100.0, 1024, 256))
    assert all(s.transfer_s > 0 for s in plan.decode.stages)
    assert all(s.transfer_s == 0 for s in MOE_PLANNER.model_level(Workload(100.0, 1024, 256)).decode.stages)


def test_max_batch_caps_a_family() -> None:
    planner = OperatorPlanner(QWEN7, H100, OBJECTIVE, OperatorPlannerConfig(max_batch={"attention": 8}))
    plan = planner.plan(Workload(50.0, 1024, 256))
    assert plan.decode.stage_of("attention").batch <= 8 and plan.meets_slo


# --- bad configuration -----------------------------------------------------------------------------------

def test_unknown_operator_is_refused_naming_it() -> None:
    with pytest.raises(ValueError, match=r"max_batch[\s\S]*unknown operator 'softmax'"):
        OperatorPlannerConfig(max_batch={"softmax": 4})


@pytest.mark.parametrize("config", [{"batch_sizes": (0, 8)}, {"max_batch": {"mlp": 0}}])
def test_a_batch_of_zero_is_refused_naming_the_field(config: dict[str, object]) -> None:
    field = next(iter(config))
    with pytest.raises(ValueError, match=rf"{field}[\s\S]*got 0"):
        OperatorPlannerConfig(**config)  # type: ignore[arg-type]


@pytest.mark.parametrize(("objective", "field"), [
    (LatencyObjective(ttft_slo_s=0.001, tbt_slo_s=0.1), "ttft_slo_s"),
    (LatencyObjective(ttft_slo_s=1.0, tbt_slo_s=0.0005), "tbt_slo_s"),
])
def test_an_slo_no_gpu_can_meet_is_refused_naming_the_field(objective: LatencyObjective, field: str) -> None:
    for sku in CATALOG.skus:
        with pytest.raises(ValueError, match=rf"{field}=.* cannot be met by Qwen2-7B on {sku.name}"):
            OperatorPlanner(QWEN7, sku, objective).plan(Workload(1.0, 1024, 256))


def test_cheapest_plan_picks_a_sku_and_names_the_slo_no_sku_meets() -> None:
    plan = cheapest_plan(QWEN7, CATALOG.skus, OBJECTIVE, Workload(20.0, 1024, 256))
    assert plan.meets_slo and plan.sku in {s.name for s in CATALOG.skus}
    with pytest.raises(ValueError, match=r"^tbt_slo_s cannot be met by Qwen2-7B on any of"):
        cheapest_plan(QWEN7, CATALOG.skus, LatencyObjective(ttft_slo_s=1.0, tbt_slo_s=1e-4), Workload(1.0, 1024, 256))


def test_bad_workload_and_objective_name_the_field() -> None:
    with pytest.raises(ValueError, match="arrival_rps"):
        Workload(0.0, 1024, 256)
    with pytest.raises(ValueError, match="prompt_tokens"):
        Workload(1.0, 0, 256)
    with pytest.raises(ValueError, match="tbt_slo_s"):
        OperatorPlanner(QWEN7, H100, LatencyObjective(ttft_slo_s=1.0, tbt_slo_s=-1.0))


def test_a_frontier_point_that_gains_at_no_added_cost_is_taken_first() -> None:
    """Two points of a stage's frontier may cost the same (a share whose memory, not its SMs, sets its
    GPU cost): the greedy step scores the faster one as a free gain instead of dividing by zero (a
    re-plan of Qwen2-7B at a kept partition once crashed here in the operators experiment)."""
    from opscale.planning.operators.planner import _stage_move

    class Front:
        costs, lats = [1.0, 1.0, 2.0], [1.0, 0.5, 0.2]

        def upto(self, cost: float) -> int:
            return sum(c <= cost for c in self.costs)

    assert _stage_move(Front(), 0, 1.0, 1.0, 1.0) == (float("inf"), 1)  # type: ignore[arg-type]
    assert _stage_move(Front(), 1, 0.5, 1.0, 1.0) == pytest.approx((0.3, 2))  # type: ignore[arg-type]

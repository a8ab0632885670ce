"""Operator-split deployments priced as one engine (opscale.perf.operators)."""

from __future__ import annotations

import math

import pytest

from opscale.engine import EngineConfig, SimEngine
from opscale.perf import RooflineLatencyModel, calibrated_params, load_catalog
from opscale.perf.loading import load_time_s
from opscale.perf.operators import (
    ALL_OPERATORS,
    MLP_OPERATORS,
    Operator,
    OperatorGroup,
    OperatorSplitLatencyModel,
    RooflineOperatorModel,
    group_load_time_s,
    operator_weight_bytes,
    roofline_factory,
    single_group,
    split_groups,
)
from opscale.perf.transfer import Link

pytestmark = pytest.mark.unit

CATALOG = load_catalog()
LLAMA3_8B = CATALOG.model("Llama-3-8B")
MIXTRAL = CATALOG.model("Mixtral-8x7B")
H100 = CATALOG.sku("H100-80GB")
L40S = CATALOG.sku("L40S")
FAST_LINK = Link(10e-6, 360.0)


def split(attention: tuple[int, int] = (1, 1), mlp: tuple[int, int] = (1, 1), link: Link = FAST_LINK,
          max_batch: int = 8192) -> OperatorSplitLatencyModel:
    groups = split_groups((H100, *attention), (H100, *mlp), attention_max_batch_tokens=max_batch,
                          mlp_max_batch_tokens=max_batch)
    return OperatorSplitLatencyModel(roofline_factory(LLAMA3_8B), groups, link)


@pytest.mark.parametrize(("model_name", "tp", "calibration"), [
    ("Llama-3-8B", 1, None), ("Llama-3-8B", 2, "kernel"), ("Llama-3-70B", 4, "kernel"), ("Mixtral-8x7B", 8, None),
    ("Llama-3-70B", 4, "whole_iteration"), ("Llama-3-8B", 1, "whole_iteration"),
])
def test_one_group_holding_every_operator_is_the_model_level_roofline(model_name: str, tp: int,
                                                                     calibration: str | None) -> None:
    model = CATALOG.model(model_name)
    params = (calibrated_params(H100.name, whole_iteration=calibration == "whole_iteration")
              if calibration else None)
    base = RooflineLatencyModel(model, H100, tp, params)
    whole = OperatorSplitLatencyModel(roofline_factory(model, params), single_group(H100, tp), FAST_LINK)
    for args in [(512, 0, 0, 0), (100, 300, 16, 5000), (0, 0, 64, 64 * 900), (0, 0, 0, 0), (3000, 1000, 1, 10)]:
        a, b = base.iteration_cost(*args), whole.iteration_cost(*args)
        assert b.time_s == pytest.approx(a.time_s, rel=1e-12)
        assert b.busy_s == pytest.approx(a.busy_s, rel=1e-12, abs=1e-15)
    for batch in (0, 1, 7, 256):
        assert whole.decode_step_coeffs(batch) == pytest.approx(base.decode_step_coeffs(batch), rel=1e-12)
        assert whole.decode_busy_coeffs(batch) == pytest.approx(base.decode_busy_coeffs(batch), rel=1e-12)
    assert whole.prefill_s(777, 100) == pytest.approx(base.prefill_s(777, 100), rel=1e-12)


def test_operator_weights_partition_the_model() -> None:
    for model in (LLAMA3_8B, MIXTRAL):
        assert sum(operator_weight_bytes(model, op) for op in Operator) == model.weight_bytes
    assert operator_weight_bytes(LLAMA3_8B, Operator.ATTENTION) == 0


def test_attention_mlp_split_pays_two_activation_transfers_per_layer() -> None:
    slow = Link(50e-6, 10.0)
    near, far = split(link=FAST_LINK), split(link=slow)
    assert near.crossings == ((0, 1, 2 * LLAMA3_8B.layers),)
    tokens = 300
    per_crossing = lambda link: link.latency_s + tokens * 4096 * 2 / (link.gbps * 1e9)  # noqa: E731
    extra = 2 * LLAMA3_8B.layers * (per_crossing(slow) - per_crossing(FAST_LINK))
    assert far.iteration_s(tokens, 0, 0, 0) - near.iteration_s(tokens, 0, 0, 0) == pytest.approx(extra)
    # ... and nothing depends on the context: decode stays linear in it.
    assert far.decode_step_coeffs(tokens)[1] == near.decode_step_coeffs(tokens)[1]


def test_decode_stays_linear_in_the_context() -> None:
    model = split(attention=(1, 3), mlp=(2, 2), max_batch=64)
    for batch in (1, 50, 300):
        fixed_s, per_ctx_s = model.decode_step_coeffs(batch)
        for ctx in (batch, 1000 * batch):
            assert model.iteration_s(0, 0, batch, ctx) == pytest.approx(fixed_s + per_ctx_s * ctx, rel=1e-12)


def test_replicas_share_the_batch_and_its_context() -> None:
    one, two = split(attention=(1, 1)), split(attention=(1, 2))
    # Attention's per-context cost is split over the replicas' KV caches.
    assert two.decode_step_coeffs(64)[1] == pytest.approx(one.decode_step_coeffs(64)[1] / 2)
    assert two.iteration_s(0, 0, 64, 64 * 4000) < one.iteration_s(0, 0, 64, 64 * 4000)


def test_a_replica_runs_batches_beyond_its_limit_in_rounds() -> None:
    roomy, tight = split(max_batch=8192), split(max_batch=128)
    # 1024 prefill tokens: one round vs eight, each of which reads all the weights again.
    assert tight.prefill_s(1024) > roomy.prefill_s(1024)
    assert tight.decode_step_coeffs(64) == roomy.decode_step_coeffs(64)  # within the limit: the same


def test_footprint_puts_the_kv_cache_with_attention() -> None:
    model = split(attention=(1, 2), mlp=(2, 1))
    fp = model.footprint(0.9)
    attention_weights = sum(operator_weight_bytes(LLAMA3_8B, op) for op in model.groups[0].operators)
    assert fp.kv_budget_bytes == pytest.approx(2 * (0.9 * 80e9 - attention_weights))
    assert fp.gpus == 2 + 2
    assert fp.idle_power_w == pytest.approx(4 * H100.idle_power_w)
    assert fp.dynamic_power_w == pytest.approx(4 * (H100.max_power_w - H100.idle_power_w))
    engine = SimEngine("s", LLAMA3_8B, H100, 1, model, EngineConfig(), footprint=fp)
    assert engine.total_blocks == int(fp.kv_budget_bytes // (16 * LLAMA3_8B.kv_bytes_per_token))


def test_busy_time_is_weighted_by_each_groups_share_of_power() -> None:
    groups = (OperatorGroup("attention", frozenset(ALL_OPERATORS - MLP_OPERATORS), H100, 1, 1),
              OperatorGroup("mlp", MLP_OPERATORS, L40S, 1, 1))
    model = OperatorSplitLatencyModel(roofline_factory(LLAMA3_8B), groups, FAST_LINK)
    cost = model.iteration_cost(2048, 0, 0, 0)
    attention = RooflineOperatorModel(LLAMA3_8B, H100).ops_cost(groups[0].operators, 2048, 0, 0, 0, 2048 * 2049 / 2, 1)
    mlp = RooflineOperatorModel(LLAMA3_8B, L40S).ops_cost(groups[1].operators, 2048, 0, 0, 0, 2048 * 2049 / 2, 1)
    h100_w, l40s_w = H100.max_power_w - H100.idle_power_w, L40S.max_power_w - L40S.idle_power_w
    expected = (attention.busy_s * h100_w + mlp.busy_s * l40s_w) / (h100_w + l40s_w)
    assert cost.busy_s == pytest.approx(expected)
    assert 0 < cost.utilisation < 1


def test_bad_deployments_are_clear_errors() -> None:
    factory = roofline_factory(LLAMA3_8B)
    attention = OperatorGroup("attention", frozenset({Operator.ATTN_PROJ, Operator.ATTENTION}), H100)
    with pytest.raises(ValueError, match=r"operators \['lm_head', 'mlp'\] are in no group"):
        OperatorSplitLatencyModel(factory, [attention], FAST_LINK)
    with pytest.raises(ValueError, match="operator 'attention' is in both group 'attention' and group 'all'"):
        OperatorSplitLatencyModel(factory, [attention, OperatorGroup("all", ALL_OPERATORS, H100)], FAST_LINK)
    with pytest.raises(ValueError, match="group name 'model' is used twice"):
        OperatorSplitLatencyModel(factory, [*single_group(H100), *single_group(H100)], FAST_LINK)
    with pytest.raises(ValueError, match="at least one operator group"):
        OperatorSplitLatencyModel(factory, [], FAST_LINK)
    with pytest.raises(ValueError, match="'g': replicas must be a positive integer, got 0"):
        OperatorGroup("g", ALL_OPERATORS, H100, replicas=0)
    with pytest.raises(ValueError, match="'g': unknown operator.*known: attn_proj"):
        OperatorGroup("g", frozenset({"softmax"}), H100)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="'g': operators must not be empty"):
        OperatorGroup("g", frozenset(), H100)
    with pytest.raises(ValueError, match="prices model 'Mixtral-8x7B', not 'Llama-3-8B'"):
        OperatorSplitLatencyModel(
            lambda g: RooflineOperatorModel(MIXTRAL if Operator.MLP in g.operators else LLAMA3_8B, H100),
            split_groups((H100, 1, 1), (H100, 1, 1)), FAST_LINK)
    llama3_70b = CATALOG.model("Llama-3-70B")
    too_small = OperatorSplitLatencyModel(roofline_factory(llama3_70b), split_groups((H100, 4, 1), (H100, 1, 1)),
                                          FAST_LINK)
    with pytest.raises(ValueError, match=r"group 'mlp': weights of \['mlp'\] \(112.7 GB\) do not fit 0.9 x 1 x H100"):
        too_small.footprint(0.9)
    with pytest.raises(ValueError, match="ctx_tokens must be a positive integer"):
        split().throughput_bound(0)
    with pytest.raises(ValueError, match="phase must be 'decode' or 'prefill'"):
        split().throughput_bound(100, "both")  # type: ignore[arg-type]


def test_prefill_throughput_bound_counts_every_stage() -> None:
    bound = split(attention=(1, 2), mlp=(1, 1)).throughput_bound(2048, "prefill")
    assert {s.stage for s in bound.stages} == {"attention", "mlp", "link attention-mlp"}
    assert bound.tokens_per_s == min(s.tokens_per_s for s in bound.stages)
    assert all(math.isfinite(s.micro_batch_s) and s.micro_batch_s > 0 for s in bound.stages)


def test_an_operator_replica_loads_only_its_weights() -> None:
    mlp_group = split_groups((H100, 1, 1), (H100, 1, 1))[1]
    whole_cold = load_time_s(LLAMA3_8B, H100, 1, "cold")
    assert group_load_time_s(LLAMA3_8B, mlp_group, "cold") < whole_cold
    assert group_load_time_s(LLAMA3_8B, mlp_group, "warm") < group_load_time_s(LLAMA3_8B, mlp_group, "cold")
    expected = 3.0 + operator_weight_bytes(LLAMA3_8B, Operator.MLP) / 1e9 / 12.0
    assert group_load_time_s(LLAMA3_8B, mlp_group, "warm") == pytest.approx(expected)

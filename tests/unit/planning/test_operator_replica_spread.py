"""Spreading a pool's operator replicas over its base instances (opscale.planning.operator_replicas) and
pricing a base engine with them (opscale.perf.operator_replicas): laws."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from opscale.model import InstanceSpec, OperatorReplicas, PoolKey
from opscale.perf import default_catalog
from opscale.perf.operator_replicas import replicated_stages, with_operator_replicas
from opscale.perf.profiled import latency_model_for
from opscale.planning.operator_replicas import attach_operator_replicas

pytestmark = pytest.mark.unit

KEY = PoolKey("m", "eu")


def _base(n: int, tp: int = 1) -> InstanceSpec:
    return InstanceSpec(f"m-eu-{n:05d}", "m", "H100-80GB", tp)


@settings(max_examples=60, deadline=None)
@given(gpus=st.lists(st.integers(1, 8), min_size=1, max_size=4), bases=st.integers(1, 3),
       mlp=st.integers(1, 40), share=st.sampled_from([0.25, 0.5, 1.0]), proj=st.integers(0, 10))
def test_no_host_holds_more_than_it_has_and_every_replica_is_placed_or_reported(
        gpus: list[int], bases: int, mlp: int, share: float, proj: int) -> None:
    agents = [(f"a{i}", "eu", g) for i, g in enumerate(gpus)]
    assignments = {a: (_base(i),) for i, (a, _, g) in enumerate(agents) if i < bases}
    wanted = (OperatorReplicas(("mlp",), mlp, 1, share, 8),) + ((OperatorReplicas(("attn_proj",), proj),) if proj else ())
    result = attach_operator_replicas(assignments, {KEY: wanted}, agents)
    for agent_id, g in ((a, g) for a, _, g in agents):
        held = sum(s.gpu_equivalents for s in result.assignments.get(agent_id, ()))
        assert held <= g + 1e-9
    for stage in wanted:
        placed = sum(r.replicas for specs in result.assignments.values() for s in specs for r in s.operator_replicas
                     if r.name == stage.name)
        assert placed + result.unplaced.get(KEY, {}).get(stage.name, 0) == stage.replicas


def _counts(assignments: dict[str, tuple[InstanceSpec, ...]]) -> dict[str, int]:
    return {s.instance_id: sum(r.replicas for r in s.operator_replicas) for specs in assignments.values() for s in specs}


def test_replicas_stay_where_they_run_and_new_ones_go_to_the_base_with_fewest() -> None:
    agents = [("a0", "eu", 8), ("a1", "eu", 8)]
    mlp = OperatorReplicas(("mlp",), 3)
    first = attach_operator_replicas({"a0": (_base(0),), "a1": (_base(1),)}, {KEY: (mlp,)}, agents).assignments
    assert _counts(first) == {"m-eu-00000": 2, "m-eu-00001": 1}
    fewer = attach_operator_replicas(first, {KEY: (OperatorReplicas(("mlp",), 2),)}, agents).assignments
    assert _counts(fewer) == {"m-eu-00000": 1, "m-eu-00001": 1}, "a scale-in keeps the spread even"
    again = attach_operator_replicas(first, {KEY: (mlp,)}, agents).assignments
    assert again == first, "the same want changes nothing: the same plan, no new epoch"
    none = attach_operator_replicas(first, {}, agents).assignments
    assert none == {"a0": (_base(0),), "a1": (_base(1),)}, "a pool not named keeps no operator replicas"


def test_no_replicas_leave_the_engine_its_own_model_and_more_never_prefill_slower() -> None:
    catalog = default_catalog()
    model, sku = catalog.model("Qwen2-7B"), catalog.sku("H100-80GB")
    own = latency_model_for(model, sku, 1)
    assert with_operator_replicas(own, model, sku, 1, ()) is own
    times = [with_operator_replicas(own, model, sku, 1, (OperatorReplicas(("mlp",), n),)).prefill_s(4096)
             for n in (1, 2, 4)]
    assert times == sorted(times, reverse=True) and times[-1] < own.prefill_s(4096)


def test_overlapping_stages_are_one_stage_and_every_operator_has_one() -> None:
    stages = replicated_stages((OperatorReplicas(("mlp",), 1), OperatorReplicas(("attn_proj", "mlp"), 3)))
    assert [s.name for s in stages] == ["attn_proj+mlp", "attention+lm_head"]
    assert sum(g.count for g in stages[0].servers) == 4 and stages[1].servers == ()


_FAMILIES = ("attention", "attn_proj", "lm_head", "mlp")


@settings(max_examples=25, deadline=None)
@given(st.lists(st.tuples(st.sampled_from(_FAMILIES), st.integers(1, 6), st.sampled_from((0.25, 0.5, 1.0)),
                          st.sampled_from((1, 16, 256))), min_size=1, max_size=4, unique_by=lambda t: t[0]),
       st.integers(1, 256), st.integers(512, 2048), st.integers(64, 8192))
def test_attached_replicas_never_make_the_base_slower(
        replicas: list[tuple[str, int, float, int]], batch: int, ctx: int, prompt: int) -> None:
    """The base alone (one cohort) is always among the engine's choices: replicas only add servers."""
    catalog = default_catalog()
    model, sku = catalog.model("Qwen2-7B"), catalog.sku("H100-80GB")
    own = latency_model_for(model, sku, 1)
    split = with_operator_replicas(own, model, sku, 1, tuple(OperatorReplicas((op,), n, 1, share, cap)
                                                             for op, n, share, cap in replicas))
    own_fixed, own_per_ctx = own.decode_step_coeffs(batch)
    fixed, per_ctx = split.decode_step_coeffs(batch)
    assert fixed + per_ctx * batch * ctx <= (own_fixed + own_per_ctx * batch * ctx) * (1 + 1e-9)
    # The split engine prices a prefill per bucket of 64 tokens and 64 keys per query, rounded up.
    tokens, pairs = -(-prompt // 64) * 64, prompt * (prompt + 1) // 2
    keys = -(-pairs // (prompt * 64)) * 64
    bucketed = own.iteration_cost(tokens, 0, 0, 0, prefill_attn_pairs=tokens * keys).time_s
    assert split.prefill_s(prompt) <= bucketed * (1 + 1e-9)


def test_a_replica_takes_no_cohort_above_its_batch_cap() -> None:
    catalog = default_catalog()
    model, sku = catalog.model("Qwen2-7B"), catalog.sku("H100-80GB")
    own = latency_model_for(model, sku, 1)
    capped = with_operator_replicas(own, model, sku, 1, (OperatorReplicas(("mlp",), 4, 1, 1.0, 1),))
    assert capped.decode_step_coeffs(64) == pytest.approx(own.decode_step_coeffs(64))


def test_a_new_base_gets_its_share_of_the_replicas_the_others_run() -> None:
    """A base holds no more than an even spread's share (ceil(replicas / bases)): a new base is not left
    bare beside bases carrying every replica (the router sends each about as many requests, so a bare
    one would prefill them with less help)."""
    agents = [("a0", "eu", 8), ("a1", "eu", 8), ("a2", "eu", 8)]
    mlp = OperatorReplicas(("mlp",), 4)
    two = attach_operator_replicas({"a0": (_base(0),), "a1": (_base(1),)}, {KEY: (mlp,)}, agents).assignments
    assert _counts(two) == {"m-eu-00000": 2, "m-eu-00001": 2}
    three = attach_operator_replicas({**two, "a2": (_base(2),)}, {KEY: (mlp,)}, agents).assignments
    assert sorted(_counts(three).values()) == [1, 1, 2] and _counts(three)["m-eu-00002"] >= 1

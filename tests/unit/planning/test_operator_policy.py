"""The `operator_level` and `model_level` planning policies (issue 14 items 5-6): what they plan per
pool, how fast a replica of each kind becomes ready, and the errors their config gives."""

from __future__ import annotations

import math
from dataclasses import replace

import pytest

from opscale.model import Observation, PoolKey, PoolObservation, Role
from opscale.perf import default_catalog
from opscale.perf.loading import attach_load_time_s, load_time_s
from opscale.perf.operators import Operator, operator_weight_bytes
from opscale.planning.base import DeploymentSpec
from opscale.planning.operators import Workload
from opscale.planning.operators.dag import Phase
from opscale.planning.operators.policy import OperatorScalingPolicy, StageTargets, base_cover
from opscale.planning.registry import make_planning_policy

MODEL, SKU = "Qwen2-7B", "H100-80GB"
DEPLOYMENT = DeploymentSpec(model=MODEL, sku=SKU, min_replicas=1, max_replicas=16,
                            typical_prompt_tokens=1024, typical_output_tokens=64)
KEY = PoolKey(MODEL, "eu")


def _policy(name: str, **params: object) -> OperatorScalingPolicy:
    policy = make_planning_policy(name, [DEPLOYMENT], lambda *a, **k: 1.0, **params)
    assert isinstance(policy, OperatorScalingPolicy)
    return policy


def _observe(rps: float, queued: int = 0) -> Observation:
    pool = PoolObservation(KEY, arrival_rps=rps, prompt_tokens_per_s=rps * 1024, output_tokens_per_s=rps * 64,
                           queued=queued)
    return Observation(now_s=0.0, pools={KEY: pool})


def test_model_level_plans_whole_replicas_that_load_the_whole_model() -> None:
    policy = _policy("model_level")
    effects = policy.decide(_observe(20.0), policy.initial_state(), 0.0)
    targets = effects.state.targets[KEY]
    assert [s.operators for s in targets.stages] == [frozenset(Operator)] * 2
    catalog = default_catalog()
    full = load_time_s(catalog.model(MODEL), catalog.sku(SKU), 1, "warm")
    assert all(s.share == 1.0 and s.load_s == pytest.approx(full) for s in targets.stages)
    assert effects.desired[KEY] * DEPLOYMENT.tp >= targets.plan.gpus


def test_operator_level_scales_single_operators_that_load_in_under_a_second() -> None:
    policy = _policy("operator_level")
    targets = policy.decide(_observe(20.0), policy.initial_state(), 0.0).state.targets[KEY]
    for phase in (Phase.PREFILL, Phase.DECODE):
        assert sorted(op for s in targets.phase(phase) for op in s.operators) == sorted(Operator)
        assert all(len(s.operators) == 1 for s in targets.phase(phase))
    catalog = default_catalog()
    full = load_time_s(catalog.model(MODEL), catalog.sku(SKU), 1, "warm")
    for stage in targets.stages:
        assert stage.load_s < 1.0 < full
        (op,) = stage.operators
        assert stage.load_s == pytest.approx(attach_load_time_s(operator_weight_bytes(catalog.model(MODEL), op), stage.tp))


def test_more_load_never_gives_fewer_gpus_and_the_split_is_kept() -> None:
    policy = _policy("operator_level")
    state = policy.initial_state()
    costs = []
    for rps in (2.0, 5.0, 10.0, 20.0, 40.0):
        state = policy.decide(_observe(rps), state, 0.0).state
        costs.append(state.targets[KEY].gpu_cost)
        assert all(len(s.operators) == 1 for s in state.targets[KEY].stages)
    assert costs == sorted(costs) and costs[-1] > costs[0]


def test_re_plans_keep_each_stage_s_share_and_change_its_replicas() -> None:
    policy = _policy("operator_level")
    state = policy.decide(_observe(3.0), policy.initial_state(), 0.0).state
    first = {s.name: s.share for s in state.targets[KEY].stages}
    for rps in (10.0, 20.0, 30.0, 40.0):
        state = policy.decide(_observe(rps), state, 0.0).state
        assert {s.name: s.share for s in state.targets[KEY].stages} == first
    assert state.targets[KEY].gpu_cost > policy.targets(MODEL, Workload(3.0, 1024, 64)).gpu_cost
    free = _policy("operator_level", sticky_shares=False)
    assert free.decide(_observe(3.0), free.initial_state(), 0.0).desired  # the switch is accepted


def test_the_scale_in_window_keeps_the_recent_peak() -> None:
    policy = _policy("operator_level", scale_in_window_s=5.0)
    state = policy.decide(_observe(2.0), policy.initial_state(), -10.0).state
    low = sum(s.replicas for s in state.targets[KEY].stages)
    state = policy.decide(_observe(40.0), state, 0.0).state
    peak = {s.name: s.replicas for s in state.targets[KEY].stages}
    state = policy.decide(_observe(2.0), state, 3.0).state  # within the window: held
    assert {s.name: s.replicas for s in state.targets[KEY].stages} == peak
    state = policy.decide(_observe(2.0), state, 9.0).state  # past it: follows the plan
    assert sum(s.replicas for s in state.targets[KEY].stages) == low < sum(peak.values())


def test_a_backlog_is_planned_as_extra_arrivals() -> None:
    policy = _policy("operator_level")
    calm = policy.decide(_observe(10.0), policy.initial_state(), 0.0).state.targets[KEY]
    backed_up = policy.decide(_observe(10.0, queued=60), policy.initial_state(), 0.0).state.targets[KEY]
    assert backed_up.plan.workload.arrival_rps > calm.plan.workload.arrival_rps
    assert backed_up.gpu_cost > calm.gpu_cost


def test_operator_level_actuates_one_base_instance_plus_operator_replicas() -> None:
    """OpScale's shape through the planner and node-agents: the floor of base instances, the stages'
    replicas beyond what the bases give as operator replicas (per stage the most over its phases);
    model_level stays whole replicas with none."""
    operator, model = _policy("operator_level"), _policy("model_level")
    op_effects = operator.decide(_observe(20.0), operator.initial_state(), 0.0)
    model_effects = model.decide(_observe(20.0), model.initial_state(), 0.0)
    assert model_effects.operator_replicas == {}
    bases = op_effects.desired[KEY]
    assert bases == DEPLOYMENT.min_replicas
    targets = op_effects.state.targets[KEY]
    extra = {r.name: r for r in op_effects.operator_replicas[KEY]}
    cover = base_cover(targets, DEPLOYMENT.tp)
    assert 0 < cover <= 1
    for stage in targets.stages:
        name = "+".join(sorted(op.value for op in stage.operators))
        most = max(s.replicas for s in targets.stages if s.operators == stage.operators)
        wanted = math.ceil(most - bases * cover - 1e-9)
        assert extra[name].replicas == wanted if wanted > 0 else name not in extra
    assert extra, "20 req/s needs more than one replica of some stage"
    assert "base instance(s) + operator replicas" in op_effects.reasons[KEY]


def test_decode_headroom_plans_the_decode_stages_at_their_own_factor() -> None:
    """The prefill stages at headroom, the decode stages at decode_headroom (the same partition): the
    decode phase's replicas are those of the plan at the decode factor, never more than at headroom."""
    both = _policy("operator_level", partition="planned", partition_rps=40.0, headroom=1.5)
    split = _policy("operator_level", partition="planned", partition_rps=40.0, headroom=1.5, decode_headroom=1.0)
    plain = _policy("operator_level", partition="planned", partition_rps=40.0)
    high, low, unit = (p.decide(_observe(100.0), p.initial_state(), 0.0).state.targets[KEY] for p in (both, split, plain))
    assert low.phase(Phase.PREFILL) == high.phase(Phase.PREFILL)
    assert [(s.operators, s.replicas) for s in low.phase(Phase.DECODE)] == \
        [(s.operators, s.replicas) for s in unit.phase(Phase.DECODE)]
    assert sum(s.replicas for s in low.phase(Phase.DECODE)) < sum(s.replicas for s in high.phase(Phase.DECODE))


def test_idle_bases_cover_other_stages_in_the_time_their_prefill_leaves() -> None:
    """idle_bases_cover: a base that runs a whole-model prefill stage at the observed rate (its planned
    utilisation over the headroom) covers the decode stages in the rest of its time, as the engine runs
    them on it; the same bases, never more replicas, fewer where prefill leaves a base mostly idle."""
    def observe(rps: float) -> Observation:
        return Observation(now_s=0.0, pools={KEY: PoolObservation(KEY, arrival_rps=rps, prompt_tokens_per_s=rps * 1155,
                                                                  output_tokens_per_s=rps * 211)})

    params = {"partition": "planned", "partition_rps": 45.0, "headroom": 1.5, "decode_headroom": 1.0}
    busy, idle = _policy("operator_level", **params), _policy("operator_level", **params, idle_bases_cover=True)
    held = {}
    for rps in (10.0, 20.0, 40.0):
        a, b = (p.decide(observe(rps), p.initial_state(), 0.0) for p in (busy, idle))
        assert b.desired[KEY] == a.desired[KEY]
        held[rps] = tuple(sum(r.gpu_equivalents for r in e.operator_replicas.get(KEY, ())) for e in (a, b))
        assert held[rps][1] <= held[rps][0]
    assert held[10.0][1] < held[10.0][0], held


def test_operator_replicas_beyond_what_one_base_carries_open_another_base() -> None:
    policy = _policy("operator_level", replica_gpus_per_base=0.5)
    effects = policy.decide(_observe(80.0), policy.initial_state(), 0.0)
    bases = effects.desired[KEY]
    assert bases > 1
    extra_gpus = sum(r.gpu_equivalents for r in effects.operator_replicas.get(KEY, ()))
    assert extra_gpus <= bases * 0.5 or bases == DEPLOYMENT.max_replicas


def test_pools_of_other_models_and_roles_are_left_alone() -> None:
    policy = _policy("operator_level")
    other = PoolKey("Llama-3-8B", "eu")
    prefill = PoolKey(MODEL, "eu", Role.PREFILL)
    obs = Observation(now_s=0.0, pools={other: PoolObservation(other, arrival_rps=5.0),
                                        prefill: PoolObservation(prefill, arrival_rps=5.0)})
    assert policy.decide(obs, policy.initial_state(), 0.0).desired == {}


def test_planned_partition_is_the_plan_at_partition_rps() -> None:
    policy = _policy("operator_level", partition="planned", partition_rps=40.0)
    targets = policy.targets(MODEL, Workload(5.0, 2048, 64))
    again = policy.targets(MODEL, Workload(60.0, 2048, 64), targets)
    assert [s.operators for s in again.stages] == [s.operators for s in targets.stages]


@pytest.mark.parametrize(("params", "names"), [
    ({"partition": "per_layer"}, "partition"),
    ({"min_rps": 0}, "min_rps"),
    ({"backlog_drain_s": -1}, "backlog_drain_s"),
    ({"decode_headroom": 0.5}, "decode_headroom"),
    ({"planner": {"batch_sizes": [0]}}, "batch_sizes"),
    ({"planner": {"max_batch": {"softmax": 4}}}, "softmax"),
    ({"ttft_slo_s": 1.0}, "tiers"),
])
def test_bad_config_names_the_field(params: dict[str, object], names: str) -> None:
    with pytest.raises(ValueError, match=names):
        _policy("operator_level", **params)


def test_an_slo_no_gpu_can_meet_names_the_objective() -> None:
    from opscale.model import TierSpec

    with pytest.raises(ValueError, match="model_level.*ttft_slo_s"):
        make_planning_policy("model_level", [DEPLOYMENT], lambda *a, **k: 1.0,
                             tiers={"interactive": TierSpec("interactive", ttft_slo_s=1e-4, tbt_slo_s=0.1)})


def test_a_disaggregated_deployment_is_refused_by_name() -> None:
    from opscale.planning.base import RolePoolSpec

    split = DeploymentSpec(model=MODEL, prefill=RolePoolSpec(sku=SKU), decode=RolePoolSpec(sku=SKU))
    with pytest.raises(ValueError, match="operator_level.*disaggregated"):
        make_planning_policy("operator_level", [split], lambda *a, **k: 1.0)


def test_plan_partition_refuses_a_partition_that_misses_an_operator() -> None:
    planner = _policy("operator_level").planner(MODEL)
    with pytest.raises(ValueError, match="decode partition"):
        planner.plan_partition(Workload(5.0, 512, 64), [frozenset(Operator)], [frozenset({Operator.MLP})])


def test_attach_load_time_is_weight_bytes_over_the_warm_path() -> None:
    assert attach_load_time_s(12e9, 1) == pytest.approx(1.0)
    assert attach_load_time_s(12e9, 2) == pytest.approx(0.5)
    with pytest.raises(ValueError, match="tp"):
        attach_load_time_s(1e9, 0)


def test_a_stage_of_every_operator_grows_base_instances_not_attached_replicas() -> None:
    """With the planned partition a stage may hold every operator: one more replica of it is one more
    whole engine. Its replicas beyond the bases were once dropped (neither a base nor an attached
    replica), leaving the pool with far less than its plan; they are base instances."""
    policy = _policy("operator_level", partition="planned")
    effects = policy.decide(_observe(60.0), policy.initial_state(), 0.0)
    targets = effects.state.targets[KEY]
    whole = [s.replicas for s in targets.stages if s.operators == frozenset(Operator)]
    assert whole, "the planned partition split the operators at this load: pick one where it does not"
    assert effects.desired[KEY] >= max(whole) > 1
    assert all(set(r.operators) != {op.value for op in Operator} for r in effects.operator_replicas.get(KEY, ()))


@pytest.mark.parametrize("rps", [5.0, 20.0, 60.0])
def test_a_stage_of_every_operator_is_planned_on_whole_gpus(rps: float) -> None:
    """The runtime runs a stage of every operator as unified base engines on whole GPUs, so the plan
    never prices it on an SM share (which once turned each quarter-GPU replica into a whole-GPU base);
    stages of fewer operators keep their shares."""
    policy = _policy("operator_level", partition="planned")
    targets = policy.targets(MODEL, Workload(rps, 1024, 64))
    again = policy.targets(MODEL, Workload(2 * rps, 1024, 64), targets)
    for found in (targets, again):
        assert all(s.share == 1.0 for s in found.stages if s.operators == frozenset(Operator))


@pytest.mark.parametrize("rps", [5.0, 20.0, 60.0, 120.0])
def test_whole_stage_bases_realise_the_plan_per_phase_or_as_model_level_does(rps: float) -> None:
    """per_phase: one unified base per replica of the phase needing the most; plan_gpus: one per planned
    whole-GPU replica of either phase, what model_level deploys for the same plan. Neither holds fewer
    GPUs than the larger phase's stage, and plan_gpus holds every GPU the plan priced."""
    per_phase = _policy("operator_level", partition="planned", partition_rps=1.0, whole_stage_bases="per_phase")
    plan_gpus = _policy("operator_level", partition="planned", partition_rps=1.0)  # the default
    model = _policy("model_level")
    a = per_phase.decide(_observe(rps), per_phase.initial_state(), 0.0)
    b = plan_gpus.decide(_observe(rps), plan_gpus.initial_state(), 0.0)
    m = model.decide(_observe(rps), model.initial_state(), 0.0)
    whole = [s for s in a.state.targets[KEY].stages if s.operators == frozenset(Operator)]
    assert len(whole) == 2, "the partition at 1 request/s keeps every operator in one stage"
    assert a.desired[KEY] == max(DEPLOYMENT.min_replicas, max(s.replicas for s in whole))
    assert b.desired[KEY] == max(DEPLOYMENT.min_replicas, sum(s.replicas for s in whole))
    assert b.desired[KEY] * DEPLOYMENT.tp >= b.state.targets[KEY].plan.gpu_cost - 1e-9
    assert b.desired[KEY] == m.desired[KEY]  # the same plan, realised the same way
    assert not a.operator_replicas.get(KEY) and not b.operator_replicas.get(KEY)


@pytest.mark.parametrize("rps", [20.0, 120.0])
def test_whole_stage_bases_may_name_each_model_and_an_unknown_one_is_refused(rps: float) -> None:
    """A model named gets its rule, one not named the default (plan_gpus)."""
    named = _policy("operator_level", partition="planned", partition_rps=1.0, whole_stage_bases={MODEL: "per_phase"})
    shared = _policy("operator_level", partition="planned", partition_rps=1.0, whole_stage_bases="per_phase")
    other = _policy("operator_level", partition="planned", partition_rps=1.0, whole_stage_bases={})
    default = _policy("operator_level", partition="planned", partition_rps=1.0)
    assert (named.decide(_observe(rps), named.initial_state(), 0.0).desired
            == shared.decide(_observe(rps), shared.initial_state(), 0.0).desired
            != default.decide(_observe(rps), default.initial_state(), 0.0).desired)
    assert (other.decide(_observe(rps), other.initial_state(), 0.0).desired
            == default.decide(_observe(rps), default.initial_state(), 0.0).desired)
    with pytest.raises(ValueError, match="whole_stage_bases names no deployed model"):
        _policy("operator_level", whole_stage_bases={"Llama-3-8B": "per_phase"})
    with pytest.raises(ValueError, match="whole_stage_bases"):
        _policy("operator_level", whole_stage_bases={MODEL: "per_gpu"})


def test_partition_rps_may_name_each_model_and_an_unknown_one_is_refused() -> None:
    per_model = _policy("operator_level", partition="planned", partition_rps={MODEL: 40.0})
    shared = _policy("operator_level", partition="planned", partition_rps=40.0)
    workload = Workload(5.0, 2048, 64)
    assert ([s.operators for s in per_model.targets(MODEL, workload).stages]
            == [s.operators for s in shared.targets(MODEL, workload).stages])
    with pytest.raises(ValueError, match="partition_rps names no deployed model"):
        _policy("operator_level", partition="planned", partition_rps={"Llama-3-8B": 40.0})
    with pytest.raises(ValueError, match="partition_rps"):
        _policy("operator_level", partition="planned", partition_rps={MODEL: 0.0})


@pytest.mark.parametrize("split", [("planned", None), ("planned", 20.0), ("planned", 45.0), ("planned", 80.0),
                                   ("per_operator", None)])
@pytest.mark.parametrize("rps", [2.0, 20.0, 60.0])
def test_the_realisation_holds_every_gpu_its_plan_prices(split: tuple[str, float | None], rps: float) -> None:
    """Base instances plus operator replicas (the default whole_stage_bases) hold at least the plan's
    GPU-equivalents: a base's GPUs count once, for the whole-model stages of both phases first, then as
    cover of the other stages, each of which counts at its larger phase (an attached replica serves
    both phases' work of its operators)."""
    partition, split_rps = split
    policy = _policy("operator_level", partition=partition, partition_rps=split_rps)
    effects = policy.decide(_observe(rps), policy.initial_state(), 0.0)
    targets = effects.state.targets[KEY]
    held = effects.desired[KEY] * DEPLOYMENT.tp + sum(r.gpu_equivalents for r in effects.operator_replicas.get(KEY, ()))
    whole = sum(s.replicas * s.gpu_cost for s in targets.stages if s.operators == frozenset(Operator))
    attached: dict[frozenset[Operator], float] = {}
    for s in targets.stages:
        if s.operators != frozenset(Operator):
            attached[s.operators] = max(attached.get(s.operators, 0.0), s.replicas * s.gpu_cost)
    assert held >= whole + sum(attached.values()) - 1e-9 or effects.desired[KEY] == DEPLOYMENT.max_replicas


class _BothPhasesTwice(OperatorScalingPolicy):
    """The decode_headroom path as it was: a whole plan (both phases, packing, energy) at the decode factor,
    of which only the decode stages were kept."""

    def _decode_at(self, model: str, found: StageTargets, workload: Workload) -> StageTargets:
        decode = {s.operators: s for s in self.targets(model, workload, found).phase(Phase.DECODE)}
        return replace(found, stages=tuple(decode.get(s.operators, s) if s.phase is Phase.DECODE else s
                                           for s in found.stages))


@pytest.mark.parametrize("params", [
    {"partition": "planned", "partition_rps": 40.0, "headroom": 1.5, "decode_headroom": 1.0},
    {"partition": "planned", "partition_rps": 45.0, "headroom": 1.5, "decode_headroom": 1.0, "idle_bases_cover": True},
    {"headroom": 1.3, "decode_headroom": 1.1},  # per_operator
    {"headroom": 1.2, "decode_headroom": 1.0, "sticky_shares": False},
])
def test_decode_headroom_plans_only_the_decode_phase_again_with_the_same_decisions(params: dict[str, object]) -> None:
    """Planning the decode phase alone at decode_headroom decides what planning both phases did, tick
    after tick (the state, and so the kept partition and shares, carried along)."""
    new = _policy("operator_level", **params)
    old = _BothPhasesTwice([DEPLOYMENT], new.objective, new.config, "operator")
    states = [new.initial_state(), old.initial_state()]
    for tick, rps in enumerate((5.0, 20.0, 60.0, 12.0, 0.5, 35.0)):
        now = 60.0 * tick
        ours, theirs = (p.decide(_observe(rps, queued=tick), s, now) for p, s in zip((new, old), states, strict=True))
        assert (ours.desired, ours.operator_replicas, ours.reasons) == (theirs.desired, theirs.operator_replicas,
                                                                        theirs.reasons), rps
        assert ours.state == theirs.state, rps
        states = [ours.state, theirs.state]

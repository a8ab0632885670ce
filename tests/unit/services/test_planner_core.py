from __future__ import annotations

import pytest
from _builders import heartbeat, status

from opscale.model import InstanceState, PoolKey, TierSpec
from opscale.planning import DeploymentSpec, make_planning_policy
from opscale.planning.reactive import ReactiveConfig, ReactivePolicy
from opscale.services.actions import SendCommand, Store
from opscale.services.events import ApplyCommand, RouterLoad, WindowStats
from opscale.services.planner import PlannerConfig, PlannerCore

pytestmark = pytest.mark.unit

DEP = DeploymentSpec(model="m", sku="H100-80GB", tp=1, min_replicas=1, max_replicas=8)


def one_rps(model: str, sku: str, tp: int, prompt: float, output: float) -> float:
    return 1.0


def _window(ttft_p99: float, end_s: float) -> WindowStats:
    return WindowStats("m", "eu", "interactive", 60.0, end_s, 60, 60, 1.0, 100.0, 10.0, None, ttft_p99, None, None,
                       None, None, 1.0)


def _load(rps: float, at_s: float, interval_s: float = 10.0, pending: int = 0) -> RouterLoad:
    """What a router reports: `rps` requests per second arrived over the last `interval_s`."""
    n = round(rps * interval_s)
    return RouterLoad("r0", "eu", at_s, {"m": pending} if pending else {}, interval_s, {"m": n}, {"m": 100 * n},
                      {"m": 10 * n})


def _planner(**cfg: float) -> PlannerCore:
    policy = ReactivePolicy([DEP], one_rps, ReactiveConfig(**cfg))
    return PlannerCore(policy, [DEP], PlannerConfig(interval_s=10))


def _commands(actions: list) -> dict[str, ApplyCommand]:
    return {a.agent_id: a.command for a in actions if isinstance(a, SendCommand)}


def _ready_heartbeat(planner: PlannerCore, agent: str, at_s: float):
    specs = planner.plan.assignments.get(agent, ())
    return heartbeat(agent, "eu", *(status(s.instance_id) for s in specs), at_s=at_s, epoch=planner.plan.epoch)


def test_the_first_decision_waits_for_the_first_heartbeat_not_for_an_interval() -> None:
    # A planner that starts before its hosts have reported (the simulator's t=0, a live stack starting
    # up) places the fleet on the first tick after a heartbeat, not a whole interval later.
    planner = _planner()
    assert _commands(planner.tick(0.0)) == {} and planner.plan.epoch == 0
    planner.handle(heartbeat("a1", "eu", at_s=0.001), 0.001)
    assert _commands(planner.tick(1.0))["a1"].epoch == 1
    assert planner.plan.replicas() == {PoolKey("m", "eu"): 1}


def test_min_replicas_then_scale_up_to_demand_over_target_utilisation() -> None:
    planner = _planner(target_util=0.7)
    planner.handle(heartbeat("a1", "eu"), 0.0)
    first = planner.tick(0.0)
    assert planner.plan.epoch == 1 and planner.plan.replicas() == {PoolKey("m", "eu"): 1}
    assert _commands(first)["a1"].epoch == 1 and any(isinstance(a, Store) and a.key == "plan" for a in first)
    planner.handle(_ready_heartbeat(planner, "a1", 5.0), 5.0)
    planner.handle(_load(3.5, 10.0), 10.0)  # 3.5 rps at 1 rps/instance and 0.7 target -> 5 instances
    cmds = _commands(planner.tick(10.0))
    assert planner.plan.epoch == 2 and len(cmds["a1"].instances) == 5
    assert "scale up" in planner.plan.reason


def test_same_observation_makes_no_new_epoch_and_loading_capacity_is_not_ordered_twice() -> None:
    planner = _planner()
    planner.handle(heartbeat("a1", "eu"), 0.0)
    planner.tick(0.0)
    planner.handle(_load(3.5, 10.0), 10.0)
    planner.tick(10.0)
    epoch = planner.plan.epoch
    # the agent reports the new instances as loading: expected capacity already covers the demand
    specs = planner.plan.assignments["a1"]
    planner.handle(heartbeat("a1", "eu", *(status(s.instance_id, state=InstanceState.LOADING) for s in specs),
                             at_s=12.0, epoch=epoch), 12.0)
    assert _commands(planner.tick(20.0)) == {} and planner.plan.epoch == epoch


def test_unconverged_agent_gets_the_same_command_again() -> None:
    planner = _planner()
    planner.handle(heartbeat("a1", "eu"), 0.0)
    [cmd] = _commands(planner.tick(0.0)).values()
    planner.handle(heartbeat("a1", "eu", at_s=3.0, epoch=0), 3.0)  # still on epoch 0
    assert _commands(planner.tick(3.0)) == {}  # too soon to re-send
    [again] = _commands(planner.tick(6.0)).values()
    assert again == cmd


def test_scale_down_waits_for_delay_and_survivors() -> None:
    planner = _planner(target_util=0.7, down_delay_s=60, down_window_s=60, max_down_step=8)
    planner.handle(heartbeat("a1", "eu"), 0.0)
    planner.tick(0.0)
    planner.handle(_load(3.5, 10.0), 10.0)
    planner.tick(10.0)
    assert planner.plan.replicas()[PoolKey("m", "eu")] == 5
    for t in range(20, 200, 10):
        planner.handle(_ready_heartbeat(planner, "a1", t), t)
        planner.handle(_load(0.6, t), t)  # one instance at 0.6 util absorbs it
        planner.tick(t)
        replicas = planner.plan.replicas()[PoolKey("m", "eu")]
        if t < 70:
            assert replicas == 5, f"scaled down at t={t} before the delay"
    assert replicas == 1


def test_cold_start_from_zero_when_the_router_holds_requests() -> None:
    dep = DEP.model_copy(update={"min_replicas": 0})
    planner = PlannerCore(ReactivePolicy([dep], one_rps), [dep])
    planner.handle(heartbeat("a1", "eu"), 0.0)
    planner.tick(0.0)
    assert planner.plan.epoch == 0  # nothing needed yet
    planner.handle(RouterLoad("r0", "eu", 5.0, {"m": 2}), 5.0)  # held at the router, no arrival rate yet
    planner.tick(10.0)
    assert planner.plan.replicas() == {PoolKey("m", "eu"): 1} and "cold start" in planner.plan.reason


def test_lost_agent_instances_are_replaced_elsewhere_and_restore_continues_numbering() -> None:
    planner = _planner()
    planner.handle(heartbeat("a1", "eu"), 0.0)
    planner.handle(heartbeat("a2", "eu", gpus=4), 0.0)
    planner.tick(0.0)
    [(host, specs)] = [(a, s) for a, s in planner.plan.assignments.items() if s]
    assert host == "a1"  # the host with most free GPUs
    planner.handle(heartbeat("a2", "eu", at_s=20.0, gpus=4), 20.0)
    planner.tick(20.0)  # a1 silent for 20 s > 15 s timeout
    assert [a for a, s in planner.plan.assignments.items() if s] == ["a2"]
    restarted = _planner()
    restarted.restore(planner.plan)
    restarted.handle(heartbeat("a2", "eu", at_s=21.0, gpus=4), 21.0)
    # It re-learns the fleet and a demand window of router loads before it decides anything.
    for t in range(21, 52):
        restarted.handle(heartbeat("a2", "eu", at_s=float(t), gpus=4), float(t))
        restarted.handle(_load(3.5, float(t), interval_s=1.0), float(t))
        restarted.tick(float(t))
        if t < 50:
            assert restarted.plan.epoch == planner.plan.epoch, f"decided at t={t} before re-learning"
    ids = sorted(s.instance_id for s in restarted.plan.assignments["a2"])
    assert len(ids) == len(set(ids)) == 4 and ids[0] == planner.plan.assignments["a2"][0].instance_id


def test_static_policy_holds_its_count() -> None:
    policy = make_planning_policy("static", [DEP], one_rps, replicas=3)
    planner = PlannerCore(policy, [DEP])
    planner.handle(heartbeat("a1", "eu"), 0.0)
    planner.tick(0.0)
    assert planner.plan.replicas() == {PoolKey("m", "eu"): 3}


def test_unknown_policy_names_the_known_ones() -> None:
    with pytest.raises(ValueError, match="known policies: reactive, static"):
        make_planning_policy("magic", [DEP], one_rps)


def test_demand_comes_from_router_arrivals_and_ttft_breach_adds_one() -> None:
    planner = _planner(target_util=0.7, up_delay_s=0)
    planner.handle(heartbeat("a1", "eu"), 0.0)
    planner.tick(0.0)
    for t in (10.0, 20.0, 30.0):
        planner.handle(_load(2.0, t), t)
    planner.handle(_ready_heartbeat(planner, "a1", 30.0), 30.0)
    obs = planner.observe(30.0)
    pool = obs.pools[PoolKey("m", "eu")]
    assert pool.arrival_rps == pytest.approx(2.0) and pool.prompt_tokens_per_s == pytest.approx(200.0)
    planner.tick(30.0)
    assert planner.plan.replicas()[PoolKey("m", "eu")] == 3  # ceil(2 / 0.7)
    # demand steady, but TTFT p99 breaches the 2 s objective with requests queued: one more instance
    planner.handle(_ready_heartbeat(planner, "a1", 35.0), 35.0)
    planner.handle(_load(2.0, 40.0, pending=5), 40.0)
    planner.handle(_window(5.0, 40.0), 40.0)
    planner.tick(40.0)
    assert planner.plan.replicas()[PoolKey("m", "eu")] == 4 and "SLO backstop" in planner.plan.reason


def test_a_step_from_zero_is_seen_at_its_rate_at_once_not_averaged_since_the_first_report() -> None:
    planner = _planner()
    planner.handle(heartbeat("a1", "eu"), 0.0)
    for t in range(1, 15):  # the router reports from start-up on, before any traffic
        planner.handle(RouterLoad("r0", "eu", float(t), {}, 1.0), float(t))
    for t in range(15, 18):  # then 10 requests/s from t = 14
        planner.handle(_load(10.0, float(t), interval_s=1.0), float(t))
    # measured over the 3 s since the first interval that carried arrivals, not the 17 s of reports
    pool = planner.observe(17.0).pools[PoolKey("m", "eu")]
    assert pool.arrival_rps == pytest.approx(10.0) and pool.prompt_tokens_per_s == pytest.approx(1000.0)
    # a quiet spell after the onset is part of the rate, and the window still caps the span
    assert planner.observe(20.0).pools[PoolKey("m", "eu")].arrival_rps == pytest.approx(30 / 6)
    for t in range(18, 80):
        planner.handle(_load(10.0, float(t), interval_s=1.0), float(t))
    assert planner.observe(79.0).pools[PoolKey("m", "eu")].arrival_rps == pytest.approx(10.0)


def test_a_pool_without_arrivals_has_no_demand_while_another_has() -> None:
    dep2 = DEP.model_copy(update={"model": "m2"})
    planner = PlannerCore(ReactivePolicy([DEP, dep2], one_rps), [DEP, dep2], PlannerConfig(interval_s=10))
    planner.handle(heartbeat("a1", "eu"), 0.0)
    planner.handle(RouterLoad("r0", "eu", 1.0, {}, 1.0, {"m": 4, "m2": 0}), 1.0)
    pools = planner.observe(2.0).pools
    assert pools[PoolKey("m", "eu")].arrival_rps == pytest.approx(2.0)  # 4 requests over [0, 2]
    assert pools[PoolKey("m2", "eu")].arrival_rps == 0.0
    planner.handle(RouterLoad("r0", "eu", 3.0, {}, 2.0, {"m": 4, "m2": 6}), 3.0)
    pools = planner.observe(3.0).pools
    assert pools[PoolKey("m", "eu")].arrival_rps == pytest.approx(8 / 3)  # since its onset at 0
    assert pools[PoolKey("m2", "eu")].arrival_rps == pytest.approx(3.0)  # since its own, at 1


def test_the_ttft_backstop_defends_the_tiers_objective() -> None:
    # The same breach as above (TTFT p99 5 s with requests queued) is within a tier table whose
    # strictest latency-sensitive TTFT is 10 s: no backstop.
    tiers = {"chat": TierSpec("chat", ttft_slo_s=10.0, tbt_slo_s=0.1),
             "bulk": TierSpec("bulk", ttft_slo_s=1.0, tbt_slo_s=1.0, deadline_s=600.0)}
    policy = make_planning_policy("reactive", [DEP], one_rps, tiers=tiers, target_util=0.7, up_delay_s=0)
    assert policy.objective.ttft_slo_s == 10.0  # the deadline tier's 1 s TTFT is not an objective
    planner = PlannerCore(policy, [DEP], PlannerConfig(interval_s=10))
    planner.handle(heartbeat("a1", "eu"), 0.0)
    planner.tick(0.0)
    for t in (10.0, 20.0, 30.0):
        planner.handle(_load(2.0, t), t)
    planner.handle(_ready_heartbeat(planner, "a1", 30.0), 30.0)
    planner.tick(30.0)
    planner.handle(_ready_heartbeat(planner, "a1", 35.0), 35.0)
    planner.handle(_load(2.0, 40.0, pending=5), 40.0)
    planner.handle(_window(5.0, 40.0), 40.0)
    planner.tick(40.0)
    assert planner.plan.replicas()[PoolKey("m", "eu")] == 3 and "SLO backstop" not in planner.plan.reason
    with pytest.raises(ValueError, match=r"'reactive': ttft_slo_s \(got 2.0\) is not a policy parameter"):
        make_planning_policy("reactive", [DEP], one_rps, ttft_slo_s=2.0)
    with pytest.raises(ValueError, match=r"'reactive': target_utl: Extra inputs"):
        make_planning_policy("reactive", [DEP], one_rps, target_utl=0.5)


def test_a_policys_prepared_growth_is_staged_on_the_hosts_it_would_use() -> None:
    from opscale.planning.base import Effects

    class Prepares:
        name = "prepares"

        def initial_state(self) -> None:
            return None

        def decide(self, observation, state, now_s):  # type: ignore[no-untyped-def]
            key = PoolKey("m", "eu")
            return Effects({key: 1}, None, {key: "steady"}, prepare={key: 3})

    big = DeploymentSpec(model="m", sku="H100-80GB", tp=4, min_replicas=1, max_replicas=8)
    planner = PlannerCore(Prepares(), [big], PlannerConfig(interval_s=10))
    planner.handle(heartbeat("a1", "eu"), 0.0)
    planner.handle(heartbeat("a2", "eu"), 0.0)
    cmds = _commands(planner.tick(0.0))
    # one instance runs on a1 (so a1 holds the weights); growth to 3 puts one more beside it and the
    # third on a2, which stages them
    assert planner.plan.prestage == {"a2": ("m",)}
    assert cmds["a2"].prestage == ("m",)


def test_each_router_replica_load_counts_apart_and_a_silent_one_is_forgotten() -> None:
    planner = _planner()
    planner.handle(heartbeat("a1", "eu"), 0.0)
    planner.handle(RouterLoad("router-a", "eu", 1.0, {"m": 3}), 1.0)
    planner.handle(RouterLoad("router-b", "eu", 1.0, {"m": 4}), 1.0)
    planner.handle(RouterLoad("router-a", "eu", 0.5, {"m": 9}), 1.0)  # an older report, redelivered
    assert planner.router_pending() == {"router-a": {"m": 3}, "router-b": {"m": 4}}
    assert planner.observe(1.0).pools[PoolKey("m", "eu")].queued == 7  # held at both replicas
    planner.handle(RouterLoad("router-b", "eu", 20.0, {"m": 1}), 20.0)
    planner.tick(20.0)  # router-a silent for 19 s > 15 s: a replica that went away holds nothing
    assert planner.router_pending() == {"router-b": {"m": 1}}


def test_a_newly_elected_planner_sends_its_plan_under_its_fencing_token() -> None:
    from dataclasses import replace

    planner = _planner()
    planner.handle(heartbeat("a1", "eu"), 0.0)
    [first] = [a.command for a in planner.tick(0.0) if isinstance(a, SendCommand)]
    assert first.fencing_token == 0  # no lease, no fence (the simulator's single planner)
    applied = replace(_ready_heartbeat(planner, "a1", 1.0), fencing_token=0)
    planner.handle(applied, 1.0)
    assert not _commands(planner.tick(1.0))  # the agent follows the plan: nothing to send
    planner.lead(3)  # elected under lease generation 3: the agent still follows generation 0
    command = _commands(planner.tick(1.1))["a1"]
    assert (command.fencing_token, command.epoch) == (3, planner.plan.epoch)
    planner.handle(replace(applied, at_s=2.0, fencing_token=3), 2.0)
    assert not _commands(planner.tick(10.0))  # converged under the new generation


def test_the_newest_token_the_agents_follow_bounds_the_next_lease() -> None:
    from dataclasses import replace

    planner = _planner()
    assert planner.newest_agent_token() == 0
    planner.handle(replace(heartbeat("a1", "eu"), fencing_token=5), 0.0)
    planner.handle(replace(heartbeat("a2", "eu"), fencing_token=7), 0.0)
    assert planner.newest_agent_token() == 7
@pytest.mark.security
def test_an_agent_ahead_of_the_plan_is_fenced_past_rather_than_left_on_a_stray_epoch() -> None:
    # An agent that applied an epoch no plan of this planner made (a deposed leader's, or a stray Apply
    # within the agent's bound) would ignore the plan's older epoch; the planner re-issues its plan past it.
    planner = _planner()
    planner.handle(heartbeat("a1", "eu"), 0.0)
    planner.tick(0.0)
    planner.handle(_ready_heartbeat(planner, "a1", 1.0), 1.0)
    assert planner.plan.epoch == 1
    planner.handle(heartbeat("a1", "eu", at_s=2.0, epoch=1000), 2.0)  # stopped everything at epoch 1000
    actions = planner.tick(2.0)
    assert planner.plan.epoch == 1001 and "fenced past epoch 1000" in planner.plan.reason
    assert _commands(actions)["a1"].epoch == 1001 and _commands(actions)["a1"].instances
    assert any(isinstance(a, Store) and a.key == "plan" and a.value.epoch == 1001 for a in actions)


def test_a_fresh_planner_starts_past_the_epochs_its_agents_report() -> None:
    # No stored plan (Redis emptied) while the agents run epoch 57: the first plan must not be epoch 1.
    planner = _planner()
    planner.handle(heartbeat("a1", "eu", epoch=57), 0.0)
    assert _commands(planner.tick(0.0))["a1"].epoch == 58

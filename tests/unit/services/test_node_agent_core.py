from __future__ import annotations

import pytest

from opscale.engine.outputs import EngineReport
from opscale.model import InstanceSpec, InstanceState
from opscale.services.actions import DrainEngine, Publish, StartEngine, StopEngine
from opscale.services.events import AgentHeartbeat, ApplyCommand, DrainCommand
from opscale.services.node_agent import NodeAgentConfig, NodeAgentCore

pytestmark = pytest.mark.unit


def _agent() -> NodeAgentCore:
    return NodeAgentCore(NodeAgentConfig(agent_id="a1", region="eu", sku="H100-80GB", gpus=8,
                                         endpoint_base="http://h:9000"), load_time_s=lambda spec: 30.0)


def _spec(n: int, tp: int = 1) -> InstanceSpec:
    return InstanceSpec(f"m-eu-{n:05d}", "m", "H100-80GB", tp)


def _report(instance_id: str, idle: bool, running: int = 0) -> EngineReport:
    return EngineReport(instance_id, 0, running, running * 10, 0.1, 0.0, 0.5, 300.0, idle, 0.1, 0.0, 0.0, 0.0)


def _states(agent: NodeAgentCore, now_s: float) -> dict[str, InstanceState]:
    return {s.instance_id: s.state for s in agent.heartbeat(now_s).instances}


def test_lifecycle_load_ready_drain_stop() -> None:
    agent = _agent()
    result, actions = agent.apply(ApplyCommand("a1", 1, "c1", (_spec(1),)), 0.0)
    assert result.accepted and actions[0] == StartEngine(_spec(1), 30.0)
    agent.tick(10.0)
    assert _states(agent, 10.0) == {"m-eu-00001": InstanceState.LOADING} and not agent.is_accepting("m-eu-00001")
    agent.tick(30.0)
    assert _states(agent, 30.0) == {"m-eu-00001": InstanceState.READY} and agent.is_accepting("m-eu-00001")
    _, actions = agent.apply(ApplyCommand("a1", 2, "c2", ()), 40.0)
    assert DrainEngine("m-eu-00001") in actions
    agent.handle(_report("m-eu-00001", idle=False, running=2), 41.0)
    assert not any(isinstance(a, StopEngine) for a in agent.tick(41.0))  # in-flight work finishes first
    agent.handle(_report("m-eu-00001", idle=True), 50.0)
    assert StopEngine("m-eu-00001") in agent.tick(50.0)
    assert _states(agent, 50.0) == {"m-eu-00001": InstanceState.STOPPED}


def test_older_epoch_is_ignored_and_a_repeat_changes_nothing() -> None:
    agent = _agent()
    agent.apply(ApplyCommand("a1", 5, "c5", (_spec(1),)), 0.0)
    old, actions = agent.apply(ApplyCommand("a1", 4, "c4", (_spec(2),)), 1.0)
    assert not old.accepted and old.applied_epoch == 5 and actions == [] and "older" in old.reason
    again, actions = agent.apply(ApplyCommand("a1", 5, "c5", (_spec(1),)), 2.0)
    assert again.accepted and actions == []
    assert set(_states(agent, 2.0)) == {"m-eu-00001"}


def test_a_planner_that_lost_its_lease_is_fenced_off_and_its_successor_wins_whatever_the_epochs() -> None:
    agent = _agent()
    agent.apply(ApplyCommand("a1", 7, "c7", (_spec(1),), fencing_token=1), 0.0)  # the old leader, ahead
    # the new leader continues from the stored epoch 6 under generation 2: its plan replaces the old one's
    new, actions = agent.apply(ApplyCommand("a1", 6, "c6", (_spec(2),), fencing_token=2), 1.0)
    assert new.accepted and new.applied_epoch == 6 and any(isinstance(a, StartEngine) for a in actions)
    assert agent.heartbeat(1.0).fencing_token == 2  # the planner sees which generation the agent follows
    # the old leader, not yet aware it lost the lease, sends a newer epoch: refused, nothing changes
    stale, actions = agent.apply(ApplyCommand("a1", 8, "c8", (), fencing_token=1), 2.0)
    assert not stale.accepted and actions == [] and "fencing token 1" in stale.reason
    # the same epoch from the same generation is a repeat
    again, actions = agent.apply(ApplyCommand("a1", 6, "c6", (_spec(2),), fencing_token=2), 3.0)
    assert again.accepted and actions == [] and agent.applied_epoch == 6


def test_instance_removed_while_loading_stops_at_once_and_too_many_gpus_is_refused() -> None:
    agent = _agent()
    agent.apply(ApplyCommand("a1", 1, "c1", (_spec(1),)), 0.0)
    _, actions = agent.apply(ApplyCommand("a1", 2, "c2", (_spec(2),)), 5.0)
    assert StopEngine("m-eu-00001") in actions and StartEngine(_spec(2), 30.0) in actions
    refused, _ = agent.apply(ApplyCommand("a1", 3, "c3", (_spec(3, tp=8), _spec(4, tp=2))), 6.0)
    assert not refused.accepted and "10 GPUs" in refused.reason and agent.applied_epoch == 2


def test_drain_deadline_bounds_the_wait_and_heartbeats_are_periodic() -> None:
    agent = _agent()
    agent.apply(ApplyCommand("a1", 1, "c1", (_spec(1),)), 0.0)
    beats = [a for t in (0.0, 1.0, 2.0, 30.0) for a in agent.tick(t) if isinstance(a, Publish)]
    assert len(beats) == 3 and all(isinstance(b.event, AgentHeartbeat) for b in beats)
    assert beats[0].event.instances[0].endpoint == "http://h:9000/instances/m-eu-00001"
    ok, _, _ = agent.drain(DrainCommand("a1", "m-eu-00001", "d1", deadline_s=60.0), 31.0)
    assert ok and agent.drain(DrainCommand("a1", "m-eu-00001", "d1", 60.0), 32.0)[1] == "already draining"
    agent.handle(_report("m-eu-00001", idle=False, running=1), 40.0)
    assert StopEngine("m-eu-00001") in agent.tick(60.0)


def test_command_for_another_agent_is_refused() -> None:
    result, actions = _agent().apply(ApplyCommand("a2", 1, "c1", (_spec(1),)), 0.0)
    assert not result.accepted and actions == [] and "a2" in result.reason


def test_a_plan_pre_stages_weights_the_host_does_not_hold() -> None:
    staged: list[str] = []
    agent = NodeAgentCore(NodeAgentConfig(agent_id="a1", region="eu", sku="H100-80GB", gpus=8),
                          load_time_s=lambda spec: 30.0, warm_models=lambda: ("m",),
                          stage_weights=lambda model: staged.append(model) is None)
    agent.apply(ApplyCommand("a1", 1, "c1", (_spec(1),), prestage=("m", "other")), 0.0)
    assert staged == ["other"]  # "m" is in host memory already
    assert agent.heartbeat(0.0).warm_models == ("m",)


def test_a_backend_that_cannot_stage_says_so() -> None:
    _, actions = _agent().apply(ApplyCommand("a1", 1, "c1", (), prestage=("m",)), 0.0)
    assert any("cannot pre-stage" in getattr(a, "message", "") for a in actions)


@pytest.mark.security
def test_an_epoch_far_past_the_applied_one_is_refused_and_leaves_room_for_later_plans() -> None:
    # The defect: Apply(epoch=2**64-1) with no instances stopped every instance and the agent
    # then ignored each later plan as older. The jump is refused; nothing stops; the next plan applies.
    agent = _agent()
    agent.apply(ApplyCommand("a1", 3, "c3", (_spec(1),)), 0.0)
    forged, actions = agent.apply(ApplyCommand("a1", 2 ** 64 - 1, "forged", ()), 1.0)
    assert not forged.accepted and actions == [] and "max_epoch_jump" in forged.reason
    assert forged.applied_epoch == 3 and set(_states(agent, 1.0)) == {"m-eu-00001"}
    later, _ = agent.apply(ApplyCommand("a1", 4, "c4", (_spec(1), _spec(2))), 2.0)
    assert later.accepted and set(_states(agent, 2.0)) == {"m-eu-00001", "m-eu-00002"}


@pytest.mark.security
def test_a_fencing_token_far_past_the_newest_is_refused_and_leaves_room_for_real_planners() -> None:
    # The same defect on the other half of the (fencing token, epoch) order: a token of 2**64-1 was
    # accepted, and every real planner's token (at most 2**53) was refused afterwards, for good.
    agent = _agent()
    agent.apply(ApplyCommand("a1", 3, "c3", (_spec(1),), fencing_token=2), 0.0)
    forged, actions = agent.apply(ApplyCommand("a1", 4, "forged", (), fencing_token=2 ** 64 - 1), 1.0)
    assert not forged.accepted and actions == [] and "max_epoch_jump" in forged.reason
    assert set(_states(agent, 1.0)) == {"m-eu-00001"}
    leader, _ = agent.apply(ApplyCommand("a1", 1, "c1", (_spec(1), _spec(2)), fencing_token=3), 2.0)
    assert leader.accepted and set(_states(agent, 2.0)) == {"m-eu-00001", "m-eu-00002"}


def test_a_jump_within_the_bound_is_applied() -> None:
    agent = NodeAgentCore(NodeAgentConfig(agent_id="a1", region="eu", sku="H100-80GB", max_epoch_jump=10),
                          load_time_s=lambda spec: 1.0)
    assert agent.apply(ApplyCommand("a1", 10, "c10", (_spec(1),)), 0.0)[0].accepted
    assert not agent.apply(ApplyCommand("a1", 21, "c21", ()), 1.0)[0].accepted
    assert agent.apply(ApplyCommand("a1", 20, "c20", ()), 2.0)[0].accepted


def test_an_instance_wanted_again_while_it_drains_starts_afresh_once_drained() -> None:
    # A plan drops an instance (a stray Apply, a scale-in) and the next wants it back: the draining engine
    # takes no new work, so it finishes its drain and starts again; a stopped one starts at once.
    agent = _agent()
    agent.apply(ApplyCommand("a1", 1, "c1", (_spec(1), _spec(2))), 0.0)
    agent.tick(30.0)
    agent.apply(ApplyCommand("a1", 2, "c2", ()), 31.0)  # 1 and 2 drain
    agent.handle(_report("m-eu-00002", idle=True), 31.5)
    agent.tick(32.0)  # 2 is stopped, not yet forgotten
    _, actions = agent.apply(ApplyCommand("a1", 3, "c3", (_spec(1), _spec(2))), 33.0)
    assert StartEngine(_spec(2), 30.0) in actions and not any(isinstance(a, StartEngine) and a.spec == _spec(1)
                                                                for a in actions)
    assert _states(agent, 33.0) == {"m-eu-00001": InstanceState.DRAINING, "m-eu-00002": InstanceState.LOADING}
    agent.handle(_report("m-eu-00001", idle=True), 34.0)
    actions = agent.tick(34.0)
    assert StopEngine("m-eu-00001") in actions and StartEngine(_spec(1), 30.0) in actions
    assert _states(agent, 64.0) == {"m-eu-00001": InstanceState.LOADING, "m-eu-00002": InstanceState.LOADING}
    agent.tick(64.0)
    assert set(_states(agent, 64.0).values()) == {InstanceState.READY}


def test_a_plan_that_drops_it_again_cancels_the_restart() -> None:
    agent = _agent()
    agent.apply(ApplyCommand("a1", 1, "c1", (_spec(1),)), 0.0)
    agent.tick(30.0)
    agent.apply(ApplyCommand("a1", 2, "c2", ()), 31.0)
    agent.apply(ApplyCommand("a1", 3, "c3", (_spec(1),)), 32.0)
    agent.apply(ApplyCommand("a1", 4, "c4", ()), 33.0)
    agent.handle(_report("m-eu-00001", idle=True), 34.0)
    actions = agent.tick(34.0)
    assert StopEngine("m-eu-00001") in actions and not any(isinstance(a, StartEngine) for a in actions)


def test_after_a_reclaim_only_draining_instances_serve_whatever_comes_next() -> None:
    """The drain on stop (services/node_agent) waits on `draining()` alone: after `reclaim` no instance
    is loading or ready again, neither from a plan that arrives meanwhile nor from a restart that an
    earlier plan queued behind a drain."""
    agent = _agent()
    agent.apply(ApplyCommand("a1", 1, "c1", (_spec(1), _spec(2))), 0.0)
    agent.tick(30.0)
    agent.apply(ApplyCommand("a1", 2, "c2", (_spec(2),)), 31.0)  # 1 drains
    agent.apply(ApplyCommand("a1", 3, "c3", (_spec(1), _spec(2))), 32.0)  # 1 is wanted again once drained
    agent.apply(ApplyCommand("a1", 4, "c4", (_spec(1), _spec(2), _spec(3))), 33.0)  # 3 loading
    agent.reclaim(100.0, 34.0)
    assert _states(agent, 34.0) == {"m-eu-00001": InstanceState.DRAINING, "m-eu-00002": InstanceState.DRAINING,
                                    "m-eu-00003": InstanceState.STOPPED}
    assert agent.draining() == ["m-eu-00001", "m-eu-00002"]
    _, actions = agent.apply(ApplyCommand("a1", 5, "c5", (_spec(1), _spec(2), _spec(3), _spec(4))), 35.0)
    assert not any(isinstance(a, StartEngine) for a in actions)
    agent.handle(_report("m-eu-00001", idle=True), 36.0)
    assert not any(isinstance(a, StartEngine) for a in agent.tick(36.0))  # no restart after the drain
    for now in (40.0, 70.0, 99.0):
        agent.tick(now)
        assert not {InstanceState.LOADING, InstanceState.READY} & set(_states(agent, now).values())
    assert agent.draining() == ["m-eu-00002"]
    agent.tick(100.0)  # the reclaim's deadline stops the rest
    assert agent.draining() == []

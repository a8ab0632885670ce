"""The node-agent core and elastic operator replicas (issue 14 item 6): applied in place on a running
base instance (no restart), effective after their attach time, removed at once; a host over its GPUs
is refused by name; a backend that cannot split operators ignores them and says so once per
instance; the planner core sends them on the same base instance under new epochs. Commands go through
the wire codec, as the live agent receives them."""

from __future__ import annotations

from dataclasses import replace

import pytest

from opscale.engine.outputs import EngineReport
from opscale.model import InstanceSpec, InstanceState, OperatorReplicas, TierSpec
from opscale.planning import DeploymentSpec, make_planning_policy
from opscale.runtime.live.codec import decode, encode
from opscale.services.actions import (
    DrainEngine,
    Log,
    SendCommand,
    SetOperatorReplicas,
    StartEngine,
    StopEngine,
)
from opscale.services.events import ApplyCommand, RouterLoad
from opscale.services.node_agent import NodeAgentConfig, NodeAgentCore
from opscale.services.planner import PlannerConfig, PlannerCore

pytestmark = pytest.mark.unit

BASE_LOAD_S, ATTACH_S = 30.0, 0.5
MLP = OperatorReplicas(("mlp",), 2, 1, 0.5, 8)
PROJ = OperatorReplicas(("attn_proj",), 1, 1, 1.0, 8)


def _agent(splits: bool = True, gpus: int = 8) -> NodeAgentCore:
    return NodeAgentCore(NodeAgentConfig(agent_id="a1", region="eu", sku="H100-80GB", gpus=gpus),
                         load_time_s=lambda spec: BASE_LOAD_S,
                         operator_load_time_s=(lambda spec, replica: ATTACH_S) if splits else None)


def _spec(*replicas: OperatorReplicas) -> InstanceSpec:
    return InstanceSpec("m-eu-00001", "Qwen2-7B", "H100-80GB", 1, operator_replicas=replicas)


def _apply(agent: NodeAgentCore, epoch: int, now_s: float, *specs: InstanceSpec) -> list:
    """Apply through the codec: the command as the gRPC server decodes it."""
    name, payload = encode(ApplyCommand("a1", epoch, f"c{epoch}", specs))
    result, actions = agent.apply(decode(name, payload), now_s)
    assert result.accepted, result.reason
    return actions


def _set(actions: list) -> list[SetOperatorReplicas]:
    return [a for a in actions if isinstance(a, SetOperatorReplicas)]


def test_replicas_added_to_a_running_instance_serve_after_their_attach_time_without_a_restart() -> None:
    agent = _agent()
    _apply(agent, 1, 0.0, _spec())
    agent.tick(BASE_LOAD_S)
    assert agent.is_accepting("m-eu-00001")
    actions = _apply(agent, 2, 40.0, _spec(MLP, PROJ))
    assert not [a for a in actions if isinstance(a, StartEngine | StopEngine)], "the base engine keeps running"
    assert _set(actions) == [SetOperatorReplicas("m-eu-00001", (), (PROJ, MLP))]
    assert agent.next_ready_s() == 40.0 + ATTACH_S
    assert _set(agent.tick(40.0 + ATTACH_S)) == [SetOperatorReplicas("m-eu-00001", (PROJ, MLP), (PROJ, MLP))]
    assert agent.is_accepting("m-eu-00001") and agent.next_ready_s() is None
    assert not _set(agent.tick(41.0))  # nothing changes again


def test_removed_replicas_stop_at_once_and_loading_ones_go_first() -> None:
    agent = _agent()
    _apply(agent, 1, 0.0, _spec(replace(MLP, replicas=1)))
    agent.tick(BASE_LOAD_S)  # the base and its first replica are ready
    _apply(agent, 2, 40.0, _spec(MLP))  # one more, loading
    actions = _apply(agent, 3, 40.1, _spec(replace(MLP, replicas=1)))
    one = replace(MLP, replicas=1)
    assert _set(actions) == [SetOperatorReplicas("m-eu-00001", (one,), (one,))], "the loading one went"
    actions = _apply(agent, 4, 41.0, _spec())
    assert _set(actions) == [SetOperatorReplicas("m-eu-00001", (), ())]
    assert agent.is_accepting("m-eu-00001")


def test_replicas_of_a_loading_instance_serve_no_earlier_than_it() -> None:
    agent = _agent()
    actions = _apply(agent, 1, 0.0, _spec(MLP))
    assert isinstance(actions[0], StartEngine)
    assert _set(actions) == [SetOperatorReplicas("m-eu-00001", (), (MLP,))]
    assert agent.next_ready_s() == BASE_LOAD_S
    assert _set(agent.tick(BASE_LOAD_S)) == [SetOperatorReplicas("m-eu-00001", (MLP,), (MLP,))]


def test_a_repeated_epoch_changes_nothing() -> None:
    agent = _agent()
    _apply(agent, 1, 0.0, _spec(MLP))
    name, payload = encode(ApplyCommand("a1", 1, "c1", (_spec(MLP),)))
    result, actions = agent.apply(decode(name, payload), 5.0)
    assert result.accepted and actions == []


def test_base_and_replicas_over_the_host_s_gpus_are_refused_by_name() -> None:
    agent = _agent(gpus=2)
    big = OperatorReplicas(("mlp",), 3, 1, 0.5, 8)  # 1.5 GPU-equivalents beside a 1-GPU base
    result, actions = agent.apply(ApplyCommand("a1", 1, "c1", (_spec(big),)), 0.0)
    assert not result.accepted and actions == []
    assert "need 1 GPUs and operator replicas 1.5 GPU-equivalents more (2.5); this host has 2" in result.reason
    assert agent.applied_epoch == 0 and agent.heartbeat(0.0).instances == ()


def test_an_unknown_operator_is_refused_by_name() -> None:
    agent = _agent()
    result, _ = agent.apply(ApplyCommand("a1", 1, "c1", (_spec(OperatorReplicas(("softmax",), 1)),)), 0.0)
    assert not result.accepted
    assert "unknown operator in ['softmax']; known: attn_proj, attention, mlp, lm_head" in result.reason


def test_a_backend_that_cannot_split_operators_ignores_them_and_says_so_once() -> None:
    agent = _agent(splits=False, gpus=1)  # the replicas would not even fit: they are not run at all
    actions = _apply(agent, 1, 0.0, _spec(MLP))
    logs = [a for a in actions if isinstance(a, Log)]
    assert isinstance(actions[0], StartEngine) and not _set(actions)
    assert any("cannot split operators" in log.message and "model-level scaling" in log.message for log in logs)
    again = _apply(agent, 2, 1.0, _spec(MLP, PROJ))
    assert not any("cannot split operators" in a.message for a in again if isinstance(a, Log))
    agent.tick(BASE_LOAD_S)
    assert {s.state for s in agent.heartbeat(BASE_LOAD_S).instances} == {InstanceState.READY}
    assert agent.next_ready_s() is None


def test_the_planner_sends_operator_replicas_on_the_same_base_instance_under_a_new_epoch() -> None:
    """operator_level through the planner core: one base instance whatever the load; more load changes
    only its operator replicas (same instance id, new epoch, the node-agent applies it in place)."""
    dep = DeploymentSpec(model="Qwen2-7B", sku="H100-80GB", tp=1, min_replicas=1, max_replicas=8,
                         typical_prompt_tokens=2048, typical_output_tokens=16)
    tiers = {"interactive": TierSpec("interactive", ttft_slo_s=1.0, tbt_slo_s=0.1)}
    planner = PlannerCore(make_planning_policy("operator_level", [dep], lambda *a, **k: 1.0, tiers=tiers), [dep],
                          PlannerConfig(interval_s=1.0, demand_window_s=5.0))
    agent = _agent()
    started: list[StartEngine] = []

    def second(at_s: float, rps: float) -> ApplyCommand | None:
        n = round(rps)
        planner.handle(RouterLoad("r0", "eu", at_s, {}, 1.0, {"Qwen2-7B": n}, {"Qwen2-7B": 2048 * n},
                                  {"Qwen2-7B": 16 * n}), at_s)
        planner.handle(replace(agent.heartbeat(at_s), address="a1:50051"), at_s)
        commands = [a.command for a in planner.tick(at_s) if isinstance(a, SendCommand)]
        for command in commands:  # to the agent through the codec, as the gRPC client sends it
            name, payload = encode(command)
            result, actions = agent.apply(decode(name, payload), at_s)
            assert result.accepted, result.reason
            started.extend(a for a in actions if isinstance(a, StartEngine))
        agent.tick(at_s)
        return commands[-1] if commands else None

    first = next(c for c in (second(float(t), 2.0) for t in range(1, 8)) if c is not None)
    (base,) = first.instances
    busy = [c for c in (second(float(t), 30.0) for t in range(8, 16)) if c is not None]
    assert busy and all(c.epoch > first.epoch for c in busy)
    assert all(tuple(s.instance_id for s in c.instances) == (base.instance_id,) for c in busy), "no second base"
    assert any(c.instances[0].operator_replicas for c in busy), "the load is carried by operator replicas"
    assert [s.spec.instance_id for s in started] == [base.instance_id], "started once, never restarted"


def test_a_draining_instance_with_operator_replicas_stops_once_idle() -> None:
    """Its replicas are still reported while it drains, and it still stops: it holds GPUs until then."""
    agent = _agent()
    _apply(agent, 1, 0.0, _spec(MLP))
    agent.tick(BASE_LOAD_S)
    drained = _apply(agent, 2, 40.0)
    assert DrainEngine("m-eu-00001") in drained
    agent.handle(EngineReport("m-eu-00001", 0, 0, 0, 0.0, 0.0, 0.0, 300.0, True, 0.0, 0.0, 0.0, 0.0), 41.0)
    assert StopEngine("m-eu-00001") in agent.tick(42.0)

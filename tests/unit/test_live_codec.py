"""The protobuf codec: every event and model type survives encode -> decode unchanged (hypothesis), and
bad values or payloads raise CodecError naming the type and field."""

from __future__ import annotations

import typing

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from opscale.engine.outputs import EngineReport
from opscale.model import InstanceSpec, InstanceState, InstanceStatus, Plan, Request, RequestOutcome, Role
from opscale.runtime.live import codec
from opscale.runtime.live.codec import CodecError, decode, encode
from opscale.services import events
from opscale.services.events import (
    AgentHeartbeat,
    ApplyCommand,
    DispatchFailed,
    DrainCommand,
    ForecastIssued,
    PlanPublished,
    RequestArrived,
    RequestFinished,
    RouterLoad,
    WindowStats,
)
from opscale.v1 import events_pb2

pytestmark = pytest.mark.unit

# Proto strings are UTF-8: lone surrogates cannot be sent (and are refused, see below).
text = st.text(st.characters(blacklist_categories=("Cs",)), max_size=12)
floats = st.floats(allow_nan=False)  # NaN != NaN would make equality meaningless; infinities are kept
opt_floats = st.none() | floats
u32 = st.integers(0, 2**32 - 1)
u64 = st.integers(0, 2**64 - 1)
i64 = st.integers(-(2**63), 2**63 - 1)
roles = st.sampled_from(Role)
states = st.sampled_from(InstanceState)

specs = st.builds(InstanceSpec, instance_id=text, model=text, sku=text, tp=st.sampled_from([1, 2, 4, 8]), role=roles)
statuses = st.builds(InstanceStatus, instance_id=text, model=text, sku=text, tp=u32, role=roles, state=states,
                     endpoint=text, queued=u32, running=u32, outstanding_tokens=u64, kv_used_frac=floats,
                     tokens_per_s=floats, busy_frac=floats, power_w=floats)
requests = st.builds(Request, request_id=text, model=text, tier=text, region=text,
                     arrival_s=st.floats(0, 1e12), prompt_tokens=st.integers(1, 2**32 - 1),
                     output_tokens=st.integers(1, 2**32 - 1), prefix_hashes=st.lists(i64, max_size=5).map(tuple))
outcomes = st.builds(RequestOutcome, request_id=text, model=text, tier=text, region=text, served_region=text,
                     instance_id=text, arrival_s=floats, first_token_s=opt_floats, finish_s=opt_floats,
                     prompt_tokens=u32, output_tokens=u32, status=st.sampled_from(["ok", "rejected", "failed"]) | text)
def _with_prestage(plan: Plan, models: st.DrawFn) -> Plan:
    """Pre-staging names only agents the plan assigns (possibly nothing to run): the wire carries it there."""
    staged = {a: tuple(models(st.lists(text, min_size=1, max_size=2))) for a in plan.assignments
              if models(st.booleans())}
    return Plan(plan.epoch, plan.created_s, plan.assignments, plan.agent_regions, plan.routing_weights,
                plan.vm_counts, plan.reason, staged)


plans = st.builds(
    Plan, epoch=u64, created_s=floats,
    assignments=st.dictionaries(text, st.lists(specs, max_size=3).map(tuple), max_size=3),
    agent_regions=st.dictionaries(text, text, max_size=3),
    routing_weights=st.dictionaries(st.tuples(text, text), st.dictionaries(text, floats, max_size=3), max_size=3),
    vm_counts=st.dictionaries(st.tuples(text, text, st.sampled_from(["on_demand", "spot"])), u32, max_size=3),
    reason=text,
).flatmap(lambda plan: st.composite(lambda draw: _with_prestage(plan, draw))())
heartbeats = st.builds(AgentHeartbeat, agent_id=text, region=text, sku=text, gpus_total=u32, address=text,
                       epoch=u64, at_s=floats, instances=st.lists(statuses, max_size=3).map(tuple),
                       terminating_at_s=opt_floats, warm_models=st.lists(text, max_size=3).map(tuple))
windows = st.builds(WindowStats, model=text, region=text, tier=text, window_s=floats, end_s=floats, requests=u64,
                    completed=u64, arrival_rps=floats, prompt_tokens_per_s=floats, output_tokens_per_s=floats,
                    ttft_p50_s=opt_floats, ttft_p99_s=opt_floats, tbt_p50_s=opt_floats, tbt_p99_s=opt_floats,
                    e2e_p50_s=opt_floats, e2e_p99_s=opt_floats, slo_attainment=opt_floats)
forecasts = st.builds(ForecastIssued, model=text, region=text, tier=text, at_s=floats, horizon_s=floats,
                      mean_rps=floats, lo_rps=floats, hi_rps=floats, method=text)

STRATEGIES: dict[str, st.SearchStrategy[object]] = {
    "InstanceSpec": specs,
    "InstanceStatus": statuses,
    "Request": requests,
    "RequestOutcome": outcomes,
    "Plan": plans,
    "RequestArrived": st.builds(RequestArrived, request=requests),
    "RequestFinished": st.builds(RequestFinished, outcome=outcomes),
    "DispatchFailed": st.builds(DispatchFailed, request=requests, instance_id=text, reason=text, attempt=u32),
    "AgentHeartbeat": heartbeats,
    "RouterLoad": st.builds(RouterLoad, router_id=text, region=text, at_s=floats,
                            pending_by_model=st.dictionaries(text, u32, max_size=4)),
    "WindowStats": windows,
    "ForecastIssued": forecasts,
    "PlanPublished": st.builds(PlanPublished, plan=plans),
    "ApplyCommand": st.builds(ApplyCommand, agent_id=text, epoch=u64, command_id=text,
                              instances=st.lists(specs, max_size=4).map(tuple),
                              prestage=st.lists(text, max_size=3).map(tuple)),
    "DrainCommand": st.builds(DrainCommand, agent_id=text, instance_id=text, command_id=text, deadline_s=opt_floats),
    "EngineReport": st.builds(EngineReport, instance_id=text, queued=u32, running=u32, outstanding_tokens=u64,
                              kv_used_frac=floats, tokens_per_s=floats, busy_frac=floats, power_w=floats,
                              idle=st.booleans()),
    codec.BATCH_TYPE: st.lists(outcomes, max_size=5).map(tuple),
}


def test_every_type_has_a_strategy_and_every_event_a_codec() -> None:
    assert set(STRATEGIES) == set(codec.TYPE_NAMES)
    event_types = {cls.__name__ for cls in typing.get_args(events.Event)}
    assert event_types <= codec.TYPE_NAMES


@pytest.mark.parametrize("type_name", sorted(STRATEGIES))
@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data())
def test_round_trip(type_name: str, data: st.DataObject) -> None:
    value = data.draw(STRATEGIES[type_name])
    name, payload = encode(value)
    assert name == type_name
    assert decode(name, payload) == value
    assert encode(value)[1] == payload  # deterministic bytes: usable for de-duplication ids


def test_batches_of_records() -> None:
    out = RequestOutcome("r1", "m", "chat", "eu", "us", "i1", 1.0, None, None, 10, 0, "rejected")
    payload = codec.encode_records([out, out])
    assert codec.decode_records(payload) == (out, out)
    assert codec.decode_records(codec.encode_records([])) == ()


def test_malformed_payload_names_the_type() -> None:
    with pytest.raises(CodecError, match="malformed WindowStats"):
        decode("WindowStats", b"\xff\xff\xff")
    with pytest.raises(CodecError, match="unknown type 'Nope'"):
        decode("Nope", b"")
    with pytest.raises(CodecError, match="payload must be bytes"):
        decode("Plan", "text")  # type: ignore[arg-type]


def test_values_the_dataclasses_refuse_are_codec_errors() -> None:
    bad_tp = events_pb2.InstanceSpec(instance_id="x", model="m", sku="s", tp=3).SerializeToString()
    with pytest.raises(CodecError, match="malformed InstanceSpec: instance x: tp must be 1, 2, 4 or 8, got 3"):
        decode("InstanceSpec", bad_tp)
    bad_role = events_pb2.InstanceSpec(instance_id="x", tp=1, role=7).SerializeToString()
    with pytest.raises(CodecError, match="InstanceSpec.role: unknown enum number 7"):
        decode("InstanceSpec", bad_role)
    zero_prompt = events_pb2.Request(request_id="r", prompt_tokens=0, output_tokens=1).SerializeToString()
    with pytest.raises(CodecError, match="prompt_tokens must be >= 1"):
        decode("Request", zero_prompt)
    with pytest.raises(CodecError, match="DispatchFailed.request is missing"):
        decode("DispatchFailed", events_pb2.DispatchFailed(instance_id="i").SerializeToString())


def test_duplicate_plan_entries_are_refused() -> None:
    msg = events_pb2.Plan(epoch=1, assignments=[events_pb2.AgentAssignment(agent_id="a"),
                                                events_pb2.AgentAssignment(agent_id="a")])
    with pytest.raises(CodecError, match="agent 'a' appears twice"):
        decode("Plan", msg.SerializeToString())


def test_plan_regions_from_a_producer_that_only_fills_assignments() -> None:
    msg = events_pb2.Plan(epoch=2, assignments=[events_pb2.AgentAssignment(agent_id="a", region="eu")])
    assert decode("Plan", msg.SerializeToString()).agent_regions == {"a": "eu"}


@pytest.mark.parametrize(("value", "message"), [
    (InstanceStatus("i", "m", "s", 1, Role.UNIFIED, InstanceState.READY, queued=-1),
     "InstanceStatus.queued: -1 is outside the wire range"),
    (ApplyCommand("a", -5, "c", ()), "ApplyCommand.epoch: -5 is outside the wire range"),
    (Plan(epoch=1, created_s=0.0, assignments={"a": ()}, prestage={"b": ("m",)}),
     r"Plan.prestage: agents \['b'\] have no entry in Plan.assignments"),
    (ForecastIssued("m\ud800", "eu", "t", 0, 0, 0, 0, 0, "x"), "ForecastIssued.model: string is not valid UTF-8"),
    (WindowStats("m", "eu", "t", 1.0, 1.0, 1, 1, "fast", 0.0, 0.0, None, None, None, None, None, None, None),
     "WindowStats.arrival_rps: expected a number, got 'fast'"),
    (Plan(epoch=1, created_s=0.0, assignments={"a": (InstanceSpec("i", "m", "s", 1, "sideways"),)}),  # type: ignore[arg-type]
     r"Plan.assignments\['a'\]\[0\].role: 'sideways' is not one of"),
    (AgentHeartbeat("a", "eu", "s", 8, "", 0, 0.0, (InstanceStatus("i", "m", "s", 1, Role.UNIFIED,
                                                                    InstanceState.READY, power_w=True),)),
     r"AgentHeartbeat.instances\[0\].power_w: expected a number, got True"),
    ((RequestOutcome("r", "m", "t", "eu", "eu", "i", 0.0, None, None, 1, 1), "not an outcome"),
     r"RequestRecordBatch\[1\]: expected a RequestOutcome, got str"),
])
def test_unencodable_values_name_the_field(value: object, message: str) -> None:
    with pytest.raises(CodecError, match=message):
        encode(value)


def test_unknown_object_is_refused() -> None:
    with pytest.raises(CodecError, match="no codec for dict"):
        encode({"plan": 1})

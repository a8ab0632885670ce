"""The protobuf codec: every event and model type survives encode -> decode unchanged, every field of it
(hypothesis, with values that differ from the wire defaults, so a dropped field cannot pass), and bad
values or payloads raise CodecError naming the type and field."""

from __future__ import annotations

import dataclasses
import typing
from enum import Enum

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from opscale.engine.outputs import EngineReport
from opscale.model import (
    InstanceSpec,
    InstanceState,
    InstanceStatus,
    OperatorReplicas,
    Plan,
    RdmaPriority,
    Request,
    RequestOutcome,
    Role,
)
from opscale.runtime.live import codec
from opscale.runtime.live.codec import CodecError, decode, encode
from opscale.services import events
from opscale.services.events import (
    AgentHeartbeat,
    ApplyCommand,
    DispatchFailed,
    DrainCommand,
    ForecastIssued,
    KvBlockEvent,
    KvEventBatch,
    KvEventKind,
    PlanPublished,
    PoolUtilisation,
    PrefillHandedOff,
    RequestArrived,
    RequestFinished,
    RouterLoad,
    WindowStats,
)
from opscale.v1 import events_pb2

pytestmark = pytest.mark.unit

# Every strategy below draws each field away from its wire default (an empty string or collection, zero,
# None, False, an enum's first member): a field the codec dropped would come back as that default, and
# the round trip would fail. `_zero_twin` covers the defaults themselves.
# Proto strings are UTF-8: lone surrogates cannot be sent (and are refused, see below).
text = st.text(st.characters(blacklist_categories=("Cs",)), min_size=1, max_size=12)
reals = st.floats(allow_nan=False).filter(bool)  # NaN != NaN would make equality meaningless; infinities are kept
u32 = st.integers(1, 2**32 - 1)
u64 = st.integers(1, 2**64 - 1)
i64 = st.integers(-(2**63), 2**63 - 1).filter(bool)
roles = st.sampled_from([Role.PREFILL, Role.DECODE])
states = st.sampled_from([InstanceState.READY, InstanceState.DRAINING, InstanceState.STOPPED])


def tuples(elements: st.SearchStrategy[object], max_size: int = 3) -> st.SearchStrategy[tuple[object, ...]]:
    return st.lists(elements, min_size=1, max_size=max_size).map(tuple)


def counts(values: st.SearchStrategy[int] = u32) -> st.SearchStrategy[dict[str, int]]:
    return st.dictionaries(text, values, min_size=1, max_size=3)


# Operator replicas: distinct family names (sorted by the type), a share below 1 only at tp 1.
operator_replicas = st.one_of(
    st.builds(OperatorReplicas, operators=st.lists(text, min_size=1, max_size=3, unique=True).map(tuple),
              replicas=st.integers(1, 64), tp=st.just(1), share=st.floats(0.01, 1.0), batch=st.integers(1, 512)),
    st.builds(OperatorReplicas, operators=st.lists(text, min_size=1, max_size=3, unique=True).map(tuple),
              replicas=st.integers(1, 64), tp=st.sampled_from([2, 4, 8]), batch=st.integers(1, 512)))
specs = st.builds(InstanceSpec, instance_id=text, model=text, sku=text, tp=st.sampled_from([2, 4, 8]), role=roles,
                  operator_replicas=st.lists(operator_replicas, min_size=1, max_size=3, unique_by=lambda r: r.name).map(tuple))
statuses = st.builds(InstanceStatus, instance_id=text, model=text, sku=text, tp=u32, role=roles, state=states,
                     endpoint=text, queued=u32, running=u32, outstanding_tokens=u64, kv_used_frac=reals,
                     tokens_per_s=reals, busy_frac=reals, power_w=reals, sm_activity=reals, decode_tps=reals,
                     prefill_tps=reals, prefill_missed_tps=reals, kv_capacity_tokens=u64)
requests = st.builds(Request, request_id=text, model=text, tier=text, region=text,
                     arrival_s=st.floats(0, 1e12).filter(bool), prompt_tokens=u32, output_tokens=u32,
                     prefix_hashes=tuples(i64, 5), tenant=text)
outcomes = st.builds(RequestOutcome, request_id=text, model=text, tier=text, region=text, served_region=text,
                     instance_id=text, arrival_s=reals, first_token_s=reals, finish_s=reals, prompt_tokens=u32,
                     output_tokens=u32, status=st.sampled_from(["rejected", "failed"]) | text,
                     prefill_instance_id=text, tenant=text)


@st.composite
def plans(draw: st.DrawFn) -> Plan:
    assignments = draw(st.dictionaries(text, tuples(specs), min_size=1, max_size=3))
    # Pre-staging names only agents the plan assigns: the wire carries it in their AgentAssignment.
    staged = draw(st.lists(st.sampled_from(sorted(assignments)), min_size=1, unique=True))
    return Plan(
        epoch=draw(u64), created_s=draw(reals), assignments=assignments,
        agent_regions=draw(st.dictionaries(text, text, min_size=1, max_size=3)),
        routing_weights=draw(st.dictionaries(st.tuples(text, text), st.dictionaries(text, reals, min_size=1, max_size=3),
                                             min_size=1, max_size=3)),
        vm_counts=draw(st.dictionaries(st.tuples(text, text, st.sampled_from(["on_demand", "spot"])), u32,
                                       min_size=1, max_size=3)),
        reason=draw(text), prestage={agent: draw(tuples(text, 2)) for agent in staged},
        withdrawn=draw(st.dictionaries(text, reals, min_size=1, max_size=3)),
        ready_ratio_tolerance=draw(st.dictionaries(text, reals, min_size=1, max_size=3)))


# Block hashes are signed 64-bit (Request.prefix_hashes' wire type); kinds away from STORED, the wire default.
kv_events = st.builds(KvBlockEvent, kind=st.sampled_from([KvEventKind.REMOVED, KvEventKind.CLEARED]),
                      block_hashes=tuples(i64, 5), parent_block_hash=i64, token_ids=tuples(u32), block_size=u32,
                      medium=text)

STRATEGIES: dict[str, st.SearchStrategy[object]] = {
    "KvBlockEvent": kv_events,
    "KvEventBatch": st.builds(KvEventBatch, instance_id=text, model=text, at_s=reals, seq=u64,
                              events=tuples(kv_events, 4)),
    "InstanceSpec": specs,
    "OperatorReplicas": operator_replicas,
    "InstanceStatus": statuses,
    "Request": requests,
    "RequestOutcome": outcomes,
    "Plan": plans(),
    "RequestArrived": st.builds(RequestArrived, request=requests),
    "RequestFinished": st.builds(RequestFinished, outcome=outcomes),
    "DispatchFailed": st.builds(DispatchFailed, request=requests, instance_id=text, reason=text, attempt=u32),
    "PrefillHandedOff": st.builds(PrefillHandedOff, request_id=text, prefill_instance_id=text,
                                  decode_instance_id=text, at_s=reals),
    "AgentHeartbeat": st.builds(AgentHeartbeat, agent_id=text, region=text, sku=text, gpus_total=u32, address=text,
                                epoch=u64, at_s=reals, instances=tuples(statuses), terminating_at_s=reals,
                                warm_models=tuples(text), s0=text, s1=text, s2=text,
                                rdma_priority=st.sampled_from([RdmaPriority.MEDIUM, RdmaPriority.HIGH]),
                                fencing_token=u64),
    "RouterLoad": st.builds(RouterLoad, router_id=text, region=text, at_s=reals, pending_by_model=counts(),
                            interval_s=reals, arrivals_by_model=counts(u64), prompt_tokens_by_model=counts(u64),
                            output_tokens_by_model=counts(u64)),
    "WindowStats": st.builds(WindowStats, model=text, region=text, tier=text, window_s=reals, end_s=reals,
                             requests=u64, completed=u64, arrival_rps=reals, prompt_tokens_per_s=reals,
                             output_tokens_per_s=reals, ttft_p50_s=reals, ttft_p99_s=reals, tbt_p50_s=reals,
                             tbt_p99_s=reals, e2e_p50_s=reals, e2e_p99_s=reals, slo_attainment=reals),
    "PoolUtilisation": st.builds(PoolUtilisation, model=text, region=text, role=roles, window_s=reals, end_s=reals,
                                 instances=reals, gpu_util=reals, sm_activity=reals, decode_tps=reals,
                                 prefill_tps=reals, prefill_missed_tps=reals),
    "ForecastIssued": st.builds(ForecastIssued, model=text, region=text, tier=text, at_s=reals, horizon_s=reals,
                                mean_rps=reals, lo_rps=reals, hi_rps=reals, method=text),
    "PlanPublished": st.builds(PlanPublished, plan=plans()),
    "ApplyCommand": st.builds(ApplyCommand, agent_id=text, epoch=u64, command_id=text, instances=tuples(specs, 4),
                              prestage=tuples(text), fencing_token=u64),
    "DrainCommand": st.builds(DrainCommand, agent_id=text, instance_id=text, command_id=text, deadline_s=reals),
    "EngineReport": st.builds(EngineReport, instance_id=text, queued=u32, running=u32, outstanding_tokens=u64,
                              kv_used_frac=reals, tokens_per_s=reals, busy_frac=reals, power_w=reals,
                              idle=st.just(True), sm_activity=reals, decode_tps=reals, prefill_tps=reals,
                              prefill_missed_tps=reals, kv_capacity_tokens=u64),
    codec.BATCH_TYPE: tuples(outcomes, 5),
}

_KEEP = object()  # a field with no wire default of its own (a nested dataclass)


def _zero(hint: object) -> object:
    """What a field of this type decodes to when the message leaves it unset."""
    if type(None) in typing.get_args(hint):
        return None
    origin = typing.get_origin(hint)
    if origin is tuple:
        return ()
    if origin is dict:
        return {}
    if isinstance(hint, type) and issubclass(hint, Enum):
        return next(iter(hint))  # proto3 enums start at 0: ROLE_UNIFIED, INSTANCE_STATE_LOADING
    return {str: "", int: 0, float: 0.0, bool: False}.get(hint, _KEEP)  # type: ignore[call-overload]


def _zeros(value: object) -> dict[str, object]:
    hints = typing.get_type_hints(type(value))
    return {f.name: z for f in dataclasses.fields(value) if (z := _zero(hints[f.name])) is not _KEEP}  # type: ignore[arg-type]


def _zero_twin(value: object) -> object:
    """`value` with every field its dataclass lets be a wire default set to it (None, 0, "", ...)."""
    if isinstance(value, tuple):
        return ()
    twin = value
    for name, zero in _zeros(value).items():
        try:
            twin = dataclasses.replace(twin, **{name: zero})  # type: ignore[type-var]
        except ValueError:  # the dataclass refuses it (tp 0, a request of no tokens, ...)
            pass
    return twin


def test_every_type_has_a_strategy_and_every_event_a_codec() -> None:
    assert set(STRATEGIES) == set(codec.TYPE_NAMES)
    event_types = {cls.__name__ for cls in typing.get_args(events.Event)}
    assert event_types <= codec.TYPE_NAMES


@pytest.mark.parametrize("type_name", sorted(STRATEGIES))
@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data())
def test_round_trip(type_name: str, data: st.DataObject) -> None:
    value = data.draw(STRATEGIES[type_name])
    if isinstance(value, tuple):
        assert value, "the batch strategy must draw records"
    else:  # the strategy's own promise, so that a dropped field shows
        assert [n for n, z in _zeros(value).items() if getattr(value, n) == z] == []
    name, payload = encode(value)
    assert name == type_name
    assert decode(name, payload) == value
    assert encode(value)[1] == payload  # deterministic bytes: usable for de-duplication ids
    twin = _zero_twin(value)
    assert decode(*encode(twin)) == twin


@st.composite
def _mutated_payload(draw: st.DrawFn, type_name: str) -> bytes:
    """A valid payload of `type_name` with a few bytes flipped, inserted or cut, or random bytes."""
    if draw(st.integers(0, 4)) == 0:
        return draw(st.binary(max_size=256))
    data = bytearray(encode(draw(STRATEGIES[type_name]))[1])
    for _ in range(draw(st.integers(1, 3))):
        at = draw(st.integers(0, len(data)))
        action = draw(st.sampled_from(("flip", "insert", "cut")))
        if action == "flip" and at < len(data):
            data[at] ^= draw(st.integers(1, 255))
        elif action == "insert":
            data[at:at] = draw(st.binary(min_size=1, max_size=8))
        else:
            del data[at:]
    return bytes(data)


@pytest.mark.parametrize("type_name", sorted(STRATEGIES))
@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data())
def test_mutated_and_random_payloads_decode_or_raise_codec_error(type_name: str, data: st.DataObject) -> None:
    """A consumer only ever sees the event or a CodecError (which the bus counts as `decode_error` and
    terminates, bus.py `_settle`), never a protobuf or dataclass traceback that would end its task."""
    payload = data.draw(_mutated_payload(type_name))
    try:
        decoded = decode(type_name, payload)
    except CodecError as exc:
        assert type_name in str(exc)
        return
    assert type_name_of_decoded(decoded) == type_name
    # what decodes is a valid event: it re-encodes, to the same bytes again (bytes, not ==: a double
    # may arrive as NaN, which the wire carries like any other value)
    again = encode(decoded)
    assert encode(decode(*again)) == again


def type_name_of_decoded(value: object) -> str:
    return codec.BATCH_TYPE if isinstance(value, tuple) else codec.type_name_of(value)


def test_router_load_keeps_the_demand_it_reports() -> None:
    # The live planner once saw no demand: the wire form of RouterLoad had only its first four fields.
    load = RouterLoad("r0", "eu", 30.0, {"m": 2}, 5.0, {"m": 40}, {"m": 12_000}, {"m": 3_000})
    assert decode(*encode(load)) == load


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
    with pytest.raises(CodecError, match="DispatchFailed.request: missing"):
        decode("DispatchFailed", events_pb2.DispatchFailed(instance_id="i").SerializeToString())
    nested = events_pb2.AgentHeartbeat(instances=[events_pb2.InstanceStatus(), events_pb2.InstanceStatus(state=9)])
    with pytest.raises(CodecError, match=r"AgentHeartbeat.instances\[1\].state: unknown enum number 9"):
        decode("AgentHeartbeat", nested.SerializeToString())


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
    (RouterLoad("r", "eu", 1.0, {}, 5.0, {"m": -3}), r"RouterLoad.arrivals_by_model\['m'\]: -3 is outside the wire range"),
    (AgentHeartbeat("a", "eu", "s", 8, "", 0, 0.0, warm_models="llama"),  # type: ignore[arg-type]
     "AgentHeartbeat.warm_models: expected a sequence, got 'llama'"),
    (RequestArrived("r1"), "RequestArrived.request: expected a Request, got str"),  # type: ignore[arg-type]
])
def test_unencodable_values_name_the_field(value: object, message: str) -> None:
    with pytest.raises(CodecError, match=message):
        encode(value)


def test_unknown_object_is_refused() -> None:
    with pytest.raises(CodecError, match="no codec for dict"):
        encode({"plan": 1})

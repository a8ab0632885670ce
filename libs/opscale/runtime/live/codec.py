"""Protobuf codec: the event dataclasses of opscale.services.events (and the model types they carry)
to and from the generated messages of proto/opscale/v1.

Each event has one definition, its dataclass; its message carries the same fields by name, and the
conversion is derived from the two (opscale.runtime.live.derived_codec), which refuses at import a pair
whose fields differ. The differences that are meant are declared here, in the table `_WIRE` below: a
message under another name (RequestOutcome travels as RequestRecord, ApplyCommand as ApplyRequest), an
event that is one model object on the wire (RequestArrived is its Request), the record batch, and the
Plan, whose tuple keys and per-agent pre-staging take a layout of their own (checked field by field
against both definitions all the same).

The live bus sends `(type name, payload)`: the type name travels in a header and says which dataclass to
rebuild. `encode` validates every field against its wire type (a negative count or a string that is not
UTF-8 is refused with the field's name) and `decode` validates what it rebuilds (unknown enum numbers,
duplicate plan entries, the dataclasses' own checks), so a malformed payload raises `CodecError` naming
the type, never a protobuf or dataclass traceback.

This module only converts; it does no I/O.

Example:
    >>> name, payload = encode(ForecastIssued("m", "eu", "chat", 60.0, 300.0, 2.0, 1.5, 2.5, "ewma"))
    >>> name
    'ForecastIssued'
    >>> decode(name, payload).mean_rps
    2.0
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, fields
from enum import StrEnum
from types import MappingProxyType
from typing import Any, TypeVar

from google.protobuf.message import DecodeError, Message

from opscale.engine.outputs import EngineReport
from opscale.model import (
    InstanceSpec,
    InstanceStatus,
    OperatorReplicas,
    Plan,
    RdmaPriority,
    Request,
    RequestOutcome,
)
from opscale.model.instance import InstanceState, Role
from opscale.runtime.live.derived_codec import (
    FieldRefused,
    MessageCodec,
    check_handled,
    derive,
    encoder_for,
    whole_field,
)
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
from opscale.v1 import control_pb2, events_pb2

__all__ = [
    "BATCH_TYPE",
    "CodecError",
    "Layout",
    "TYPE_NAMES",
    "WIRE_TYPES",
    "WireType",
    "decode",
    "decode_records",
    "encode",
    "encode_records",
    "from_message",
    "to_message",
    "type_name_of",
]

BATCH_TYPE = "RequestRecordBatch"
"""Type name of a batch of RequestOutcome records (a tuple or list of them on the Python side)."""

T = TypeVar("T")


class CodecError(ValueError):
    """A value could not be encoded, or a payload could not be decoded; the message names the type
    and, where it is known, the field and the value."""


class Layout(StrEnum):
    """How a type's fields correspond to its message's."""

    FIELD_BY_FIELD = "field by field"  # derived: the same fields, by name
    WHOLE_FIELD = "whole field"  # the dataclass's one field is the whole message
    PLAN = "plan"  # the hand-written layout below, checked against both definitions
    BATCH = "batch"  # a sequence of RequestOutcome as a RequestRecordBatch


@dataclass(frozen=True, slots=True)
class WireType:
    """One type the codec carries: its name on the bus, its Python type (None for the record batch,
    a tuple or list on the Python side), its message and how the two correspond."""

    type_name: str
    cls: type | None
    message: type[Message]
    layout: Layout
    codec: MessageCodec


_ENUMS = MappingProxyType({"opscale.v1.Role": Role, "opscale.v1.InstanceState": InstanceState,
                           "opscale.v1.RdmaPriority": RdmaPriority, "opscale.v1.KvEventKind": KvEventKind})
"""The Python enum of each proto enum; their members are matched by name when the codec is built."""


def _at(segment: str, encode: Callable[[Any], T], value: Any) -> T:
    try:
        return encode(value)
    except FieldRefused as exc:
        raise exc.within(segment) from None


# -- the Plan: tuple keys become messages, and each agent's pre-staging rides in its AgentAssignment ------

_PLAN_FIELDS = ("epoch", "created_s", "assignments", "agent_regions", "routing_weights", "vm_counts", "reason",
                "prestage", "withdrawn", "ready_ratio_tolerance")
_PLAN_WIRE = {  # the fields of each message the Plan's conversion writes and reads
    events_pb2.Plan: ("epoch", "created_s", "assignments", "agent_regions", "routing_weights", "vm_counts",
                      "reason", "withdrawn", "ready_ratio_tolerance"),
    events_pb2.AgentAssignment: ("agent_id", "region", "instances", "prestage"),
    events_pb2.RoutingWeight: ("model", "origin_region", "weights"),
    events_pb2.VmCount: ("region", "sku", "purchase", "count"),
}


def _plan_codec(spec: MessageCodec) -> MessageCodec:
    check_handled("Plan", _PLAN_FIELDS, (f.name for f in fields(Plan)))
    for message, handled in _PLAN_WIRE.items():
        check_handled(message.DESCRIPTOR.full_name, handled, message.DESCRIPTOR.fields_by_name)
    plan_f = events_pb2.Plan.DESCRIPTOR.fields_by_name
    assignment_f = events_pb2.AgentAssignment.DESCRIPTOR.fields_by_name
    weight_f = events_pb2.RoutingWeight.DESCRIPTOR.fields_by_name
    vm_f = events_pb2.VmCount.DESCRIPTOR.fields_by_name
    nested = {events_pb2.InstanceSpec.DESCRIPTOR.full_name: spec}
    epoch, created, reason = (encoder_for(plan_f[n]) for n in ("epoch", "created_s", "reason"))
    regions = encoder_for(plan_f["agent_regions"])
    withdrawn, gates = encoder_for(plan_f["withdrawn"]), encoder_for(plan_f["ready_ratio_tolerance"])
    agent_id, region = encoder_for(assignment_f["agent_id"]), encoder_for(assignment_f["region"])
    specs = encoder_for(assignment_f["instances"], nested, _ENUMS)
    models = encoder_for(assignment_f["prestage"])
    weight_model, weight_origin = encoder_for(weight_f["model"]), encoder_for(weight_f["origin_region"])
    shares = encoder_for(weight_f["weights"])
    vm_region, vm_sku, vm_purchase = (encoder_for(vm_f[n]) for n in ("region", "sku", "purchase"))
    vm_count = encoder_for(vm_f["count"])

    def to_fields(plan: Plan) -> dict[str, Any]:
        # Pre-staging travels in the agent's AgentAssignment, so an agent it names must have one.
        strays = sorted(set(plan.prestage) - set(plan.assignments), key=repr)
        if strays:
            raise FieldRefused(f"agents {strays} have no entry in Plan.assignments").within(".prestage")
        assignments = []
        for agent, agent_specs in plan.assignments.items():
            where = f"[{agent!r}]"
            assignments.append({
                "agent_id": _at(f".assignments{where} agent id", agent_id, agent),
                "region": _at(f".agent_regions{where}", region, plan.agent_regions.get(agent, "")),
                "instances": _at(f".assignments{where}", specs, agent_specs),
                "prestage": _at(f".prestage{where}", models, plan.prestage.get(agent, ())),
            })
        weights = []
        for key, by_region in plan.routing_weights.items():
            if not (isinstance(key, tuple) and len(key) == 2):
                raise FieldRefused(f"key must be (model, origin_region), got {key!r}").within(".routing_weights")
            where = f".routing_weights[{key!r}]"
            weights.append({"model": _at(f"{where} model", weight_model, key[0]),
                            "origin_region": _at(f"{where} origin_region", weight_origin, key[1]),
                            "weights": _at(where, shares, by_region)})
        vms = []
        for key, count in plan.vm_counts.items():
            if not (isinstance(key, tuple) and len(key) == 3):
                raise FieldRefused(f"key must be (region, sku, purchase), got {key!r}").within(".vm_counts")
            where = f".vm_counts[{key!r}]"
            purchase = str(key[2]) if isinstance(key[2], str) else key[2]  # a Purchase (StrEnum) as its value
            vms.append({"region": _at(f"{where} region", vm_region, key[0]),
                        "sku": _at(f"{where} sku", vm_sku, key[1]),
                        "purchase": _at(f"{where} purchase", vm_purchase, purchase),
                        "count": _at(where, vm_count, count)})
        return {"epoch": _at(".epoch", epoch, plan.epoch), "created_s": _at(".created_s", created, plan.created_s),
                "reason": _at(".reason", reason, plan.reason),
                "agent_regions": _at(".agent_regions", regions, plan.agent_regions),
                "withdrawn": _at(".withdrawn", withdrawn, plan.withdrawn),
                "ready_ratio_tolerance": _at(".ready_ratio_tolerance", gates, plan.ready_ratio_tolerance),
                "assignments": assignments, "routing_weights": weights, "vm_counts": vms}

    def from_pb(msg: events_pb2.Plan) -> Plan:
        assignments: dict[str, tuple[InstanceSpec, ...]] = {}
        prestage: dict[str, tuple[str, ...]] = {}
        agent_regions: dict[str, str] = dict(msg.agent_regions)
        for a in msg.assignments:
            if a.agent_id in assignments:
                raise FieldRefused(f"agent {a.agent_id!r} appears twice").within(".assignments")
            where = f".assignments[{a.agent_id!r}]"
            assignments[a.agent_id] = tuple(_at(f"{where}[{i}]", spec.from_pb, s) for i, s in enumerate(a.instances))
            if a.prestage:
                prestage[a.agent_id] = tuple(a.prestage)
            # A producer that only fills AgentAssignment.region still gets its regions across.
            if a.region and a.agent_id not in agent_regions:
                agent_regions[a.agent_id] = a.region
        routing: dict[tuple[str, str], dict[str, float]] = {}
        for rw in msg.routing_weights:
            key = (rw.model, rw.origin_region)
            if key in routing:
                raise FieldRefused(f"{key!r} appears twice").within(".routing_weights")
            routing[key] = dict(rw.weights)
        vms: dict[tuple[str, str, str], int] = {}
        for vc in msg.vm_counts:
            cell = (vc.region, vc.sku, vc.purchase)
            if cell in vms:
                raise FieldRefused(f"{cell!r} appears twice").within(".vm_counts")
            vms[cell] = vc.count
        try:
            return Plan(epoch=msg.epoch, created_s=msg.created_s, assignments=assignments,
                        agent_regions=agent_regions, routing_weights=routing, vm_counts=vms, reason=msg.reason,
                        prestage=prestage, withdrawn=dict(msg.withdrawn),
                        ready_ratio_tolerance=dict(msg.ready_ratio_tolerance))
        except (TypeError, ValueError) as exc:
            raise FieldRefused(str(exc)) from None

    return MessageCodec(Plan, events_pb2.Plan, to_fields, from_pb)


def _batch_codec(record: MessageCodec) -> MessageCodec:
    descriptor = events_pb2.RequestRecordBatch.DESCRIPTOR
    check_handled(descriptor.full_name, ("records",), descriptor.fields_by_name)
    records = encoder_for(descriptor.fields_by_name["records"], {record.message.DESCRIPTOR.full_name: record})
    from_record = record.from_pb

    def from_pb(msg: events_pb2.RequestRecordBatch) -> tuple[RequestOutcome, ...]:
        return tuple(_at(f"[{i}]", from_record, r) for i, r in enumerate(msg.records))

    return MessageCodec(tuple, events_pb2.RequestRecordBatch, lambda outcomes: {"records": records(outcomes)},
                        from_pb)


# -- the table: every type on the wire, and how it differs from its message ------------------------------


def _build() -> dict[str, WireType]:
    table: dict[str, WireType] = {}
    by_message: dict[str, MessageCodec] = {}  # the model type each nested message is

    def add(type_name: str, cls: type | None, layout: Layout, codec: MessageCodec) -> MessageCodec:
        table[type_name] = WireType(type_name, cls, codec.message, layout, codec)
        return codec

    def field_by_field(cls: type, message: type[Message]) -> MessageCodec:
        return add(cls.__name__, cls, Layout.FIELD_BY_FIELD, derive(cls, message, by_message, _ENUMS))

    # Model types, in the order they nest; the messages named like them, except the outcome's.
    for cls, message in ((OperatorReplicas, events_pb2.OperatorReplicas), (InstanceSpec, events_pb2.InstanceSpec),
                         (InstanceStatus, events_pb2.InstanceStatus),
                         (Request, events_pb2.Request), (RequestOutcome, events_pb2.RequestRecord),
                         (KvBlockEvent, events_pb2.KvBlockEvent)):
        by_message[message.DESCRIPTOR.full_name] = field_by_field(cls, message)
    plan = add("Plan", Plan, Layout.PLAN, _plan_codec(table["InstanceSpec"].codec))
    for cls, message in ((AgentHeartbeat, events_pb2.AgentHeartbeat), (RouterLoad, events_pb2.RouterLoad),
                         (DispatchFailed, events_pb2.DispatchFailed), (PrefillHandedOff, events_pb2.PrefillHandedOff),
                         (WindowStats, events_pb2.WindowStats), (PoolUtilisation, events_pb2.PoolUtilisation),
                         (ForecastIssued, events_pb2.ForecastIssued), (EngineReport, events_pb2.EngineReport),
                         (ApplyCommand, control_pb2.ApplyRequest), (DrainCommand, control_pb2.DrainRequest),
                         (KvEventBatch, events_pb2.KvEventBatch)):
        field_by_field(cls, message)
    for cls, inner in ((RequestArrived, table["Request"].codec), (RequestFinished, table["RequestOutcome"].codec),
                       (PlanPublished, plan)):
        add(cls.__name__, cls, Layout.WHOLE_FIELD, whole_field(cls, inner))
    add(BATCH_TYPE, None, Layout.BATCH, _batch_codec(table["RequestOutcome"].codec))
    return table


_WIRE: dict[str, WireType] = _build()
_BY_CLASS: dict[type, WireType] = {w.cls: w for w in _WIRE.values() if w.cls is not None}

WIRE_TYPES: Mapping[str, WireType] = MappingProxyType(_WIRE)
"""Every type the codec carries, by its wire type name."""

TYPE_NAMES: frozenset[str] = frozenset(_WIRE)
"""Every type name `decode` understands."""


def _known() -> str:
    return ", ".join(sorted(TYPE_NAMES))


def _wire_type_of(obj: Any) -> WireType:
    if isinstance(obj, tuple | list):
        return _WIRE[BATCH_TYPE]
    try:
        return _BY_CLASS[type(obj)]
    except KeyError:
        raise CodecError(f"no codec for {type(obj).__name__}; known types: {_known()}") from None


def _named(type_name: str) -> WireType:
    wire = _WIRE.get(type_name)
    if wire is None:
        raise CodecError(f"unknown type {type_name!r}; known types: {_known()}")
    return wire


def _explain(exc: FieldRefused, type_name: str) -> str:
    return f"{exc.where(type_name)}: {exc.reason}" if exc.path else exc.reason


def type_name_of(obj: Any) -> str:
    """The wire type name of `obj` (a tuple or list of RequestOutcome is a `RequestRecordBatch`)."""
    return _wire_type_of(obj).type_name


def to_message(obj: Any) -> Message:
    """The protobuf message for `obj`. Raises CodecError naming the field that does not fit."""
    wire = _wire_type_of(obj)
    try:
        return wire.message(**wire.codec.to_fields(obj))
    except FieldRefused as exc:
        raise CodecError(f"cannot encode {wire.type_name}: {_explain(exc, wire.type_name)}") from None
    except (TypeError, ValueError, AttributeError) as exc:  # the checks above should leave nothing to these
        raise CodecError(f"cannot encode {wire.type_name}: {exc}") from None


def from_message(type_name: str, msg: Message) -> Any:
    """Rebuild the dataclass of `type_name` from its protobuf message, validating it."""
    wire = _named(type_name)
    if not isinstance(msg, wire.message):
        raise CodecError(f"{type_name}: expected a {wire.message.__name__} message, got {type(msg).__name__}")
    try:
        return wire.codec.from_pb(msg)
    except FieldRefused as exc:  # the dataclasses' own checks (tp in 1/2/4/8, ...) arrive as these too
        raise CodecError(f"malformed {type_name}: {_explain(exc, type_name)}") from None


def encode(event: Any) -> tuple[str, bytes]:
    """`(type name, protobuf bytes)` for an event, a model object or a batch of RequestOutcome."""
    type_name = type_name_of(event)
    return type_name, to_message(event).SerializeToString(deterministic=True)


def decode(type_name: str, payload: bytes) -> Any:
    """The dataclass that `encode` produced `payload` from. Raises CodecError on malformed input."""
    wire = _named(type_name)
    if not isinstance(payload, bytes | bytearray | memoryview):
        raise CodecError(f"malformed {type_name}: payload must be bytes, got {type(payload).__name__}")
    msg = wire.message()
    try:
        msg.ParseFromString(bytes(payload))
    except (DecodeError, ValueError) as exc:
        raise CodecError(f"malformed {type_name}: {len(payload)} bytes do not parse ({exc})") from None
    return from_message(type_name, msg)


def encode_records(outcomes: Iterable[RequestOutcome]) -> bytes:
    """A RequestRecordBatch payload: how the router ships request records, many per message."""
    return encode(tuple(outcomes))[1]


def decode_records(payload: bytes) -> tuple[RequestOutcome, ...]:
    """The records of a RequestRecordBatch payload, in order."""
    result: tuple[RequestOutcome, ...] = decode(BATCH_TYPE, payload)
    return result

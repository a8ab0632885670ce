"""Each event has one definition: the codec refuses a dataclass and a proto message whose fields differ,
by name (when it is built) or by meaning (here, for every registered type: a dataclass `float` where the
wire has an integer, a tuple where it has one value, ...)."""

from __future__ import annotations

import dataclasses
import typing
from enum import Enum, StrEnum

import pytest
from google.protobuf.descriptor import FieldDescriptor

from opscale.model import Role
from opscale.runtime.live import codec
from opscale.runtime.live.codec import WIRE_TYPES, Layout
from opscale.runtime.live.derived_codec import SchemaMismatch, check_handled, derive, enum_tables
from opscale.v1 import events_pb2

pytestmark = pytest.mark.unit

_SCALAR_TYPES = {
    FieldDescriptor.TYPE_STRING: str, FieldDescriptor.TYPE_BOOL: bool, FieldDescriptor.TYPE_DOUBLE: float,
    FieldDescriptor.TYPE_FLOAT: float, FieldDescriptor.TYPE_UINT32: int, FieldDescriptor.TYPE_UINT64: int,
    FieldDescriptor.TYPE_INT32: int, FieldDescriptor.TYPE_INT64: int,
}


def _model_of(message_name: str) -> type:
    """The dataclass a nested message stands for: the type derived field by field from it."""
    (cls,) = {w.cls for w in WIRE_TYPES.values()
              if w.layout is Layout.FIELD_BY_FIELD and w.message.DESCRIPTOR.full_name == message_name}
    assert cls is not None
    return cls


def _python_type(field: FieldDescriptor, hint: object) -> object:
    """The Python type the wire field stands for (`hint` only picks the enum, checked to match it)."""
    if field.type == FieldDescriptor.TYPE_MESSAGE and field.message_type.GetOptions().map_entry:
        key, value = (field.message_type.fields_by_name[n] for n in ("key", "value"))
        return dict[_SCALAR_TYPES[key.type], _SCALAR_TYPES[value.type]]  # type: ignore[misc]
    if field.type == FieldDescriptor.TYPE_ENUM:
        element = typing.get_args(hint)[0] if field.is_repeated else hint
        assert isinstance(element, type) and issubclass(element, Enum), f"{field.full_name} is an enum on the wire"
        enum_tables(element, field.enum_type)  # raises unless the members match
    elif field.type == FieldDescriptor.TYPE_MESSAGE:
        element = _model_of(field.message_type.full_name)
    else:
        element = _SCALAR_TYPES[field.type]
    if field.is_repeated:
        return tuple[element, ...]  # type: ignore[valid-type]
    return element | None if field.has_presence and field.type != FieldDescriptor.TYPE_MESSAGE else element  # type: ignore[operator]


@pytest.mark.parametrize("type_name", sorted(n for n, w in WIRE_TYPES.items() if w.layout is Layout.FIELD_BY_FIELD))
def test_every_field_means_the_same_on_both_sides(type_name: str) -> None:
    wire = WIRE_TYPES[type_name]
    assert wire.cls is not None
    hints = typing.get_type_hints(wire.cls)
    fields = wire.message.DESCRIPTOR.fields_by_name
    for f in dataclasses.fields(wire.cls):
        expected = _python_type(fields[f.name], hints[f.name])
        assert hints[f.name] == expected, f"{type_name}.{f.name}: the dataclass says {hints[f.name]}, the wire {expected}"


@pytest.mark.parametrize("type_name", sorted(n for n, w in WIRE_TYPES.items() if w.layout is Layout.WHOLE_FIELD))
def test_an_event_that_is_one_model_object_holds_that_object(type_name: str) -> None:
    wire = WIRE_TYPES[type_name]
    assert wire.cls is not None
    (only,) = dataclasses.fields(wire.cls)
    model = next(w.cls for w in WIRE_TYPES.values()
                 if w.message is wire.message and w.layout in (Layout.FIELD_BY_FIELD, Layout.PLAN))
    assert typing.get_type_hints(wire.cls)[only.name] is model


def test_every_layout_but_the_derived_one_is_declared() -> None:
    # A new type should be derived; one that cannot be must say how it travels (see codec._build).
    by_layout = {layout: sorted(n for n, w in WIRE_TYPES.items() if w.layout is layout) for layout in Layout}
    assert by_layout[Layout.PLAN] == ["Plan"]
    assert by_layout[Layout.BATCH] == [codec.BATCH_TYPE]
    assert by_layout[Layout.WHOLE_FIELD] == ["PlanPublished", "RequestArrived", "RequestFinished"]


@dataclasses.dataclass(frozen=True)
class _ForecastPlusOne:  # ForecastIssued with a field its message lacks
    model: str
    region: str
    tier: str
    at_s: float
    horizon_s: float
    mean_rps: float
    lo_rps: float
    hi_rps: float
    method: str
    confidence: float = 0.9


@dataclasses.dataclass(frozen=True)
class _ForecastLessOne:  # ForecastIssued without its method
    model: str
    region: str
    tier: str
    at_s: float
    horizon_s: float
    mean_rps: float
    lo_rps: float
    hi_rps: float


@pytest.mark.parametrize(("cls", "message"), [
    (_ForecastPlusOne, r"only in the dataclass \['confidence'\], only in the message \[\]"),
    (_ForecastLessOne, r"only in the dataclass \[\], only in the message \['method'\]"),
])
def test_a_field_on_one_side_only_stops_the_codec(cls: type, message: str) -> None:
    with pytest.raises(SchemaMismatch, match=message):
        derive(cls, events_pb2.ForecastIssued, {}, {})


def test_a_nested_message_or_enum_without_its_python_type_stops_the_codec() -> None:
    spec = WIRE_TYPES["InstanceSpec"]
    assert spec.cls is not None
    with pytest.raises(SchemaMismatch, match="InstanceSpec.role: no Python enum declared for opscale.v1.Role"):
        derive(spec.cls, events_pb2.InstanceSpec, {}, {})
    apply = WIRE_TYPES["ApplyCommand"]
    assert apply.cls is not None
    with pytest.raises(SchemaMismatch, match="no dataclass derived for opscale.v1.InstanceSpec"):
        derive(apply.cls, apply.message, {}, {"opscale.v1.Role": Role})


class _RoleWithOneMore(StrEnum):
    UNIFIED = "unified"
    PREFILL = "prefill"
    DECODE = "decode"
    EXPERT = "expert"


def test_an_enum_member_on_one_side_only_stops_the_codec() -> None:
    to_wire, from_wire = enum_tables(Role, events_pb2.Role.DESCRIPTOR)
    assert to_wire == {Role.UNIFIED: 0, Role.PREFILL: 1, Role.DECODE: 2}
    assert from_wire == {0: Role.UNIFIED, 1: Role.PREFILL, 2: Role.DECODE}
    with pytest.raises(SchemaMismatch, match=r"only in Python \['EXPERT'\], only in the proto \[\]"):
        enum_tables(_RoleWithOneMore, events_pb2.Role.DESCRIPTOR)


def test_a_hand_written_layout_must_handle_every_field() -> None:
    check_handled("opscale.v1.VmCount", ("region", "sku", "purchase", "count"),
                  events_pb2.VmCount.DESCRIPTOR.fields_by_name)
    with pytest.raises(SchemaMismatch, match=r"does not handle \['count'\], and handles \['gpus'\]"):
        check_handled("opscale.v1.VmCount", ("region", "sku", "purchase", "gpus"),
                      events_pb2.VmCount.DESCRIPTOR.fields_by_name)

"""The conversion between a dataclass and its protobuf message, derived from the two definitions.

The dataclass is the one definition of an event; its message in proto/opscale/v1 carries the same
fields, by name. `derive` compares the two field sets when the codec is built (at import) and raises
`SchemaMismatch` for a pair that differs, so a field added on one side only stops every service at
start instead of being dropped on the wire. Each field's wire type comes from the message descriptor
and its Python shape follows from it: a repeated field is a tuple, a map a dict, an `optional` scalar
None when unset, a nested message the dataclass derived for it, an enum the Python enum declared for it
(matched member by member: ROLE_PREFILL is Role.PREFILL).

Encoding validates every value against its wire type, because protobuf's own errors do not name the
field and it takes a bool for a number. A refusal raises `FieldRefused`, whose path grows as it leaves
nested values, so the codec can say `AgentHeartbeat.instances[0].power_w: expected a number, got True`.
A message is produced as its constructor's arguments, nested messages as dicts of theirs: protobuf
builds the whole tree in C, about twice as fast as building each sub-message and copying it in.

This module only converts; it does no I/O.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from enum import Enum
from operator import attrgetter
from typing import Any

from google.protobuf.descriptor import Descriptor, EnumDescriptor, FieldDescriptor
from google.protobuf.message import Message

__all__ = [
    "FieldRefused", "MessageCodec", "SchemaMismatch", "check_handled", "derive", "encoder_for", "enum_tables",
    "whole_field",
]

_U32_MAX = 2**32 - 1
_U64_MAX = 2**64 - 1
_I32_MIN, _I32_MAX = -(2**31), 2**31 - 1
_I64_MIN, _I64_MAX = -(2**63), 2**63 - 1

Encoder = Callable[[Any], Any]
"""Checks one Python value against its wire field and returns what the message constructor takes."""

Fix = Callable[[Any, Any], Any]
"""Turns what a message field holds (given the message and the field's value) into the Python value."""


class SchemaMismatch(TypeError):
    """A dataclass and its proto message disagree; raised while the codec is built, naming both."""


class FieldRefused(Exception):
    """A value that does not fit its wire field. `path` collects the segments from the failing value
    outwards ('.power_w', '[0]', '.instances'); `where(root)` joins them into a field's full name."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason
        self.path: list[str] = []

    def within(self, segment: str) -> FieldRefused:
        self.path.append(segment)
        return self

    def where(self, root: str) -> str:
        return root + "".join(reversed(self.path))


@dataclass(frozen=True, slots=True)
class MessageCodec:
    """How one Python type travels as one protobuf message: `to_fields` gives the message's validated
    constructor arguments, `from_pb` rebuilds the value from a message."""

    cls: type
    message: type[Message]
    to_fields: Callable[[Any], dict[str, Any]]
    from_pb: Callable[[Any], Any]


# -- field checks on the way out ------------------------------------------------------------------------


def _string(value: Any) -> str:
    if type(value) is str and value.isascii():  # the usual case: nothing more to check
        return value
    if not isinstance(value, str):
        raise FieldRefused(f"expected a string, got {value!r}")
    try:
        value.encode("utf-8")
    except UnicodeEncodeError as exc:
        raise FieldRefused(f"string is not valid UTF-8 ({exc.reason}): {value!r}") from None
    return value


def _integer(lo: int, hi: int) -> Encoder:
    def check(value: Any) -> int:
        if type(value) is int and lo <= value <= hi:
            return value
        if isinstance(value, bool) or not isinstance(value, int):
            raise FieldRefused(f"expected an integer, got {value!r}")
        if not lo <= value <= hi:
            raise FieldRefused(f"{value!r} is outside the wire range [{lo}, {hi}]")
        return value

    return check


def _double(value: Any) -> float:
    if type(value) is float:
        return value
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise FieldRefused(f"expected a number, got {value!r}")
    return float(value)


def _boolean(value: Any) -> bool:
    if type(value) is bool:
        return value
    raise FieldRefused(f"expected a bool, got {value!r}")


_SCALARS: dict[int, Encoder] = {
    FieldDescriptor.TYPE_STRING: _string,
    FieldDescriptor.TYPE_DOUBLE: _double,
    FieldDescriptor.TYPE_FLOAT: _double,
    FieldDescriptor.TYPE_BOOL: _boolean,
    FieldDescriptor.TYPE_UINT32: _integer(0, _U32_MAX),
    FieldDescriptor.TYPE_FIXED32: _integer(0, _U32_MAX),
    FieldDescriptor.TYPE_UINT64: _integer(0, _U64_MAX),
    FieldDescriptor.TYPE_FIXED64: _integer(0, _U64_MAX),
    FieldDescriptor.TYPE_INT32: _integer(_I32_MIN, _I32_MAX),
    FieldDescriptor.TYPE_SINT32: _integer(_I32_MIN, _I32_MAX),
    FieldDescriptor.TYPE_INT64: _integer(_I64_MIN, _I64_MAX),
    FieldDescriptor.TYPE_SINT64: _integer(_I64_MIN, _I64_MAX),
}


def _optional(encode: Encoder) -> Encoder:
    # None leaves an `optional` field unset (the constructor takes None for "not given").
    return lambda value: None if value is None else encode(value)


def _enum_encoder(to_wire: Mapping[Any, int]) -> Encoder:
    allowed = ", ".join(str(member) for member in to_wire)

    def check(value: Any) -> int:
        try:
            return to_wire[value]
        except (KeyError, TypeError):
            raise FieldRefused(f"{value!r} is not one of {allowed}") from None

    return check


def _message_encoder(codec: MessageCodec) -> Encoder:
    cls, to_fields = codec.cls, codec.to_fields
    expected = f"{'an' if cls.__name__[0] in 'AEIOU' else 'a'} {cls.__name__}"

    def check(value: Any) -> dict[str, Any]:
        if not isinstance(value, cls):
            raise FieldRefused(f"expected {expected}, got {type(value).__name__}")
        return to_fields(value)

    return check


def _repeated(encode: Encoder) -> Encoder:
    def check(values: Any) -> list[Any]:
        # A string is iterable, but one string where a list of them belongs is a mistake, not a list.
        if isinstance(values, str | bytes | Mapping) or not isinstance(values, Iterable):
            raise FieldRefused(f"expected a sequence, got {values!r}")
        out = []
        i = 0
        try:
            for i, value in enumerate(values):  # noqa: B007 - i names the element that failed
                out.append(encode(value))
        except FieldRefused as exc:
            raise exc.within(f"[{i}]") from None
        return out

    return check


def _map(encode_key: Encoder, encode_value: Encoder) -> Encoder:
    def check(mapping: Any) -> dict[Any, Any]:
        if not isinstance(mapping, Mapping):
            raise FieldRefused(f"expected a mapping, got {mapping!r}")
        out = {}
        for key, value in mapping.items():
            try:
                wire_key = encode_key(key)
            except FieldRefused as exc:
                raise exc.within(" key") from None
            try:
                out[wire_key] = encode_value(value)
            except FieldRefused as exc:
                raise exc.within(f"[{key!r}]") from None
        return out

    return check


# -- fixes on the way in: only the fields whose wire value is not already the Python value --------------


def _enum_decoder(from_wire: Mapping[int, Any]) -> Callable[[Any], Any]:
    # proto3 enums are open: a newer peer may send a number this build does not know.
    def decode(number: int) -> Any:
        try:
            return from_wire[number]
        except KeyError:
            raise FieldRefused(f"unknown enum number {number}") from None

    return decode


def _each(decode: Callable[[Any], Any]) -> Fix:
    def fix(_msg: Any, values: Any) -> tuple[Any, ...]:
        out = []
        i = 0
        try:
            for i, value in enumerate(values):  # noqa: B007 - i names the element that failed
                out.append(decode(value))
        except FieldRefused as exc:
            raise exc.within(f"[{i}]") from None
        return tuple(out)

    return fix


# -- what each field descriptor asks for ----------------------------------------------------------------


def enum_tables(py_enum: type[Enum], descriptor: EnumDescriptor) -> tuple[dict[Any, int], dict[int, Any]]:
    """(member -> number, number -> member) for a Python enum and its proto enum, matched by name:
    the proto prefixes each value with the enum's name (Role.PREFILL is ROLE_PREFILL). Raises
    SchemaMismatch when a member is on one side only."""
    prefix = "".join(f"_{c}" if c.isupper() and i else c for i, c in enumerate(descriptor.name)).upper() + "_"
    wire = {value.name.removeprefix(prefix): value.number for value in descriptor.values}
    python = {member.name: member for member in py_enum}
    if wire.keys() != python.keys():
        raise SchemaMismatch(
            f"enum {py_enum.__name__} and proto enum {descriptor.full_name} differ: only in Python "
            f"{sorted(python.keys() - wire.keys())}, only in the proto {sorted(wire.keys() - python.keys())}")
    to_wire = {python[name]: number for name, number in wire.items()}
    return to_wire, {number: member for member, number in to_wire.items()}


def _element(field: FieldDescriptor, nested: Mapping[str, MessageCodec],
             enums: Mapping[str, type[Enum]], owner: str) -> tuple[Encoder, Callable[[Any], Any] | None]:
    """The encoder of one value of `field` (one element when repeated) and its decoder where the wire
    value is not the Python value already (an enum's number, a nested message)."""
    if field.type == FieldDescriptor.TYPE_ENUM:
        py_enum = enums.get(field.enum_type.full_name)
        if py_enum is None:
            raise SchemaMismatch(f"{owner}.{field.name}: no Python enum declared for {field.enum_type.full_name}")
        to_wire, from_wire = enum_tables(py_enum, field.enum_type)
        return _enum_encoder(to_wire), _enum_decoder(from_wire)
    if field.type == FieldDescriptor.TYPE_MESSAGE:
        codec = nested.get(field.message_type.full_name)
        if codec is None:
            raise SchemaMismatch(f"{owner}.{field.name}: no dataclass derived for {field.message_type.full_name}")
        return _message_encoder(codec), codec.from_pb
    scalar = _SCALARS.get(field.type)
    if scalar is None:
        raise SchemaMismatch(f"{owner}.{field.name}: wire type {field.type} is not supported")
    return scalar, None


def encoder_for(field: FieldDescriptor, nested: Mapping[str, MessageCodec] | None = None,
                enums: Mapping[str, type[Enum]] | None = None) -> Encoder:
    """The encoder of a whole field (a list for a repeated one, a dict for a map)."""
    return _field(field, nested or {}, enums or {}, field.containing_type.name)[0]


def _field(field: FieldDescriptor, nested: Mapping[str, MessageCodec], enums: Mapping[str, type[Enum]],
           owner: str) -> tuple[Encoder, Fix | None]:
    """(encoder, fix) of one field; the fix is None where the message's value is the Python value."""
    name = field.name
    if field.type == FieldDescriptor.TYPE_MESSAGE and field.message_type.GetOptions().map_entry:
        key, value = field.message_type.fields_by_name["key"], field.message_type.fields_by_name["value"]
        if value.type in (FieldDescriptor.TYPE_MESSAGE, FieldDescriptor.TYPE_ENUM):
            raise SchemaMismatch(f"{owner}.{name}: maps of messages or enums are not supported")
        return _map(_SCALARS[key.type], _SCALARS[value.type]), lambda _msg, values: dict(values)
    encode, decode_one = _element(field, nested, enums, owner)
    if field.is_repeated:
        return _repeated(encode), (_each(decode_one) if decode_one is not None else lambda _msg, values: tuple(values))
    if decode_one is None:
        # A scalar: its value is the Python value, None when an `optional` one was left unset.
        if field.has_presence:
            return _optional(encode), lambda msg, value: value if msg.HasField(name) else None
        return encode, None
    if field.type == FieldDescriptor.TYPE_MESSAGE:
        decode_message = decode_one

        def present(msg: Any, value: Any) -> Any:
            if not msg.HasField(name):
                raise FieldRefused("missing")
            return decode_message(value)

        return encode, present
    if field.has_presence:
        raise SchemaMismatch(f"{owner}.{name}: optional enums are not supported")
    decode_enum = decode_one
    return encode, lambda _msg, number: decode_enum(number)


# -- whole messages ---------------------------------------------------------------------------------------


def check_handled(owner: str, handled: Iterable[str], present: Iterable[str]) -> None:
    """Raise SchemaMismatch unless a hand-written conversion of `owner` handles exactly the fields
    `present` (a dataclass's, or a message descriptor's)."""
    handled_set, present_set = set(handled), set(present)
    if handled_set != present_set:
        raise SchemaMismatch(
            f"{owner}: the codec does not handle {sorted(present_set - handled_set)}, and handles "
            f"{sorted(handled_set - present_set)}, which it does not have")


def derive(cls: type, message: type[Message], nested: Mapping[str, MessageCodec],
           enums: Mapping[str, type[Enum]]) -> MessageCodec:
    """The codec of a dataclass whose message has the same fields, by name. `nested` holds the codecs of
    the messages its fields carry (by full name), `enums` the Python enum of each proto enum.

    Raises SchemaMismatch when a field is on one side only, or has a wire type this codec cannot carry.
    """
    descriptor: Descriptor = message.DESCRIPTOR
    own = dataclasses.fields(cls)
    names = tuple(f.name for f in own)
    if any(not f.init or f.kw_only for f in own):  # decoding rebuilds it positionally, field by field
        raise SchemaMismatch(f"{cls.__name__}: every field must be an __init__ argument, in order")
    wire_names = {f.name for f in descriptor.fields}
    if set(names) != wire_names:
        raise SchemaMismatch(
            f"{cls.__name__} and proto message {descriptor.full_name} differ: only in the dataclass "
            f"{sorted(set(names) - wire_names)}, only in the message {sorted(wire_names - set(names))}")
    compiled = [_field(descriptor.fields_by_name[name], nested, enums, cls.__name__) for name in names]
    encoders = tuple(encode for encode, _ in compiled)
    fixes = tuple((i, fix) for i, (_, fix) in enumerate(compiled) if fix is not None)
    read = attrgetter(*names) if len(names) > 1 else (lambda obj: (getattr(obj, names[0]),))

    def to_fields(obj: Any) -> dict[str, Any]:
        try:
            return {name: encode(value) for name, encode, value in zip(names, encoders, read(obj), strict=True)}
        except FieldRefused as exc:
            # Rare: find the field again, one at a time, to name it.
            for name, encode, value in zip(names, encoders, read(obj), strict=True):
                try:
                    encode(value)
                except FieldRefused:
                    raise exc.within(f".{name}") from None
            raise

    def from_pb(msg: Any) -> Any:
        values = list(read(msg))
        i = 0
        try:
            for i, fix in fixes:  # noqa: B007 - i names the field that failed
                values[i] = fix(msg, values[i])
        except FieldRefused as exc:
            raise exc.within(f".{names[i]}") from None
        try:
            return cls(*values)
        except (TypeError, ValueError) as exc:  # the dataclass's own checks (tp in 1/2/4/8, ...)
            raise FieldRefused(str(exc)) from None

    return MessageCodec(cls, message, to_fields, from_pb)


def whole_field(cls: type, inner: MessageCodec) -> MessageCodec:
    """The codec of a dataclass with one field whose value is the whole message (an event that is one
    model object on the wire, such as RequestArrived and its Request)."""
    names = [f.name for f in dataclasses.fields(cls)]
    if len(names) != 1:
        raise SchemaMismatch(f"{cls.__name__} travels as one {inner.message.DESCRIPTOR.full_name}, so it must "
                             f"have one field; it has {names}")
    (name,) = names
    encode, decode = _message_encoder(inner), inner.from_pb
    segment = f".{name}"

    def to_fields(event: Any) -> dict[str, Any]:
        try:
            fields: dict[str, Any] = encode(getattr(event, name))
        except FieldRefused as exc:
            raise exc.within(segment) from None
        return fields

    def from_pb(msg: Any) -> Any:
        try:
            return cls(decode(msg))
        except FieldRefused as exc:
            raise exc.within(segment) from None

    return MessageCodec(cls, inner.message, to_fields, from_pb)

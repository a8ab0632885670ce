"""JSON for the OpenAI wire format, fast where it can be: strict JSON is read and written by msgspec (in
C), and whatever strict JSON cannot hold falls back to the standard library, which reads and writes it
as it always did (NaN and Infinity, a lone surrogate in a string, an integer too long for msgspec).

One owner for the fallback: the router's request bodies (schema.parse_completion), the engine events it
decodes (sse_passthrough) and the bodies it encodes (upstream requests, answers) all go through here.
Pure: no I/O.
"""

from __future__ import annotations

import json
from typing import Any

import msgspec

__all__ = ["dumps_json", "loads_json"]

_decode = msgspec.json.Decoder().decode
_encode = msgspec.json.Encoder().encode


def loads_json(data: bytes | str) -> Any:
    """`data` decoded: strict JSON in C, anything else as the standard library reads it, which raises
    ValueError (not JSON, not UTF-8, an integer too long to convert) or RecursionError (nested too deep)."""
    try:
        return _decode(data)
    except (msgspec.DecodeError, msgspec.ValidationError, RecursionError):
        return json.loads(data)


def dumps_json(obj: Any) -> bytes:
    """`obj` encoded as UTF-8 JSON: in C, or by the standard library for what strict JSON cannot hold (a
    lone surrogate in a string, which only the standard library's reader lets in)."""
    try:
        return _encode(obj)
    except (TypeError, ValueError):  # UnicodeEncodeError is a ValueError
        return json.dumps(obj).encode()

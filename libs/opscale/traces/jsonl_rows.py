"""JSON Lines records with their line numbers, for the JSONL trace readers. A line that is not a JSON
object is a fault of that line and goes through the reader's skip-or-raise loop."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import IO, Any

from opscale.traces.reading import FieldError


class NotAnObject:
    """A line that did not parse as a JSON object; parsing it raises with the reason."""

    __slots__ = ("reason",)

    def __init__(self, reason: str) -> None:
        self.reason = reason


def jsonl_records(handle: IO[str]) -> Iterator[tuple[int, dict[str, Any] | NotAnObject]]:
    for line, text in enumerate(handle, start=1):
        if not text.strip():
            continue
        try:
            value = json.loads(text)
        except json.JSONDecodeError as exc:
            yield line, NotAnObject(f"not valid JSON ({exc.msg} at column {exc.colno})")
            continue
        except RecursionError:
            yield line, NotAnObject("not valid JSON (nested too deeply)")
            continue
        except ValueError as exc:  # an integer longer than Python converts (sys.get_int_max_str_digits)
            yield line, NotAnObject(f"not valid JSON ({str(exc).split(';')[0]})")
            continue
        yield line, value if isinstance(value, dict) else NotAnObject(
            f"expected a JSON object, got {type(value).__name__}")


def as_object(record: object) -> dict[str, Any]:
    """The record as a dict, or ValueError with the reason it is not one."""
    if isinstance(record, NotAnObject):
        raise ValueError(record.reason)
    assert isinstance(record, dict)
    return record


def required(record: dict[str, Any], key: str) -> Any:
    if key not in record or record[key] is None:
        raise FieldError(key, "missing")
    return record[key]

"""Mooncake traces (kvcache-ai/Mooncake, `FAST25-release/traces/*.jsonl`), one JSON object a line:

    {"timestamp": 0, "input_length": 6758, "output_length": 500, "hash_ids": [0, 1, 2]}

`timestamp` is milliseconds from the start of the trace (`arrival_s` = timestamp / 1000);
`input_length` is the prompt and `output_length` the output (both >= 1); `hash_ids` are ids of
512-token prompt blocks, equal ids meaning a reusable KV prefix, and become `Request.prefix_hashes`
(absent: no prefix information). Model, tier and region come from `ReadOptions.labels`. Ids are
`<file stem>-<record index>`.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import IO

from opscale.model import Request
from opscale.traces.jsonl_rows import as_object, jsonl_records, required
from opscale.traces.reading import (
    FieldError,
    ReadOptions,
    file_stem,
    guarded,
    parse_count,
    parse_seconds,
    validated,
)

FIELDS = ("timestamp", "input_length", "output_length")


def read_mooncake_trace(path: str | Path, options: ReadOptions | None = None) -> Iterator[Request]:
    """Yield the requests of a Mooncake JSONL trace in arrival order, with their prefix block ids."""
    path = Path(path)
    opts = options or ReadOptions()
    return guarded(path, lambda handle: _read(path, handle, opts))


def _read(path: Path, handle: IO[str], options: ReadOptions) -> Iterator[Request]:
    labels = options.labels
    stem = file_stem(path)

    def parse(record: object, index: int) -> Request:
        obj = as_object(record)
        arrival_s = parse_seconds(required(obj, "timestamp"), "timestamp", unit_s=1e-3)
        prompt = parse_count(required(obj, "input_length"), "input_length")
        output = parse_count(required(obj, "output_length"), "output_length")
        return Request(request_id=f"{stem}-{index}", model=labels.model, tier=labels.tier, region=labels.region,
                       arrival_s=arrival_s, prompt_tokens=prompt, output_tokens=output,
                       prefix_hashes=parse_hash_ids(obj.get("hash_ids"), "hash_ids"))

    return validated(path, jsonl_records(handle), parse, options, "timestamp")


def parse_hash_ids(raw: object, field_name: str) -> tuple[int, ...]:
    """A list of integer block ids (None or absent: none)."""
    if raw is None:
        return ()
    if not isinstance(raw, list) or not all(isinstance(h, int) and not isinstance(h, bool) for h in raw):
        raise FieldError(field_name, f"expected a list of integers, got {str(raw)[:60]!r}")
    return tuple(raw)

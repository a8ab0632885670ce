"""opscale's JSON Lines trace format: one request a line, sorted by arrival, the `Request` fields by
name (`prefix_hashes` optional, a list of integers):

    {"request_id": "r1", "model": "m", "tier": "interactive", "region": "eu", "arrival_s": 0.5,
     "prompt_tokens": 100, "output_tokens": 10, "prefix_hashes": [1, 2]}

Unlike the CSV format it keeps prefix block ids. Reading goes through the mapped JSONL reader with a
fixed mapping, so it validates and reports bad lines the same way.
"""

from __future__ import annotations

import gzip
import json
import math
from collections.abc import Iterable, Iterator
from pathlib import Path

from opscale.model import Request
from opscale.traces.mapped import ColumnMapping, read_mapped_jsonl
from opscale.traces.reading import ReadOptions

OPSCALE_JSONL_MAPPING = ColumnMapping(
    arrival="arrival_s", prompt_tokens="prompt_tokens", output_tokens="output_tokens", model="model",
    tier="tier", region="region", request_id="request_id", prefix_hashes="prefix_hashes")


def read_jsonl_trace(path: str | Path, options: ReadOptions | None = None) -> Iterator[Request]:
    """Yield the requests of an opscale JSONL trace in arrival order."""
    return read_mapped_jsonl(path, OPSCALE_JSONL_MAPPING, options)


def write_jsonl_trace(path: str | Path, requests: Iterable[Request]) -> int:
    """Write `requests` (sorted by arrival) as JSON Lines (gzip when the name ends in .gz); return the count."""
    path = Path(path)
    count = 0
    last_s = -math.inf
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "wt", encoding="utf-8") as handle:
        for r in requests:
            if r.arrival_s < last_s:
                raise ValueError(f"request {r.request_id}: arrival_s {r.arrival_s!r} is before the previous "
                                 f"request's {last_s!r}; a trace must be sorted by arrival")
            last_s = r.arrival_s
            record: dict[str, object] = {
                "request_id": r.request_id, "model": r.model, "tier": r.tier, "region": r.region,
                "arrival_s": r.arrival_s, "prompt_tokens": r.prompt_tokens, "output_tokens": r.output_tokens}
            if r.prefix_hashes:
                record["prefix_hashes"] = list(r.prefix_hashes)
            handle.write(json.dumps(record, separators=(",", ":")) + "\n")
            count += 1
    return count

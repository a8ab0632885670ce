"""What every trace reader shares: the error type, the statistics a reader fills, the labels given to
requests whose trace lacks them, opening (gzip transparently), and the loop that validates records one
at a time and either raises on the first bad one or counts and skips it.

A reader streams: it holds one record at a time (plus whatever the format needs to stay consistent,
such as the previous arrival), so a week-long trace never sits in memory. Nothing is dropped
silently: a skipped line is counted in `ReadStats` and the first few messages are kept.
"""

from __future__ import annotations

import csv
import gzip
import math
import zlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO

from pydantic import BaseModel, ConfigDict, Field

from opscale.model import Request

_GZIP_MAGIC = b"\x1f\x8b"
# How many skipped-line messages a ReadStats keeps, so a badly broken file cannot fill memory.
MAX_EXAMPLES = 5


class TraceFormatError(ValueError):
    """A trace file that cannot be read as a trace; the message names the file, line and column."""


class FieldError(ValueError):
    """A record's field is wrong; the record loop adds the file and line."""

    def __init__(self, field_name: str, message: str) -> None:
        super().__init__(f"field {field_name!r}: {message}")


class RecordFailed(Exception):  # noqa: N818 - a signal, not an error
    """A well-formed record that the format marks as a failed request (e.g. BurstGPT's zero-token
    responses); counted in `ReadStats.failed` and skipped, whatever `skip_invalid` says."""


@dataclass(slots=True)
class ReadStats:
    """Counts a reader fills while it streams; read them after the iterator is exhausted.

    `records` counts data records seen (not the header or blank lines); `requests` those yielded;
    `invalid` the bad ones skipped under `skip_invalid=True`; `failed` the records the format marks as
    failed requests (skipped by rule, see the reader); `examples` the first messages of skipped lines.
    """

    records: int = 0
    requests: int = 0
    invalid: int = 0
    failed: int = 0
    examples: list[str] = field(default_factory=list)

    def note_invalid(self, message: str) -> None:
        self.invalid += 1
        if len(self.examples) < MAX_EXAMPLES:
            self.examples.append(message)


# The label of a model or region a trace does not name. A replay sends no region header for it, so the
# router records the request under its own region (where its pool's SLO breaches are judged).
UNLABELLED = "default"


class RequestLabels(BaseModel):
    """Model, tier and region for requests whose trace does not say (the Azure, Mooncake and
    ServeGen traces carry token counts and times only). Re-label later with the assign transforms."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    model: str = Field(UNLABELLED, min_length=1, description="Model requested.")
    tier: str = Field("interactive", min_length=1, description="Service tier.")
    region: str = Field(UNLABELLED, min_length=1, description="Origin region.")


@dataclass(frozen=True, slots=True)
class ReadOptions:
    """How to read: skip bad lines (counting them in `stats`) or raise on the first; labels for
    requests whose trace lacks them."""

    skip_invalid: bool = False
    stats: ReadStats | None = None
    labels: RequestLabels = field(default_factory=RequestLabels)


def open_text(path: Path) -> IO[str]:
    """Open `path` as UTF-8 text, decompressing gzip when the file starts with gzip's magic bytes
    (whatever its name)."""
    try:
        with path.open("rb") as probe:
            compressed = probe.read(2) == _GZIP_MAGIC
        if compressed:
            return gzip.open(path, "rt", encoding="utf-8", newline="")
        return path.open("r", encoding="utf-8", newline="")
    except IsADirectoryError:
        raise TraceFormatError(f"{path}: is a directory, not a trace file") from None
    except OSError as exc:
        raise TraceFormatError(f"{path}: cannot open: {exc.strerror or exc}") from exc


def guarded(path: Path, records: Callable[[IO[str]], Iterator[Request]]) -> Iterator[Request]:
    """Open `path` and yield `records(handle)`, turning decoding and decompression failures into
    TraceFormatError naming the file."""
    handle = open_text(path)
    with handle:
        try:
            yield from records(handle)
        except UnicodeDecodeError as exc:
            raise TraceFormatError(f"{path}: not UTF-8 text ({exc.reason} at byte {exc.start})") from exc
        except (gzip.BadGzipFile, EOFError, zlib.error) as exc:
            raise TraceFormatError(f"{path}: corrupt or truncated gzip data: {exc}") from exc
        except csv.Error as exc:
            raise TraceFormatError(f"{path}: malformed CSV: {exc}") from exc


def validated(path: Path, records: Iterator[tuple[int, object]], parse: Callable[[object, int], Request],
              options: ReadOptions, arrival_field: str) -> Iterator[Request]:
    """Parse `(line, record)` pairs into requests sorted by arrival.

    `parse(record, index)` raises FieldError for a bad field (reported as `path:line: field 'x': ...`,
    or counted and skipped with `skip_invalid`) and RecordFailed for a failed request (counted, skipped).
    An arrival before the previous request's is a FieldError on `arrival_field`: readers stream, so they
    cannot re-sort.
    """
    stats = options.stats if options.stats is not None else ReadStats()
    last_s = -math.inf
    index = 0
    for line, record in records:
        stats.records += 1
        try:
            request = parse(record, index)
            if request.arrival_s < last_s:
                raise FieldError(arrival_field, f"{request.arrival_s!r} s is before the previous record's "
                                                f"{last_s!r} s; the trace must be sorted by arrival")
        except RecordFailed:
            stats.failed += 1
            continue
        except (FieldError, ValueError) as exc:
            message = f"{path}:{line}: {exc}"
            if not options.skip_invalid:
                raise TraceFormatError(message) from None
            stats.note_invalid(message)
            continue
        finally:
            index += 1
        last_s = request.arrival_s
        stats.requests += 1
        yield request


def _shown(raw: object) -> str:
    """A bad value as an error message shows it: its repr, cut to 80 characters (a field may be huge)."""
    text = repr(raw)
    return text if len(text) <= 80 else text[:77] + "..."


def parse_count(raw: object, field_name: str, *, minimum: int = 1) -> int:
    """A token count: an integer (written as one, or as a float with no fraction) >= `minimum`."""
    value: object = raw
    if isinstance(raw, str):
        text = raw.strip()
        try:
            value = int(text)
        except ValueError:
            try:
                value = float(text)
            except ValueError:
                raise FieldError(field_name, f"expected an integer >= {minimum}, got {_shown(raw)}") from None
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise FieldError(field_name, f"expected an integer >= {minimum}, got {_shown(raw)}")
    if isinstance(value, float):
        if not value.is_integer():
            raise FieldError(field_name, f"expected an integer >= {minimum}, got {_shown(raw)}")
        value = int(value)
    if value < minimum:
        raise FieldError(field_name, f"expected an integer >= {minimum}, got {_shown(raw)}")
    return value


def parse_seconds(raw: object, field_name: str, *, unit_s: float = 1.0) -> float:
    """A finite, non-negative number in a unit of `unit_s` seconds, returned in seconds."""
    value: object = raw
    if isinstance(raw, str):
        try:
            value = float(raw.strip())
        except ValueError:
            raise FieldError(field_name, f"expected a number, got {_shown(raw)}") from None
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise FieldError(field_name, f"expected a number, got {_shown(raw)}")
    if not math.isfinite(value) or value < 0:
        raise FieldError(field_name, f"expected a finite number >= 0, got {_shown(raw)}")
    return float(value) * unit_s


def parse_text(raw: object, field_name: str) -> str:
    value = str(raw).strip() if raw is not None else ""
    if not value:
        raise FieldError(field_name, "must not be empty")
    return value


def file_stem(path: Path) -> str:
    """The id prefix of a trace's requests: the file name without .gz and its format's extension."""
    name = path.name.removesuffix(".gz")
    for ext in (".csv", ".jsonl", ".json"):
        name = name.removesuffix(ext)
    return name

"""Reading ServeGen's workload model (alibaba/ServeGen, `data/<category>/<model>/`): per-client arrival
windows and per-client length distributions. The generator is in `servegen.py`.

A model folder holds, per client i:
- `chunk-<i>-trace.csv[.gz]`, no header: `window_start_s, rate (req/s), cv, pattern, param1, param2`,
  one row per 600 s window; `pattern` is the fitted inter-arrival distribution (`Gamma`: shape, scale;
  `Weibull`: shape, scale) and is empty in windows without traffic.
- `chunk-<i>-dataset.json[.gz]` (some clients have none): `{window_start_s: {field: "{value: prob, ...}"}}`,
  a probability mass function per field, one entry per 6 h. Language models have `input_tokens` and
  `output_tokens`; multimodal ones `text_tokens`, `<m>_count` and `<m>_tokens` for image, audio and
  video, and `output_tokens`.
"""

from __future__ import annotations

import csv
import json
import math
import re
import zlib
from bisect import bisect_right
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from opscale.traces.reading import TraceFormatError, open_text

WINDOW_S = 600.0
_CLIENT_FILE = re.compile(r"^chunk-(\d+)-(trace\.csv|dataset\.json)(\.gz)?$")
_PMF_SEPARATORS = re.compile(r"[:,]")


@dataclass(frozen=True, slots=True)
class ClientWindows:
    """One client's arrival model: a row per 600 s window, as parallel arrays."""

    client_id: int
    start_s: np.ndarray
    rate_rps: np.ndarray
    cv: np.ndarray
    pattern: tuple[str, ...]
    param1: np.ndarray
    param2: np.ndarray

    @property
    def end_s(self) -> float:
        return float(self.start_s[-1]) + WINDOW_S if len(self.start_s) else 0.0

    @property
    def mean_rate_rps(self) -> float:
        return float(self.rate_rps.mean()) if len(self.rate_rps) else 0.0


@dataclass(frozen=True, slots=True)
class Pmf:
    """A probability mass function over integer values, ready to sample by inverse CDF."""

    values: np.ndarray  # int64, ascending
    cdf: np.ndarray  # float64, last element 1

    def sample(self, rng: np.random.Generator, count: int) -> np.ndarray:
        index = np.searchsorted(self.cdf, rng.random(count), side="right")
        return self.values[np.minimum(index, len(self.values) - 1)]

    def mean(self) -> float:
        probabilities = np.diff(self.cdf, prepend=0.0)
        return float((self.values * probabilities).sum())


@dataclass(frozen=True, slots=True)
class ClientLengths:
    """One client's length distributions: per dataset window (start_s ascending), field -> Pmf."""

    start_s: tuple[float, ...]
    fields: tuple[dict[str, Pmf], ...]

    def at(self, t_s: float) -> dict[str, Pmf]:
        """The distributions in force at `t_s`: the latest window starting at or before it (the first
        window for earlier times)."""
        return self.fields[max(0, bisect_right(self.start_s, t_s) - 1)]


def client_files(model_dir: Path) -> tuple[dict[int, Path], dict[int, Path]]:
    """Trace and dataset file of each client id found in `model_dir`."""
    if not model_dir.is_dir():
        raise TraceFormatError(f"{model_dir}: not a folder; expected a ServeGen model folder with "
                               f"chunk-<i>-trace.csv.gz files")
    traces: dict[int, Path] = {}
    datasets: dict[int, Path] = {}
    for path in sorted(model_dir.iterdir()):
        match = _CLIENT_FILE.match(path.name)
        if match is None:
            continue
        target = traces if match.group(2) == "trace.csv" else datasets
        target[int(match.group(1))] = path
    if not traces:
        raise TraceFormatError(f"{model_dir}: no chunk-<i>-trace.csv[.gz] files; not a ServeGen model folder")
    return traces, datasets


def select_clients(traces: dict[int, Path], clients: Sequence[int] | None, model_dir: Path) -> list[int]:
    if clients is None:
        return sorted(traces)
    missing = sorted(set(clients) - set(traces))
    if missing:
        raise TraceFormatError(f"{model_dir}: no trace file for client(s) {missing}; it has clients "
                               f"{min(traces)}..{max(traces)} ({len(traces)} files)")
    return sorted(set(clients))


def read_client_windows(path: Path, client_id: int) -> ClientWindows:
    """Parse one client's trace file; a bad row raises TraceFormatError naming `path:line` and the field."""
    rows: list[tuple[float, float, float, str, float, float]] = []
    with open_text(path) as handle:
        try:
            for line, row in enumerate(csv.reader(handle), start=1):
                if not row or (len(row) == 1 and not row[0].strip()):
                    continue
                rows.append(_window_row(path, line, row, rows[-1][0] if rows else None))
        except UnicodeDecodeError as exc:
            raise TraceFormatError(f"{path}: not UTF-8 text ({exc.reason} at byte {exc.start})") from exc
        except zlib.error as exc:  # not an OSError: gzip's inflate failing mid-file
            raise TraceFormatError(f"{path}: corrupt or truncated gzip data: {exc}") from exc
        except (OSError, EOFError, csv.Error) as exc:
            raise TraceFormatError(f"{path}: cannot read: {exc}") from exc
    columns = list(zip(*rows, strict=True)) if rows else [()] * 6
    return ClientWindows(
        client_id=client_id,
        start_s=np.array(columns[0], dtype=float), rate_rps=np.array(columns[1], dtype=float),
        cv=np.array(columns[2], dtype=float), pattern=tuple(columns[3]),  # type: ignore[arg-type]
        param1=np.array(columns[4], dtype=float), param2=np.array(columns[5], dtype=float))


def _window_row(path: Path, line: int, row: list[str],
                previous_s: float | None) -> tuple[float, float, float, str, float, float]:
    where = f"{path}:{line}"
    if len(row) != 6:
        raise TraceFormatError(f"{where}: expected 6 columns (window_start_s, rate, cv, pattern, param1, "
                               f"param2), got {len(row)}")
    names = ("window_start_s", "rate", "cv", "pattern", "param1", "param2")
    numbers: list[float] = []
    for index in (0, 1, 2, 4, 5):
        raw = row[index].strip()
        try:
            value = float(raw) if raw else 0.0
        except ValueError:
            raise TraceFormatError(f"{where}: field {names[index]!r}: expected a number, got {raw!r}") from None
        if not math.isfinite(value) or (index < 3 and value < 0):
            raise TraceFormatError(f"{where}: field {names[index]!r}: expected a finite number"
                                   f"{' >= 0' if index < 3 else ''}, got {raw!r}")
        numbers.append(value)
    start_s, rate, cv, param1, param2 = numbers
    if previous_s is not None and start_s <= previous_s:
        raise TraceFormatError(f"{where}: field 'window_start_s': {start_s!r} is not after the previous "
                               f"window's {previous_s!r}")
    return start_s, rate, cv, row[3].strip(), param1, param2


def read_client_lengths(path: Path) -> ClientLengths:
    """Parse one client's dataset file. Windows whose PMFs are empty are left out (as ServeGen does);
    a malformed PMF raises TraceFormatError naming the file, window and field."""
    try:
        with open_text(path) as handle:
            document = json.load(handle)
    except UnicodeDecodeError as exc:
        raise TraceFormatError(f"{path}: not UTF-8 text ({exc.reason} at byte {exc.start})") from exc
    except json.JSONDecodeError as exc:
        raise TraceFormatError(f"{path}:{exc.lineno}: not valid JSON ({exc.msg})") from exc
    except RecursionError:
        raise TraceFormatError(f"{path}: not valid JSON (nested too deeply)") from None
    except ValueError as exc:  # an integer longer than Python converts (sys.get_int_max_str_digits)
        raise TraceFormatError(f"{path}: not valid JSON ({str(exc).split(';')[0]})") from None
    except zlib.error as exc:
        raise TraceFormatError(f"{path}: corrupt or truncated gzip data: {exc}") from exc
    except (OSError, EOFError) as exc:
        raise TraceFormatError(f"{path}: cannot read: {exc}") from exc
    if not isinstance(document, dict):
        raise TraceFormatError(f"{path}: expected a JSON object keyed by window start, got {type(document).__name__}")
    windows: list[tuple[float, dict[str, Pmf]]] = []
    for key, fields in document.items():
        try:
            start_s = float(key)
        except ValueError:
            start_s = math.nan
        if not math.isfinite(start_s):
            raise TraceFormatError(f"{path}: window key {key[:60]!r} is not a number of seconds")
        if not isinstance(fields, dict):
            raise TraceFormatError(f"{path}: window {key}: expected an object of field -> PMF")
        pmfs = {name: _pmf(text, f"{path}: window {key}: field {name!r}") for name, text in fields.items()}
        if all(p is not None for p in pmfs.values()) and pmfs:
            windows.append((start_s, {n: p for n, p in pmfs.items() if p is not None}))
    if not windows:
        raise TraceFormatError(f"{path}: no window with length distributions")
    windows.sort(key=lambda w: w[0])
    return ClientLengths(tuple(w[0] for w in windows), tuple(w[1] for w in windows))


def _pmf(text: object, where: str) -> Pmf | None:
    """Parse "{value: prob, ...}" (ServeGen writes Python dict literals); None for "{}"."""
    if not isinstance(text, str):
        raise TraceFormatError(f"{where}: expected a string like '{{12: 0.5, 40: 0.5}}', got {type(text).__name__}")
    body = text.strip().removeprefix("{").removesuffix("}").strip()
    if not body:
        return None
    try:
        pairs = np.array(_PMF_SEPARATORS.split(body), dtype=float).reshape(-1, 2)
    except ValueError:
        raise TraceFormatError(f"{where}: expected value: probability pairs, got {text[:60]!r}") from None
    values, probabilities = pairs[:, 0], pairs[:, 1]
    if not (np.all(np.isfinite(pairs)) and np.all(probabilities >= 0) and probabilities.sum() > 0
            and np.all(values == np.rint(values))):
        raise TraceFormatError(f"{where}: expected integer values with probabilities >= 0 summing above 0")
    order = np.argsort(values, kind="stable")
    cdf = np.cumsum(probabilities[order])
    return Pmf(values=values[order].astype(np.int64), cdf=cdf / cdf[-1])

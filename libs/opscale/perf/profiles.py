"""Measured operator profiles in vidur's format, read into typed, interpolable curves.

vidur (microsoft/vidur, `data/profiling`) measures each operator of a transformer layer on a GPU:
`compute/<sku>/<org>/<model>/mlp.csv` holds one row per (num_tokens, num_tensor_parallel_workers) with
`time_stats.<op>.{min,max,mean,median,std}` in milliseconds for the ops in `OPS`, and
`network/<sku>_<topology>/{all_reduce,send_recv}.csv` holds collective times per message size (bytes)
and worker count. This module reads them into `OperatorProfile` and `NetworkProfile` values: per op
(or collective) a sorted grid and its median times in seconds, with `Curve.at` interpolating in
log-log space between measured points and extrapolating linearly in tokens past the last one.

vidur's folder names are mapped to catalogue names (`SKU_NAMES`, `MODEL_NAMES`); a SKU or model the
catalogue does not hold keeps vidur's name. Profiles are read only from a directory the caller names:
the project ships none and never needs them to run. Bad input raises `ProfileError` naming the file,
the line and the column; an unknown op column is ignored.

Pure parsing and arithmetic: files are read only by the `read_*`/`load_*` functions, on request.
"""

from __future__ import annotations

import bisect
import csv
import dataclasses
import io
import math
from collections import defaultdict
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path

# Operators of vidur's compute profile. `emb` runs once per iteration; the others once per layer.
EMBEDDING_OP = "emb"
LAYER_OPS: tuple[str, ...] = (
    "input_layernorm", "attn_pre_proj", "attn_rope", "attn_post_proj", "post_attention_layernorm",
    "mlp_up_proj", "mlp_act", "mlp_down_proj", "add",
)
OPS: tuple[str, ...] = (EMBEDDING_OP, *LAYER_OPS)
# The weight-bearing GEMMs: a profile without them cannot stand for a layer.
GEMM_OPS: tuple[str, ...] = ("attn_pre_proj", "attn_post_proj", "mlp_up_proj", "mlp_down_proj")

# vidur's SKU folders -> opscale catalogue names (opscale/data/skus.yaml). vidur profiled the 80 GB
# SXM A100 and the H100 SXM (its device configs: a100 80 GB, h100 80 GB). Others keep their own name.
SKU_NAMES: Mapping[str, str] = {"a100": "A100-80GB", "h100": "H100-80GB"}
# vidur's model folders (Hugging Face ids) -> catalogue names (opscale/data/models.yaml).
MODEL_NAMES: Mapping[str, str] = {
    "meta-llama/Llama-2-7b-hf": "Llama-2-7B",
    "meta-llama/Llama-2-13b-hf": "Llama-2-13B",
    "meta-llama/Llama-2-70b-hf": "Llama-2-70B",
    "meta-llama/Meta-Llama-3-8B": "Llama-3-8B",
    "meta-llama/Meta-Llama-3-70B": "Llama-3-70B",
    "Qwen/Qwen2-7B": "Qwen2-7B",
}
COMPUTE_FILE = "mlp.csv"
# Collectives are measured with 2-byte (fp16) activations: a message of T tokens is T * hidden * 2 bytes.
PREFERRED_TOPOLOGY = "dgx"  # 8 GPUs on NVSwitch: the shape of cloud 8-GPU VMs

_MS = 1e-3


class ProfileError(ValueError):
    """A profile file or directory is malformed; the message names the file, line and column."""


class ProfileLookupError(KeyError):
    """No profile for the requested SKU, model, TP degree or collective; the message lists what exists."""

    def __str__(self) -> str:  # KeyError would print the message quoted
        return str(self.args[0]) if self.args else ""


@dataclass(frozen=True, slots=True)
class Curve:
    """Median time (seconds) of one operator or collective over a sorted grid of sizes.

    `at(x)` is exact at grid points; between them it is piecewise linear in log-log space (power-law
    segments, as kernel time vs tokens is); below the first point it holds the first value (the
    kernel's launch floor); past the last point it is linear in x (as a compute-bound kernel is):
    the straight line through the last point and the extrapolation anchor, the largest grid point at
    most half the last one. On a grid that doubles (..., 2048, 4096) that is the last two points; on a
    dense one (..., 4064, 4096) two points 1 % apart would turn measurement noise into the slope.

    Example: grid (1, 4, 16) with times (1, 2, 8) ms gives at(2) = 1.41 ms (sqrt of 1*2) and
    at(32) = 8 + (8-2)/(16-4) * 16 = 16 ms.
    """

    xs: tuple[float, ...]
    times_s: tuple[float, ...]
    _log_xs: tuple[float, ...] = dataclasses.field(init=False, repr=False, compare=False)
    _log_ts: tuple[float, ...] = dataclasses.field(init=False, repr=False, compare=False)
    _anchor: int = dataclasses.field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        if not self.xs or len(self.xs) != len(self.times_s):
            raise ValueError(f"a curve needs matching, non-empty xs and times, got {len(self.xs)} and "
                             f"{len(self.times_s)}")
        if any(b <= a for a, b in zip(self.xs, self.xs[1:], strict=False)) or self.xs[0] <= 0:
            raise ValueError(f"curve xs must be positive and strictly increasing, got {self.xs[:8]}...")
        if any(not math.isfinite(t) or t < 0 for t in self.times_s):
            raise ValueError("curve times must be finite and >= 0")
        object.__setattr__(self, "_log_xs", tuple(math.log(x) for x in self.xs))
        # A zero time has no logarithm: segments touching one interpolate linearly instead.
        object.__setattr__(self, "_log_ts", tuple(math.log(t) if t > 0 else -math.inf for t in self.times_s))
        n = len(self.xs)
        anchor = max(0, bisect.bisect_right(self.xs, self.xs[-1] / 2) - 1) if n > 1 else 0
        object.__setattr__(self, "_anchor", min(anchor, n - 2) if n > 1 else 0)

    def at(self, x: float) -> float:
        """Time in seconds at size `x` (tokens or bytes); 0 for x <= 0 (the operator does not run)."""
        if x <= 0:
            return 0.0
        xs, ts = self.xs, self.times_s
        if x <= xs[0]:
            return ts[0]
        n = len(xs)
        if x >= xs[-1]:
            if n == 1:
                return ts[0] * x / xs[0]
            a = self._anchor
            slope = (ts[-1] - ts[a]) / (xs[-1] - xs[a])
            if slope <= 0:
                # Noise at the top of the grid: keep growing in proportion rather than flatten out.
                return ts[-1] * x / xs[-1]
            return ts[-1] + slope * (x - xs[-1])
        i = bisect.bisect_right(xs, x)
        if xs[i - 1] == x:
            return ts[i - 1]
        lo_t, hi_t = ts[i - 1], ts[i]
        if lo_t <= 0 or hi_t <= 0:
            return lo_t + (hi_t - lo_t) * (x - xs[i - 1]) / (xs[i] - xs[i - 1])
        frac = (math.log(x) - self._log_xs[i - 1]) / (self._log_xs[i] - self._log_xs[i - 1])
        return math.exp(self._log_ts[i - 1] + frac * (self._log_ts[i] - self._log_ts[i - 1]))

    def without(self, drop: Callable[[int, float], bool]) -> Curve:
        """The curve without the grid points (index, x) for which `drop` is true."""
        kept = [(x, t) for i, (x, t) in enumerate(zip(self.xs, self.times_s, strict=True)) if not drop(i, x)]
        if not kept:
            raise ValueError("dropping every grid point leaves no curve")
        return Curve(tuple(x for x, _ in kept), tuple(t for _, t in kept))


@dataclass(frozen=True, slots=True)
class ModelShape:
    """The transformer shape a compute profile was measured for (vidur's shape columns)."""

    heads: int
    kv_heads: int
    hidden: int
    intermediate: int
    vocab: int
    gated_mlp: bool


@dataclass(frozen=True, slots=True)
class OperatorProfile:
    """Measured operator times of one model on one SKU, per tensor-parallel degree.

    `curves[tp][op]` is the op's `Curve` over num_tokens. `sku` and `model` are catalogue names where
    the catalogue knows them (`vidur_sku`, `vidur_model` keep the folder names); `source` is the file.
    """

    sku: str
    model: str
    curves: Mapping[int, Mapping[str, Curve]]
    shape: ModelShape | None = None
    vidur_sku: str = ""
    vidur_model: str = ""
    source: str = ""

    @property
    def tp_degrees(self) -> tuple[int, ...]:
        return tuple(sorted(self.curves))

    def ops(self, tp: int) -> tuple[str, ...]:
        """The ops measured at `tp`, in `OPS` order."""
        return tuple(op for op in OPS if op in self._at_tp(tp))

    def tokens(self, tp: int) -> tuple[int, ...]:
        """The token grid at `tp` (the union over its ops)."""
        grid: set[float] = set()
        for curve in self._at_tp(tp).values():
            grid.update(curve.xs)
        return tuple(int(x) for x in sorted(grid))

    def curve(self, op: str, tp: int) -> Curve:
        found = self._at_tp(tp).get(op)
        if found is None:
            raise ProfileLookupError(f"{self.sku}/{self.model} tp={tp} has no op {op!r}; "
                                     f"ops: {', '.join(self.ops(tp))}")
        return found

    def op_s(self, op: str, tokens: float, tp: int) -> float:
        """The op's median time in seconds for an iteration of `tokens` tokens at `tp`."""
        return self.curve(op, tp).at(tokens)

    def layer_s(self, tokens: float, tp: int) -> float:
        """One layer's profiled ops (every op but the embedding) over `tokens` tokens, seconds."""
        at_tp = self._at_tp(tp)
        return sum(at_tp[op].at(tokens) for op in LAYER_OPS if op in at_tp)

    def hold_out(self, every: int) -> tuple[OperatorProfile, Mapping[int, tuple[int, ...]]]:
        """Split for validation: a profile without every `every`-th token-grid point of each TP degree
        (the 2nd, 5th, 8th, ... for every=3; never the first or last, so predictions interpolate),
        and the held-out token counts per TP degree."""
        if every < 2:
            raise ValueError(f"every must be >= 2, got {every}")
        kept: dict[int, dict[str, Curve]] = {}
        held: dict[int, tuple[int, ...]] = {}
        for tp, by_op in self.curves.items():
            grid = self.tokens(tp)
            out = {x for i, x in enumerate(grid) if i % every == every - 2 and 0 < i < len(grid) - 1}
            kept[tp] = {op: c.without(lambda _i, x, out=out: int(x) in out) for op, c in by_op.items()}
            held[tp] = tuple(sorted(out))
        return dataclasses.replace(self, curves=kept), held

    def _at_tp(self, tp: int) -> Mapping[str, Curve]:
        found = self.curves.get(tp)
        if found is None:
            raise ProfileLookupError(f"{self.sku}/{self.model} has no profile at tp={tp}; measured tp: "
                                     f"{', '.join(map(str, self.tp_degrees))}")
        return found


@dataclass(frozen=True, slots=True)
class NetworkProfile:
    """Measured collective times on one SKU and topology.

    `curves[(collective, num_workers, devices_per_node)]` is a `Curve` over message size in bytes.
    """

    sku: str
    topology: str
    curves: Mapping[tuple[str, int, int], Curve]
    vidur_sku: str = ""
    source: str = ""

    def has(self, collective: str, workers: int, devices_per_node: int | None = None) -> bool:
        return (collective, workers, workers if devices_per_node is None else devices_per_node) in self.curves

    def time_s(self, collective: str, size_bytes: float, workers: int,
               devices_per_node: int | None = None) -> float:
        """Median time of one `collective` of `size_bytes` over `workers` GPUs, `devices_per_node` of
        them per node (default: all on one node)."""
        key = (collective, workers, workers if devices_per_node is None else devices_per_node)
        found = self.curves.get(key)
        if found is None:
            known = ", ".join(f"{c} workers={w} devices_per_node={d}" for c, w, d in sorted(self.curves))
            raise ProfileLookupError(f"{self.sku}_{self.topology} has no {key[0]} with workers={key[1]}, "
                                     f"devices_per_node={key[2]}; measured: {known}")
        return found.at(size_bytes)


@dataclass(frozen=True, slots=True)
class ProfileSet:
    """Every profile found under one directory. Lookups ignore case."""

    compute: tuple[OperatorProfile, ...]
    network: tuple[NetworkProfile, ...]

    @property
    def skus(self) -> tuple[str, ...]:
        return tuple(dict.fromkeys(p.sku for p in (*self.compute, *self.network)))

    def find(self, sku: str, model: str) -> OperatorProfile | None:
        """The compute profile of `model` on `sku`, or None."""
        key = (sku.casefold(), model.casefold())
        for profile in self.compute:
            if (profile.sku.casefold(), profile.model.casefold()) == key:
                return profile
        return None

    def compute_for(self, sku: str, model: str) -> OperatorProfile:
        found = self.find(sku, model)
        if found is None:
            known = ", ".join(f"{p.sku}/{p.model}" for p in self.compute) or "none"
            raise ProfileLookupError(f"no compute profile for model {model!r} on {sku!r}; profiled: {known}")
        return found

    def network_for(self, sku: str, topology: str | None = None) -> NetworkProfile | None:
        """The SKU's network profile of `topology`; when None, `PREFERRED_TOPOLOGY` if measured, else
        the first in name order. None when the SKU has no network profile (of that topology)."""
        mine = sorted((n for n in self.network if n.sku.casefold() == sku.casefold()), key=lambda n: n.topology)
        if topology is not None:
            return next((n for n in mine if n.topology == topology), None)
        return next((n for n in mine if n.topology == PREFERRED_TOPOLOGY), mine[0] if mine else None)

    def for_sku(self, sku: str) -> tuple[OperatorProfile, ...]:
        return tuple(p for p in self.compute if p.sku.casefold() == sku.casefold())


# --- reading ------------------------------------------------------------------------------------------

def catalogue_sku_name(vidur_sku: str) -> str:
    return SKU_NAMES.get(vidur_sku.casefold(), vidur_sku)


def catalogue_model_name(vidur_model: str) -> str:
    return MODEL_NAMES.get(vidur_model, vidur_model)


def load_profiles(root: str | Path) -> ProfileSet:
    """Read every compute and network profile under `root` (a folder holding `compute/` and/or
    `network/`, laid out as vidur's `data/profiling`). Raises ProfileError on a bad file or layout."""
    base = Path(root)
    if not base.is_dir():
        raise ProfileError(f"{base}: not a directory")
    compute_dir, network_dir = base / "compute", base / "network"
    if not compute_dir.is_dir() and not network_dir.is_dir():
        raise ProfileError(f"{base}: holds neither compute/ nor network/ (expected vidur's profiling layout)")
    compute: list[OperatorProfile] = []
    if compute_dir.is_dir():
        for path in sorted(compute_dir.rglob(COMPUTE_FILE)):
            parts = path.relative_to(compute_dir).parts
            if len(parts) < 3:
                raise ProfileError(f"{path}: expected compute/<sku>/<org>/<model>/{COMPUTE_FILE}")
            compute.append(read_compute_profile(path, parts[0], "/".join(parts[1:-1])))
    network: list[NetworkProfile] = []
    if network_dir.is_dir():
        for folder in sorted(p for p in network_dir.iterdir() if p.is_dir()):
            files = sorted(folder.glob("*.csv"))
            if not files:
                continue
            vidur_sku, sep, topology = folder.name.partition("_")
            if not sep or not vidur_sku or not topology:
                raise ProfileError(f"{folder}: expected a folder named <sku>_<topology>, e.g. a100_dgx")
            network.append(read_network_profile(files, vidur_sku, topology))
    return ProfileSet(compute=tuple(compute), network=tuple(network))


def read_compute_profile(path: str | Path, vidur_sku: str, vidur_model: str) -> OperatorProfile:
    """Read one vidur `mlp.csv`; the SKU and model names are mapped to catalogue names."""
    return parse_compute_csv(_read(Path(path)), str(path), vidur_sku, vidur_model)


def parse_compute_csv(text: str, source: str, vidur_sku: str, vidur_model: str) -> OperatorProfile:
    """Parse the text of a vidur compute profile (see the module docstring); `source` names it in errors."""
    header, rows = _table(text, source)
    col = {name: i for i, name in enumerate(header)}
    tokens_col = _require(col, "num_tokens", source)
    tp_col = _require(col, "num_tensor_parallel_workers", source)
    op_cols: dict[str, int] = {}
    for op in OPS:
        prefix = f"time_stats.{op}."
        if any(name.startswith(prefix) for name in header):
            # An op with statistics but no median is a damaged file, not an absent op.
            op_cols[op] = _require(col, f"{prefix}median", source)
    if not op_cols:
        raise ProfileError(f"{source}:1: no time_stats.<op>.median column for any known op "
                           f"({', '.join(OPS)})")
    shape_cols = ("n_head", "n_kv_head", "n_embd", "n_expanded_embd", "vocab_size", "use_gated_mlp")
    has_shape = all(name in col for name in shape_cols)

    samples: dict[tuple[int, int], dict[str, list[float]]] = defaultdict(lambda: defaultdict(list))
    shape: ModelShape | None = None
    for line, row in rows:
        tokens = _positive_int(row, tokens_col, "num_tokens", source, line)
        tp = _positive_int(row, tp_col, "num_tensor_parallel_workers", source, line)
        for op, i in op_cols.items():
            samples[(tp, tokens)][op].append(_time_ms(row, i, header[i], source, line) * _MS)
        if has_shape:
            row_shape = ModelShape(
                heads=_positive_int(row, col["n_head"], "n_head", source, line),
                kv_heads=_positive_int(row, col["n_kv_head"], "n_kv_head", source, line),
                hidden=_positive_int(row, col["n_embd"], "n_embd", source, line),
                intermediate=_positive_int(row, col["n_expanded_embd"], "n_expanded_embd", source, line),
                vocab=_positive_int(row, col["vocab_size"], "vocab_size", source, line),
                gated_mlp=_bool(row, col["use_gated_mlp"], "use_gated_mlp", source, line),
            )
            if shape is None:
                shape = row_shape
            elif row_shape != shape:
                raise ProfileError(f"{source}:{line}: model shape {row_shape} differs from the first row's "
                                   f"{shape}: one file must hold one model")

    curves: dict[int, dict[str, Curve]] = defaultdict(dict)
    for tp in sorted({tp for tp, _ in samples}):
        grid = sorted(tokens for t, tokens in samples if t == tp)
        for op in op_cols:
            # Repeated rows of one (tokens, tp) are repeated measurements: average their medians.
            times = tuple(sum(v) / len(v) for v in (samples[(tp, n)][op] for n in grid))
            curves[tp][op] = Curve(tuple(float(n) for n in grid), times)
    return OperatorProfile(
        sku=catalogue_sku_name(vidur_sku), model=catalogue_model_name(vidur_model),
        curves={tp: dict(by_op) for tp, by_op in curves.items()}, shape=shape,
        vidur_sku=vidur_sku, vidur_model=vidur_model, source=source)


def read_network_profile(paths: Iterable[str | Path], vidur_sku: str, topology: str) -> NetworkProfile:
    """Read the collective files of one `<sku>_<topology>` folder into one NetworkProfile."""
    curves: dict[tuple[str, int, int], Curve] = {}
    sources: list[str] = []
    for path in paths:
        parsed = parse_network_csv(_read(Path(path)), str(path), Path(path).stem)
        for key, curve in parsed.items():
            if key in curves:
                raise ProfileError(f"{path}: {key[0]} workers={key[1]} devices_per_node={key[2]} is also "
                                   f"measured in another file of {Path(path).parent}")
            curves[key] = curve
        sources.append(str(path))
    return NetworkProfile(sku=catalogue_sku_name(vidur_sku), topology=topology, curves=curves,
                          vidur_sku=vidur_sku, source=", ".join(sources))


def parse_network_csv(text: str, source: str, default_collective: str) -> dict[tuple[str, int, int], Curve]:
    """Parse a vidur collective file: rows of (time_stats.<collective>.median ms, num_workers, size
    bytes, collective, devices_per_node). `default_collective` (the file's stem) names the collective
    when the file has no `collective` column."""
    header, rows = _table(text, source)
    col = {name: i for i, name in enumerate(header)}
    workers_col = _require(col, "num_workers", source)
    size_col = _require(col, "size", source)
    collective_col = col.get("collective")
    devices_col = col.get("devices_per_node")
    samples: dict[tuple[str, int, int], dict[int, list[float]]] = defaultdict(lambda: defaultdict(list))
    for line, row in rows:
        collective = default_collective
        if collective_col is not None:
            collective = _cell(row, collective_col, "collective", source, line).strip()
            if not collective:
                raise ProfileError(f"{source}:{line}: column 'collective': empty value")
        time_name = f"time_stats.{collective}.median"
        time_col = col.get(time_name)
        if time_col is None:
            raise ProfileError(f"{source}:1: missing column {time_name!r} (the time of collective "
                               f"{collective!r} named on line {line})")
        workers = _positive_int(row, workers_col, "num_workers", source, line)
        devices = workers if devices_col is None else _positive_int(row, devices_col, "devices_per_node",
                                                                    source, line)
        size = _positive_int(row, size_col, "size", source, line)
        samples[(collective, workers, devices)][size].append(_time_ms(row, time_col, time_name, source, line) * _MS)
    curves: dict[tuple[str, int, int], Curve] = {}
    for key in sorted(samples):
        by_size = samples[key]
        grid = sorted(by_size)
        curves[key] = Curve(tuple(float(s) for s in grid), tuple(sum(by_size[s]) / len(by_size[s]) for s in grid))
    return curves


# --- cells --------------------------------------------------------------------------------------------

def _read(path: Path) -> str:
    try:
        return path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ProfileError(f"{path}: cannot read: {exc.strerror or exc}") from exc
    except UnicodeDecodeError as exc:
        raise ProfileError(f"{path}: not UTF-8 text: {exc.reason}") from exc


def _table(text: str, source: str) -> tuple[list[str], list[tuple[int, list[str]]]]:
    """Header and (line number, cells) of each non-blank data row."""
    reader = csv.reader(io.StringIO(text))
    try:
        header = next(reader, None)
        if header is None or not any(cell.strip() for cell in header):
            raise ProfileError(f"{source}: empty file (expected a CSV header row)")
        header = [cell.strip() for cell in header]
        rows: list[tuple[int, list[str]]] = []
        for row in reader:
            if not any(cell.strip() for cell in row):
                continue
            rows.append((reader.line_num, row))
    except csv.Error as exc:
        raise ProfileError(f"{source}:{reader.line_num}: malformed CSV: {exc}") from exc
    if not rows:
        raise ProfileError(f"{source}: no data rows after the header")
    return header, rows


def _require(col: Mapping[str, int], name: str, source: str) -> int:
    found = col.get(name)
    if found is None:
        raise ProfileError(f"{source}:1: missing column {name!r}")
    return found


def _cell(row: list[str], i: int, name: str, source: str, line: int) -> str:
    if i >= len(row):
        raise ProfileError(f"{source}:{line}: column {name!r}: missing value (the row has {len(row)} cells)")
    return row[i]


def _number(row: list[str], i: int, name: str, source: str, line: int) -> float:
    raw = _cell(row, i, name, source, line)
    try:
        value = float(raw)
    except ValueError:
        raise ProfileError(f"{source}:{line}: column {name!r}: expected a number, got {raw!r}") from None
    if not math.isfinite(value):
        raise ProfileError(f"{source}:{line}: column {name!r}: expected a finite number, got {raw!r}")
    return value


def _time_ms(row: list[str], i: int, name: str, source: str, line: int) -> float:
    value = _number(row, i, name, source, line)
    if value < 0:
        raise ProfileError(f"{source}:{line}: column {name!r}: a time cannot be negative, got {row[i]!r}")
    return value


def _positive_int(row: list[str], i: int, name: str, source: str, line: int) -> int:
    value = _number(row, i, name, source, line)
    if value < 1 or value != int(value):
        raise ProfileError(f"{source}:{line}: column {name!r}: expected a positive integer, got {row[i]!r}")
    return int(value)


def _bool(row: list[str], i: int, name: str, source: str, line: int) -> bool:
    raw = _cell(row, i, name, source, line).strip().casefold()
    if raw in ("true", "1"):
        return True
    if raw in ("false", "0"):
        return False
    raise ProfileError(f"{source}:{line}: column {name!r}: expected True or False, got {row[i]!r}")

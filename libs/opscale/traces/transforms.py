"""Lazy, composable transforms over a stream of requests sorted by arrival; each returns a stream
sorted by arrival.

Memory bounds (n = requests in the stream):
- `time_window`, `compress_time`, `thin`, `assign_by_weights`, `assign_by_rules`: one request at a time.
- `scale_rate` with factor > 1: the requests that arrive within `spread_s` of each other (the copies
  are the same stream shifted by at most `spread_s`, merged through `itertools.tee`).
- `shift_regions`: one request per sub-stream; it re-reads its source (a factory giving a fresh
  iterator, such as re-opening a file) 2 times per shifted region + 1, and k-way merges the passes.

Randomness comes only from numpy Generators seeded by the caller, so a pipeline run twice gives the
same requests, ids included.
"""

from __future__ import annotations

import heapq
import itertools
import math
import operator
import re
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Literal

import numpy as np

from opscale.model import Request

# Random numbers drawn per numpy call: amortises numpy's overhead with flat memory.
_BLOCK = 4096

LabelField = Literal["model", "tier", "region"]
LABEL_FIELDS: tuple[LabelField, ...] = ("model", "tier", "region")


def time_window(requests: Iterable[Request], start_s: float, end_s: float, *,
                rebase: bool = False) -> Iterator[Request]:
    """The requests arriving in [start_s, end_s); `rebase` moves start_s to 0. Stops reading at end_s."""
    if not end_s > start_s:
        raise ValueError(f"window end {end_s!r} s must be after its start {start_s!r} s")
    offset_s = start_s if rebase else 0.0
    for r in requests:
        if r.arrival_s >= end_s:
            return
        if r.arrival_s >= start_s:
            yield replace(r, arrival_s=r.arrival_s - offset_s) if offset_s else r


def compress_time(requests: Iterable[Request], factor: float) -> Iterator[Request]:
    """Play the trace `factor` times faster: every arrival time is divided by `factor` (spans shrink by
    it, rates grow by it; token counts are unchanged)."""
    if not (factor > 0 and math.isfinite(factor)):
        raise ValueError(f"time compression factor must be a positive number, got {factor!r}")
    for r in requests:
        yield replace(r, arrival_s=r.arrival_s / factor)


def thin(requests: Iterable[Request], keep: float, seed: int) -> Iterator[Request]:
    """Keep each request independently with probability `keep` (seeded Bernoulli thinning)."""
    if not 0 <= keep <= 1:
        raise ValueError(f"keep probability must be in [0, 1], got {keep!r}")
    rng = np.random.default_rng(seed)
    draws = iter(())
    for r in requests:
        u = next(draws, None)
        if u is None:
            draws = iter(rng.random(_BLOCK).tolist())
            u = next(draws)
        if u < keep:
            yield r


def scale_rate(requests: Iterable[Request], factor: float, seed: int, *,
               spread_s: float = 60.0) -> Iterator[Request]:
    """Multiply the arrival rate by `factor` and keep the trace's shape.

    factor < 1 thins (each request kept with probability `factor`). factor > 1 superposes copies of the
    stream: floor(factor) whole copies and one thinned by the fraction; copy 0 is the stream itself and
    copy j >= 1 is shifted later by a seeded offset in (0, spread_s) and its ids get the suffix `~j`,
    so ids stay unique. The copies are k-way merged, so the result stays sorted.
    """
    if not (factor > 0 and math.isfinite(factor)):
        raise ValueError(f"rate scale factor must be a positive number, got {factor!r}")
    if not spread_s > 0:
        raise ValueError(f"spread_s must be positive, got {spread_s!r}")
    if factor <= 1:
        return thin(requests, factor, seed) if factor < 1 else iter(requests)
    whole = math.floor(factor)
    fraction = factor - whole
    copies = whole + (1 if fraction > 1e-12 else 0)
    rng = np.random.default_rng(np.random.SeedSequence(entropy=seed, spawn_key=(1,)))
    offsets_s = [0.0, *(rng.uniform(0.0, spread_s) for _ in range(copies - 1))]
    sources = itertools.tee(requests, copies)
    streams: list[Iterator[Request]] = []
    for j, (source, offset_s) in enumerate(zip(sources, offsets_s, strict=True)):
        stream: Iterator[Request] = _shifted_copy(source, j, offset_s) if j else iter(source)
        if j == copies - 1 and fraction > 1e-12:
            stream = thin(stream, fraction, seed + j)
        streams.append(stream)
    return heapq.merge(*streams, key=_arrival)


def _shifted_copy(requests: Iterable[Request], copy: int, offset_s: float) -> Iterator[Request]:
    for r in requests:
        yield replace(r, request_id=f"{r.request_id}~{copy}", arrival_s=r.arrival_s + offset_s)


def assign_by_weights(requests: Iterable[Request], field: LabelField, weights: Mapping[str, float],
                      seed: int) -> Iterator[Request]:
    """Give each request a `field` (model, tier or region) drawn from `weights` (relative, > 0)."""
    _check_field(field)
    names = list(weights)
    if not names:
        raise ValueError(f"weights for {field} must name at least one value")
    probabilities = np.array([float(weights[n]) for n in names])
    if not np.all(np.isfinite(probabilities)) or np.any(probabilities <= 0):
        raise ValueError(f"weights for {field} must be positive numbers, got {dict(weights)}")
    probabilities /= probabilities.sum()
    rng = np.random.default_rng(seed)
    picks: Iterator[int] = iter(())
    for r in requests:
        k = next(picks, None)
        if k is None:
            picks = iter(rng.choice(len(names), size=_BLOCK, p=probabilities).tolist())
            k = next(picks)
        yield replace(r, **{field: names[k]})


@dataclass(frozen=True, slots=True)
class AssignRule:
    """`field = value` for the requests whose `metric` compares true with `threshold`.

    Example: AssignRule("tier", "batch", "prompt_tokens", ">", 4096) sends long prompts to the batch tier.
    """

    field: LabelField
    value: str
    metric: Literal["prompt_tokens", "output_tokens", "total_tokens"]
    op: Literal["<", "<=", ">", ">=", "=="]
    threshold: float

    def matches(self, request: Request) -> bool:
        return _OPS[self.op](getattr(request, self.metric), self.threshold)


_OPS: dict[str, Callable[[float, float], bool]] = {
    "<": operator.lt, "<=": operator.le, ">": operator.gt, ">=": operator.ge, "==": operator.eq}
_RULE = re.compile(r"^\s*(model|tier|region)\s*=\s*([^\s=]+)\s+if\s+(prompt_tokens|output_tokens|total_tokens)"
                   r"\s*(<=|>=|==|<|>)\s*([0-9.eE+]+)\s*$")


def parse_rule(text: str) -> AssignRule:
    """`FIELD=VALUE if METRIC OP NUMBER`, e.g. `tier=batch if prompt_tokens>4096`."""
    match = _RULE.match(text)
    if match is None:
        raise ValueError(f"cannot read rule {text!r}; expected FIELD=VALUE if METRIC OP NUMBER with FIELD one "
                         f"of model, tier, region and METRIC one of prompt_tokens, output_tokens, total_tokens "
                         f"(e.g. 'tier=batch if prompt_tokens>4096')")
    field, value, metric, op, number = match.groups()
    try:
        threshold = float(number)
    except ValueError:
        raise ValueError(f"rule {text!r}: {number!r} is not a number") from None
    return AssignRule(field, value, metric, op, threshold)  # type: ignore[arg-type]


def assign_by_rules(requests: Iterable[Request], rules: Sequence[AssignRule]) -> Iterator[Request]:
    """For each field, the first rule naming it that matches sets it; requests no rule matches keep theirs."""
    for rule in rules:
        _check_field(rule.field)
    for r in requests:
        changes: dict[str, str] = {}
        for rule in rules:
            if rule.field not in changes and rule.matches(r):
                changes[rule.field] = rule.value
        yield replace(r, **changes) if changes else r


def shift_regions(source: Callable[[], Iterable[Request]], offsets_s: Mapping[str, float],
                  period_s: float) -> Iterator[Request]:
    """Shift each region's requests by its offset modulo `period_s`, as if one diurnal trace ran in
    regions whose days start at different times: a request of region r at t in [0, period_s) moves to
    (t + offsets_s[r]) mod period_s. Regions not in `offsets_s` stay put.

    `source` must give the same sorted stream each time it is called (e.g. re-read a file through
    seeded transforms). A shifted region is two sorted runs, the tail that wraps to the start and the
    head that moves later; each run is one pass over the source, and all runs are k-way merged.
    A request at or after `period_s` is an error: the trace is longer than the period being rotated.
    """
    if not (period_s > 0 and math.isfinite(period_s)):
        raise ValueError(f"period_s must be a positive number, got {period_s!r}")
    shifts = {region: float(o) % period_s for region, o in offsets_s.items()}
    shifted = {region for region, o in shifts.items() if o > 0}
    runs: list[Iterator[Request]] = [_unshifted(source(), shifted, period_s)]
    for region in sorted(shifted):
        o = shifts[region]
        runs.append(_run(source(), region, period_s - o, period_s, o - period_s, period_s))  # the wrapped tail
        runs.append(_run(source(), region, 0.0, period_s - o, o, period_s))  # the head, moved later
    return heapq.merge(*runs, key=_arrival)


def _unshifted(requests: Iterable[Request], shifted: set[str], period_s: float) -> Iterator[Request]:
    for r in requests:
        _check_in_period(r, period_s)
        if r.region not in shifted:
            yield r


def _run(requests: Iterable[Request], region: str, lo_s: float, hi_s: float, move_s: float,
         period_s: float) -> Iterator[Request]:
    for r in requests:
        _check_in_period(r, period_s)
        if r.arrival_s >= hi_s:
            return  # sorted: nothing later falls in this run (the unshifted pass checks the rest)
        if r.region == region and r.arrival_s >= lo_s:
            yield replace(r, arrival_s=max(0.0, r.arrival_s + move_s))


def _check_in_period(r: Request, period_s: float) -> None:
    if r.arrival_s >= period_s:
        raise ValueError(f"request {r.request_id} arrives at {r.arrival_s!r} s, not within the period "
                         f"[0, {period_s!r}) s being rotated; window the trace to one period first")


def _check_field(field: str) -> None:
    if field not in LABEL_FIELDS:
        raise ValueError(f"cannot assign {field!r}; assignable fields: {', '.join(LABEL_FIELDS)}")


def _arrival(r: Request) -> float:
    return r.arrival_s

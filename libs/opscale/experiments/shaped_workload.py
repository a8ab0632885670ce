"""Multi-region traffic with a real production shape, scaled to a simulated fleet.

Each stream (one model in one region) is a Poisson process whose rate follows a *shape*: a series of
relative rates (mean 1) on 600 s windows of traffic time, multiplied by the stream's `mean_rps`:
- from real data: the summed per-client rates of a ServeGen model folder (14 days of Alibaba
  production traffic, with its diurnal and weekly cycles), `servegen_rate_series` normalised to mean 1;
- otherwise (the folder is absent) a synthetic shape with the same kind of cycles: a daily sinusoid
  peaking at `peak_hour` and quieter weekends (`fallback` below).

Simulated time maps to traffic time as  tau = shape_start_s + t * compress + region_offset_s, so a
compressed run plays `compress` days of the shape per simulated day and regions see the same traffic
shifted by their time zone. Within each simulated window of 600 / compress seconds the rate is taken
at the window's midpoint (linear between shape points) and the arrivals are a Poisson count placed
uniformly, so the expected count is exact.

Token lengths are drawn as (prompt, output) pairs from a real trace file (e.g. Azure LLM 2023, Mooncake;
pairs keep their correlation) or, when that file is absent, from lognormal fallbacks shaped like Azure's
conversation trace; both are clipped to the stream's limits (a model's context window).

Everything is seeded: each (stream, window) draws from its own SeedSequence, so the same config gives the
same requests, ids included, whichever other streams are configured. Which source each stream used is
reported by `resolve_sources`, so a result says whether it ran on real data or the fallback.
"""

from __future__ import annotations

import functools
import heapq
import math
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Self

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, model_validator

from opscale.model import Request
from opscale.traces.synthetic import LengthDistribution, sample_lengths

SHAPE_STEP_S = 600.0  # ServeGen's window
_DAY_S = 86_400.0
_WEEK_S = 7 * _DAY_S


class FallbackShape(BaseModel):
    """The synthetic shape used when a stream's ServeGen folder is absent: a daily cycle and a weekly one."""

    model_config = ConfigDict(frozen=True, extra="forbid")
    diurnal_amplitude: float = Field(0.5, ge=0, lt=1, description="Relative swing of the daily sinusoid")
    peak_hour: float = Field(14.0, ge=0, lt=24, description="Hour of the day (traffic time) of the daily peak")
    weekend_factor: float = Field(0.7, gt=0, le=1, description="Weekend traffic relative to weekdays "
                                  "(days 5 and 6 of each week of traffic time)")
    span_days: int = Field(14, ge=1, description="Length of the shape series, days (ServeGen's is 14)")
    prompt_tokens: LengthDistribution = Field(
        default_factory=lambda: LengthDistribution(median_tokens=1020, sigma=1.0, max_tokens=8192),
        description="Prompt lengths when the lengths file is absent (median of Azure 2023 conversation)")
    output_tokens: LengthDistribution = Field(
        default_factory=lambda: LengthDistribution(median_tokens=129, sigma=1.0, max_tokens=2048),
        description="Output lengths when the lengths file is absent (median of Azure 2023 conversation)")


class ShapedStream(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")
    model: str = Field(min_length=1, description="Model requested")
    mean_rps: float = Field(gt=0, description="Mean arrival rate per region over the whole shape, req/s of "
                            "simulated time")
    rate_shape: str | None = Field(None, description="ServeGen model folder, relative to data_dir (e.g. "
                                   "servegen/language/m-large); None or absent: the fallback shape")
    lengths: str | None = Field(None, description="Trace file whose (prompt, output) token pairs are sampled, "
                                "relative to data_dir; None or absent: the fallback lognormals")
    max_prompt_tokens: int = Field(8192, ge=1, description="Prompt lengths are clipped to this")
    max_output_tokens: int = Field(2048, ge=1, description="Output lengths are clipped to this")


class ShapedWorkloadConfig(BaseModel):
    """Streams of every model in every region, shaped by real (or fallback) traffic."""

    model_config = ConfigDict(frozen=True, extra="forbid")
    seed: int = Field(0, description="Seed of every random draw")
    start_s: float = Field(0.0, ge=0, description="First possible arrival, simulated seconds")
    duration_s: float = Field(gt=0, description="Arrivals are before start_s + duration_s, simulated seconds")
    compress: float = Field(1.0, gt=0, description="Seconds of traffic time per simulated second (12: a day "
                            "of traffic plays in 2 simulated hours)")
    shape_start_s: float = Field(0.0, ge=0, description="Traffic time at simulated time 0")
    data_dir: Path | None = Field(None, description="Root of the real data (the layout of shared/data); "
                                  "relative paths are read from the working directory. None: fallback only")
    streams: tuple[ShapedStream, ...] = Field(min_length=1)
    region_offsets_s: dict[str, float] = Field(min_length=1, description="Regions, each with its clock offset "
                                               "in traffic seconds (its time zone)")
    tier_weights: dict[str, float] = Field(
        default_factory=lambda: {"interactive": 0.8, "batch": 0.2},
        description="Relative weight of each tier; each request draws its tier from these")
    fallback: FallbackShape = Field(default_factory=FallbackShape)

    @model_validator(mode="after")
    def _check(self) -> Self:
        models = [s.model for s in self.streams]
        twice = sorted({m for m in models if models.count(m) > 1})
        if twice:
            raise ValueError(f"streams: models {twice} appear more than once")
        bad = {t: w for t, w in self.tier_weights.items() if not (w > 0 and math.isfinite(w))}
        if not self.tier_weights or bad:
            raise ValueError(f"tier_weights must name at least one tier, each with a positive weight; got "
                             f"{self.tier_weights}")
        return self

    def regions(self) -> list[str]:
        return sorted(self.region_offsets_s)


@dataclass(frozen=True, slots=True)
class StreamSources:
    """What one stream draws from: its shape (mean 1 per point) and its length pairs (None: fallback)."""

    shape: np.ndarray
    shape_source: str
    prompts: np.ndarray | None
    outputs: np.ndarray | None
    lengths_source: str


def resolve_sources(config: ShapedWorkloadConfig) -> dict[str, StreamSources]:
    """Per model, the shape and lengths it will use: real files where present under data_dir, fallbacks
    otherwise. The `*_source` strings name the relative file or say 'synthetic fallback'."""
    return {s.model: _sources(config, s) for s in config.streams}


def describe_sources(config: ShapedWorkloadConfig) -> dict[str, dict[str, str]]:
    """Per model, which shape and lengths it draws from (real files present under data_dir, or the
    fallbacks), as plain text for reports; reads no data."""
    return {s.model: {"rate_shape": f"ServeGen {s.rate_shape}" if _shape_dir(config, s) else _FALLBACK_SHAPE,
                      "lengths": s.lengths if _lengths_file(config, s) else _fallback_lengths(config)}
            for s in config.streams}


def generate_shaped_requests(config: ShapedWorkloadConfig) -> Iterator[Request]:
    """Every request, sorted by arrival, lazily (ties keep the streams' order)."""
    sources = resolve_sources(config)
    streams = []
    index = 0
    for spec in config.streams:
        for region in config.regions():
            streams.append(_stream(config, index, spec, region, sources[spec.model]))
            index += 1
    return heapq.merge(*streams, key=_arrival)


def shape_rate(shape: np.ndarray, tau_s: float) -> float:
    """The relative rate at traffic time `tau_s`: linear between window midpoints, periodic in the series."""
    n = len(shape)
    x = (tau_s / SHAPE_STEP_S - 0.5) % n
    lo = int(math.floor(x))
    frac = x - lo
    return float(shape[lo] * (1 - frac) + shape[(lo + 1) % n] * frac)


def fallback_shape(fallback: FallbackShape) -> np.ndarray:
    """The synthetic shape on 600 s windows, mean 1: daily sinusoid times a weekend dip."""
    tau = (np.arange(int(fallback.span_days * _DAY_S / SHAPE_STEP_S)) + 0.5) * SHAPE_STEP_S
    hour = (tau % _DAY_S) / 3600.0
    daily = 1.0 + fallback.diurnal_amplitude * np.cos(2 * math.pi * (hour - fallback.peak_hour) / 24.0)
    weekday = (tau % _WEEK_S) // _DAY_S
    weekly = np.where(weekday >= 5, fallback.weekend_factor, 1.0)
    shape = daily * weekly
    return shape / shape.mean()


_FALLBACK_SHAPE = "synthetic fallback (daily sinusoid, weekend dip)"


def _fallback_lengths(config: ShapedWorkloadConfig) -> str:
    return (f"synthetic fallback (lognormal, medians {config.fallback.prompt_tokens.median_tokens:g} / "
            f"{config.fallback.output_tokens.median_tokens:g} tokens)")


def _shape_dir(config: ShapedWorkloadConfig, spec: ShapedStream) -> Path | None:
    root = config.data_dir
    if spec.rate_shape is None or root is None or not (root / spec.rate_shape).is_dir():
        return None
    return root / spec.rate_shape


def _lengths_file(config: ShapedWorkloadConfig, spec: ShapedStream) -> Path | None:
    root = config.data_dir
    if spec.lengths is None or root is None or not (root / spec.lengths).is_file():
        return None
    return root / spec.lengths


def _sources(config: ShapedWorkloadConfig, spec: ShapedStream) -> StreamSources:
    shape, shape_source = fallback_shape(config.fallback), _FALLBACK_SHAPE
    folder = _shape_dir(config, spec)
    if folder is not None:
        series = np.asarray(_servegen_series(folder), dtype=float)
        if not (len(series) and series.mean() > 0):
            raise ValueError(f"shaped.streams: {spec.model}: rate_shape {spec.rate_shape} has no traffic")
        shape, shape_source = series / series.mean(), f"ServeGen {spec.rate_shape}"
    prompts = outputs = None
    lengths_source = _fallback_lengths(config)
    path = _lengths_file(config, spec)
    if path is not None:
        prompts, outputs = length_pairs(path)
        lengths_source = spec.lengths or ""
    return StreamSources(shape, shape_source, prompts, outputs, lengths_source)


# Reading a ServeGen folder takes seconds (a hundred gzip'd client files); an experiment's variants run
# one after another in the same process and would each read the same folders. The cache holds a tuple of
# floats per folder (2,016 for 14 days), keyed by the resolved path.
@functools.lru_cache(maxsize=8)
def _servegen_series(folder: Path) -> tuple[float, ...]:
    from opscale.traces import servegen_rate_series

    return tuple(servegen_rate_series(folder, SHAPE_STEP_S))


# A lengths file is read once per process: the HeteroScale studies sample the same file for every probe.
@functools.lru_cache(maxsize=8)
def length_pairs(path: Path) -> tuple[np.ndarray, np.ndarray]:
    """The (prompt, output) token counts of every request of the trace at `path`, as two arrays."""
    from opscale.traces import read_trace

    pairs = [(r.prompt_tokens, r.output_tokens) for r in read_trace(path)]
    if not pairs:
        raise ValueError(f"lengths file {path} holds no requests")
    array = np.asarray(pairs, dtype=np.int64)
    return array[:, 0], array[:, 1]


def _stream(config: ShapedWorkloadConfig, index: int, spec: ShapedStream, region: str,
            sources: StreamSources) -> Iterator[Request]:
    tiers = list(config.tier_weights)
    weights = np.array([config.tier_weights[t] for t in tiers], dtype=float)
    weights /= weights.sum()
    prefix, model = f"sh{config.seed}-{index}-", spec.model
    n = 0
    for k, (lo_s, hi_s, rate) in enumerate(_windows(config, spec, sources, region)):
        rng = np.random.default_rng(np.random.SeedSequence(entropy=config.seed, spawn_key=(index, k)))
        count = int(rng.poisson(rate * (hi_s - lo_s)))
        if count == 0:
            continue
        times = np.sort(lo_s + rng.random(count) * (hi_s - lo_s))
        tier_idx = rng.choice(len(tiers), size=count, p=weights)
        prompts, outputs = _lengths(rng, config, spec, sources, count)
        for arrival_s, tier, prompt, output in zip(times.tolist(), tier_idx.tolist(), prompts.tolist(),
                                                   outputs.tolist(), strict=True):
            yield Request(f"{prefix}{n}", model, tiers[tier], region, arrival_s, prompt, output)
            n += 1


def window_rates(config: ShapedWorkloadConfig, model: str, region: str) -> list[tuple[float, float, float]]:
    """The expected arrival rate of `model` in `region` per simulated shape window: (start s, end s,
    req/s), the rates the generator draws its Poisson counts from."""
    spec = next((s for s in config.streams if s.model == model), None)
    if spec is None:
        raise ValueError(f"shaped.streams: no stream of model {model!r}")
    if region not in config.region_offsets_s:
        raise ValueError(f"shaped.region_offsets_s: no region {region!r}")
    return list(_windows(config, spec, _sources(config, spec), region))


def _windows(config: ShapedWorkloadConfig, spec: ShapedStream, sources: StreamSources,
             region: str) -> Iterator[tuple[float, float, float]]:
    window_s = SHAPE_STEP_S / config.compress  # simulated seconds per shape window
    offset_s = config.region_offsets_s[region]
    end_s = config.start_s + config.duration_s
    for k in range(math.ceil(config.duration_s / window_s)):
        lo_s = config.start_s + k * window_s
        hi_s = min(end_s, lo_s + window_s)
        tau_s = config.shape_start_s + (lo_s + hi_s) / 2 * config.compress + offset_s
        yield lo_s, hi_s, spec.mean_rps * shape_rate(sources.shape, tau_s)


def _lengths(rng: np.random.Generator, config: ShapedWorkloadConfig, spec: ShapedStream, sources: StreamSources,
             count: int) -> tuple[np.ndarray, np.ndarray]:
    if sources.prompts is not None and sources.outputs is not None:
        pick = rng.integers(0, len(sources.prompts), size=count)
        prompts, outputs = sources.prompts[pick], sources.outputs[pick]
    else:
        prompts = sample_lengths(rng, config.fallback.prompt_tokens, count)
        outputs = sample_lengths(rng, config.fallback.output_tokens, count)
    return (np.clip(prompts, 1, spec.max_prompt_tokens), np.clip(outputs, 1, spec.max_output_tokens))


def _arrival(request: Request) -> float:
    return request.arrival_s

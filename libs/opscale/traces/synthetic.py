"""Seeded synthetic workloads: diurnal Poisson arrivals per (model, region) with heavy-tailed lengths.

Each stream (one model in one region) is a non-homogeneous Poisson process with rate
    r(t) = base_rps * (1 + amplitude * sin(2*pi*(t + phase_s) / period_s)),
drawn by thinning (candidates at the peak rate, each kept with probability r(t) / peak). Regions are
shifted by their own phase (time zones). Each request draws its tier from weights and its prompt and
output lengths from lognormal distributions (median, sigma) clipped to [1, max]. Streams are merged
lazily by arrival time: a month of traffic costs memory for one block per stream. The same config
and seed always give the same requests, ids included.

Pure: the only randomness is a numpy Generator seeded from the config; no I/O, no clock.
"""

from __future__ import annotations

import heapq
import math
from collections.abc import Iterator
from typing import Self

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, model_validator

from opscale.model import Request

# Candidates drawn per numpy call: large enough to amortise numpy's overhead, small enough to keep a
# stream's memory flat.
_BLOCK = 2048


class LengthDistribution(BaseModel):
    """Token counts: lognormal with the given median and log-space sigma, rounded, clipped to [1, max]."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    median_tokens: float = Field(gt=0, description="Median of the lognormal, tokens.")
    sigma: float = Field(ge=0, description="Standard deviation of log(tokens); 0 gives a constant length.")
    max_tokens: int = Field(ge=1, description="Upper clip, tokens.")


class StreamSpec(BaseModel):
    """One (model, region) stream and its mean arrival rate."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    model: str = Field(min_length=1, description="Model name requested.")
    region: str = Field(min_length=1, description="Region the requests originate in.")
    base_rps: float = Field(gt=0, description="Mean arrival rate over a period, requests per second.")


class SyntheticWorkloadConfig(BaseModel):
    """A synthetic workload: streams, their diurnal shape, tiers and length distributions."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    seed: int = Field(0, description="Seed of every random draw.")
    start_s: float = Field(0.0, ge=0, description="First possible arrival, seconds.")
    duration_s: float = Field(gt=0, description="Length of the trace, seconds; arrivals are < start_s + duration_s.")
    streams: tuple[StreamSpec, ...] = Field(min_length=1, description="The (model, region) streams.")
    amplitude: float = Field(
        0.5, ge=0, le=1, description="Relative swing of the diurnal rate: r = base * (1 + amplitude * sin(...)).")
    period_s: float = Field(86_400.0, gt=0, description="Period of the rate curve, seconds (a day).")
    region_phase_s: dict[str, float] = Field(
        default_factory=dict, description="Phase shift per region, seconds (0 for regions not listed).")
    tier_weights: dict[str, float] = Field(
        default_factory=lambda: {"interactive": 0.8, "batch": 0.2},
        description="Relative weight of each tier; a request's tier is drawn from these.")
    prompt_tokens: LengthDistribution = Field(
        default_factory=lambda: LengthDistribution(median_tokens=1024, sigma=1.0, max_tokens=8192),
        description="Prompt length distribution.")
    output_tokens: LengthDistribution = Field(
        default_factory=lambda: LengthDistribution(median_tokens=128, sigma=1.0, max_tokens=2048),
        description="Output length distribution.")

    @model_validator(mode="after")
    def _check(self) -> Self:
        if not self.tier_weights:
            raise ValueError("tier_weights must name at least one tier")
        for tier, weight in self.tier_weights.items():
            if not (weight > 0 and math.isfinite(weight)):
                raise ValueError(f"tier_weights[{tier!r}] must be a positive number, got {weight!r}")
        seen: set[tuple[str, str]] = set()
        for stream in self.streams:
            key = (stream.model, stream.region)
            if key in seen:
                raise ValueError(f"streams: ({stream.model!r}, {stream.region!r}) appears twice")
            seen.add(key)
        return self


def rate_rps(config: SyntheticWorkloadConfig, stream: StreamSpec, t_s: float) -> float:
    """The arrival rate of `stream` at time `t_s`: the curve the generator samples."""
    phase_s = config.region_phase_s.get(stream.region, 0.0)
    return stream.base_rps * (1.0 + config.amplitude * math.sin(2 * math.pi * (t_s + phase_s) / config.period_s))


def generate_requests(config: SyntheticWorkloadConfig) -> Iterator[Request]:
    """Every request of the workload, sorted by arrival (ties keep the streams' order), lazily."""
    streams = [_stream(config, index, spec) for index, spec in enumerate(config.streams)]
    if len(streams) == 1:
        return streams[0]  # already sorted: a merge of one stream would only cost a key call per request
    return heapq.merge(*streams, key=_arrival)


def _arrival(request: Request) -> float:
    return request.arrival_s


def _stream(config: SyntheticWorkloadConfig, index: int, spec: StreamSpec) -> Iterator[Request]:
    rng = np.random.default_rng(np.random.SeedSequence(entropy=config.seed, spawn_key=(index,)))
    peak_rps = spec.base_rps * (1.0 + config.amplitude)
    omega = 2 * math.pi / config.period_s
    phase_s = config.region_phase_s.get(spec.region, 0.0)
    tiers = list(config.tier_weights)
    weights = np.array([config.tier_weights[t] for t in tiers], dtype=float)
    weights /= weights.sum()
    end_s = config.start_s + config.duration_s
    t = config.start_s
    n = 0
    prefix, model, region = f"syn{config.seed}-{index}-", spec.model, spec.region
    while t < end_s:
        times = t + np.cumsum(rng.exponential(1.0 / peak_rps, size=_BLOCK))
        t = float(times[-1])
        rate = spec.base_rps * (1.0 + config.amplitude * np.sin(omega * (times + phase_s)))
        keep = (rng.random(_BLOCK) * peak_rps < rate) & (times < end_s)
        kept = times[keep]
        count = len(kept)
        tier_idx = rng.choice(len(tiers), size=count, p=weights)
        prompts = sample_lengths(rng, config.prompt_tokens, count)
        outputs = sample_lengths(rng, config.output_tokens, count)
        # Plain Python numbers (tolist) and positional fields: this loop runs once per request.
        for arrival_s, tier, prompt, output in zip(kept.tolist(), tier_idx.tolist(), prompts.tolist(),
                                                   outputs.tolist(), strict=True):
            yield Request(f"{prefix}{n}", model, tiers[tier], region, arrival_s, prompt, output)
            n += 1


def sample_lengths(rng: np.random.Generator, dist: LengthDistribution, count: int) -> np.ndarray:
    """`count` token counts drawn from `dist`."""
    draws = np.rint(dist.median_tokens * np.exp(dist.sigma * rng.standard_normal(count)))
    return np.clip(draws, 1, dist.max_tokens).astype(np.int64)

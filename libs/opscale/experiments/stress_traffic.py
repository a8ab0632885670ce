"""The traffic of a stress test (stress.py): one service's prompt/output length mix and an arrival rate
that follows a schedule.

- `WorkloadMix`: (prompt, output) lengths drawn as pairs from a real trace (Azure LLM 2023 code or
  conversation) when the file is there, else from lognormals; the sampler's `source` says which.
- `RateSchedule`: the arrival rate over time, piecewise linear between points (a ramp, holds, steps);
  `schedule_requests` draws a seeded Poisson process with that rate (thinning at the peak rate).
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, model_validator

from opscale.model import Request
from opscale.traces import LengthDistribution
from opscale.traces.synthetic import sample_lengths

REGION = "r0"
# Instances are placed at the planner's first ticks; the load starts once they serve.
LOAD_START_S = 30.0


class WorkloadMix(BaseModel):
    """One service's prompt/output length mix."""

    model_config = ConfigDict(frozen=True, extra="forbid")
    name: str = Field(min_length=1, description="Names the mix in reports (e.g. prefill-heavy)")
    lengths: str | None = Field(None, description="Trace file of (prompt, output) pairs, relative to the data "
                                "directory (e.g. azure_llm_2023/AzureLLMInferenceTrace_code.csv); absent: the "
                                "lognormals below")
    prompt_tokens: LengthDistribution | None = Field(None, description="Prompt lengths when `lengths` is absent")
    output_tokens: LengthDistribution | None = Field(None, description="Output lengths when `lengths` is absent")
    max_prompt_tokens: int = Field(6144, ge=1, description="Prompts are clipped to this")
    max_output_tokens: int = Field(2048, ge=1, description="Outputs are clipped to this")

    @model_validator(mode="after")
    def _some_source(self) -> WorkloadMix:
        if (self.prompt_tokens is None) != (self.output_tokens is None):
            raise ValueError(f"mix {self.name!r}: give both prompt_tokens and output_tokens, or neither")
        if self.lengths is None and self.prompt_tokens is None:
            raise ValueError(f"mix {self.name!r}: give 'lengths' (a trace file) or prompt_tokens and output_tokens")
        return self

    def sampler(self, data_dir: Path | None) -> MixSampler:
        """Draws for this mix: the trace's pairs when the file is under `data_dir`, else the lognormals
        (a mix with only a file that is absent is a ValueError naming it)."""
        path = data_dir / self.lengths if data_dir is not None and self.lengths is not None else None
        if path is not None and path.is_file():
            from opscale.experiments.shaped_workload import length_pairs

            prompts, outputs = length_pairs(path)
            return MixSampler(self, prompts, outputs, f"{self.lengths} (real)")
        if self.prompt_tokens is None or self.output_tokens is None:
            raise ValueError(f"mix {self.name!r}: lengths file {self.lengths} is not under the data directory "
                             f"{data_dir} and the mix has no lognormal fallback")
        source = (f"synthetic lognormal (median prompt {self.prompt_tokens.median_tokens:g}, output "
                  f"{self.output_tokens.median_tokens:g} tokens)")
        return MixSampler(self, None, None, source)


@dataclass(frozen=True, slots=True)
class MixSampler:
    mix: WorkloadMix
    prompts: np.ndarray | None
    outputs: np.ndarray | None
    source: str

    def draw(self, rng: np.random.Generator, count: int) -> tuple[np.ndarray, np.ndarray]:
        if self.prompts is not None and self.outputs is not None:
            pick = rng.integers(0, len(self.prompts), size=count)
            prompts, outputs = self.prompts[pick], self.outputs[pick]
        else:
            assert self.mix.prompt_tokens is not None and self.mix.output_tokens is not None
            prompts = sample_lengths(rng, self.mix.prompt_tokens, count)
            outputs = sample_lengths(rng, self.mix.output_tokens, count)
        return np.clip(prompts, 1, self.mix.max_prompt_tokens), np.clip(outputs, 1, self.mix.max_output_tokens)

    def means(self, rng: np.random.Generator, count: int = 20_000) -> tuple[float, float]:
        """Mean prompt and output tokens of the mix (a sample's)."""
        prompts, outputs = self.draw(rng, count)
        return float(prompts.mean()), float(outputs.mean())


class RateSchedule(BaseModel):
    """Arrival rate (req/s) over time (s from the start of the load), linear between `points`; a step is
    two points at the same time. The load ends at the last point."""

    model_config = ConfigDict(frozen=True, extra="forbid")
    points: tuple[tuple[float, float], ...] = Field(min_length=2, description="(time s, rate req/s) pairs")

    @model_validator(mode="after")
    def _ordered(self) -> RateSchedule:
        times = [t for t, _ in self.points]
        if times[0] != 0 or any(b < a for a, b in zip(times, times[1:], strict=False)) or times[-1] <= 0:
            raise ValueError(f"points: times must start at 0 and not decrease, and end after 0; got {times}")
        bad = [r for _, r in self.points if not (r >= 0 and math.isfinite(r))]
        if bad:
            raise ValueError(f"points: rates must be finite and >= 0; got {bad}")
        return self

    @classmethod
    def constant(cls, rate_rps: float, duration_s: float) -> RateSchedule:
        return cls(points=((0.0, rate_rps), (duration_s, rate_rps)))

    @property
    def duration_s(self) -> float:
        return self.points[-1][0]

    @property
    def peak_rps(self) -> float:
        return max(r for _, r in self.points)

    def rate(self, t_s: float) -> float:
        """The rate at `t_s`; at a step, the rate after it."""
        points = self.points
        if t_s <= 0:
            return points[0][1]
        for (t0, r0), (t1, r1) in zip(points, points[1:], strict=False):
            if t0 <= t_s < t1:
                return r0 + (r1 - r0) * (t_s - t0) / (t1 - t0)
        return points[-1][1]

    def mean_rate(self, lo_s: float, hi_s: float, steps: int = 16) -> float:
        """The mean rate over [lo_s, hi_s) (midpoint rule)."""
        width = (hi_s - lo_s) / steps
        return sum(self.rate(lo_s + (i + 0.5) * width) for i in range(steps)) / steps


def schedule_requests(schedule: RateSchedule, sampler: MixSampler, model: str, tier: str, seed: int,
                      start_s: float = LOAD_START_S) -> Iterator[Request]:
    """Poisson arrivals at the schedule's rate from `start_s` on (thinning at the peak rate), lengths drawn
    from the mix; seeded, lazily."""
    peak = schedule.peak_rps
    if peak <= 0:
        return
    rng = np.random.default_rng(np.random.SeedSequence(entropy=seed, spawn_key=(13,)))
    t, n, block = 0.0, 0, 2048
    while t < schedule.duration_s:
        times = t + np.cumsum(rng.exponential(1.0 / peak, size=block))
        t = float(times[-1])
        keep = rng.random(block) * peak < np.array([schedule.rate(x) for x in times.tolist()])
        kept = times[keep & (times < schedule.duration_s)]
        prompts, outputs = sampler.draw(rng, len(kept))
        for arrival, prompt, output in zip(kept.tolist(), prompts.tolist(), outputs.tolist(), strict=True):
            yield Request(f"st{seed}-{n}", model, tier, REGION, start_s + arrival, int(prompt), int(output))
            n += 1

"""A seeded, streaming workload generator from ServeGen's production workload model (alibaba/ServeGen),
at any scale, for any time window and any subset of clients; and the summed rate series.

Arrivals: each client is an independent process. In each 600 s window with rate r (times `rate_scale`),
the client sends n = floor(r * 600) requests plus one more with probability frac(r * 600), so the
expected count is exact at any scale. Their gaps follow the window's fitted distribution (Gamma(shape,
scale) or Weibull(shape, scale); an unknown or empty pattern with traffic falls back to Gamma with
shape 1/cv^2, or exponential gaps when cv is 0): n + 1 gaps are drawn and stretched to span the window,
which keeps the pattern's burstiness and the window's count (as ServeGen's own generator does).
Each (client, window) draws from its own seed, so a window's requests do not depend on which other
windows or clients were generated.

Lengths: from the client's PMFs in force at the window (one set per 6 h). A client without a dataset
file uses the busiest client's that has one (largest mean rate); a folder with no dataset files at all
uses `fallback_prompt_tokens` / `fallback_output_tokens` (lognormal, medians 1024 and 128 tokens by
default). Multimodal prompts are text tokens plus, per image / audio / video item, that item's tokens.
Token counts of 0 in a PMF become 1 (a request has at least one prompt and one output token).

Memory: every selected client's window table and length PMFs (tens of MB for the largest ServeGen
model), plus one window of arrival times per client; requests are made one at a time.
"""

from __future__ import annotations

import heapq
import math
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from opscale.model import Request
from opscale.traces.reading import RequestLabels
from opscale.traces.servegen_data import (
    WINDOW_S,
    ClientLengths,
    ClientWindows,
    Pmf,
    client_files,
    read_client_lengths,
    read_client_windows,
    select_clients,
)
from opscale.traces.synthetic import LengthDistribution, sample_lengths

_MODALITIES = ("image", "audio", "video")


class ServeGenConfig(BaseModel):
    """What to generate from a ServeGen model folder."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    model_dir: Path = Field(description="A ServeGen model folder (chunk-<i>-trace.csv[.gz] files).")
    seed: int = Field(0, description="Seed of every random draw.")
    rate_scale: float = Field(1.0, gt=0, description="Multiplies every client's rate.")
    start_s: float = Field(0.0, ge=0, description="First arrival time generated, seconds of ServeGen time.")
    end_s: float | None = Field(None, gt=0, description="Arrivals are before this, seconds (None: trace end).")
    clients: tuple[int, ...] | None = Field(None, description="Client ids to include (None: all).")
    rebase: bool = Field(False, description="Subtract start_s from arrival times, so the output starts at 0.")
    labels: RequestLabels = Field(default_factory=RequestLabels, description="Model, tier, region of requests.")
    fallback_prompt_tokens: LengthDistribution = Field(
        default_factory=lambda: LengthDistribution(median_tokens=1024, sigma=1.0, max_tokens=8192),
        description="Prompt lengths when the folder has no dataset file at all.")
    fallback_output_tokens: LengthDistribution = Field(
        default_factory=lambda: LengthDistribution(median_tokens=128, sigma=1.0, max_tokens=2048),
        description="Output lengths when the folder has no dataset file at all.")


def generate_servegen_requests(config: ServeGenConfig) -> Iterator[Request]:
    """Every request of the configured workload, sorted by arrival, lazily."""
    end_s = math.inf if config.end_s is None else config.end_s
    if end_s <= config.start_s:
        raise ValueError(f"end_s {config.end_s!r} must be after start_s {config.start_s!r}")
    traces, datasets = client_files(config.model_dir)
    chosen = select_clients(traces, config.clients, config.model_dir)
    windows = {c: read_client_windows(traces[c], c) for c in chosen}
    fallback_id = _busiest_with_dataset(traces, datasets, windows)
    cache: dict[int, ClientLengths] = {}

    def lengths_of(client: int) -> ClientLengths | None:
        source = client if client in datasets else fallback_id
        if source is None:
            return None
        if source not in cache:
            cache[source] = read_client_lengths(datasets[source])
        return cache[source]

    streams = [_client_stream(config, windows[c], lengths_of, end_s) for c in chosen]
    return heapq.merge(*streams, key=lambda r: r.arrival_s)


def servegen_rate_series(model_dir: str | Path, step_s: float = WINDOW_S,
                         clients: Sequence[int] | None = None) -> list[float]:
    """The clients' summed arrival rate (req/s), averaged over consecutive steps of `step_s` from 0 to
    the end of the last window (a last partial step is averaged over its covered part).

    Example: two clients at 1 and 3 req/s in window [0, 600) and 0 and 1 req/s in [600, 1200) give
    [4.0, 1.0] with step_s=600 and [2.5] with step_s=1200.
    """
    if not (step_s > 0 and math.isfinite(step_s)):
        raise ValueError(f"step_s must be a positive number of seconds, got {step_s!r}")
    folder = Path(model_dir)
    traces, _ = client_files(folder)
    chosen = select_clients(traces, clients, folder)
    per_client = [read_client_windows(traces[c], c) for c in chosen]
    end_s = max((w.end_s for w in per_client), default=0.0)
    if end_s <= 0:
        return []
    slots = math.ceil(end_s / WINDOW_S)
    summed = np.zeros(slots)
    for w in per_client:
        index = np.floor(w.start_s / WINDOW_S).astype(np.int64)
        np.add.at(summed, index, w.rate_rps)
    # the integral of the piecewise-constant rate at every window edge, read at step edges
    edges_s = np.arange(slots + 1) * WINDOW_S
    integral = np.concatenate(([0.0], np.cumsum(summed * WINDOW_S)))
    steps = math.ceil(end_s / step_s - 1e-9)
    lo = np.arange(steps) * step_s
    hi = np.minimum(lo + step_s, end_s)
    counts = np.interp(hi, edges_s, integral) - np.interp(lo, edges_s, integral)
    return (counts / (hi - lo)).tolist()


def _busiest_with_dataset(traces: dict[int, Path], datasets: dict[int, Path],
                          known: dict[int, ClientWindows]) -> int | None:
    """The client with a dataset file and the largest mean rate (ties: the lowest id)."""
    if not datasets:
        return None
    with_trace = [c for c in datasets if c in traces]
    if not with_trace:
        return min(datasets)

    def mean_rate(c: int) -> float:
        windows = known.get(c) or read_client_windows(traces[c], c)
        return windows.mean_rate_rps

    return max(with_trace, key=lambda c: (mean_rate(c), -c))


def _client_stream(config: ServeGenConfig, windows: ClientWindows,
                   lengths_of: Callable[[int], ClientLengths | None], end_s: float) -> Iterator[Request]:
    labels = config.labels
    offset_s = config.start_s if config.rebase else 0.0
    lengths: ClientLengths | None = None
    loaded = False
    n = 0
    for k in range(len(windows.start_s)):
        window_start_s = float(windows.start_s[k])
        if window_start_s >= end_s:
            return
        if window_start_s + WINDOW_S <= config.start_s:
            continue
        rate = float(windows.rate_rps[k]) * config.rate_scale
        if rate <= 0:
            continue
        rng = np.random.default_rng(np.random.SeedSequence(
            entropy=config.seed, spawn_key=(windows.client_id, int(window_start_s))))
        expected = rate * WINDOW_S
        count = math.floor(expected) + (1 if rng.random() < expected - math.floor(expected) else 0)
        if count == 0:
            continue
        window_end_s = window_start_s + WINDOW_S
        # clamped after the addition: start + an offset just under 600 s can round up to the next window
        times = np.minimum(window_start_s + _arrival_offsets(rng, windows, k, count),
                           np.nextafter(window_end_s, 0.0))
        times = times[(times >= config.start_s) & (times < end_s)]
        if not len(times):
            continue
        if not loaded:
            lengths, loaded = lengths_of(windows.client_id), True
        prompts, outputs = _lengths(rng, config, lengths, window_start_s, len(times))
        for t, p, o in zip(times.tolist(), prompts.tolist(), outputs.tolist(), strict=True):
            yield Request(request_id=f"sg{config.seed}-c{windows.client_id}-{n}", model=labels.model,
                          tier=labels.tier, region=labels.region, arrival_s=t - offset_s,
                          prompt_tokens=p, output_tokens=o)
            n += 1


def _arrival_offsets(rng: np.random.Generator, windows: ClientWindows, k: int, count: int) -> np.ndarray:
    """`count` sorted offsets in [0, WINDOW_S) whose gaps follow window k's fitted distribution."""
    pattern = windows.pattern[k].lower()
    shape, scale, cv = float(windows.param1[k]), float(windows.param2[k]), float(windows.cv[k])
    size = count + 1
    if pattern == "gamma" and shape > 0 and scale > 0:
        gaps = rng.gamma(shape, scale, size)
    elif pattern == "weibull" and shape > 0 and scale > 0:
        gaps = scale * rng.weibull(shape, size)
    elif cv > 0:
        gaps = rng.gamma(1.0 / (cv * cv), cv * cv, size)
    else:
        gaps = rng.exponential(1.0, size)
    total = float(gaps.sum())
    if not (total > 0 and math.isfinite(total)):  # every gap underflowed: no shape left to keep
        return np.sort(rng.random(count)) * WINDOW_S
    return np.cumsum(gaps[:count]) * (WINDOW_S / total)


def _lengths(rng: np.random.Generator, config: ServeGenConfig, lengths: ClientLengths | None,
             t_s: float, count: int) -> tuple[np.ndarray, np.ndarray]:
    if lengths is None:
        return (sample_lengths(rng, config.fallback_prompt_tokens, count),
                sample_lengths(rng, config.fallback_output_tokens, count))
    pmfs = lengths.at(t_s)
    prompts = _prompt_tokens(rng, pmfs, count)
    outputs = pmfs["output_tokens"].sample(rng, count) if "output_tokens" in pmfs \
        else sample_lengths(rng, config.fallback_output_tokens, count)
    return np.maximum(prompts, 1), np.maximum(outputs, 1)


def _prompt_tokens(rng: np.random.Generator, pmfs: dict[str, Pmf], count: int) -> np.ndarray:
    if "input_tokens" in pmfs:
        return pmfs["input_tokens"].sample(rng, count)
    total = pmfs["text_tokens"].sample(rng, count) if "text_tokens" in pmfs else np.zeros(count, np.int64)
    for modality in _MODALITIES:
        counts_pmf, tokens_pmf = pmfs.get(f"{modality}_count"), pmfs.get(f"{modality}_tokens")
        if counts_pmf is None or tokens_pmf is None:
            continue
        items = np.maximum(counts_pmf.sample(rng, count), 0)
        drawn = tokens_pmf.sample(rng, int(items.sum()))
        owner = np.repeat(np.arange(count), items)
        total = total + np.bincount(owner, weights=drawn, minlength=count).astype(np.int64)
    return total

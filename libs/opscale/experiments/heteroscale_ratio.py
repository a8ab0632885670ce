"""The heteroscale-ratio study (PAPERS.md §3.5, §3.7: "max TPS vs P/D ratio"): for each prompt/output mix,
the highest load one instance budget serves within the latency objectives at every P/D split of it, and
the best split. The stress test is curation's (heteroscale_curation.sweep_splits): one implementation."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from opscale.experiments.heteroscale_curation import curate_service
from opscale.experiments.heteroscale_study_config import RatioStudyConfig
from opscale.planning.heteroscale.curation import CuratedService


@dataclass(slots=True)
class MixOutcome:
    name: str
    lengths: str
    mean_prompt_tokens: float
    mean_output_tokens: float
    curated: CuratedService
    wall_s: float


@dataclass(slots=True)
class RatioOutcome:
    config: RatioStudyConfig
    mixes: list[MixOutcome]
    wall_s: float


def run_ratio_study(config: RatioStudyConfig, data_dir: Path | None = None,
                    log: Callable[[str], None] | None = None) -> RatioOutcome:
    started = time.perf_counter()
    say = log or (lambda _: None)
    service = config.service.service()
    settings = config.probe.settings(config.seed)
    mixes = []
    for mix in config.mixes:
        t0 = time.perf_counter()
        sampler = mix.sampler(data_dir if data_dir is not None else config.data_dir)
        prompt, output = sampler.means(np.random.default_rng(config.seed))
        say(f"{mix.name}: {sampler.source}, mean prompt {prompt:.0f} / output {output:.0f} tokens")
        curated = curate_service(service, sampler, instances=config.instances, objective=config.objective,
                                 settings=settings, rel_tol=config.probe.rel_tol,
                                 progress=lambda s, r: say(f"  {s.label:>4} ({s.prefill}P/{s.decode}D): "
                                                           f"{r.best.rate_rps if r.best else 0:.2f} req/s")).service
        mixes.append(MixOutcome(mix.name, sampler.source, prompt, output, curated, time.perf_counter() - t0))
    return RatioOutcome(config, mixes, time.perf_counter() - started)

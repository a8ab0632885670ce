"""Builders shared by the simulation scenario tests: small one-pool scenarios, phased CSV traces, and a
run collector that also keeps what the drain test needs per instance.

Everything here drives the real simulation (runner, SimWorld, every service core); nothing is replaced.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from _fingerprint import fingerprint  # noqa: F401  (re-exported: the scenario tests import it from here)

from opscale.engine import SimEngine
from opscale.experiments.collector import RunCollector
from opscale.experiments.runner import RunResult
from opscale.experiments.scenario import HostGroup, Scenario, TraceSource
from opscale.model import Request, RequestOutcome
from opscale.planning import DeploymentSpec
from opscale.traces import (
    LengthDistribution,
    StreamSpec,
    SyntheticWorkloadConfig,
    generate_requests,
    write_csv_trace,
)

MODEL = "Llama-3-8B"
SKU = "H100-80GB"
REGION = "eu"
POOL = f"{MODEL}/{REGION}"

# The demo scenario's request shape: chat-like prompts around 1k tokens, answers around 256.
PROMPT_TOKENS = LengthDistribution(median_tokens=1024, sigma=0.8, max_tokens=6144)
OUTPUT_TOKENS = LengthDistribution(median_tokens=256, sigma=0.7, max_tokens=1536)


@dataclass(frozen=True, slots=True)
class Phase:
    """Constant-rate Poisson arrivals of MODEL in REGION over [start_s, start_s + duration_s)."""

    start_s: float
    duration_s: float
    rps: float


def phase_requests(phase: Phase, seed: int) -> Iterator[Request]:
    """The requests of one phase; distinct seeds give distinct request ids (`syn<seed>-...`)."""
    return generate_requests(SyntheticWorkloadConfig(
        seed=seed, start_s=phase.start_s, duration_s=phase.duration_s, amplitude=0.0,
        streams=(StreamSpec(model=MODEL, region=REGION, base_rps=phase.rps),),
        prompt_tokens=PROMPT_TOKENS, output_tokens=OUTPUT_TOKENS))


def write_phased_trace(path: Path, phases: Iterable[Phase], seed: int) -> int:
    """Write consecutive phases as one CSV trace; return the number of requests written."""
    streams = (phase_requests(p, seed + i) for i, p in enumerate(phases))
    return write_csv_trace(path, itertools.chain.from_iterable(streams))


def one_pool_scenario(trace: Path, duration_s: float, *, name: str, seed: int = 1, hosts: int = 1,
                      min_replicas: int = 1, max_replicas: int = 8, start_provisioned: bool = True,
                      policy: str = "reactive", policy_params: dict[str, Any] | None = None,
                      sample_interval_s: float = 30.0) -> Scenario:
    """MODEL served from `hosts` 8-GPU hosts of SKU in REGION, replaying `trace`."""
    return Scenario(
        name=name, seed=seed, duration_s=duration_s,
        hosts=[HostGroup(region=REGION, sku=SKU, gpus=8, count=hosts)],
        deployments=[DeploymentSpec(model=MODEL, sku=SKU, tp=1, min_replicas=min_replicas,
                                    max_replicas=max_replicas)],
        trace=TraceSource(path=trace), policy=policy, policy_params=policy_params or {},
        start_provisioned=start_provisioned, sample_interval_s=sample_interval_s)


def ready_series(run: RunResult, pool: str = POOL) -> list[tuple[float, int]]:
    """(sample time, ready instances of `pool`) over the run's timeline."""
    return [(p.at_s, p.instances.get(pool, 0)) for p in run.collector.timeline]


@dataclass(frozen=True, slots=True)
class StoppedEngine:
    """An engine as the shell stopped it: when, how many requests it finished, and what it still held."""

    at_s: float
    finished: int
    queued: int
    running: int


class RecordingCollector(RunCollector):
    """The runner's collector, also keeping each request's final status, per instance the requests
    completed on it, and the state of each engine when it was stopped. The summary is unchanged.

    Installed with `monkeypatch.setattr(opscale.experiments.runner, "RunCollector", RecordingCollector)`:
    the run is the real one, only observed more closely."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.status_of: dict[str, str] = {}
        self.completed_on: dict[str, int] = {}
        self.stopped: dict[str, StoppedEngine] = {}

    def outcome(self, outcome: RequestOutcome) -> None:
        super().outcome(outcome)
        self.status_of[outcome.request_id] = outcome.status
        if outcome.status == "ok":
            self.completed_on[outcome.instance_id] = self.completed_on.get(outcome.instance_id, 0) + 1

    def engine_stopped(self, instance_id: str, engine: SimEngine, now_s: float) -> None:
        # also called by `finish` for the engines still running when the run ends (at_s = the end)
        self.stopped[instance_id] = StoppedEngine(now_s, engine.finished, engine.queued, engine.running)
        super().engine_stopped(instance_id, engine, now_s)

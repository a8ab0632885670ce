"""Stress tests of one disaggregated service in the simulator: a fixed fleet of P prefill and D decode
instances (the `static` policy holds them), serving one workload mix at a rate that follows a schedule.
This is the one machinery behind HeteroScale's curation (Algorithm 1: opscale.planning.heteroscale.curation)
and its two studies (heteroscale-metrics, heteroscale-ratio).

- the traffic (stress_traffic.py): a `WorkloadMix` of lengths and a `RateSchedule` of arrivals;
- `run_fleet`: the simulation itself, the ordinary world of opscale.experiments.runner, with a callback
  every `window_s` that can read each engine's report (what its heartbeat says; the metric study makes
  the engines report over that same window) and the outcomes so far.
- `constant_probe`: a `Probe` for curation: a constant rate, a warm-up, then a measured window; decode and
  prefill TPS from the engines' own counters, TTFT/TBT p99 over the requests that arrived in the window.

The fleet's hosts are built here (one group per SKU, default switches), so a probe of any split fits.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

from opscale.engine import EngineConfig, SimEngine
from opscale.experiments.collector import RunCollector
from opscale.experiments.scenario import HostGroup, Scenario
from opscale.experiments.stress_traffic import (
    LOAD_START_S,
    REGION,
    MixSampler,
    RateSchedule,
    schedule_requests,
)
from opscale.model import Request, RequestOutcome, Role, TierModel, TierSpec
from opscale.perf import default_catalog
from opscale.perf.transfer import TransferParams
from opscale.planning import DeploymentSpec
from opscale.planning.base import RolePoolSpec
from opscale.planning.heteroscale.curation import LoadPoint, Probe
from opscale.stats import percentile_sorted

_HOST_GPUS = 8


@dataclass(frozen=True, slots=True)
class Service:
    """The service under test: a model, the shape of its prefill and decode instances, its latency
    objectives (a tier) and the engine and network settings."""

    model: str
    prefill: RolePoolSpec
    decode: RolePoolSpec
    tier: TierSpec
    engine: EngineConfig = field(default_factory=lambda: EngineConfig(emit_tokens=False))
    transfer: TransferParams = field(default_factory=TransferParams)

    def split_cost(self, prefill: int, decode: int) -> tuple[int, float]:
        """GPUs and $/h of `prefill` + `decode` instances."""
        catalog = default_catalog()
        gpus = prefill * self.prefill.tp + decode * self.decode.tp
        usd = (prefill * self.prefill.tp * catalog.sku(self.prefill.sku).price_usd_per_h
               + decode * self.decode.tp * catalog.sku(self.decode.sku).price_usd_per_h)
        return gpus, usd


def service_from_scenario(scenario: Scenario, model: str, tier: str = "interactive") -> Service:
    """The service `model` of a scenario (a disaggregated deployment), with its tier's objectives and the
    scenario's engine and transfer settings."""
    deployment = next((d for d in scenario.deployments if d.model == model), None)
    if deployment is None:
        raise ValueError(f"--model: {model!r} has no deployment in the scenario; deployed: "
                         f"{[d.model for d in scenario.deployments]}")
    if not deployment.disaggregated:
        raise ValueError(f"--model: {model!r} is not disaggregated (no prefill/decode pools): curation chooses a "
                         f"P/D ratio")
    tiers = scenario.tier_specs()
    if tier not in tiers:
        raise ValueError(f"--tier: {tier!r} is not a tier of the scenario; tiers: {sorted(tiers)}")
    return Service(model, deployment.pool(Role.PREFILL), deployment.pool(Role.DECODE), tiers[tier],
                   scenario.engine, scenario.transfer)


def fleet_scenario(service: Service, prefill: int, decode: int, duration_s: float, seed: int,
                   report_window_s: float | None = None) -> Scenario:
    """A scenario holding `prefill` + `decode` instances of the service (static policy), hosts to fit."""
    gpus_by_sku: dict[str, int] = {}
    for shape, count in ((service.prefill, prefill), (service.decode, decode)):
        gpus_by_sku[shape.sku] = gpus_by_sku.get(shape.sku, 0) + shape.tp * count
    hosts = [HostGroup(region=REGION, sku=sku, gpus=_HOST_GPUS, count=max(1, math.ceil(gpus / _HOST_GPUS)))
             for sku, gpus in sorted(gpus_by_sku.items())]
    pools = {role: RolePoolSpec(sku=shape.sku, tp=shape.tp, min_replicas=n, max_replicas=n)
             for role, shape, n in (("prefill", service.prefill, prefill), ("decode", service.decode, decode))}
    engine = service.engine if report_window_s is None else service.engine.model_copy(
        update={"report_window_s": report_window_s})
    return Scenario(name=f"stress {service.model} {prefill}P/{decode}D", seed=seed, duration_s=duration_s,
                    drain_s=0.0, hosts=hosts, deployments=[DeploymentSpec(model=service.model, **pools)],
                    tiers=[TierModel.of(service.tier)],
                    policy="static", engine=engine, transfer=service.transfer)


@dataclass(slots=True)
class FleetRun:
    """What `run_fleet` leaves: the outcomes of every request (unfinished ones included, status
    'unfinished'), and the engines at the end."""

    outcomes: list[RequestOutcome]
    engines: dict[str, SimEngine]
    end_s: float


WindowFn = Callable[[float, dict[str, SimEngine], list[RequestOutcome]], None]


def run_fleet(service: Service, prefill: int, decode: int, requests: Iterator[Request], load_end_s: float,
              *, seed: int = 0, drain_s: float = 60.0, window_s: float | None = None,
              on_window: WindowFn | None = None, report_window_s: float | None = None) -> FleetRun:
    """Serve `requests` on the fleet until `load_end_s` plus at most `drain_s`; call `on_window(now, engines,
    outcomes so far)` every `window_s`. `report_window_s` replaces the window the engines' reports cover (the
    service's engine setting otherwise)."""
    from opscale.experiments.runner import build_world, drain

    scenario = fleet_scenario(service, prefill, decode, load_end_s, seed, report_window_s)
    outcomes: list[RequestOutcome] = []
    collector = _RecordingCollector(scenario.tier_specs(), default_catalog().sku, outcomes)
    world, _ = build_world(scenario, provisioned_until_s=LOAD_START_S, collector=collector)
    horizon = load_end_s + drain_s
    world.start(requests, until_s=horizon)
    serving: list[int] = []
    world.loop.at(LOAD_START_S, lambda: serving.append(len(world.engines())))
    if on_window is not None and window_s is not None:
        world.loop.every(window_s, lambda now: on_window(now, world.engines(), outcomes), start_s=LOAD_START_S
                         + window_s, until_s=load_end_s + 1e-9)
    world.loop.run(load_end_s)
    if serving != [prefill + decode]:  # a probe of a fleet that is not there would measure nothing true
        raise ValueError(f"stress fleet {prefill}P/{decode}D: {serving[0] if serving else 0} instances serve when the "
                         f"load begins at {LOAD_START_S:g} s")
    end_s = drain(world, load_end_s, horizon, 5.0)
    outcomes.extend(world.unfinished(end_s))
    return FleetRun(outcomes, world.engines(), end_s)


class _RecordingCollector(RunCollector):
    """The run's collector, also keeping every outcome for the stress measurements."""

    def __init__(self, tiers: dict[str, TierSpec], skus: Any, sink: list[RequestOutcome]) -> None:
        super().__init__(tiers, skus)
        self.sink = sink

    def outcome(self, outcome: RequestOutcome) -> None:
        self.sink.append(outcome)
        super().outcome(outcome)


@dataclass(frozen=True, slots=True)
class ProbeSettings:
    """How long a constant-load probe runs: a warm-up (not measured), then the measured window; requests
    of the window still unfinished `drain_s` after it count as dropped."""

    warmup_s: float = 30.0
    measure_s: float = 90.0
    drain_s: float = 60.0
    seed: int = 0


DEFAULT_PROBE = ProbeSettings()


def constant_probe(service: Service, sampler: MixSampler, prefill: int, decode: int,
                   settings: ProbeSettings = DEFAULT_PROBE) -> Probe:
    """A curation probe: the fleet at a constant rate; meets when TTFT p99 and TBT p99 are within the
    tier's objectives and no request of the measured window was dropped."""
    def probe(rate_rps: float) -> LoadPoint:
        duration = settings.warmup_s + settings.measure_s
        schedule = RateSchedule.constant(rate_rps, duration)
        lo_s, hi_s = LOAD_START_S + settings.warmup_s, LOAD_START_S + duration
        counters: dict[float, tuple[int, int, int]] = {}

        def snapshot(now: float, engines: dict[str, SimEngine], _: list[RequestOutcome]) -> None:
            if abs(now - lo_s) < 1e-6 or abs(now - hi_s) < 1e-6:
                counters[now] = _token_totals(engines)

        run = run_fleet(service, prefill, decode,
                        schedule_requests(schedule, sampler, service.model, service.tier.name, settings.seed),
                        hi_s, seed=settings.seed, drain_s=settings.drain_s, window_s=settings.warmup_s,
                        on_window=snapshot)
        start, end = counters.get(lo_s, (0, 0, 0)), counters.get(hi_s, _token_totals(run.engines))
        return measure(rate_rps, run.outcomes, service.tier, lo_s, hi_s,
                       tuple((b - a) / (hi_s - lo_s) for a, b in zip(start, end, strict=True)))

    if settings.measure_s % settings.warmup_s:
        raise ValueError(f"measure_s ({settings.measure_s}) must be a multiple of warmup_s ({settings.warmup_s}): "
                         f"the counters are read on window boundaries")
    return probe


def _token_totals(engines: dict[str, SimEngine]) -> tuple[int, int, int]:
    """(decode, prefill, cache-missed prefill) tokens done so far by the fleet, from the engines' counters."""
    return (sum(e.decode_tokens for e in engines.values()), sum(e.prefill_tokens for e in engines.values()),
            sum(e.prefill_tokens_computed for e in engines.values()))


def measure(rate_rps: float, outcomes: list[RequestOutcome], tier: TierSpec, lo_s: float, hi_s: float,
            tps: tuple[float, float, float]) -> LoadPoint:
    """The LoadPoint of the requests that arrived in [lo_s, hi_s), with the fleet's token rates `tps`."""
    window = [o for o in outcomes if lo_s <= o.arrival_s < hi_s]
    done = [o for o in window if o.status == "ok"]
    ttft = sorted(o.ttft_s for o in done if o.ttft_s is not None)
    tbt = sorted(t for o in done if (t := o.tbt_s) is not None)
    ttft_p99, tbt_p99 = percentile_sorted(ttft, 99.0), percentile_sorted(tbt, 99.0)
    dropped = len(window) - len(done)
    meets = (dropped == 0 and bool(done) and ttft_p99 is not None and ttft_p99 <= tier.ttft_slo_s
             and (tbt_p99 is None or tbt_p99 <= tier.tbt_slo_s))
    return LoadPoint(rate_rps, tps[0], tps[1], tps[2], ttft_p99, tbt_p99, len(done), dropped, meets)

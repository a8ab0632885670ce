"""Collects what a simulation run produces and summarises it into the result schema of DESIGN.md.

Per request it keeps only a few floats per tier, so a million-request run stays small. The latency
figures come from `opscale.reporting.latencies`, the builder the load generator's report uses, so
result.json and a replay's report.json share their latency keys. GPU time is counted from an engine's
start (loading included: those GPUs are held) to its stop.

Utilisation, for the run and per pool (`"pools": {"<model>/<region>/<role>": {...}}`), both over the
GPU time held:
- `mean_gpu_util` (per pool `gpu_util`): GPU utilisation as nvidia-smi defines it, the fraction of time
  a kernel runs: GPU-seconds in iterations over GPU-seconds held;
- `mean_sm_activity` (per pool `sm_activity`): the compute used over the peak, FLOPs done (the
  performance model's count, opscale.perf.flops) over (time held x peak FLOP/s of the GPUs). A decode
  pool can be busy all the time and still use a few percent of its compute.
Per pool also `gpu_hours` and `energy_kwh` (they sum to the run's) and token rates over the run:
`decode_tps` (output tokens of decode steps), `prefill_tps` (prompt tokens prefilled, prefix-cache hits
included) and `prefill_missed_tps` (prompt tokens actually computed). GPUs held over the run:
`mean_gpus` (GPU-seconds over the run's seconds, drain included) and `peak_gpus` (the most held at once,
operator replicas' GPU-equivalents included).

`slo_by_model`: per model and tier, the SLO attainment of its requests (the tiers' figures split by
model).

Per token and per KV transfer:
- `usd_per_m_output_tokens`: the run's cost over the output tokens of the completed requests, per million
  (HeteroScale's "cost per token": what the fleet cost for what it served);
- `kv_transfers`: per topology (the switch tier the prefill and decode hosts share) the count, mean
  seconds, GB moved and `gbps`, the effective bandwidth (bytes over transfer seconds, latency included);
  `kv_effective_gbps` is the same over all transfers: HeteroScale measures ~20% less KV bandwidth when
  placement ignores switches.

Operator replicas (operator-level runs: elastic replicas attached to base instances, see
opscale.services.node_agent) count like engines: their GPU-equivalents (replicas x tp x SM share) are
held from when they are added (loading included) until removed or their engine stops, in `gpu_hours`,
`cost_usd`, `energy_kwh`, utilisation and the pool's figures; their loading in `scaling_gpu_s`. They work in their engine's iterations,
so over each span they are as busy as their engine; their power is the SKU's idle draw plus the
dynamic draw at that busy fraction, per GPU-equivalent. Such a run also reports
`operator_replica_gpu_hours` and `energy_kwh_by_operator` (`base`: the base engines; then each
stage of operator replicas by name, e.g. `mlp`), which sums to `energy_kwh`; a run without operator
replicas has neither key.

`cost_usd` prices each GPU held at its region's price (`opscale.cloud.RegionCatalog.price`: the offer's
explicit price, else the SKU's list price times the region's multiplier; the list price in a region the
catalogue does not know), on demand; on a VM, at the price the cloud bills that VM (its purchase
included), so it and `vms.cost_usd` have one owner.

A run whose hosts are VMs (a scenario's `vms:` block) also reports `vms`: what the simulated cloud billed
per VM-second (`vm_hours`, `gpu_hours`, `cost_usd`, `by_sku_purchase`, and `lines` per region, SKU and
purchase; idle GPUs included, where `gpu_hours` above counts the engines' GPUs), `boots`, `refusals`,
`preemptions`, `preemptions_survived` and `requests_lost_to_preemptions` (opscale.runtime.sim.vms says
which drops a preemption explains).

Example: one pool of one H100 (989 TFLOP/s) held 100 s, in iterations 90 s that did 4.9e15 FLOPs:
gpu_util 0.9, sm_activity 4.9e15 / (100 x 9.89e14) = 0.05.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Literal

from opscale.cloud import RegionCatalog, default_region_catalog
from opscale.engine import SimEngine
from opscale.model import (
    InstanceSpec,
    OperatorReplicas,
    PoolKey,
    Purchase,
    Request,
    RequestOutcome,
    Sku,
    TierSpec,
)
from opscale.perf.loading import LoadChoice
from opscale.perf.transfer import Topology
from opscale.reporting.latencies import LatencySamples, latency_figures
from opscale.runtime.sim.vms import SimVmFleet
from opscale.runtime.sim.world import RunObserver


@dataclass(slots=True)
class _TierTotals:
    requests: int = 0
    completed: int = 0
    dropped: int = 0
    met: int = 0
    latencies: LatencySamples = field(default_factory=LatencySamples)


@dataclass(slots=True)
class _EngineLife:
    spec: InstanceSpec
    region: str
    start_s: float
    load_s: float
    price_usd_per_gpu_h: float
    stop_s: float | None = None
    energy_j: float = 0.0
    busy_s: float = 0.0
    flops: float = 0.0
    peak_flops_per_s: float = 0.0
    decode_tokens: int = 0
    prefill_tokens: int = 0
    prefill_computed_tokens: int = 0
    prefix_hit_tokens: int = 0
    prefix_host_hit_tokens: int = 0
    prefix_queried_tokens: int = 0


@dataclass(slots=True)
class _ReplicaSpan:
    """Operator replicas of one stage (one shape) held beside an engine from `start_s` to `stop_s`."""

    pool: str
    sku: str
    stage: str
    gpus: float  # GPU-equivalents
    price_usd_per_gpu_h: float  # its engine's
    start_s: float
    engine_busy_at_start_s: float
    stop_s: float | None = None
    busy_s: float = 0.0  # the engine's time in iterations over the span


@dataclass(slots=True)
class _PoolTotals:
    gpu_s: float = 0.0  # held
    busy_gpu_s: float = 0.0
    peak_flop: float = 0.0  # what the GPUs held could have done: time held x peak FLOP/s
    flops: float = 0.0
    decode_tokens: int = 0
    prefill_tokens: int = 0
    prefill_computed_tokens: int = 0
    energy_j: float = 0.0

    def add(self, life: _EngineLife, held_s: float) -> None:
        gpus = life.spec.gpus
        self.gpu_s += held_s * gpus
        self.energy_j += life.energy_j
        self.busy_gpu_s += life.busy_s * gpus
        self.peak_flop += held_s * life.peak_flops_per_s
        self.flops += life.flops
        self.decode_tokens += life.decode_tokens
        self.prefill_tokens += life.prefill_tokens
        self.prefill_computed_tokens += life.prefill_computed_tokens

    def figures(self, end_s: float) -> dict[str, float]:
        return {
            "gpu_hours": self.gpu_s / 3600,
            "energy_kwh": self.energy_j / 3.6e6,
            "gpu_util": self.busy_gpu_s / self.gpu_s if self.gpu_s else 0.0,
            "sm_activity": self.flops / self.peak_flop if self.peak_flop else 0.0,
            "decode_tps": self.decode_tokens / end_s if end_s > 0 else 0.0,
            "prefill_tps": self.prefill_tokens / end_s if end_s > 0 else 0.0,
            "prefill_missed_tps": self.prefill_computed_tokens / end_s if end_s > 0 else 0.0,
        }


@dataclass(slots=True)
class TimelinePoint:
    at_s: float
    arrivals_per_min: dict[str, int]
    instances: dict[str, int]  # pool -> ready instances
    gpus: int
    operator_gpus: float = 0.0  # GPU-equivalents of the operator replicas held beside the engines


class RunCollector(RunObserver):
    def __init__(self, tiers: dict[str, TierSpec], skus: Callable[[str], Sku],
                 regions: RegionCatalog | None = None) -> None:
        """`regions`: whose prices the GPUs are billed at (the built-in catalogue by default)."""
        self.tiers = tiers
        self.sku_of = skus
        self.regions = regions if regions is not None else default_region_catalog()
        self._tiers: dict[str, _TierTotals] = {}
        self._lives: dict[str, _EngineLife] = {}
        self._arrivals_since: dict[tuple[str, str], int] = {}
        self.timeline: list[TimelinePoint] = []
        self.decisions: list[dict[str, Any]] = []
        self._replica_history: dict[str, list[int]] = {}
        self._loads: dict[str, str] = {}  # instance id -> "cold" | "warm"
        self._weights_staged = 0  # models staged into a host's memory ahead of a scale-out
        # plans that changed some pool's replica count (not those that only re-weight routing or re-stage)
        self._scaling_actions = 0
        self._last_replicas: dict[str, int] = {}
        # KV transfers of disaggregated deployments, by topology: [count, seconds, bytes]
        self._kv_transfers: dict[str, list[float]] = {}
        self._causes: dict[str, str] = {}  # request id -> why it is being dropped (the world says so first)
        self._dropped_by_cause: dict[str, int] = {}
        self._by_model: dict[tuple[str, str], list[int]] = {}  # (model, tier) -> [requests, met]
        self._output_tokens = 0  # of completed requests
        self._spans: list[_ReplicaSpan] = []
        self._replicas_loading: dict[str, tuple[float, float]] = {}  # instance -> (since, GPU-equivalents loading)
        self._replica_scaling_gpu_s = 0.0
        self._open_spans: dict[str, dict[tuple[str, int, float], _ReplicaSpan]] = {}  # instance -> stage shape -> span
        # VM runs (opscale.runtime.sim.vms): the fleet, which judges which drops its preemptions caused
        self.vm_fleet: SimVmFleet | None = None
        self._drops: list[tuple[str, float, str]] = []  # (id, arrival, cause) of each dropped request, VM runs

    # -- observer hooks ------------------------------------------------------------------------

    # Both hooks run once per request: they look up before they create (a setdefault would build a
    # throw-away default, three lists here, on every call).

    def arrival(self, request: Request) -> None:
        key = (request.model, request.region)
        since = self._arrivals_since
        since[key] = since.get(key, 0) + 1

    def outcome(self, outcome: RequestOutcome) -> None:
        totals = self._tiers.get(outcome.tier)
        if totals is None:
            totals = self._tiers[outcome.tier] = _TierTotals()
        totals.requests += 1
        key = (outcome.model, outcome.tier)
        by_model = self._by_model.get(key)
        if by_model is None:
            by_model = self._by_model[key] = [0, 0]
        by_model[0] += 1
        if outcome.status != "ok":
            totals.dropped += 1
            cause = self._causes.pop(outcome.request_id, outcome.status)  # "unfinished" names itself
            self._dropped_by_cause[cause] = self._dropped_by_cause.get(cause, 0) + 1
            if self.vm_fleet is not None:
                self._drops.append((outcome.request_id, outcome.arrival_s, cause))
            return
        totals.completed += 1
        self._output_tokens += outcome.output_tokens
        spec = self.tiers.get(outcome.tier)
        if spec is not None and outcome.meets(spec):
            totals.met += 1
            by_model[1] += 1
        totals.latencies.add(outcome)

    def drop_cause(self, request_id: str, cause: str) -> None:
        self._causes[request_id] = cause

    def load_chosen(self, instance_id: str, choice: LoadChoice) -> None:
        """How an instance started during the run loads (the fleet running at the start loads nothing)."""
        self._loads[instance_id] = choice.source

    def weights_staged(self, model: str) -> None:
        self._weights_staged += 1

    def engine_started(self, spec: InstanceSpec, region: str, load_s: float, now_s: float, host: str = "") -> None:
        self._lives[spec.instance_id] = _EngineLife(spec, region, now_s, load_s, self._gpu_price(region, spec.sku, host))

    def _gpu_price(self, region: str, sku: str, host: str) -> float:
        """USD per GPU-hour of `sku` on `host` in `region` (module docstring)."""
        billed = self.vm_fleet.gpu_price(host) if self.vm_fleet is not None else None
        return billed if billed is not None else self.regions.price(region, sku, Purchase.ON_DEMAND)

    def operator_replicas(self, instance_id: str, serving: tuple[OperatorReplicas, ...],
                          provisioned: tuple[OperatorReplicas, ...], engine: SimEngine, now_s: float) -> None:
        life = self._lives.get(instance_id)
        if life is None:
            return
        self._replica_loading_until(instance_id, now_s)
        loading = sum(r.gpu_equivalents for r in provisioned) - sum(r.gpu_equivalents for r in serving)
        self._replicas_loading[instance_id] = (now_s, max(0.0, loading))
        spans = self._open_spans.setdefault(instance_id, {})
        wanted = {(r.name, r.tp, r.share): r for r in provisioned}
        for key, span in list(spans.items()):
            r = wanted.get(key)
            if r is None or r.gpu_equivalents != span.gpus:
                _close(span, engine, now_s)
                del spans[key]
        pool = str(PoolKey(life.spec.model, life.region, life.spec.role))
        for key, r in wanted.items():
            if key not in spans:
                spans[key] = _ReplicaSpan(pool, life.spec.sku, r.name, r.gpu_equivalents, life.price_usd_per_gpu_h,
                                          now_s, engine.busy_s)
                self._spans.append(spans[key])

    def _replica_loading_until(self, instance_id: str, now_s: float) -> None:
        """Count the GPU-seconds an instance's loading operator replicas held since the last change."""
        since_s, gpus = self._replicas_loading.pop(instance_id, (now_s, 0.0))
        self._replica_scaling_gpu_s += (now_s - since_s) * gpus

    def engine_stopped(self, instance_id: str, engine: SimEngine, now_s: float) -> None:
        for span in self._open_spans.pop(instance_id, {}).values():
            _close(span, engine, now_s)
        self._replica_loading_until(instance_id, now_s)
        life = self._lives.get(instance_id)
        if life is not None and life.stop_s is None:
            life.stop_s, life.energy_j, life.busy_s = now_s, engine.energy_j, engine.busy_s
            life.flops, life.peak_flops_per_s = engine.flops, engine.peak_flops_per_s
            life.decode_tokens, life.prefill_tokens = engine.decode_tokens, engine.prefill_tokens
            life.prefill_computed_tokens = engine.prefill_tokens_computed
            life.prefix_hit_tokens, life.prefix_queried_tokens = engine.prefix_hit_tokens, engine.prefix_queried_tokens
            life.prefix_host_hit_tokens = engine.prefix_host_hit_tokens

    def decision(self, service: str, message: str, fields: dict[str, Any] | None, now_s: float) -> None:
        self.decisions.append({"at_s": round(now_s, 3), "service": service, "message": message})
        if fields and "replicas" in fields:
            replicas = fields["replicas"]
            for pool, n in replicas.items():
                self._replica_history.setdefault(pool, []).append(n)
            if replicas != self._last_replicas:
                self._scaling_actions += 1
                self._last_replicas = dict(replicas)

    def kv_transfer(self, request_id: str, topology: Topology, seconds: float, nbytes: float, now_s: float) -> None:
        totals = self._kv_transfers.get(topology.value)
        if totals is None:
            totals = self._kv_transfers[topology.value] = [0, 0.0, 0.0]
        totals[0] += 1
        totals[1] += seconds
        totals[2] += nbytes

    def sample(self, now_s: float, ready_by_pool: dict[str, int]) -> None:
        gpus = sum(life.spec.gpus for life in self._lives.values() if life.stop_s is None)
        operator_gpus = float(sum(span.gpus for spans in self._open_spans.values() for span in spans.values()))
        # Keyed by (model, region) while counting; the timeline names pools "model/region".
        arrivals: dict[str, int] = {}
        for (model, region), n in self._arrivals_since.items():
            pool = f"{model}/{region}"
            arrivals[pool] = arrivals.get(pool, 0) + n
        self.timeline.append(TimelinePoint(now_s, arrivals, dict(ready_by_pool), gpus, operator_gpus))
        self._arrivals_since = {}

    # -- summary -------------------------------------------------------------------------------

    def latencies(self, tier: str, metric: Literal["ttft", "tbt", "e2e"]) -> list[float]:
        """The completed requests' `metric` latencies (s) of `tier`, sorted; empty for an unseen tier."""
        totals = self._tiers.get(tier)
        return sorted(totals.latencies.of(metric)) if totals is not None else []

    def finish(self, end_s: float, running: dict[str, SimEngine]) -> None:
        for instance_id, engine in running.items():
            self.engine_stopped(instance_id, engine, end_s)

    def _peak_gpus(self, end_s: float) -> int | float:  # not `float`: mypyc would coerce the int
        """The most GPUs held at once (loading included): a sweep over every engine's start and stop and
        every operator replica span's (their GPU-equivalents), as `gpu_hours` counts them. An int when
        no operator replicas ran."""
        changes: list[tuple[float, float]] = []
        for life in self._lives.values():
            changes.append((life.start_s, life.spec.gpus))
            changes.append((life.stop_s if life.stop_s is not None else end_s, -life.spec.gpus))
        for span in self._spans:
            stop_s = span.stop_s if span.stop_s is not None else end_s
            if stop_s > span.start_s:
                changes.append((span.start_s, span.gpus))
                changes.append((stop_s, -span.gpus))
        held = peak = 0.0
        for _, delta in sorted(changes):  # at equal times a stop (negative) comes before a start
            held += delta
            peak = max(peak, held)
        return round(peak, 6) if self._spans else int(round(peak))

    def summary(self, end_s: float) -> dict[str, Any]:
        counts = {"requests": 0, "completed": 0, "dropped": 0, "met": 0}
        tiers: dict[str, Any] = {}
        for name, t in sorted(self._tiers.items()):
            tiers[name] = _latency_block(t.requests, t.completed, t.dropped, t.met, latency_figures([t.latencies]))
            spec = self.tiers.get(name)
            if spec is not None and spec.deadline_s is not None:
                # a deadline tier is judged on finishing by its deadline alone (RequestOutcome.meets): its
                # attainment is its deadline attainment, named so
                tiers[name]["deadline_s"] = spec.deadline_s
                tiers[name]["deadline_attainment"] = tiers[name]["slo_attainment"]
            for attr in counts:
                counts[attr] += getattr(t, attr)
        everyone = latency_figures([t.latencies for t in self._tiers.values()])
        gpu_s = energy_j = busy_gpu_s = cost = scaling_gpu_s = 0.0
        hit_tokens = queried_tokens = host_hit_tokens = 0
        pools: dict[str, _PoolTotals] = {}
        for life in self._lives.values():
            hit_tokens += life.prefix_hit_tokens
            host_hit_tokens += life.prefix_host_hit_tokens
            queried_tokens += life.prefix_queried_tokens
            held_s = (life.stop_s if life.stop_s is not None else end_s) - life.start_s
            gpus = life.spec.gpus
            gpu_s += held_s * gpus
            busy_gpu_s += life.busy_s * gpus
            energy_j += life.energy_j
            cost += held_s / 3600 * gpus * life.price_usd_per_gpu_h
            scaling_gpu_s += min(life.load_s, held_s) * gpus
            pool = str(PoolKey(life.spec.model, life.region, life.spec.role))
            totals = pools.get(pool)
            if totals is None:
                totals = pools[pool] = _PoolTotals()
            totals.add(life, held_s)
        base_energy_j = energy_j
        energy_by_stage: dict[str, float] = {}
        replica_gpu_s = 0.0
        for span in self._spans:
            held_s = (span.stop_s if span.stop_s is not None else end_s) - span.start_s
            if held_s <= 0:
                continue
            sku = self.sku_of(span.sku)
            busy_s = min(span.busy_s, held_s)
            joules = span.gpus * (held_s * sku.idle_power_w + busy_s * (sku.max_power_w - sku.idle_power_w))
            replica_gpu_s += held_s * span.gpus
            gpu_s += held_s * span.gpus
            busy_gpu_s += busy_s * span.gpus
            energy_j += joules
            cost += held_s / 3600 * span.gpus * span.price_usd_per_gpu_h
            energy_by_stage[span.stage] = energy_by_stage.get(span.stage, 0.0) + joules
            totals = pools.get(span.pool)
            if totals is None:
                totals = pools[span.pool] = _PoolTotals()
            totals.gpu_s += held_s * span.gpus
            totals.busy_gpu_s += busy_s * span.gpus
            totals.energy_j += joules  # the pool's energy has its replicas', as the run's total does
            totals.peak_flop += held_s * span.gpus * sku.peak_tflops * 1e12
        flops = sum(totals.flops for totals in pools.values())
        peak_flop = sum(totals.peak_flop for totals in pools.values())
        result = _latency_block(counts["requests"], counts["completed"], counts["dropped"], counts["met"],
                                everyone)
        # Dropped requests per cause (opscale.runtime.sim.world.DROP_CAUSES), largest first.
        result["dropped_by_cause"] = dict(sorted(self._dropped_by_cause.items(), key=lambda kv: (-kv[1], kv[0])))
        result.update({
            "gpu_hours": gpu_s / 3600,
            "mean_gpus": gpu_s / end_s if end_s > 0 else 0.0,
            "peak_gpus": self._peak_gpus(end_s),
            "cost_usd": cost,
            "usd_per_m_output_tokens": cost / self._output_tokens * 1e6 if self._output_tokens else None,
            "energy_kwh": energy_j / 3.6e6,
            "mean_gpu_util": busy_gpu_s / gpu_s if gpu_s else 0.0,  # time busy, as nvidia-smi (module docstring)
            "mean_sm_activity": flops / peak_flop if peak_flop else 0.0,  # compute used / peak
            # Instances started during the run, by where their weights came from.
            "cold_starts": sum(1 for source in self._loads.values() if source == "cold"),
            "warm_migrations": sum(1 for source in self._loads.values() if source == "warm"),
            "weights_staged": self._weights_staged,
            "scaling_gpu_s": scaling_gpu_s + self._replica_scaling_gpu_s,  # operator replicas' loading included
            "scaling_actions": self._scaling_actions,
            "oscillations": _oscillations_per_hour(self._replica_history, end_s),
            # Prompt tokens served from engines' prefix caches over prompt tokens looked up (0 when
            # prefix caching is off: nothing is looked up).
            "prefix_hit_rate": hit_tokens / queried_tokens if queried_tokens else 0.0,
            "prefix_hit_tokens": hit_tokens,  # from GPU memory
            "prefix_host_hit_tokens": host_hit_tokens,  # loaded back from host memory (EngineConfig.host_kv_cache_gb)
            "tiers": tiers,
            "pools": {name: pools[name].figures(end_s) for name in sorted(pools)},
            # model -> tier -> SLO attainment of its requests (the tiers' figures, split by model)
            "slo_by_model": _slo_by_model(self._by_model),
        })
        if self._spans:  # operator-level runs only (see the module docstring)
            result["operator_replica_gpu_hours"] = replica_gpu_s / 3600
            result["energy_kwh_by_operator"] = {"base": base_energy_j / 3.6e6,
                                                **{stage: j / 3.6e6 for stage, j in sorted(energy_by_stage.items())}}
        if self._kv_transfers:  # only runs with a disaggregated deployment move KV between instances
            result["kv_transfers"] = {topology: {"count": int(n), "mean_s": total_s / n, "gb": nbytes / 1e9,
                                                 "gbps": _gbps(nbytes, total_s)}
                                      for topology, (n, total_s, nbytes) in sorted(self._kv_transfers.items())}
            moved = [sum(t[i] for t in self._kv_transfers.values()) for i in range(3)]
            result["kv_transfer_mean_s"] = moved[1] / moved[0]
            result["kv_effective_gbps"] = _gbps(moved[2], moved[1])
        if self.vm_fleet is not None:  # VM runs only: what the cloud billed, boots, preemptions
            result["vms"] = self.vm_fleet.summary(end_s, self._drops)
        return result


def _close(span: _ReplicaSpan, engine: SimEngine, now_s: float) -> None:
    span.stop_s = now_s
    span.busy_s = max(0.0, engine.busy_s - span.engine_busy_at_start_s)


def _latency_block(requests: int, completed: int, dropped: int, met: int,
                   figures: dict[str, float | None]) -> dict[str, Any]:
    """Counts, latency figures (opscale.reporting.latencies) and SLO attainment of a set of requests."""
    return {
        "requests": requests, "completed": completed, "dropped": dropped, **figures,
        "slo_attainment": met / requests if requests else 1.0,
    }


def _slo_by_model(counts: dict[tuple[str, str], list[int]]) -> dict[str, dict[str, float]]:
    out: dict[str, dict[str, float]] = {}
    for (model, tier), (requests, met) in sorted(counts.items()):
        out.setdefault(model, {})[tier] = met / requests if requests else 1.0
    return out


def _gbps(nbytes: float, seconds: float) -> float | None:
    """Effective bandwidth, GB/s: bytes moved over the seconds the moves took (None when they took none)."""
    return nbytes / seconds / 1e9 if seconds > 0 else None


def _oscillations_per_hour(history: dict[str, list[int]], end_s: float) -> float:
    """Direction changes of each pool's replica count, summed over pools, per hour of run."""
    changes = 0
    for series in history.values():
        last_dir = 0
        for a, b in zip(series, series[1:], strict=False):
            d = (b > a) - (b < a)
            if d and last_dir and d != last_dir:
                changes += 1
            if d:
                last_dir = d
    return changes / (end_s / 3600) if end_s > 0 else 0.0

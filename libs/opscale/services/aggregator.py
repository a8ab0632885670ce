"""The aggregator's state machine: request records and instance metrics in, time windows out.

Records are bucketed by (model, origin region, tier) into slots of `publish_interval_s` (10 s) by finish
time; a slot keeps counts, token sums and log-bucketed latency histograms (opscale.stats.LogHistogram,
1% relative accuracy). Every `publish_interval_s` it merges the slots of each window length (10 s,
1 min, 5 min by default) into counts, rates, TTFT / TBT / E2E percentiles and SLO attainment, publishes
them and stores them. The cost of a publish is one merge per slot and occupied bucket, not a sort of
every record in the window, so it stays flat as traffic grows. Metric hygiene lives here, not in
policies: the newest heartbeat per agent wins, an agent silent for twice its expected interval is
dropped, and non-finite values are normalised once.

Example: 30 records finishing inside a 10 s window with 400 prompt tokens each give arrival_rps 3.0 and
prompt_tokens_per_s 1200.0.

Pool utilisation (`PoolUtilisation`, per model, region and role): at every publish it samples the fresh
heartbeats' serving instances (ready or draining) of each pool, and each window is the merge of the
samples of its slots: GPU utilisation (time busy, as nvidia-smi) and SM activity (compute used over the
peak) as means over the GPUs sampled, token rates as the mean of the sampled pool totals. Each instance's
figures are already means over its engine's report window, so a 10 s window is one sample and a 1-minute
window six. Example: samples of one 2-GPU instance at busy 1.0 and of it and a 1-GPU one at 1.0 and 0.4
give gpu_util (2 + 2 + 0.4) / 5 = 0.88.
"""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Mapping
from dataclasses import dataclass, field

from pydantic import BaseModel, Field, model_validator

from opscale.model import DEFAULT_TIERS, InstanceState, InstanceStatus, RequestOutcome, Role, TierSpec
from opscale.services import subjects
from opscale.services.actions import Action, Publish, Store
from opscale.services.events import AgentHeartbeat, Event, PoolUtilisation, RequestFinished, WindowStats
from opscale.stats import LogHistogram, finite_or_none


class AggregatorConfig(BaseModel):
    windows_s: tuple[float, ...] = Field((10.0, 60.0, 300.0), description="Window lengths to summarise")
    publish_interval_s: float = Field(10.0, gt=0, description="How often windows are published; also the slot "
                                      "width, so every window must be a whole number of it")
    heartbeat_interval_s: float = Field(2.0, gt=0, description="Agents' expected heartbeat period")
    window_ttl_s: float = Field(900.0, gt=0, description="Lifetime of stored windows")
    models: list[str] = Field(default_factory=list, description="Models deployed even while no instance runs; "
                              "with the models of every heartbeat seen, the only ones windowed (a record of "
                              "another model is counted and dropped)")

    @model_validator(mode="after")
    def _windows_are_whole_slots(self) -> AggregatorConfig:
        for w in self.windows_s:
            slots = w / self.publish_interval_s
            if w <= 0 or abs(slots - round(slots)) > 1e-9:
                raise ValueError(f"windows_s: {w} is not a positive multiple of publish_interval_s "
                                 f"({self.publish_interval_s})")
        return self


@dataclass(slots=True)
class _Slot:
    """Everything the windows need from the records that finished in one slot."""

    index: int
    requests: int = 0
    completed: int = 0
    met: int = 0
    prompt_tokens: int = 0
    output_tokens: int = 0
    ttft: LogHistogram = field(default_factory=LogHistogram)
    tbt: LogHistogram = field(default_factory=LogHistogram)
    e2e: LogHistogram = field(default_factory=LogHistogram)


@dataclass(slots=True)
class _PoolSample:
    """One publish's view of one pool's serving instances: GPU-weighted sums of the two utilisations,
    totals of the token rates."""

    index: int
    instances: int = 0
    gpus: int = 0
    busy_gpus: float = 0.0
    sm_gpus: float = 0.0
    decode_tps: float = 0.0
    prefill_tps: float = 0.0
    prefill_missed_tps: float = 0.0

    def add(self, st: InstanceStatus) -> None:
        self.instances += 1
        self.gpus += st.tp
        self.busy_gpus += (finite_or_none(st.busy_frac) or 0.0) * st.tp
        self.sm_gpus += (finite_or_none(st.sm_activity) or 0.0) * st.tp
        self.decode_tps += finite_or_none(st.decode_tps) or 0.0
        self.prefill_tps += finite_or_none(st.prefill_tps) or 0.0
        self.prefill_missed_tps += finite_or_none(st.prefill_missed_tps) or 0.0


_SERVING = (InstanceState.READY, InstanceState.DRAINING)


class AggregatorCore:
    """`handle(event, now_s)` / `tick(now_s)` -> actions. See the module docstring."""

    name = "aggregator"

    def __init__(self, config: AggregatorConfig | None = None, tiers: Mapping[str, TierSpec] | None = None) -> None:
        self.config = config or AggregatorConfig()
        self.tiers = dict(tiers) if tiers is not None else dict(DEFAULT_TIERS)
        self._slots: dict[tuple[str, str, str], deque[_Slot]] = {}
        self._agents: dict[str, AgentHeartbeat] = {}
        self._pool_samples: dict[tuple[str, str, Role], deque[_PoolSample]] = {}
        self._seen: set[str] = set()
        self._seen_order: deque[str] = deque()
        self._next_publish_s: float | None = None
        self._started_s: float | None = None
        # Defence in depth behind the router's own check: a record of an unknown model or tier is
        # dropped, never given windows (and Redis keys) of its own. Models are the configured ones and
        # those any heartbeat has listed; until one is known (no config, no heartbeat yet) none is refused.
        self._known_models: set[str] = set(self.config.models)
        self.dropped_unknown: dict[str, int] = {"model": 0, "tier": 0}

    def handle(self, event: Event, now_s: float) -> list[Action]:
        match event:
            case RequestFinished(outcome=outcome):
                self._add(outcome, now_s)
            case AgentHeartbeat():
                self._known_models.update(st.model for st in event.instances)
                known = self._agents.get(event.agent_id)
                if known is None or event.at_s >= known.at_s:  # newest timestamp wins
                    self._agents[event.agent_id] = event
        return []

    def observed_since(self, t_s: float) -> None:
        """The records since `t_s` are all here (a restart read them back): rates are over the time since
        then, as the process that first started at `t_s` would have reported them."""
        self._started_s = t_s

    def tick(self, now_s: float) -> list[Action]:
        if self._next_publish_s is None:
            if self._started_s is None:
                self._started_s = now_s
            self._next_publish_s = now_s + self.config.publish_interval_s
            return []
        if now_s < self._next_publish_s:
            return []
        self._next_publish_s = now_s + self.config.publish_interval_s
        self._evict(now_s)
        actions: list[Action] = []
        for (model, region, tier), slots in sorted(self._slots.items()):
            for window_s in self.config.windows_s:
                stats = self.summarise(model, region, tier, window_s, now_s, slots)
                actions.append(Publish(subjects.windows(region, model), stats))
                actions.append(Store(f"window:{int(window_s)}:{model}:{region}:{tier}", stats))
        actions.extend(self._pool_actions(now_s))
        actions.extend(self._utilisation_actions(now_s))
        return actions

    # -- records -------------------------------------------------------------------------------

    def _slot_of(self, t_s: float) -> int:
        # slot i holds finish times in (i*w, (i+1)*w], so a window ending at a publish covers whole slots
        return math.ceil(t_s / self.config.publish_interval_s - 1e-9) - 1

    def _add(self, outcome: RequestOutcome, now_s: float) -> None:
        # Runs once per request: lookups come before creations, and the common case (the newest slot
        # of a known key) is tried before the general search.
        if outcome.tier not in self.tiers:
            self.dropped_unknown["tier"] += 1
            return
        if self._known_models and outcome.model not in self._known_models:
            self.dropped_unknown["model"] += 1
            return
        request_id = outcome.request_id
        seen = self._seen
        if request_id in seen:
            return  # at-least-once delivery: a redelivered record counts once
        seen.add(request_id)
        seen_order = self._seen_order
        seen_order.append(request_id)
        while len(seen_order) > 200_000:
            seen.discard(seen_order.popleft())
        finish = outcome.finish_s if outcome.finish_s is not None else now_s
        index = math.ceil(finish / self.config.publish_interval_s - 1e-9) - 1  # _slot_of, written out
        key = (outcome.model, outcome.region, outcome.tier)
        slots = self._slots.get(key)
        if slots is None:
            slots = self._slots[key] = deque()
        if slots and slots[-1].index == index:
            slot = slots[-1]
        else:
            slot = next((s for s in reversed(slots) if s.index == index), None)
            if slot is None:
                slot = _Slot(index)
                slots.append(slot)
                if len(slots) > 1 and slots[-2].index > index:  # a late record: keep slots ordered
                    ordered = sorted(slots, key=lambda s: s.index)
                    slots.clear()
                    slots.extend(ordered)
        slot.requests += 1
        spec = self.tiers.get(outcome.tier)
        if spec is not None and outcome.meets(spec):
            slot.met += 1
        if outcome.status != "ok":
            return
        slot.completed += 1
        slot.prompt_tokens += outcome.prompt_tokens
        slot.output_tokens += outcome.output_tokens
        isfinite = math.isfinite
        if (value := outcome.ttft_s) is not None and isfinite(value):
            slot.ttft.add(value)
        if (value := outcome.tbt_s) is not None and isfinite(value):
            slot.tbt.add(value)
        if (value := outcome.e2e_s) is not None and isfinite(value):
            slot.e2e.add(value)

    def _evict(self, now_s: float) -> None:
        oldest = self._slot_of(now_s) - round(max(self.config.windows_s) / self.config.publish_interval_s)
        for key in list(self._slots):
            slots = self._slots[key]
            while slots and slots[0].index <= oldest:
                slots.popleft()
            if not slots:
                del self._slots[key]

    def summarise(self, model: str, region: str, tier: str, window_s: float, now_s: float,
                  slots: deque[_Slot]) -> WindowStats:
        last = self._slot_of(now_s)
        first = last - round(window_s / self.config.publish_interval_s) + 1
        inside = [s for s in slots if first <= s.index <= last]
        ttft, tbt, e2e = LogHistogram(), LogHistogram(), LogHistogram()
        requests = completed = met = prompt = output = 0
        for s in inside:
            requests += s.requests
            completed += s.completed
            met += s.met
            prompt += s.prompt_tokens
            output += s.output_tokens
            ttft.merge(s.ttft)
            tbt.merge(s.tbt)
            e2e.merge(s.e2e)
        attained = met / requests if requests and tier in self.tiers else None
        # Rates over the time actually observed: a 5-minute window one minute after start-up covers one
        # minute, and dividing by five would report a ramp from zero that never happened.
        observed_s = window_s if self._started_s is None else max(
            self.config.publish_interval_s, min(window_s, now_s - self._started_s))
        return WindowStats(
            model=model, region=region, tier=tier, window_s=window_s, end_s=now_s,
            requests=requests, completed=completed, arrival_rps=requests / observed_s,
            prompt_tokens_per_s=prompt / observed_s, output_tokens_per_s=output / observed_s,
            ttft_p50_s=ttft.quantile(50), ttft_p99_s=ttft.quantile(99),
            tbt_p50_s=tbt.quantile(50), tbt_p99_s=tbt.quantile(99),
            e2e_p50_s=e2e.quantile(50), e2e_p99_s=e2e.quantile(99),
            slo_attainment=attained,
        )

    # -- instance metrics ----------------------------------------------------------------------

    def _pool_actions(self, now_s: float) -> list[Action]:
        stale_after = 2 * self.config.heartbeat_interval_s
        for agent_id in [a for a, hb in self._agents.items() if now_s - hb.at_s > stale_after]:
            del self._agents[agent_id]
        pools: dict[tuple[str, str], dict[str, float]] = {}
        for hb in self._agents.values():
            for st in hb.instances:
                pool = pools.setdefault((st.model, hb.region), {
                    "ready": 0, "loading": 0, "draining": 0, "queued": 0, "running": 0,
                    "tokens_per_s": 0.0, "power_w": 0.0, "kv_used_frac_sum": 0.0, "busy_frac_sum": 0.0})
                pool[st.state.value if st.state != InstanceState.STOPPED else "draining"] += 1
                pool["queued"] += st.queued
                pool["running"] += st.running
                pool["tokens_per_s"] += finite_or_none(st.tokens_per_s) or 0.0
                pool["power_w"] += finite_or_none(st.power_w) or 0.0
                if st.state == InstanceState.READY:
                    pool["kv_used_frac_sum"] += finite_or_none(st.kv_used_frac) or 0.0
                    pool["busy_frac_sum"] += finite_or_none(st.busy_frac) or 0.0
        actions: list[Action] = []
        for (model, region), pool in sorted(pools.items()):
            ready = max(1, int(pool["ready"]))
            value = {k: v for k, v in pool.items() if not k.endswith("_sum")}
            value["kv_used_frac"] = pool["kv_used_frac_sum"] / ready
            value["busy_frac"] = pool["busy_frac_sum"] / ready
            value["at_s"] = now_s
            actions.append(Store(f"pool:{model}:{region}", value))
        return actions

    # -- pool utilisation ----------------------------------------------------------------------

    def _utilisation_actions(self, now_s: float) -> list[Action]:
        """Sample the pools (after _pool_actions dropped the silent agents), then publish and store each
        pool's windows."""
        index = self._slot_of(now_s)
        fresh: dict[tuple[str, str, Role], _PoolSample] = {}
        for hb in self._agents.values():
            for st in hb.instances:
                if st.state in _SERVING:
                    key = (st.model, hb.region, st.role)
                    sample = fresh.get(key)
                    if sample is None:
                        sample = fresh[key] = _PoolSample(index)
                    sample.add(st)
        for key, sample in fresh.items():
            samples = self._pool_samples.setdefault(key, deque())
            if samples and samples[-1].index == index:
                samples.pop()  # two publishes in one slot: the newer view wins
            samples.append(sample)
        oldest = index - round(max(self.config.windows_s) / self.config.publish_interval_s)
        actions: list[Action] = []
        for key in sorted(self._pool_samples):
            samples = self._pool_samples[key]
            while samples and samples[0].index <= oldest:
                samples.popleft()
            if not samples:
                del self._pool_samples[key]
                continue
            model, region, role = key
            for window_s in self.config.windows_s:
                first = index - round(window_s / self.config.publish_interval_s) + 1
                stats = _merge(model, region, role, window_s, now_s, [s for s in samples if s.index >= first])
                if stats is not None:
                    actions.append(Publish(subjects.pool_utilisation(region, model), stats))
                    actions.append(Store(f"poolutil:{int(window_s)}:{model}:{region}:{role}", stats))
        return actions


def _merge(model: str, region: str, role: Role, window_s: float, end_s: float,
           samples: list[_PoolSample]) -> PoolUtilisation | None:
    """One window of a pool from its samples (see the module docstring); None when it has none."""
    if not samples:
        return None
    n = len(samples)
    gpus = sum(s.gpus for s in samples)
    return PoolUtilisation(
        model=model, region=region, role=role, window_s=window_s, end_s=end_s,
        instances=sum(s.instances for s in samples) / n,
        gpu_util=sum(s.busy_gpus for s in samples) / gpus if gpus else 0.0,
        sm_activity=sum(s.sm_gpus for s in samples) / gpus if gpus else 0.0,
        decode_tps=sum(s.decode_tps for s in samples) / n, prefill_tps=sum(s.prefill_tps for s in samples) / n,
        prefill_missed_tps=sum(s.prefill_missed_tps for s in samples) / n)

"""The aggregator's state machine: request records and instance metrics in, time windows out.

Records are bucketed by (model, origin region, tier) and kept for the longest window. Every
`publish_interval_s` it summarises each key over each window length (10 s, 1 min, 5 min by default):
counts, rates, TTFT / TBT / E2E percentiles and SLO attainment, publishes them and stores them. Metric
hygiene lives here, not in policies: the newest heartbeat per agent wins, an agent silent for twice its
expected interval is dropped, and non-finite values are normalised once.

Example: 30 records finishing inside a 10 s window with 400 prompt tokens each give arrival_rps 3.0 and
prompt_tokens_per_s 1200.0.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass

from pydantic import BaseModel, Field

from opscale.model import DEFAULT_TIERS, InstanceState, RequestOutcome, TierSpec
from opscale.services import subjects
from opscale.services.actions import Action, Publish, Store
from opscale.services.events import AgentHeartbeat, Event, RequestFinished, WindowStats
from opscale.stats import finite_or_none, percentile_sorted


class AggregatorConfig(BaseModel):
    windows_s: tuple[float, ...] = Field((10.0, 60.0, 300.0), description="Window lengths to summarise")
    publish_interval_s: float = Field(10.0, gt=0, description="How often windows are published")
    heartbeat_interval_s: float = Field(2.0, gt=0, description="Agents' expected heartbeat period")
    window_ttl_s: float = Field(900.0, gt=0, description="Lifetime of stored windows")


@dataclass(frozen=True, slots=True)
class _Point:
    """One record, reduced once on arrival to what the windows need (not recomputed per window)."""

    finish_s: float
    ok: bool
    met: bool
    prompt_tokens: int
    output_tokens: int
    ttft_s: float | None
    tbt_s: float | None
    e2e_s: float | None


class AggregatorCore:
    """`handle(event, now_s)` / `tick(now_s)` -> actions. See the module docstring."""

    name = "aggregator"

    def __init__(self, config: AggregatorConfig | None = None, tiers: dict[str, TierSpec] | None = None) -> None:
        self.config = config or AggregatorConfig()
        self.tiers = tiers or DEFAULT_TIERS
        self._points: dict[tuple[str, str, str], deque[_Point]] = {}
        self._agents: dict[str, AgentHeartbeat] = {}
        self._seen: set[str] = set()
        self._seen_order: deque[str] = deque()
        self._next_publish_s: float | None = None

    def handle(self, event: Event, now_s: float) -> list[Action]:
        match event:
            case RequestFinished(outcome=outcome):
                self._add(outcome, now_s)
            case AgentHeartbeat():
                known = self._agents.get(event.agent_id)
                if known is None or event.at_s >= known.at_s:  # newest timestamp wins
                    self._agents[event.agent_id] = event
        return []

    def tick(self, now_s: float) -> list[Action]:
        if self._next_publish_s is None:
            self._next_publish_s = now_s + self.config.publish_interval_s
            return []
        if now_s < self._next_publish_s:
            return []
        self._next_publish_s = now_s + self.config.publish_interval_s
        self._evict(now_s)
        actions: list[Action] = []
        for (model, region, tier), points in sorted(self._points.items()):
            for window_s in self.config.windows_s:
                stats = self.summarise(model, region, tier, window_s, now_s, points)
                actions.append(Publish(subjects.windows(region, model), stats))
                actions.append(Store(f"window:{int(window_s)}:{model}:{region}:{tier}", stats))
        actions.extend(self._pool_actions(now_s))
        return actions

    # -- records -------------------------------------------------------------------------------

    def _add(self, outcome: RequestOutcome, now_s: float) -> None:
        if outcome.request_id in self._seen:
            return  # at-least-once delivery: a redelivered record counts once
        self._seen.add(outcome.request_id)
        self._seen_order.append(outcome.request_id)
        while len(self._seen_order) > 200_000:
            self._seen.discard(self._seen_order.popleft())
        finish = outcome.finish_s if outcome.finish_s is not None else now_s
        key = (outcome.model, outcome.region, outcome.tier)
        spec = self.tiers.get(outcome.tier)
        ok = outcome.status == "ok"
        point = _Point(finish, ok, spec is not None and outcome.meets(spec), outcome.prompt_tokens,
                       outcome.output_tokens, outcome.ttft_s if ok else None, outcome.tbt_s if ok else None,
                       outcome.e2e_s if ok else None)
        self._points.setdefault(key, deque()).append(point)

    def _evict(self, now_s: float) -> None:
        horizon = now_s - max(self.config.windows_s)
        for key in list(self._points):
            points = self._points[key]
            while points and points[0].finish_s < horizon:
                points.popleft()
            if not points:
                del self._points[key]

    def summarise(self, model: str, region: str, tier: str, window_s: float, now_s: float,
                  points: deque[_Point]) -> WindowStats:
        start = now_s - window_s
        inside = [p for p in points if start < p.finish_s <= now_s]
        ok = [p for p in inside if p.ok]
        ttft = sorted(p.ttft_s for p in ok if p.ttft_s is not None)
        tbt = sorted(p.tbt_s for p in ok if p.tbt_s is not None)
        e2e = sorted(p.e2e_s for p in ok if p.e2e_s is not None)
        attained = None
        if inside and tier in self.tiers:
            attained = sum(p.met for p in inside) / len(inside)
        return WindowStats(
            model=model, region=region, tier=tier, window_s=window_s, end_s=now_s,
            requests=len(inside), completed=len(ok),
            arrival_rps=len(inside) / window_s,
            prompt_tokens_per_s=sum(p.prompt_tokens for p in ok) / window_s,
            output_tokens_per_s=sum(p.output_tokens for p in ok) / window_s,
            ttft_p50_s=percentile_sorted(ttft, 50), ttft_p99_s=percentile_sorted(ttft, 99),
            tbt_p50_s=percentile_sorted(tbt, 50), tbt_p99_s=percentile_sorted(tbt, 99),
            e2e_p50_s=percentile_sorted(e2e, 50), e2e_p99_s=percentile_sorted(e2e, 99),
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

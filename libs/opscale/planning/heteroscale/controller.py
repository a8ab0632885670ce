"""HeteroScale's metric-driven controller for one disaggregated service (one model in one region):
proportional control on a throughput signal, tiered negative feedback on latency, and the stability
rules around both (PAPERS.md §3.5). Pure: it reads an observation and the time, returns a decision and
its new state, and knows nothing of how deployments are declared, placed or routed.

Laws, in the order they are tried:
1. Bounds: counts outside the role bounds move inside them at once (no cooldown starts), and the laws
   below start from there.
2. Negative feedback: when TBT p99 (or TTFT p99) reaches a tier's multiple of its objective, capacity
   grows by the tier's step of the current instances (at least one): +10% at 1.1x, +20% at 1.3x by
   default. A tier fires at its threshold (>=, to a relative 1e-9), not below it. The biggest step over
   both signals wins, and a bigger proportional scale-out wins over it. Feedback waits for the scale-out
   cooldown and for every instance to be ready (capacity still loading has not shown its effect yet);
   while a breach lasts, no scale-in happens, whatever the throughput says.
3. Proportional: the required instances are signal / per-instance target (both roles counted alike).
   Scale out when the required instances exceed the current total by more than `scale_out_above`,
   scale in when they fall below it by more than `scale_in_below` (two triggers: hysteresis; between
   them the deadband, where nothing changes). A move closes a share of the gap to the required total
   (damping, at least one instance), so it never passes it.
4. Ratio maintenance: a service whose counts are off the target split of their own total (an instance
   failed, bounds changed) is rebalanced at the same total once nothing is loading and the last change
   is a scale-out cooldown old.
Every count comes from `ratio.arrange`, so prefill and decode always move together at the ratio.

Cooldowns (PAPERS.md §5 "cooldown 3 min out, 10 min in"), read as: a scale-out waits 3 min after the
previous scale-out (time for new instances to load and the signal to reflect them); a scale-in waits
10 min after any change, out or in, so a scale-in never follows a scale-out within 10 min and removals
come slowly. A scale-in also waits while any instance is loading. Counts compared are totals (ready plus
loading), so capacity already ordered is never ordered twice.

Outside the controller, because they need the planner and the router: soft scale-in (withdraw from
discovery, watch, restore or stop: opscale.planning.soft_scale_in, asked for by the `heteroscale`
policy) and the Ready-ratio gate on service discovery (opscale.routing.ready_gate, in the router).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from typing import Protocol

from opscale.model import LatencyObjective
from opscale.planning.heteroscale.config import FeedbackTier, HeteroScaleConfig, LatencyFeedback
from opscale.planning.heteroscale.ratio import RoleBounds, arrange, covering_total

# A tier fires at its threshold: 0.11 s against 1.1 x 0.1 s (0.11000000000000001 in floating point) is at it.
_THRESHOLD_REL_TOL = 1e-9


@dataclass(frozen=True, slots=True)
class ServiceObservation:
    """What the controller sees of one disaggregated service at one moment."""

    decode_tps: float  # output tokens/s of the decode pool
    prefill_missed_tps: float  # prompt tokens/s that missed the prefix cache
    prefill_ready: int
    prefill_total: int  # ready plus loading
    decode_ready: int
    decode_total: int
    objective: LatencyObjective
    tbt_p99_s: float | None = None  # None: unknown
    ttft_p99_s: float | None = None

    def __post_init__(self) -> None:
        for role in ("prefill", "decode"):
            ready, total = getattr(self, f"{role}_ready"), getattr(self, f"{role}_total")
            if ready < 0 or total < 0:
                raise ValueError(f"{role}_ready/{role}_total: counts must be >= 0, got {ready}/{total}")
            if ready > total:
                raise ValueError(f"{role}_ready ({ready}) exceeds {role}_total ({total})")

    @property
    def total(self) -> int:
        return self.prefill_total + self.decode_total

    @property
    def loading(self) -> int:
        return self.total - self.prefill_ready - self.decode_ready


@dataclass(frozen=True, slots=True)
class ControllerState:
    last_scale_out_s: float = -math.inf
    last_change_s: float = -math.inf


@dataclass(frozen=True, slots=True)
class ScaleDecision:
    """The desired counts of one service, why, the controller's new state and when to decide next."""

    prefill: int
    decode: int
    reason: str
    state: ControllerState
    next_decision_s: float


class ServiceController(Protocol):
    """What the planning wiring calls per service: the metric-driven controller or the periodic policy."""

    def initial_state(self) -> ControllerState: ...

    def decide(self, observation: ServiceObservation, state: ControllerState, now_s: float) -> ScaleDecision: ...


@dataclass(frozen=True, slots=True)
class _Breach:
    tier: str  # "moderate" or "severe"
    step: FeedbackTier
    text: str


class HeteroScaleController:
    def __init__(self, config: HeteroScaleConfig, bounds: RoleBounds | None = None) -> None:
        self.config = config
        # The deployment's role bounds (its prefill and decode pools' min/max_replicas); none: unbounded.
        self.bounds = bounds if bounds is not None else RoleBounds()

    def initial_state(self) -> ControllerState:
        return ControllerState()

    def arrange(self, total: int) -> tuple[int, int]:
        return arrange(total, self.config.pd_ratio, self.bounds)

    def required_instances(self, observation: ServiceObservation) -> float | None:
        """The signal over the per-instance target; None when the signal is not a usable number."""
        cfg = self.config
        signal = observation.decode_tps if cfg.signal == "decode_tps" else observation.prefill_missed_tps
        target = cfg.target_per_instance
        if target is None or not math.isfinite(signal) or signal < 0:
            return None
        return signal / target

    def decide(self, observation: ServiceObservation, state: ControllerState, now_s: float) -> ScaleDecision:
        cfg = self.config
        observed = (observation.prefill_total, observation.decode_total)
        # Counts outside the role bounds move inside them at once, whatever else is decided; that move is
        # not load-driven, so it starts no cooldown.
        current = observed if self._within_bounds(observed) else self.arrange(sum(observed))
        total = sum(current)
        counts = f"{current[0]}P/{current[1]}D"
        bounds_note = "" if current == observed else f"bounds: {observed[0]}P/{observed[1]}D -> {counts}; "

        def decision(pair: tuple[int, int], reason: str) -> ScaleDecision:
            new_state = state
            if sum(pair) > total:
                new_state = ControllerState(last_scale_out_s=now_s, last_change_s=now_s)
            elif pair != current:
                new_state = replace(state, last_change_s=now_s)
            return ScaleDecision(pair[0], pair[1], bounds_note + reason, new_state, now_s + cfg.period_s)

        required = self.required_instances(observation)
        breach = self._worst_breach(observation)
        out_ready = now_s - state.last_scale_out_s >= cfg.scale_out_cooldown_s
        if breach is not None and out_ready and observation.loading == 0:
            grown = total + max(1, math.ceil(breach.step.capacity_step * total - 1e-9))
            pair = self.arrange(max(grown, self._step_towards(total, required, cfg.scale_out_step_fraction)))
            if sum(pair) > total:
                return decision(pair, f"feedback ({breach.tier}): {breach.text}: "
                                f"+{breach.step.capacity_step:.0%} {counts} -> {pair[0]}P/{pair[1]}D")

        if required is None:
            return decision(current, "hold: signal is not a finite non-negative number")
        signal_text = f"{cfg.signal} needs {required:.1f} instances, {total} serve"
        wanted = self.arrange(covering_total(required, self.config.pd_ratio))
        if required > total * (1 + cfg.scale_out_above) and sum(wanted) > total:
            if not out_ready:
                return decision(current, f"hold: {signal_text}, in scale-out cooldown")
            pair = self.arrange(self._step_towards(total, required, cfg.scale_out_step_fraction))
            return decision(pair, f"scale out: {signal_text}: {counts} -> {pair[0]}P/{pair[1]}D")
        if breach is not None:
            # Feedback overrides a proportional scale-in, and holds everything else while it cannot act.
            blocked = ("in scale-out cooldown" if not out_ready else
                       f"waits for {observation.loading} loading instances" if observation.loading else
                       "is at the role bounds")
            return decision(current, f"hold: {breach.text}; feedback {blocked}; no scale-in")
        if required < total * (1 - cfg.scale_in_below) and sum(wanted) < total:
            if observation.loading > 0:
                return decision(current, f"hold: {signal_text}, {observation.loading} instances loading")
            if now_s - state.last_change_s < cfg.scale_in_cooldown_s:
                return decision(current, f"hold: {signal_text}, in scale-in cooldown")
            pair = self.arrange(self._step_towards(total, required, cfg.scale_in_step_fraction))
            return decision(pair, f"scale in: {signal_text}: {counts} -> {pair[0]}P/{pair[1]}D")

        on_ratio = self.arrange(total)
        quiet = observation.loading == 0 and now_s - state.last_change_s >= cfg.scale_out_cooldown_s
        if on_ratio != current and quiet:
            return decision(on_ratio, f"rebalance to the P/D ratio: {counts} -> {on_ratio[0]}P/{on_ratio[1]}D")
        return decision(current, f"steady: {signal_text}")

    def _within_bounds(self, pair: tuple[int, int]) -> bool:
        b = self.bounds
        return b.min_prefill <= pair[0] <= b.max_prefill and b.min_decode <= pair[1] <= b.max_decode

    def _step_towards(self, total: int, required: float | None, fraction: float) -> int:
        """The total after one damped move towards the required total: a share of the gap, at least one
        instance, never past it."""
        if required is None:
            return total
        target = sum(self.arrange(covering_total(required, self.config.pd_ratio)))
        gap = target - total
        if gap == 0:
            return total
        step = max(1, math.ceil(abs(gap) * fraction - 1e-9))
        return total + step if gap > 0 else total - step

    def _worst_breach(self, observation: ServiceObservation) -> _Breach | None:
        cfg = self.config
        checks: list[tuple[str, float | None, float, LatencyFeedback | None]] = [
            ("TBT", observation.tbt_p99_s, observation.objective.tbt_slo_s, cfg.tbt_feedback),
            ("TTFT", observation.ttft_p99_s, observation.objective.ttft_slo_s, cfg.ttft_feedback),
        ]
        worst: _Breach | None = None
        for name, p99_s, objective_s, feedback in checks:
            if feedback is None or p99_s is None or not math.isfinite(p99_s):
                continue
            for tier, step in (("severe", feedback.severe), ("moderate", feedback.moderate)):
                if p99_s >= step.over_objective * objective_s * (1 - _THRESHOLD_REL_TOL):
                    if worst is None or step.capacity_step > worst.step.capacity_step:
                        worst = _Breach(tier, step, f"{name} p99 {p99_s * 1000:.0f} ms >= "
                                        f"{step.over_objective:g}x {objective_s * 1000:.0f} ms")
                    break
        return worst


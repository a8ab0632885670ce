"""The `heteroscale` planning policy (PAPERS.md §3.3-3.5): HeteroScale's per-service controllers wired to
the planner.

A service is one disaggregated deployment in one region: its prefill pool and its decode pool. Every
decision, for each service whose two pools the planner observes, the policy reads the service from them
(`observe_service`: measured decode TPS and cache-missed prefill TPS from the engines' heartbeats, TBT
p99 of the decode pool, TTFT p99 of the prefill pool, the objective from the tiers), runs its controller
(metric-driven HeteroScaleController or scheduled PeriodicController, per service, `params`) at the
controller's own period, and writes the decision back to both pools, so prefill and decode always move
together at the target P/D ratio. Replica bounds are the deployment's role pools'. State is kept per
service. The planner observes more often than a controller decides (every `interval_s`, 10 s, against
`period_s`, 30 s): the throughput signal a controller reads is the mean of the samples since its last
decision, so a decision reads its whole period rather than the engines' last report window.

Around the controllers:
- cold start: a metric-driven service with no discoverable instance (none ready or loading) and demand at
  the routers (requests held or arriving) starts at once, not at its next period, with the instances the
  routers' output tokens/s (or prompt tokens/s, on the prefill signal) call for, at least the smallest
  split its bounds allow with both roles; the controller's signal cannot, as no engine reports yet;
- soft scale-in: its scale-ins withdraw instances from discovery for `soft_scale_in_s` first
  (Effects.soft_scale_in_s, opscale.planning.soft_scale_in), restored at once if wanted back;
- Ready-ratio gate: it asks routers to gate each of its models at `ready_ratio_tolerance`
  (Effects.ready_ratio_tolerance, opscale.routing.ready_gate).

Unified deployments are refused by name when the policy is built: HeteroScale scales P/D pairs only, and
leaving a unified deployment at a fixed size instead would hide a configuration error.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from typing import Any

from opscale.model import LatencyObjective, Observation, PoolKey, Role
from opscale.planning.base import DeploymentSpec, Effects
from opscale.planning.heteroscale.config import HeteroScaleConfig
from opscale.planning.heteroscale.controller import (
    ControllerState,
    HeteroScaleController,
    ScaleDecision,
    ServiceController,
)
from opscale.planning.heteroscale.params import HeteroScaleSettings, parse_params
from opscale.planning.heteroscale.periodic import PeriodicController
from opscale.planning.heteroscale.pools import desired_pools, observe_service, pool_reasons, service_pools
from opscale.planning.heteroscale.ratio import RoleBounds, covering_total, prefill_share


@dataclass(frozen=True, slots=True)
class ServiceState:
    controller: ControllerState = field(default_factory=ControllerState)
    next_decision_s: float = -math.inf
    samples: tuple[tuple[float, float], ...] = ()  # (decode TPS, missed prefill TPS) since the last decision


@dataclass(frozen=True, slots=True)
class HeteroScaleState:
    services: dict[tuple[str, str], ServiceState] = field(default_factory=dict)  # (model, region) -> state


def role_bounds(deployment: DeploymentSpec) -> RoleBounds:
    """A disaggregated deployment's bounds per role, from its prefill and decode pools."""
    assert deployment.prefill is not None and deployment.decode is not None  # checked by the caller
    p, d = deployment.prefill, deployment.decode
    return RoleBounds(p.min_replicas, p.max_replicas, d.min_replicas, d.max_replicas)


class HeteroScalePolicy:
    name = "heteroscale"

    def __init__(self, deployments: list[DeploymentSpec], objective: LatencyObjective,
                 params: Mapping[str, Any] | None = None) -> None:
        unified = [d.model for d in deployments if not d.disaggregated]
        if unified:
            raise ValueError(f"it scales disaggregated (prefill/decode) deployments only; {unified} are unified: "
                             f"give them 'prefill' and 'decode' pools, or use 'reactive' for a unified fleet")
        self.objective = objective
        self.settings: HeteroScaleSettings
        self.settings, configs = parse_params(params or {}, [d.model for d in deployments])
        self.controllers: dict[str, ServiceController] = {}
        self.targets = {model: cfg for model, cfg in configs.items() if isinstance(cfg, HeteroScaleConfig)}
        for dep in deployments:
            cfg = configs[dep.model]
            bounds = role_bounds(dep)
            self.controllers[dep.model] = (HeteroScaleController(cfg, bounds) if isinstance(cfg, HeteroScaleConfig)
                                           else PeriodicController(cfg, bounds))

    def role_rps(self, model: str, role: Role, prompt_tokens: float, output_tokens: float) -> float | None:
        """Requests/s one instance of `role` carries at the service's curated target (None: a service
        without one, such as a periodic controller's). The target is per instance of the P/D group, a
        prefill_share of whose instances prefill, so each role's instance carries the group's rate over
        its role's share: an outer planner that prices the roles at this rate sizes them as this policy
        will (before the outer planner's own headroom). The signal's tokens per request are the output
        tokens for decode_tps, the prompt tokens for prefill_missed_tps (all of them missing the cache,
        the conservative case)."""
        cfg = self.targets.get(model)
        if cfg is None or cfg.target_per_instance is None:
            return None
        tokens = output_tokens if cfg.signal == "decode_tps" else prompt_tokens
        group_rps = cfg.target_per_instance / max(1.0, tokens)
        share = prefill_share(cfg.pd_ratio)
        return group_rps / (1.0 - share if role is Role.DECODE else share)

    def initial_state(self) -> HeteroScaleState:
        return HeteroScaleState()

    def decide(self, observation: Observation, state: HeteroScaleState, now_s: float) -> Effects:
        desired: dict[PoolKey, int] = {}
        reasons: dict[PoolKey, str] = {}
        services = dict(state.services)
        regions = sorted({k.region for k in observation.pools if k.model in self.controllers})
        for model, controller in sorted(self.controllers.items()):
            for region in regions:
                prefill_key, decode_key = service_pools(model, region)
                prefill, decode = observation.pools.get(prefill_key), observation.pools.get(decode_key)
                if prefill is None or decode is None:
                    continue  # one role has no host here: nothing to scale together
                seen = observe_service(prefill, decode, self.objective)
                st = services.get((model, region), ServiceState(controller.initial_state()))
                waiting = max(prefill.queued, decode.queued) > 0 or max(prefill.arrival_rps, decode.arrival_rps) > 0
                # With every instance withdrawn the cold start restores them (the planner restores
                # before it places), so requests never wait on a signal that cannot come.
                if isinstance(controller, HeteroScaleController) and seen.total == 0 and waiting:
                    decision = _cold_start(controller, decode.output_tokens_per_s, prefill.prompt_tokens_per_s,
                                           st.controller, now_s)
                    samples: tuple[tuple[float, float], ...] = ()
                elif now_s < st.next_decision_s:
                    pair = (seen.prefill_total, seen.decode_total)
                    decision = ScaleDecision(*pair, f"hold: next decision at {st.next_decision_s:.0f} s",
                                             st.controller, st.next_decision_s)
                    samples = (*st.samples, (seen.decode_tps, seen.prefill_missed_tps))
                else:
                    period = (*st.samples, (seen.decode_tps, seen.prefill_missed_tps))
                    seen = replace(seen, decode_tps=sum(s[0] for s in period) / len(period),
                                   prefill_missed_tps=sum(s[1] for s in period) / len(period))
                    decision = controller.decide(seen, st.controller, now_s)
                    samples = ()
                services[(model, region)] = ServiceState(decision.state, decision.next_decision_s, samples)
                desired.update(desired_pools(model, region, decision))
                reasons.update(pool_reasons(model, region, decision))
        tolerance = self.settings.ready_ratio_tolerance
        gates = dict.fromkeys(self.controllers, tolerance) if tolerance is not None else {}
        return Effects(desired, HeteroScaleState(services), reasons, soft_scale_in_s=self.settings.soft_scale_in_s,
                       ready_ratio_tolerance=gates)


def _cold_start(controller: HeteroScaleController, output_tps: float, prompt_tps: float, state: ControllerState,
                now_s: float) -> ScaleDecision:
    """A service with no instance and demand waiting: the instances the routers' token rate calls for
    (no engine reports a signal yet), at least the smallest split with both roles. Not a scale-out for
    the cooldown: the next decision, on the engines' own signal, may add more at once."""
    cfg = controller.config
    demand = output_tps if cfg.signal == "decode_tps" else prompt_tps
    target = cfg.target_per_instance or 1.0
    total = max(2, covering_total(demand / target, cfg.pd_ratio)) if math.isfinite(demand) and demand > 0 else 2
    pair = controller.arrange(total)
    reason = (f"cold start: no instance, demand waiting ({demand:.0f} {cfg.signal.replace('_tps', '')} tokens/s at "
              f"the routers) -> {pair[0]}P/{pair[1]}D")
    return ScaleDecision(pair[0], pair[1], reason, ControllerState(state.last_scale_out_s, now_s),
                         now_s + cfg.period_s)

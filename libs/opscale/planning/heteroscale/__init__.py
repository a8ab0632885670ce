"""HeteroScale's scaling policies for disaggregated (prefill/decode) services, as pure per-service
decision code: the metric-driven controller (proportional control on decode TPS or cache-missed prefill
TPS, tiered latency feedback, deadband, cooldowns, damping) and the periodic schedule (PAPERS.md §3.3-3.5).
`pools` maps a service's decision onto its prefill and decode pools; `policy` is the `heteroscale`
planning policy that runs them per service (registered in opscale.planning.registry), with `params` its
parameters (defaults and per-service overrides)."""

from opscale.planning.heteroscale.config import FeedbackTier, HeteroScaleConfig, LatencyFeedback
from opscale.planning.heteroscale.controller import (
    ControllerState,
    HeteroScaleController,
    ScaleDecision,
    ServiceController,
    ServiceObservation,
)
from opscale.planning.heteroscale.periodic import PeriodicConfig, PeriodicController, ScheduleEntry
from opscale.planning.heteroscale.pools import desired_pools, observe_service, pool_reasons, service_pools

__all__ = [
    "ControllerState", "FeedbackTier", "HeteroScaleConfig", "HeteroScaleController", "LatencyFeedback",
    "PeriodicConfig", "PeriodicController", "ScaleDecision", "ScheduleEntry", "ServiceController",
    "ServiceObservation", "desired_pools", "observe_service", "pool_reasons", "service_pools",
]

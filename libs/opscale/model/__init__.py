"""Typed domain objects shared by every part of opscale. Pure data: no I/O, no clock."""

from opscale.model.cloud import Purchase, RdmaPriority, Region, Sku, Vm, VmState
from opscale.model.instance import Instance, InstanceSpec, InstanceState, OperatorReplicas, Role
from opscale.model.llm import ModelSpec
from opscale.model.observation import InstanceStatus, Observation, PoolKey, PoolObservation
from opscale.model.plan import Plan
from opscale.model.request import Request, RequestOutcome, TierSpec
from opscale.model.tiers import (
    DEFAULT_TIERS,
    LatencyObjective,
    TierList,
    TierModel,
    default_tier_models,
    latency_objective,
    tier_table,
)

__all__ = [
    "DEFAULT_TIERS", "Instance", "InstanceSpec", "InstanceState", "InstanceStatus", "LatencyObjective", "ModelSpec",
    "OperatorReplicas",
    "Observation", "Plan", "PoolKey", "PoolObservation", "Purchase", "RdmaPriority", "Region", "Request",
    "RequestOutcome", "Role", "Sku", "TierList", "TierModel", "TierSpec", "Vm", "VmState", "default_tier_models",
    "latency_objective", "tier_table",
]

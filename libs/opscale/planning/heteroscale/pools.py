"""The seam between a per-service HeteroScale decision and the planner's pools: a disaggregated service
(one model in one region) is two pools, PoolKey(model, region, PREFILL) and PoolKey(model, region,
DECODE). These functions read the service from its two pools and write its decision back to them."""

from __future__ import annotations

from opscale.model import LatencyObjective, PoolKey, PoolObservation, Role
from opscale.planning.heteroscale.controller import ScaleDecision, ServiceObservation


def service_pools(model: str, region: str) -> tuple[PoolKey, PoolKey]:
    """(prefill pool, decode pool) of a service."""
    return PoolKey(model, region, Role.PREFILL), PoolKey(model, region, Role.DECODE)


def observe_service(prefill: PoolObservation, decode: PoolObservation, objective: LatencyObjective) -> ServiceObservation:
    """A service's observation from its two pools. The signals are what the engines measured (heartbeats):
    decode TPS is the decode pool's decode tokens/s, and the prefill signal the prefill pool's
    cache-missed prompt tokens/s (raw prefill TPS counts prefix-cache hits too, the distortion
    HeteroScale's metric study warns of); not the routers' demand, which counts what arrived rather
    than what was served. TBT is the decode pool's p99 and TTFT the prefill pool's. Counts are the
    discoverable instances (withdrawn ones are not capacity the controller has)."""
    if prefill.key.role != Role.PREFILL:
        raise ValueError(f"prefill: pool {prefill.key} is not a prefill pool")
    if decode.key.role != Role.DECODE:
        raise ValueError(f"decode: pool {decode.key} is not a decode pool")
    if (prefill.key.model, prefill.key.region) != (decode.key.model, decode.key.region):
        raise ValueError(f"prefill/decode: pools {prefill.key} and {decode.key} belong to different services")
    return ServiceObservation(
        decode_tps=decode.decode_tps, prefill_missed_tps=prefill.prefill_missed_tps,
        prefill_ready=prefill.ready, prefill_total=prefill.expected,
        decode_ready=decode.ready, decode_total=decode.expected, objective=objective,
        tbt_p99_s=decode.tbt_p99_s, ttft_p99_s=prefill.ttft_p99_s)


def desired_pools(model: str, region: str, decision: ScaleDecision) -> dict[PoolKey, int]:
    """The decision's counts per pool, as a planning policy's Effects.desired wants them."""
    prefill, decode = service_pools(model, region)
    return {prefill: decision.prefill, decode: decision.decode}


def pool_reasons(model: str, region: str, decision: ScaleDecision) -> dict[PoolKey, str]:
    """The decision's reason on both pools (one decision moved them together)."""
    return dict.fromkeys(service_pools(model, region), decision.reason)

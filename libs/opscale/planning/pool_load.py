"""What one instance of a pool can carry, from the pool's observed request shape and the capacity model,
and the per-pool loop every baseline runs.

Shared by the scaling baselines (KPA, Chiron, SageServe): each sizes a pool as demand over one
instance's capacity, and all must read the request shape the same way. Must not: hold a policy's rules.

Example: a pool seeing 4 rps with 4096 prompt and 1024 output tokens/s has mean lengths (1024, 256);
with no traffic yet the deployment's typical lengths stand in.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TypeVar

from opscale.model import Observation, PoolKey, PoolObservation, Role
from opscale.planning.base import CapacityFn, DeploymentSpec


def mean_lengths(spec: DeploymentSpec, pool: PoolObservation) -> tuple[float, float]:
    """(mean prompt tokens, mean output tokens) of the pool's recent requests, else the typical ones."""
    if pool.arrival_rps > 0 and pool.prompt_tokens_per_s > 0:
        return pool.prompt_tokens_per_s / pool.arrival_rps, max(1.0, pool.output_tokens_per_s / pool.arrival_rps)
    return spec.typical_prompt_tokens, spec.typical_output_tokens


def instance_rps(spec: DeploymentSpec, pool: PoolObservation, capacity: CapacityFn) -> float:
    """Requests/s one instance sustains at the SLO for the pool's request shape. In a prefill or decode
    pool (`spec` that pool's view, DeploymentSpec.for_role) the rate of one instance doing that phase:
    demand over it sizes a prefill pool by prompt tokens/s and a decode pool by output tokens/s."""
    prompt, output = mean_lengths(spec, pool)
    role = pool.key.role
    if role is Role.UNIFIED:
        return capacity(spec.model, spec.sku, spec.tp, prompt, output)
    return capacity(spec.model, spec.sku, spec.tp, prompt, output, role=role)  # type: ignore[call-arg]


def instance_prompt_tps(spec: DeploymentSpec, pool: PoolObservation, capacity: CapacityFn) -> float:
    """Prompt tokens/s one instance sustains (SageServe's per-instance throughput T[m, g])."""
    prompt, _ = mean_lengths(spec, pool)
    return instance_rps(spec, pool, capacity) * prompt


S = TypeVar("S")


def decide_each_pool(observation: Observation, deployments: dict[str, DeploymentSpec], states: dict[PoolKey, S],
                     fresh: Callable[[], S],
                     decide: Callable[[DeploymentSpec, PoolObservation, S], tuple[int, str, S]],
                     ) -> tuple[dict[PoolKey, int], dict[PoolKey, str], dict[PoolKey, S]]:
    """Run a per-pool decision over every deployed pool, in a fixed order; pools of models with no
    deployment are left alone. Returns desired counts, reasons and the new per-pool states."""
    desired: dict[PoolKey, int] = {}
    reasons: dict[PoolKey, str] = {}
    new_states = dict(states)
    for key, pool in sorted(observation.pools.items(), key=lambda kv: str(kv[0])):
        spec = deployments.get(key.model)
        if spec is None:
            continue
        desired[key], reasons[key], new_states[key] = decide(spec, pool, new_states.get(key) or fresh())
    return desired, reasons, new_states

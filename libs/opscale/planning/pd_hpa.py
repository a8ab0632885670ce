"""`pd_hpa`: HeteroScale's baseline (PAPERS.md §3.1, §3.4), a Kubernetes Horizontal Pod Autoscaler per
pool on GPU utilisation. Each pool (prefill, decode, or unified) scales on its own, blind to the other
role: the P/D ratio is whatever the two utilisations make it. HeteroScale's finding is that this fails
for decode, whose GPU utilisation stays high at light load (KV-cache traffic keeps kernels running), so
the decode pool is over-provisioned; this policy exists to show that.

The rules are Kubernetes' HPA (v2 algorithm, default behaviour), on `PoolObservation.busy_frac` (GPU
utilisation as nvidia-smi has it, time busy, mean over ready instances):
- desired = ceil(current x utilisation / target), current being the pool's instances (ready plus
  loading); no change while utilisation / target is within `tolerance` of 1 (0.1 in Kubernetes);
- instances still loading count as idle when scaling up and as fully busy when scaling down (how
  Kubernetes treats not-yet-ready pods: they can neither push a scale-up nor excuse a scale-down);
- scale-up is limited to max(double, +4 instances) per decision (Kubernetes' default scale-up policy);
- stabilisation: a scale-up takes the lowest recommendation of the last `scale_up_window_s` (0 s in
  Kubernetes), a scale-down the highest of the last `scale_down_window_s` (300 s in Kubernetes); a pool
  first seen counts its current size as a recommendation, so it is not shrunk before a window passes;
- the pool's replica bounds (its DeploymentSpec role pool); a pool with no instance and requests
  waiting starts with max(1, min_replicas) (HPA itself never scales from zero; a planner must).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

from pydantic import BaseModel, ConfigDict, Field

from opscale.model import Observation, PoolKey, PoolObservation
from opscale.planning import guards
from opscale.planning.base import DeploymentSpec, Effects


class PdHpaConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")
    target_util: float = Field(0.7, gt=0, le=1, description="GPU utilisation (time busy) each pool is sized for")
    tolerance: float = Field(0.1, ge=0, lt=1, description="No change while utilisation/target is within this of 1")
    scale_up_window_s: float = Field(0.0, ge=0, description="Scale-up stabilisation window (lowest recommendation)")
    scale_down_window_s: float = Field(300.0, ge=0, description="Scale-down stabilisation window (highest "
                                       "recommendation)")


@dataclass(frozen=True, slots=True)
class PdHpaState:
    recommendations: dict[PoolKey, tuple[tuple[float, int], ...]] = field(default_factory=dict)


class PdHpaPolicy:
    name = "pd_hpa"

    def __init__(self, deployments: list[DeploymentSpec], config: PdHpaConfig | None = None) -> None:
        self.config = config or PdHpaConfig()
        self.deployments = {d.model: d for d in deployments}

    def initial_state(self) -> PdHpaState:
        return PdHpaState()

    def decide(self, observation: Observation, state: PdHpaState, now_s: float) -> Effects:
        desired: dict[PoolKey, int] = {}
        reasons: dict[PoolKey, str] = {}
        recs = dict(state.recommendations)
        keep_s = max(self.config.scale_up_window_s, self.config.scale_down_window_s)
        for key, pool in sorted(observation.pools.items(), key=lambda kv: str(kv[0])):
            spec = self.deployments.get(key.model)
            if spec is None:
                continue
            shape = spec.pool(key.role)
            raw, why = self._recommend(pool)
            raw = min(max(raw, shape.min_replicas), shape.max_replicas)
            first_seen = key not in recs
            history = tuple((t, n) for t, n in (*recs.get(key, ()), (now_s, raw)) if now_s - t <= keep_s)
            if first_seen:
                # Its current size counts as recommended (as for an HPA that has been running), so the
                # first decision cannot shrink it before a window has been observed.
                history = ((now_s - self.config.scale_down_window_s, pool.expected), *history)
            recs[key] = history
            desired[key], reasons[key] = self._stabilised(pool, history, raw, why, now_s)
        return Effects(desired, PdHpaState(recs), reasons)

    def _recommend(self, pool: PoolObservation) -> tuple[int, str]:
        cfg = self.config
        current = pool.expected
        if current == 0:
            if pool.queued > 0 or pool.arrival_rps > 0:
                return 1, f"cold start: {pool.queued} waiting"
            return 0, "no instance, no demand"
        if pool.ready == 0:
            return current, "hold: no ready instance reports utilisation"
        text = f"GPU util {pool.busy_frac:.2f} on {pool.ready} ready (target {cfg.target_util:.2f})"
        ratio = pool.busy_frac / cfg.target_util
        if abs(ratio - 1.0) <= cfg.tolerance:
            return current, f"steady: {text}"
        if pool.loading:
            up = ratio > 1.0
            busy = pool.busy_frac * pool.ready + (0 if up else pool.loading)  # loading: idle up, busy down
            ratio = busy / current / cfg.target_util
            # As Kubernetes: counting them may not reverse the direction; then nothing changes.
            if abs(ratio - 1.0) <= cfg.tolerance or (ratio > 1.0) != up:
                return current, f"hold: {text}, {pool.loading} loading"
        raw = math.ceil(current * ratio - 1e-9)
        if raw > current:
            raw = min(raw, max(2 * current, current + 4))
        return raw, text

    def _stabilised(self, pool: PoolObservation, history: tuple[tuple[float, int], ...], raw: int, why: str,
                    now_s: float) -> tuple[int, str]:
        cfg = self.config
        current = pool.expected
        up = min((n for t, n in history if now_s - t <= cfg.scale_up_window_s), default=raw)
        down = guards.stabilised_down(history, now_s, cfg.scale_down_window_s, raw)
        if up > current:
            return up, f"scale up: {why} -> {up}"
        if down < current:
            return down, f"scale down: {why} -> {down}"
        if raw != current:
            return current, f"hold: stabilisation window ({why})"
        return current, why

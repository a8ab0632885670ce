"""What the control loops observe: instance status from agents and per-pool demand from windows."""

from __future__ import annotations

from dataclasses import dataclass, field

from opscale.model.instance import InstanceState, Role


@dataclass(frozen=True, slots=True)
class PoolKey:
    """A pool: the instances of one model and role in one region."""

    model: str
    region: str
    role: Role = Role.UNIFIED

    def __str__(self) -> str:
        return f"{self.model}/{self.region}/{self.role}"


@dataclass(frozen=True, slots=True)
class InstanceStatus:
    """An instance's state and load as its node-agent reports it in a heartbeat: the engine's report
    (opscale.engine.outputs.EngineReport, which defines each figure; `busy_frac` is GPU utilisation as
    nvidia-smi has it, time busy, and `sm_activity` the compute used over the peak)."""

    instance_id: str
    model: str
    sku: str
    tp: int
    role: Role
    state: InstanceState
    endpoint: str = ""
    queued: int = 0
    running: int = 0
    outstanding_tokens: int = 0
    kv_used_frac: float = 0.0
    tokens_per_s: float = 0.0
    busy_frac: float = 0.0
    power_w: float = 0.0
    sm_activity: float = 0.0
    decode_tps: float = 0.0
    prefill_tps: float = 0.0
    prefill_missed_tps: float = 0.0
    kv_capacity_tokens: int = 0  # tokens the instance's KV cache holds (0: unknown)


@dataclass(frozen=True, slots=True)
class PoolObservation:
    """One pool at one moment: demand from the aggregator's windows and capacity from heartbeats.

    Capacity in flight is explicit (`loading`, `draining`) so a policy can hold while its previous
    actuation converges rather than act twice on the same shortfall.
    """

    key: PoolKey
    ready: int = 0  # serving and discoverable (withdrawn ones are not counted here)
    loading: int = 0
    draining: int = 0
    # Router-side demand: what arrived at the routers (requests, and their prompt and output tokens per s).
    arrival_rps: float = 0.0
    prompt_tokens_per_s: float = 0.0
    output_tokens_per_s: float = 0.0
    queued: int = 0
    running: int = 0
    busy_frac: float = 0.0  # GPU utilisation (time busy, as nvidia-smi has it): mean over ready instances
    kv_used_frac: float = 0.0  # mean over ready instances
    # Measured in the engines (heartbeats, InstanceStatus): what the pool's instances actually did.
    # Token rates are sums over every running, ready instance, withdrawn ones included (they still finish
    # work the service took); SM activity is the mean over the ready, discoverable ones, like busy_frac.
    sm_activity: float = 0.0
    decode_tps: float = 0.0
    prefill_tps: float = 0.0
    prefill_missed_tps: float = 0.0
    # Withdrawn from discovery by a soft scale-in (Plan.withdrawn): still running, restorable at once, not
    # in `ready` nor `expected`.
    withdrawn: int = 0
    ttft_p99_s: float | None = None
    tbt_p99_s: float | None = None
    forecast_rps_hi: float | None = None
    # Placed instances (withdrawn ones included) per (SKU, tp) they run on: where the pool's GPUs are now,
    # which a policy that buys VMs per SKU needs (an instance stays on its SKU until scaled in)
    placed_by_option: dict[tuple[str, int], int] = field(default_factory=dict)

    @property
    def expected(self) -> int:
        """Instances that are or will soon be serving."""
        return self.ready + self.loading


@dataclass(frozen=True, slots=True)
class Observation:
    """Everything a planner sees at `now_s`."""

    now_s: float
    pools: dict[PoolKey, PoolObservation] = field(default_factory=dict)
    free_gpus: dict[tuple[str, str], int] = field(default_factory=dict)  # (region, sku) -> GPUs
    total_gpus: dict[tuple[str, str], int] = field(default_factory=dict)  # (region, sku) -> GPUs of its hosts
    # An elastic fleet (VMs bought through the cloud): the GPUs the cloud lets it hold per (region, sku), so
    # a policy that buys VMs may size beyond the hosts present; empty: the fleet is the hosts present
    gpu_quotas: dict[tuple[str, str], int] = field(default_factory=dict)

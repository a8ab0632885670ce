"""GPU SKUs, regions and VMs."""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import StrEnum


@dataclass(frozen=True, slots=True)
class Sku:
    """A GPU type. Figures are per GPU; prices are per GPU-hour."""

    name: str
    gpu_memory_gb: float
    peak_tflops: float  # dense BF16/FP16 tensor throughput
    mem_bandwidth_gbps: float  # HBM bandwidth, GB/s
    idle_power_w: float
    max_power_w: float
    price_usd_per_h: float
    spot_price_usd_per_h: float
    gpus_per_vm: int = 8

    def __post_init__(self) -> None:
        for label in ("gpu_memory_gb", "peak_tflops", "mem_bandwidth_gbps", "max_power_w"):
            if getattr(self, label) <= 0:
                raise ValueError(f"sku {self.name!r}: {label} must be positive, got {getattr(self, label)!r}")
        if not 0 <= self.idle_power_w <= self.max_power_w:
            raise ValueError(f"sku {self.name!r}: need 0 <= idle_power_w <= max_power_w")

    def power_w(self, utilisation: float) -> float:
        """Draw at a utilisation in [0, 1]: linear between idle and max."""
        u = min(1.0, max(0.0, utilisation))
        return self.idle_power_w + (self.max_power_w - self.idle_power_w) * u


@dataclass(frozen=True, slots=True)
class Region:
    """A cloud region. `gpu_quota` caps GPUs per SKU name; `rtt_ms` is the round trip to other regions."""

    name: str
    gpu_quota: dict[str, int] = field(default_factory=dict)
    rtt_ms: dict[str, float] = field(default_factory=dict)


class Purchase(StrEnum):
    ON_DEMAND = "on_demand"
    SPOT = "spot"


class RdmaPriority(StrEnum):
    """How scarce a host's RDMA subgroup is (HeteroScale's subgroup priorities, PAPERS.md §3.6): `low`, an
    ordinary pool (an S2 of one GPU type), used first; `medium`, an S2 of several types with homogeneous
    S1s; `high`, S1s of mixed types, the tightest affinity, kept for the most demanding P/D services.
    Placement uses high-priority hosts last and scale-in frees them first."""

    LOW = "low"
    MEDIUM = "medium"
    HIGH = "high"

    @property
    def rank(self) -> int:
        """0 (low) to 2 (high): the order in which placement spends them."""
        return _RDMA_RANK[self]


_RDMA_RANK = {RdmaPriority.LOW: 0, RdmaPriority.MEDIUM: 1, RdmaPriority.HIGH: 2}


class VmState(StrEnum):
    PROVISIONING = "provisioning"
    RUNNING = "running"
    TERMINATING = "terminating"
    TERMINATED = "terminated"


@dataclass(frozen=True, slots=True)
class Vm:
    """One VM of `gpus` GPUs of one SKU, bought on demand or as spot, in one region."""

    vm_id: str
    region: str
    sku: str
    gpus: int
    purchase: Purchase
    state: VmState
    requested_s: float
    running_s: float | None = None
    # Lifecycle times after boot; None until they happen. `notice_s` is when a spot preemption notice
    # arrived (the VM still runs until `deadline_s`); `preempted` says the cloud, not us, ended it.
    released_s: float | None = None
    terminated_s: float | None = None
    notice_s: float | None = None
    deadline_s: float | None = None
    preempted: bool = False

    @property
    def live(self) -> bool:
        """Counts towards the desired VM count: booting or running, and not already on its way out."""
        return self.state in (VmState.PROVISIONING, VmState.RUNNING) and self.notice_s is None

"""Model instances: what the planner asks for and what an agent runs."""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum


class Role(StrEnum):
    UNIFIED = "unified"
    PREFILL = "prefill"
    DECODE = "decode"


class InstanceState(StrEnum):
    LOADING = "loading"
    READY = "ready"
    DRAINING = "draining"
    STOPPED = "stopped"


@dataclass(frozen=True, slots=True)
class OperatorReplicas:
    """Elastic replicas of one operator stage attached to a running base instance (OpScale's runtime
    shape, PAPERS.md §1.6): `replicas` copies of `operators` (names of opscale.perf.operators.Operator,
    sorted), each on `share` of the SMs of `tp` GPUs (share < 1 only at tp 1), running batches of up to
    `batch` customers. They join the base engine: adding or removing them never restarts it."""

    operators: tuple[str, ...]
    replicas: int
    tp: int = 1
    share: float = 1.0
    batch: int = 1

    def __post_init__(self) -> None:
        what = f"operator replicas {'+'.join(self.operators) or '(none)'}"
        if not self.operators or len(set(self.operators)) != len(self.operators):
            raise ValueError(f"{what}: operators must be non-empty and distinct, got {list(self.operators)}")
        if tuple(sorted(self.operators)) != tuple(self.operators):
            object.__setattr__(self, "operators", tuple(sorted(self.operators)))
        if isinstance(self.replicas, bool) or not isinstance(self.replicas, int) or self.replicas < 1:
            raise ValueError(f"{what}: replicas must be a positive integer, got {self.replicas!r}")
        if self.tp not in (1, 2, 4, 8):
            raise ValueError(f"{what}: tp must be 1, 2, 4 or 8, got {self.tp!r}")
        if not 0 < self.share <= 1 or (self.share < 1 and self.tp != 1):
            raise ValueError(f"{what}: share must be in (0, 1], and 1 unless tp is 1; got {self.share!r} at tp {self.tp}")
        if isinstance(self.batch, bool) or not isinstance(self.batch, int) or self.batch < 1:
            raise ValueError(f"{what}: batch must be a positive integer, got {self.batch!r}")

    @property
    def name(self) -> str:
        return "+".join(self.operators)

    @property
    def gpu_equivalents(self) -> float:
        """What the replicas hold: replicas x tp x SM share GPUs."""
        return self.replicas * self.tp * self.share


@dataclass(frozen=True, slots=True)
class InstanceSpec:
    """The desired shape of one instance. Its id is stable across plan epochs, which is what makes
    re-applying a plan idempotent. `operator_replicas`: the elastic operator replicas attached to this
    (base, monolithic) instance; a change to them alone is applied in place, never by a restart."""

    instance_id: str
    model: str
    sku: str
    tp: int = 1
    role: Role = Role.UNIFIED
    operator_replicas: tuple[OperatorReplicas, ...] = ()

    def __post_init__(self) -> None:
        if self.tp not in (1, 2, 4, 8):
            raise ValueError(f"instance {self.instance_id}: tp must be 1, 2, 4 or 8, got {self.tp}")
        names = [r.name for r in self.operator_replicas]
        if len(set(names)) != len(names):
            raise ValueError(f"instance {self.instance_id}: operator_replicas names a stage twice: {names}")

    @property
    def gpus(self) -> int:
        """GPUs the base instance holds (its operator replicas: `gpu_equivalents`)."""
        return self.tp

    @property
    def gpu_equivalents(self) -> float:
        """The base instance's GPUs plus its operator replicas' GPU-equivalents."""
        return self.tp + sum(r.gpu_equivalents for r in self.operator_replicas)


@dataclass(frozen=True, slots=True)
class Instance:
    """An instance as some node-agent runs it."""

    spec: InstanceSpec
    region: str
    agent_id: str
    state: InstanceState
    since_s: float
    ready_at_s: float | None = None

    @property
    def instance_id(self) -> str:
        return self.spec.instance_id

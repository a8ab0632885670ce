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
class InstanceSpec:
    """The desired shape of one instance. Its id is stable across plan epochs, which is what makes
    re-applying a plan idempotent."""

    instance_id: str
    model: str
    sku: str
    tp: int = 1
    role: Role = Role.UNIFIED

    def __post_init__(self) -> None:
        if self.tp not in (1, 2, 4, 8):
            raise ValueError(f"instance {self.instance_id}: tp must be 1, 2, 4 or 8, got {self.tp}")

    @property
    def gpus(self) -> int:
        return self.tp


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

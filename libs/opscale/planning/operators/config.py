"""What the operator planner is asked: the workload shape and rate, and the search's settings."""

from __future__ import annotations

import math
from dataclasses import dataclass

from pydantic import BaseModel, ConfigDict, Field, field_validator

from opscale.perf.operator_profiles import AttentionKernel, Phase
from opscale.perf.operators import Operator
from opscale.perf.sm_share import SmShareParams
from opscale.perf.transfer import Topology, TransferParams

DEFAULT_BATCH_SIZES = (1, 2, 4, 8, 16, 32, 64, 128, 256)


@dataclass(frozen=True, slots=True)
class Workload:
    """Poisson arrivals of `arrival_rps` requests/s with `prompt_tokens` prompt and `output_tokens`
    output tokens each (means)."""

    arrival_rps: float
    prompt_tokens: int
    output_tokens: int

    def __post_init__(self) -> None:
        if not (self.arrival_rps > 0 and math.isfinite(self.arrival_rps)):
            raise ValueError(f"workload arrival_rps must be a finite positive number, got {self.arrival_rps!r}")
        for label in ("prompt_tokens", "output_tokens"):
            value = getattr(self, label)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"workload {label} must be a positive integer, got {value!r}")

    def mean_seq(self, phase: Phase) -> float:
        """The tokens a customer attends over: the prompt in prefill, the mean context in decode."""
        if phase is Phase.PREFILL:
            return float(self.prompt_tokens)
        return self.prompt_tokens + self.output_tokens / 2

    def tokens_per_customer(self, phase: Phase) -> int:
        """New tokens one customer brings through a stage: its prompt in prefill, one token in decode."""
        return self.prompt_tokens if phase is Phase.PREFILL else 1


class GpuTopology(BaseModel):
    """The GPUs operator replicas are placed on: hosts of `gpus_per_host` GPUs joined by NVLink (the
    `same_host` path of `opscale.perf.transfer`), hosts joined by the `between_hosts` path."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    gpus_per_host: int | None = Field(
        None, ge=1, description="GPUs per host, joined by NVLink; None: the SKU's gpus_per_vm.")
    between_hosts: Topology = Field(
        Topology.SAME_SWITCH, description="Path between GPUs of different hosts (RDMA under one leaf by default).")


class OperatorPlannerConfig(BaseModel):
    """Settings of `opscale.planning.operators.planner.OperatorPlanner`."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    batch_sizes: tuple[int, ...] = Field(
        DEFAULT_BATCH_SIZES, description="Batch sizes (customers per stage iteration) the search may pick "
                                         "from: prompts for prefill, sequences for decode.")
    max_batch: dict[Operator, int] = Field(
        default_factory=dict, description="Per operator family, the largest batch a stage holding it may run "
                                          "(e.g. {'attention': 32}); a stage takes the smallest cap of its families.")
    wait_quantile: float | None = Field(
        0.99, gt=0, lt=1, description="Quantile of each stage's Erlang-C wait counted against the budget; "
                                      "None counts the mean wait.")
    topology: Topology = Field(
        Topology.SAME_HOST, description="Path the search prices between stages apart (opscale.perf.transfer; "
                                        "same_host: NVLink). The placement prices the path of where the "
                                        "replicas land and reports whether the budgets hold "
                                        "(OperatorPlan.packing.meets_slo); plans spanning hosts may set "
                                        "the between-hosts path here.")
    transfer: TransferParams = Field(default_factory=TransferParams)
    hosts: GpuTopology = Field(
        default_factory=GpuTopology, description="Hosts the replicas are placed on (placement's locality "
                                                 "and the transfer it prices on every edge between GPUs).")
    gpu_memory_utilization: float = Field(0.9, gt=0, le=1)
    max_replicas: int = Field(512, ge=1, description="Most replicas of one stage.")
    sharing: SmShareParams = Field(
        default_factory=SmShareParams, description="SM shares a stage replica may run on and how a share "
                                                   "is priced (opscale.perf.sm_share); the model-level "
                                                   "baseline always runs whole GPUs.")
    attention_kernel: AttentionKernel = Field(
        AttentionKernel.FLASH, description="Attention kernel whose workspace a replica holds: flash "
                                           "(O(seq)) or eager (materialised scores, O(seq^2)).")

    @field_validator("batch_sizes")
    @classmethod
    def _batches(cls, value: tuple[int, ...]) -> tuple[int, ...]:
        if not value:
            raise ValueError("batch_sizes must name at least one batch size")
        bad = [b for b in value if b < 1]
        if bad:
            raise ValueError(f"batch_sizes must be positive integers, got {bad[0]!r}")
        return tuple(sorted(set(value)))

    @field_validator("max_batch", mode="before")
    @classmethod
    def _caps(cls, value: object) -> object:
        if isinstance(value, dict):
            known = [op.value for op in Operator]
            for name, cap in value.items():
                if str(name) not in known:
                    raise ValueError(f"unknown operator {name!r}; known: {', '.join(known)}")
                if isinstance(cap, bool) or not isinstance(cap, int) or cap < 1:
                    raise ValueError(f"max_batch[{str(name)!r}] must be a positive integer, got {cap!r}")
        return value

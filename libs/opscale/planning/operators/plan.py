"""The operator planner's answer: per phase, the stages (sets of operator families run together), each
with its replicas, SM share, batch size, GPU cost and predicted latency; the packing of every replica
onto whole GPUs; and the plan's power and energy at its load."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal

from opscale.perf.operators import Operator
from opscale.planning.operators.config import Workload
from opscale.planning.operators.dag import Phase
from opscale.planning.operators.placement import Packing

if TYPE_CHECKING:
    from opscale.planning.operators.energy import PlanEnergy


@dataclass(frozen=True, slots=True)
class StagePlan:
    """`replicas` replicas of `operators`, each on `share` of the SMs of `tp` GPUs (share < 1 only at
    tp 1) holding `replica_bytes` per GPU, running batches of up to `batch` customers. Latency = wait
    (the configured statistic of the Erlang-C wait) + service + transfers out. `gpu_cost` is the
    stage's GPU-equivalents before packing: per replica tp at a whole share, else the larger of its SM
    share and its memory fraction of a GPU. `arrival_rate` customers/s reach the stage; `busy_s` is the
    kernel time of one full batch (what draws dynamic power)."""

    operators: frozenset[Operator]
    tp: int
    replicas: int
    batch: int
    service_s: float
    transfer_s: float
    wait_s: float
    p_wait: float
    utilisation: float
    share: float = 1.0
    replica_bytes: float = 0.0
    gpu_cost: float = 0.0
    arrival_rate: float = 0.0
    busy_s: float = 0.0

    @property
    def gpus(self) -> float:
        return self.gpu_cost

    @property
    def latency_s(self) -> float:
        return self.wait_s + self.service_s + self.transfer_s

    @property
    def name(self) -> str:
        return "+".join(sorted(op.value for op in self.operators))

    @property
    def busy_fraction(self) -> float:
        """Fraction of each replica's time its kernels run: utilisation x busy / service."""
        return self.utilisation * (self.busy_s / self.service_s if self.service_s > 0 else 0.0)


@dataclass(frozen=True, slots=True)
class PhasePlan:
    phase: Phase
    budget_s: float
    stages: tuple[StagePlan, ...]

    @property
    def gpus(self) -> float:
        """GPU-equivalents before packing (whole GPUs when every share is 1)."""
        return sum(s.gpus for s in self.stages)

    @property
    def latency_s(self) -> float:
        return sum(s.latency_s for s in self.stages)

    @property
    def meets_budget(self) -> bool:
        return self.latency_s <= self.budget_s

    def stage_of(self, operator: Operator | str) -> StagePlan:
        op = Operator(operator)
        return next(s for s in self.stages if op in s.operators)


@dataclass(frozen=True, slots=True)
class OperatorPlan:
    """Prefill and decode planned as separate queues; their replicas packed onto GPUs together
    (`packing`; partitions of both phases may share a GPU). `level` "model" is the baseline (one stage
    holding every operator, whole GPUs); `search` says how the replicas were found."""

    model: str
    sku: str
    workload: Workload
    level: Literal["operator", "model"]
    search: Literal["greedy", "oracle"]
    prefill: PhasePlan
    decode: PhasePlan
    packing: Packing
    energy: PlanEnergy

    @property
    def gpus(self) -> int:
        """Whole GPUs the packed plan occupies."""
        return self.packing.gpus

    @property
    def gpu_cost(self) -> float:
        """GPU-equivalents before packing."""
        return self.prefill.gpus + self.decode.gpus

    @property
    def meets_slo(self) -> bool:
        return self.prefill.meets_budget and self.decode.meets_budget

    def phase(self, phase: Phase | str) -> PhasePlan:
        return self.prefill if Phase(phase) is Phase.PREFILL else self.decode

    def replicas(self, operator: Operator | str, phase: Phase | str) -> int:
        return self.phase(phase).stage_of(operator).replicas

"""The operator planner's answer: per phase, the stages (sets of operator families run together), each
with its replicas, batch size, GPUs and predicted latency."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from opscale.perf.operators import Operator
from opscale.planning.operators.config import Workload
from opscale.planning.operators.dag import Phase


@dataclass(frozen=True, slots=True)
class StagePlan:
    """`replicas` replicas of `operators`, each on `tp` whole GPUs, running batches of up to `batch`
    customers. Latency = wait (the configured statistic of the Erlang-C wait) + service + transfers out."""

    operators: frozenset[Operator]
    tp: int
    replicas: int
    batch: int
    service_s: float
    transfer_s: float
    wait_s: float
    p_wait: float
    utilisation: float

    @property
    def gpus(self) -> int:
        return self.tp * self.replicas

    @property
    def latency_s(self) -> float:
        return self.wait_s + self.service_s + self.transfer_s

    @property
    def name(self) -> str:
        return "+".join(sorted(op.value for op in self.operators))


@dataclass(frozen=True, slots=True)
class PhasePlan:
    phase: Phase
    budget_s: float
    stages: tuple[StagePlan, ...]

    @property
    def gpus(self) -> int:
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
    """Prefill and decode planned as separate pools. `level` "model" is the baseline (one stage holding
    every operator); `search` says how the replicas were found."""

    model: str
    sku: str
    workload: Workload
    level: Literal["operator", "model"]
    search: Literal["greedy", "oracle"]
    prefill: PhasePlan
    decode: PhasePlan

    @property
    def gpus(self) -> int:
        return self.prefill.gpus + self.decode.gpus

    @property
    def meets_slo(self) -> bool:
        return self.prefill.meets_budget and self.decode.meets_budget

    def phase(self, phase: Phase | str) -> PhasePlan:
        return self.prefill if Phase(phase) is Phase.PREFILL else self.decode

    def replicas(self, operator: Operator | str, phase: Phase | str) -> int:
        return self.phase(phase).stage_of(operator).replicas

"""Power and energy of an operator plan at its load (issue 14 item 7), on the energy model the engine
uses (`opscale.engine.usage.UsageMeter`, `Sku.power_w`): every GPU draws its idle power all the time and
its dynamic power (max - idle) in proportion to the time its kernels run.

With spatial partitions the dynamic draw is split by SM share: a replica on share s of a GPU adds
s x (max - idle) while its kernels run (an assumption: dynamic power in proportion to the SMs at work;
memory-bound kernels draw less than the linear model's full rate, which this and the engine both
ignore). A stage's replicas run kernels `StagePlan.busy_fraction` of the time (its M/M/R utilisation x
kernel time / service time of a full batch). The idle draw of the packed GPUs is charged to the stages
in proportion to their GPU cost, so a GPU left half empty by packing still shows in the energy.

Per operator family, a stage's draw is split by each family's kernel time in the stage's batch. Energy
per token = power / token rate of the phase: prompt tokens for prefill, output tokens for decode.

Pure arithmetic: no I/O, no clock.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from opscale.model import Sku
from opscale.perf.operators import Operator
from opscale.planning.operators.config import Workload
from opscale.planning.operators.dag import Phase
from opscale.planning.operators.placement import Packing
from opscale.planning.operators.plan import PhasePlan, StagePlan

# (stage, family) -> the family's kernel seconds in one full batch of the stage
FamilyBusy = Callable[[Phase, StagePlan, Operator], float]


@dataclass(frozen=True, slots=True)
class OperatorEnergy:
    """One family in one phase: its mean draw (idle share included) and joules per token of the phase."""

    phase: Phase
    operator: Operator
    power_w: float
    j_per_token: float


@dataclass(frozen=True, slots=True)
class PlanEnergy:
    idle_w: float
    dynamic_w: float
    j_per_request: float
    j_per_output_token: float
    operators: tuple[OperatorEnergy, ...]

    @property
    def power_w(self) -> float:
        return self.idle_w + self.dynamic_w

    def of(self, operator: Operator | str, phase: Phase | str) -> OperatorEnergy:
        op, ph = Operator(operator), Phase(phase)
        return next(e for e in self.operators if e.operator is op and e.phase is ph)


def plan_energy(sku: Sku, workload: Workload, phases: tuple[PhasePlan, ...], packing: Packing,
                family_busy: FamilyBusy) -> PlanEnergy:
    """The plan's draw at `workload` (see the module docstring)."""
    dynamic_per_gpu = sku.max_power_w - sku.idle_power_w
    idle_w = packing.gpus * sku.idle_power_w
    total_cost = sum(s.gpu_cost for p in phases for s in p.stages)
    rates = {Phase.PREFILL: workload.arrival_rps * workload.prompt_tokens,
             Phase.DECODE: workload.arrival_rps * workload.output_tokens}
    entries: dict[tuple[Phase, Operator], float] = {}
    dynamic_w = 0.0
    for p in phases:
        for stage in p.stages:
            dyn = stage.replicas * stage.tp * stage.share * dynamic_per_gpu * stage.busy_fraction
            dynamic_w += dyn
            idle = idle_w * stage.gpu_cost / total_cost if total_cost > 0 else 0.0
            busy = {op: family_busy(p.phase, stage, op) for op in stage.operators}
            whole = sum(busy.values())
            for op, b in busy.items():
                weight = b / whole if whole > 0 else 1.0 / len(busy)
                entries[(p.phase, op)] = entries.get((p.phase, op), 0.0) + (dyn + idle) * weight
    operators = tuple(OperatorEnergy(ph, op, w, w / rates[ph]) for (ph, op), w in sorted(entries.items()))
    power = idle_w + dynamic_w
    return PlanEnergy(idle_w, dynamic_w, power / workload.arrival_rps, power / rates[Phase.DECODE], operators)

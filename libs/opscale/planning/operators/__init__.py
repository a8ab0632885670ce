"""Operator-level autoscaling (PAPERS.md §1, issue 14): the operator DAG of a model, the M/M/R queue of
each operator stage, and the planner choosing replicas and batch size per stage against TTFT and TBT
budgets, with its exhaustive oracle and the model-level baseline. Pure: no I/O, no clock."""

from opscale.planning.operators.config import (
    DEFAULT_BATCH_SIZES,
    GpuTopology,
    OperatorPlannerConfig,
    Workload,
)
from opscale.planning.operators.costs import StageCosts
from opscale.planning.operators.dag import (
    NODE_OPERATOR,
    Edge,
    NodeKind,
    OperatorDag,
    OperatorNode,
    Phase,
    build_dag,
)
from opscale.planning.operators.energy import OperatorEnergy, PlanEnergy, plan_energy
from opscale.planning.operators.placement import (
    RESHARD_COST_RATIO,
    GpuSlot,
    Locality,
    Packing,
    PlacedPhase,
    PlacedStage,
    Placer,
    ReplicaDemand,
    StageLayout,
    grow_stage,
    pack,
    reconfiguration_s,
)
from opscale.planning.operators.plan import OperatorPlan, PhasePlan, StagePlan
from opscale.planning.operators.planner import OperatorPlanner, cheapest_plan, partitions
from opscale.planning.operators.queueing import StageQueue, erlang_b, erlang_c, mmr_wait

__all__ = [
    "DEFAULT_BATCH_SIZES", "NODE_OPERATOR", "RESHARD_COST_RATIO", "Edge", "GpuSlot", "GpuTopology", "Locality",
    "OperatorEnergy", "Packing", "PlacedPhase", "PlacedStage", "Placer", "PlanEnergy", "ReplicaDemand",
    "StageLayout", "NodeKind", "OperatorDag", "OperatorNode", "OperatorPlan",
    "OperatorPlanner", "OperatorPlannerConfig", "PhasePlan", "Phase", "StageCosts", "StagePlan", "StageQueue",
    "Workload", "build_dag", "cheapest_plan", "erlang_b", "erlang_c", "grow_stage",
    "mmr_wait", "pack", "partitions", "plan_energy", "reconfiguration_s",
]

"""Stage prices for the operator planner: `opscale.perf.stage_costs.StageCosts` is their one owner (it
lives in perf so that the engine, which runs replicated stages, prices them the same way)."""

from opscale.perf.stage_costs import TP_DEGREES, StageCosts

__all__ = ["TP_DEGREES", "StageCosts"]

"""The multi-region MIP planner (SageServe's ILP): VMs per region, SKU and purchase option, instances and
routing shares from one model. `solve.py` holds the formulation and the search; the other modules are its
inputs, model building, candidate regions, greedy fallback, warm starts, rounding and checks."""

from opscale.planning.milp.solve import solve_plan

__all__ = ["solve_plan"]

"""The combined policy `opscale`: SageServe's hourly MIP sets budgets, HeteroScale's P/D control and the
operator level act inside them (policy.py)."""

from opscale.planning.opscale.config import BudgetConfig, EmergencyRule, OpscaleConfig
from opscale.planning.opscale.policy import OpscalePolicy, OpscaleState

__all__ = ["BudgetConfig", "EmergencyRule", "OpscaleConfig", "OpscalePolicy", "OpscaleState"]

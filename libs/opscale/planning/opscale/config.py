"""The `opscale` policy's configuration: each loop's own policy config (validated by that policy's
model), how wide a budget the hourly plan gives each pool, and the emergency rule that lets an inner
loop go past it."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from opscale.planning.operators.policy import OperatorPolicyConfig
from opscale.planning.sageserve.mip import SageServeMipConfig


class BudgetConfig(BaseModel):
    """A pool's budget from the hourly plan of `planned` instances: [ceil(floor x planned),
    ceil(ceiling x planned) + slack], within the deployment's own bounds. The floor keeps what the
    forecast says will soon be needed from being scaled away by a lull; the ceiling is what the inner
    loops may spend without an emergency."""

    model_config = ConfigDict(extra="forbid")
    floor: float = Field(0.5, ge=0, le=1, description="Fraction of the planned instances kept at least")
    ceiling: float = Field(1.25, ge=1, description="Multiple of the planned instances the inner loops may reach")
    slack: int = Field(1, ge=0, description="Instances above ceiling x planned (a small pool's one spare)")
    warmup_s: float = Field(30.0, ge=0, description="Seconds of observed demand before the hourly plan's budgets "
                            "bind (a plan made on the first seconds of traffic knows too little); until then the "
                            "inner loops run unbudgeted")


class EmergencyRule(BaseModel):
    """When an inner loop may go past its pool's ceiling: the pool's latency is over its objective, or
    its queue keeps growing. Each time is logged, and the next hourly solve plans for the demand seen."""

    model_config = ConfigDict(extra="forbid")
    latency_over: float = Field(1.0, gt=0, description="TTFT or TBT p99 above this multiple of its objective")
    queue_min: int = Field(8, ge=1, description="A queue this long or longer ...")
    queue_growth: float = Field(1.5, gt=1, description="... that grew by this factor since the last decision")
    learn_margin: float = Field(1.1, ge=1, description="The next solve plans for the demand seen during the "
                                "emergency times this")


class OpscaleConfig(BaseModel):
    """The three loops and their glue. `mip` parameters are SageServeMipConfig's; `heteroscale` is the
    heteroscale policy's own parameters (its `services`: target and P/D ratio per model); `operators`
    OperatorPolicyConfig's."""

    model_config = ConfigDict(extra="forbid")
    mip: SageServeMipConfig = Field(default_factory=lambda: SageServeMipConfig(interval_s=300.0, rtt_budget_ms=100.0))
    heteroscale: dict[str, Any] = Field(default_factory=dict, description="heteroscale's parameters, for the "
                                        "disaggregated deployments")
    operators: OperatorPolicyConfig = Field(default_factory=OperatorPolicyConfig)
    budget: BudgetConfig = Field(default_factory=BudgetConfig)
    emergency: EmergencyRule = Field(default_factory=EmergencyRule)


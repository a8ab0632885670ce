"""The operator planners the operator-level tests share: Qwen2-7B on H100 with SM shares and on whole
GPUs only, and the MoE Qwen2-57B-A14B."""

from __future__ import annotations

from opscale.model import LatencyObjective
from opscale.perf import default_catalog
from opscale.perf.sm_share import SmShareParams
from opscale.planning.operators import OperatorPlanner, OperatorPlannerConfig

CATALOG = default_catalog()
QWEN7 = CATALOG.model("Qwen2-7B")
QWEN57 = CATALOG.model("Qwen2-57B-A14B")
H100 = CATALOG.sku("H100-80GB")
OBJECTIVE = LatencyObjective(ttft_slo_s=1.0, tbt_slo_s=0.1)
PLANNER = OperatorPlanner(QWEN7, H100, OBJECTIVE)
WHOLE = OperatorPlanner(QWEN7, H100, OBJECTIVE, OperatorPlannerConfig(sharing=SmShareParams(shares=(1.0,))))
MOE_PLANNER = OperatorPlanner(QWEN57, H100, LatencyObjective(ttft_slo_s=2.0, tbt_slo_s=0.1))

"""Scale-up latency of operator replicas against a full replica (issue 14 item 6; PAPERS.md §1.6: OpScale
measures, for Qwen2-7B, 0.03 s for one operator, 0.18 s for 50% of the operators, 0.33 s for all of them
and 10.68 s for a full replica).

Ours comes from the weight bytes moved (`opscale.perf.loading`): an operator replica attaches to the
running base engine and pulls its operators' weights over the warm path (`attach_load_time_s`); a full
replica starts an engine and loads the whole model (`load_time_s`, warm and cold). "One operator" is one
layer's share of a family (OpScale's operators are per layer; the headline is the MLP's, the largest
per-layer operator); "one family" is a family over every layer (what this repo's operator replicas
hold); "50%" and "all" are that share of the model's weight bytes, attached.

Pure arithmetic: no I/O, no clock.
"""

from __future__ import annotations

from typing import Any

from opscale.model import ModelSpec, Sku
from opscale.perf.loading import LoadTimeParams, attach_load_time_s, load_time_s
from opscale.perf.operator_replicas import operators_attach_s
from opscale.perf.operators import Operator, operator_weight_bytes
from opscale.planning.operators.costs import StageCosts

# OpScale's averages for Qwen2-7B (PAPERS.md §1.6), seconds.
PAPER_QWEN2_7B_S = {"one_operator_s": 0.03, "half_operators_s": 0.18, "all_operators_s": 0.33,
                    "full_replica_s": 10.68}


def scaleup_table(model: ModelSpec, sku: Sku, tp: int | None = None,
                  params: LoadTimeParams | None = None) -> dict[str, Any]:
    """Seconds to add capacity of `model` on `sku` at tensor parallelism `tp` (None: the smallest whose
    memory holds the model), by what is added (see the module docstring)."""
    costs = StageCosts(model, sku)
    whole_tp = tp or costs.tp_for(frozenset(Operator)) or 8

    def family_tp(op: Operator) -> int:
        return min(whole_tp, costs.tp_for(frozenset({op})) or whole_tp)

    per_layer = {op.value: attach_load_time_s(operator_weight_bytes(model, op) / model.layers, family_tp(op), params)
                 for op in (Operator.ATTN_PROJ, Operator.MLP)}
    return {
        "model": model.name, "sku": sku.name, "tp": whole_tp,
        "one_operator_s": per_layer[Operator.MLP.value],
        "one_operator_one_layer_s": per_layer,
        "one_family_s": {op.value: operators_attach_s(model, {op}, family_tp(op), params) for op in Operator},
        "half_operators_s": attach_load_time_s(model.weight_bytes / 2, whole_tp, params),
        "all_operators_s": attach_load_time_s(model.weight_bytes, whole_tp, params),
        "full_replica_warm_s": load_time_s(model, sku, whole_tp, "warm", params),
        "full_replica_cold_s": load_time_s(model, sku, whole_tp, "cold", params),
    }

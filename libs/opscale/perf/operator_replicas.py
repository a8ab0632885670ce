"""Iteration latency of a base engine with elastic operator replicas attached (OpScale's runtime shape).

A base instance runs every operator on its `tp` GPUs. Operator replicas of a stage (a set of operator
families) join it on other GPUs of the host: the stage's work in each iteration is then spread over
the base's copy and the replicas, which is what `OperatorSplitLatencyModel` prices with groups that
have `replicas` (the batch split over them, activations crossing to and from the group over the
host's NVLink, `TransferParams.link(SAME_HOST)`). The groups: one per stage with replicas, of
1 + its replicas' GPU-equivalents in base-instance units (replicas x tp x SM share / base tp, rounded,
at least one: a share is not priced below a whole copy's speed-up here), and one group of every other
operator at one copy. Stages whose operator sets overlap are merged into one group.

With no replicas the engine keeps its own latency model. With some, the operator-split roofline at
the SKU's calibrated params (or the base model's params when it is a roofline) prices every iteration:
the operator profiles do not say how a measured whole-model curve splits by operator.
Pure arithmetic: no I/O, no clock.
"""

from __future__ import annotations

from collections.abc import Iterable

from opscale.model import ModelSpec, OperatorReplicas, Sku
from opscale.perf.calibration import calibrated_params
from opscale.perf.latency import LatencyModel, RooflineParams
from opscale.perf.loading import LoadTimeParams, attach_load_time_s
from opscale.perf.operators import (
    ALL_OPERATORS,
    Operator,
    OperatorGroup,
    OperatorSplitLatencyModel,
    operator_weight_bytes,
    roofline_factory,
)
from opscale.perf.transfer import Topology, TransferParams


def operator_families(replicas: OperatorReplicas) -> frozenset[Operator]:
    """The replicas' operators as `Operator`s; ValueError naming the unknown one and the known ones."""
    try:
        return frozenset(Operator(op) for op in replicas.operators)
    except ValueError:
        known = ", ".join(op.value for op in Operator)
        raise ValueError(f"operator replicas {replicas.name!r}: unknown operator in {list(replicas.operators)}; "
                         f"known: {known}") from None


def replica_groups(sku: Sku, tp: int, replicas: Iterable[OperatorReplicas]) -> tuple[OperatorGroup, ...]:
    """The operator groups of a base engine on `tp` GPUs of `sku` with `replicas` attached (module docstring)."""
    merged: list[tuple[frozenset[Operator], float]] = []  # operator set -> GPU-equivalents of its replicas
    for r in replicas:
        ops, gpus = operator_families(r), r.gpu_equivalents
        for other in [m for m in merged if m[0] & ops]:
            merged.remove(other)
            ops, gpus = ops | other[0], max(gpus, other[1])
        merged.append((ops, gpus))
    groups = [OperatorGroup("+".join(sorted(op.value for op in ops)), ops, sku, tp, 1 + max(1, round(gpus / tp)))
              for ops, gpus in sorted(merged, key=lambda m: sorted(m[0]))]
    rest = ALL_OPERATORS - frozenset().union(*(g.operators for g in groups))
    if rest:
        groups.append(OperatorGroup("base", rest, sku, tp, 1))
    return tuple(groups)


def with_operator_replicas(own: LatencyModel, model: ModelSpec, sku: Sku, tp: int,
                           replicas: tuple[OperatorReplicas, ...],
                           transfer: TransferParams | None = None) -> LatencyModel:
    """The latency model of a base engine (`own` its model alone) serving with `replicas` attached."""
    if not replicas:
        return own
    params = getattr(own, "params", None)
    if not isinstance(params, RooflineParams):
        params = calibrated_params(sku.name)
    link = (transfer or TransferParams()).link(Topology.SAME_HOST, sku.name)
    return OperatorSplitLatencyModel(roofline_factory(model, params), replica_groups(sku, tp, replicas), link)


def replica_attach_s(model: ModelSpec, replica: OperatorReplicas, params: LoadTimeParams | None = None) -> float:
    """Seconds for one replica of `replica`'s stage to join a running engine of `model`: its operators'
    weight bytes over the warm path (`opscale.perf.loading.attach_load_time_s`), the per-operator
    scale-up latency."""
    weights = sum(operator_weight_bytes(model, op) for op in operator_families(replica))
    return attach_load_time_s(weights, replica.tp, params)

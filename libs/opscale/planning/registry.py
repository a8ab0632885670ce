"""Registry of planning policies, chosen by name in config. Each is built with the deployments, the
capacity estimate, the latency objective derived from the service tiers, and its own parameters."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from enum import StrEnum
from typing import Any, TypeVar

from pydantic import BaseModel, ValidationError

from opscale.model import DEFAULT_TIERS, LatencyObjective, TierSpec, latency_objective
from opscale.planning.base import CapacityFn, DeploymentSpec, PlanningPolicy, refuse_disaggregated

ConfigT = TypeVar("ConfigT", bound=BaseModel)


class PlanningPolicyName(StrEnum):
    REACTIVE = "reactive"
    STATIC = "static"
    KPA = "kpa"
    CHIRON = "chiron"
    SAGESERVE_REACTIVE = "sageserve_reactive"
    SAGESERVE_LT_I = "sageserve_lt_i"
    SAGESERVE_LT_U = "sageserve_lt_u"
    SAGESERVE_LT_UA = "sageserve_lt_ua"
    SAGESERVE_MIP = "sageserve_mip"
    HETEROSCALE = "heteroscale"
    PD_HPA = "pd_hpa"
    OPERATOR_LEVEL = "operator_level"
    MODEL_LEVEL = "model_level"
    OPSCALE = "opscale"


# Objectives are the tiers' (opscale.model.tiers), not a policy's: these former parameters are refused
# with that explanation rather than with "unknown field".
_TIER_OBJECTIVES = ("ttft_slo_s", "tbt_slo_s")


def _reactive(deployments: list[DeploymentSpec], capacity: CapacityFn, objective: LatencyObjective,
              **params: Any) -> PlanningPolicy:
    from opscale.planning.reactive import ReactiveConfig, ReactivePolicy

    return ReactivePolicy(deployments, capacity, _config("reactive", ReactiveConfig, params), objective)


def _static(deployments: list[DeploymentSpec], capacity: CapacityFn, objective: LatencyObjective,
            **params: Any) -> PlanningPolicy:
    from opscale.cloud import vm_count_table
    from opscale.planning.static import StaticConfig, StaticPolicy

    config = _config("static", StaticConfig, params)
    try:
        vms = vm_count_table(config.vms, "vms")
    except ValueError as exc:
        raise ValueError(f"planning policy 'static': {exc}") from None
    return StaticPolicy(deployments, config.replicas, vms)


def _config(policy: str, cls: type[ConfigT], params: dict[str, Any]) -> ConfigT:
    """Validate a policy's parameters; the error names the policy, each field and what is wrong with it."""
    try:
        return cls(**params)
    except ValidationError as exc:
        problems = "; ".join(f"{'.'.join(str(p) for p in e['loc']) or '(config)'}: {e['msg']}" for e in exc.errors())
        raise ValueError(f"planning policy {policy!r}: {problems}") from None


def _kpa(deployments: list[DeploymentSpec], capacity: CapacityFn, objective: LatencyObjective,
         **params: Any) -> PlanningPolicy:
    from opscale.planning.kpa import KpaConfig, KpaPolicy

    return KpaPolicy(deployments, capacity, _config("kpa", KpaConfig, params))


def _chiron(deployments: list[DeploymentSpec], capacity: CapacityFn, objective: LatencyObjective,
            **params: Any) -> PlanningPolicy:
    from opscale.planning.chiron import ChironConfig, ChironPolicy

    return ChironPolicy(deployments, capacity, _config("chiron", ChironConfig, params), objective)


def _sageserve_reactive(deployments: list[DeploymentSpec], capacity: CapacityFn, objective: LatencyObjective,
                        **params: Any) -> PlanningPolicy:
    from opscale.planning.sageserve.reactive import SageServeReactiveConfig, SageServeReactivePolicy

    return SageServeReactivePolicy(deployments, _config("sageserve_reactive", SageServeReactiveConfig, params))


def _sageserve_mip(deployments: list[DeploymentSpec], capacity: CapacityFn, objective: LatencyObjective,
                   **params: Any) -> PlanningPolicy:
    from opscale.planning.sageserve.mip import SageServeMipConfig, SageServeMipPolicy

    return SageServeMipPolicy(deployments, capacity, _config("sageserve_mip", SageServeMipConfig, params))


def _heteroscale(deployments: list[DeploymentSpec], capacity: CapacityFn, objective: LatencyObjective,
                 **params: Any) -> PlanningPolicy:
    from opscale.planning.heteroscale.policy import HeteroScalePolicy

    try:
        return HeteroScalePolicy(deployments, objective, params)
    except ValueError as exc:
        raise ValueError(f"planning policy 'heteroscale': {exc}") from None


def _pd_hpa(deployments: list[DeploymentSpec], capacity: CapacityFn, objective: LatencyObjective,
            **params: Any) -> PlanningPolicy:
    from opscale.planning.pd_hpa import PdHpaConfig, PdHpaPolicy

    return PdHpaPolicy(deployments, _config("pd_hpa", PdHpaConfig, params))


def _operator_scaling(level: str) -> Callable[..., PlanningPolicy]:
    def make(deployments: list[DeploymentSpec], capacity: CapacityFn, objective: LatencyObjective,
             **params: Any) -> PlanningPolicy:
        from opscale.planning.operators.policy import OperatorPolicyConfig, OperatorScalingPolicy

        name = f"{level}_level"
        try:
            return OperatorScalingPolicy(deployments, objective, _config(name, OperatorPolicyConfig, params),
                                         level)  # type: ignore[arg-type]
        except ValueError as exc:
            message = str(exc)
            raise ValueError(message if message.startswith("planning policy") else
                             f"planning policy {name!r}: {message}") from None

    return make


def _opscale(deployments: list[DeploymentSpec], capacity: CapacityFn, objective: LatencyObjective,
             **params: Any) -> PlanningPolicy:
    from opscale.planning.opscale import OpscaleConfig, OpscalePolicy

    try:
        return OpscalePolicy(deployments, capacity, objective, _config("opscale", OpscaleConfig, params))
    except ValueError as exc:
        message = str(exc)
        raise ValueError(message if message.startswith("planning policy") else
                         f"planning policy 'opscale': {message}") from None


def _sageserve_lt(variant: str) -> Callable[..., PlanningPolicy]:
    def make(deployments: list[DeploymentSpec], capacity: CapacityFn, objective: LatencyObjective,
             **params: Any) -> PlanningPolicy:
        from opscale.planning.sageserve.long_term import SageServeLtConfig, SageServeLtPolicy

        if "variant" in params:
            raise ValueError(f"planning policy 'sageserve_{variant}' fixes the variant; drop 'variant' "
                             f"(got {params['variant']!r}) or pick the policy named after it")
        config = _config(f"sageserve_{variant}", SageServeLtConfig, {**params, "variant": variant})
        return SageServeLtPolicy(deployments, capacity, config)

    return make


# Policies that size a disaggregated deployment's prefill and decode pools (each on its own signal);
# the others refuse one by name.
_DISAGGREGATION_AWARE = frozenset({PlanningPolicyName.REACTIVE, PlanningPolicyName.STATIC,
                                   PlanningPolicyName.HETEROSCALE, PlanningPolicyName.PD_HPA,
                                   PlanningPolicyName.OPSCALE})

_FACTORIES: dict[PlanningPolicyName, Callable[..., PlanningPolicy]] = {
    PlanningPolicyName.REACTIVE: _reactive,
    PlanningPolicyName.STATIC: _static,
    PlanningPolicyName.KPA: _kpa,
    PlanningPolicyName.CHIRON: _chiron,
    PlanningPolicyName.SAGESERVE_REACTIVE: _sageserve_reactive,
    PlanningPolicyName.SAGESERVE_LT_I: _sageserve_lt("lt_i"),
    PlanningPolicyName.SAGESERVE_LT_U: _sageserve_lt("lt_u"),
    PlanningPolicyName.SAGESERVE_LT_UA: _sageserve_lt("lt_ua"),
    PlanningPolicyName.SAGESERVE_MIP: _sageserve_mip,
    PlanningPolicyName.HETEROSCALE: _heteroscale,
    PlanningPolicyName.PD_HPA: _pd_hpa,
    PlanningPolicyName.OPERATOR_LEVEL: _operator_scaling("operator"),
    PlanningPolicyName.MODEL_LEVEL: _operator_scaling("model"),
    PlanningPolicyName.OPSCALE: _opscale,
}


def make_planning_policy(name: str, deployments: list[DeploymentSpec], capacity: CapacityFn, *,
                         tiers: Mapping[str, TierSpec] | None = None, **params: Any) -> PlanningPolicy:
    """The planning policy called `name` with its `params`; the objectives it defends come from `tiers`
    (the built-in tiers when None)."""
    try:
        key = PlanningPolicyName(name)
    except ValueError:
        known = ", ".join(n.value for n in PlanningPolicyName)
        raise ValueError(f"unknown planning policy {name!r}; known policies: {known}") from None
    moved = [p for p in _TIER_OBJECTIVES if p in params]
    if moved:
        raise ValueError(f"planning policy {name!r}: {moved[0]} (got {params[moved[0]]!r}) is not a policy "
                         f"parameter; latency objectives come from the tiers (their {moved[0]})")
    if key not in _DISAGGREGATION_AWARE:
        refuse_disaggregated(name, deployments)
    objective = latency_objective(tiers if tiers is not None else DEFAULT_TIERS)
    return _FACTORIES[key](deployments, capacity, objective, **params)

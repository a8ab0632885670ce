"""The `heteroscale` planning policy's parameters: policy-wide settings, defaults for every service, and
per-service overrides.

In a scenario (`policy: heteroscale`, `policy_params:`):

    policy_params:
      soft_scale_in_s: 60             # policy-wide (HeteroScaleSettings)
      ready_ratio_tolerance: 0.25
      decode_tps_per_instance: 900    # a default of every service (a HeteroScaleConfig field)
      pd_ratio: "1:3"
      services:                       # per model: overrides of the defaults
        Llama-3-8B: {decode_tps_per_instance: 1200, pd_ratio: "1:2"}
        Qwen-7B: {mode: periodic, entries: [{at_s: 0, prefill: 1, decode: 2}]}

A service is metric-driven (`mode: metric`, HeteroScaleConfig) or scheduled (`mode: periodic`,
PeriodicConfig); `mode` may be set for all at the top level or per service. A service's configuration is
the defaults that are fields of its mode's class, overlaid by its own entry. Its replica bounds are not
parameters: they are its deployment's (the prefill and decode pools' min/max_replicas). Errors name the
field as written: `pd_ratio` for a bad default, `services.Llama-3-8B.pd_ratio` for a bad override.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from opscale.planning.heteroscale.config import HeteroScaleConfig
from opscale.planning.heteroscale.periodic import PeriodicConfig

Mode = Literal["metric", "periodic"]
_MODES: dict[str, type[HeteroScaleConfig] | type[PeriodicConfig]] = {"metric": HeteroScaleConfig,
                                                                      "periodic": PeriodicConfig}
ServiceConfig = HeteroScaleConfig | PeriodicConfig


class HeteroScaleSettings(BaseModel):
    """What applies to the whole policy rather than to one service."""

    model_config = ConfigDict(extra="forbid")
    # PAPERS.md §3.5 names soft scale-in but no window; 60 s is two of the engine's 30 s periods.
    soft_scale_in_s: float = Field(60.0, ge=0, description="How long a scaled-in instance stays withdrawn from "
                                   "discovery, running and restorable at once, before it is stopped; 0: stop at once")
    # PAPERS.md §3.5 says "tolerable" without a number: a quarter off the split, at least one instance.
    ready_ratio_tolerance: float | None = Field(0.25, ge=0, description="Ready-ratio gate: newly ready instances "
                                                "of a role more than this fraction over its share of the P/D "
                                                "split wait for the other role; None: no gate")
    mode: Mode = Field("metric", description="Default mode of a service: metric (HeteroScaleConfig) or periodic "
                       "(PeriodicConfig)")


def parse_params(params: Mapping[str, Any], models: list[str]) -> tuple[HeteroScaleSettings, dict[str, ServiceConfig]]:
    """The policy-wide settings and each model's service configuration; a ValueError naming the field."""
    wide_keys = set(HeteroScaleSettings.model_fields)
    service_keys = set(HeteroScaleConfig.model_fields) | set(PeriodicConfig.model_fields)
    unknown = sorted(k for k in params if k not in wide_keys | service_keys | {"services"})
    if unknown:
        raise ValueError(f"{unknown[0]}: unknown parameter (got {params[unknown[0]]!r}); the policy takes "
                         f"{sorted(wide_keys)}, 'services', and the fields of a service's configuration "
                         f"{sorted(service_keys)}")
    try:
        settings = HeteroScaleSettings(**{k: v for k, v in params.items() if k in wide_keys})
    except ValidationError as exc:
        raise ValueError(_problems(exc, lambda field: field)) from None
    services = params.get("services") or {}
    if not isinstance(services, Mapping):
        raise ValueError(f"services: expected a mapping of model -> parameters, got {services!r}")
    strays = sorted(set(services) - set(models))
    if strays:
        raise ValueError(f"services.{strays[0]}: no disaggregated deployment of that model; deployed: {models}")
    defaults = {k: v for k, v in params.items() if k in service_keys}
    configs: dict[str, ServiceConfig] = {}
    for model in models:
        own = services.get(model) or {}
        if not isinstance(own, Mapping):
            raise ValueError(f"services.{model}: expected a mapping of parameters, got {own!r}")
        mode = own.get("mode", settings.mode)
        if mode not in _MODES:
            raise ValueError(f"services.{model}.mode: {mode!r} is not one of {sorted(_MODES)}")
        cls = _MODES[mode]
        fields = {k: v for k, v in defaults.items() if k in cls.model_fields}
        fields.update({k: v for k, v in own.items() if k != "mode"})
        try:
            configs[model] = cls(**fields)
        except ValidationError as exc:
            raise ValueError(_problems(exc, lambda field, own=own, model=model: (
                f"services.{model}.{field}" if field.split(".")[0] in own else f"{field} (service {model})"))) from None
    return settings, configs


def _problems(exc: ValidationError, name: Any) -> str:
    """Each error of `exc` as 'field: message', the field named by `name(dotted location)`."""
    return "; ".join(f"{name('.'.join(str(p) for p in e['loc']) or '(config)')}: {e['msg']}"
                     + (f" (got {e['input']!r})" if e.get("type") != "missing" and not isinstance(e.get("input"), dict)
                        else "") for e in exc.errors())

"""Service tiers: the built-in table is defined once and every config's default is it; a tier table from
YAML is validated with errors that name the field; the latency objective policies defend is derived
from the table."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml
from pydantic import BaseModel, ValidationError

from opscale.experiments.scenario import Scenario, ScenarioError, builtin_demo_scenario, load_scenario
from opscale.model import (
    DEFAULT_TIERS,
    LatencyObjective,
    TierList,
    TierModel,
    TierSpec,
    default_tier_models,
    latency_objective,
    tier_table,
)
from opscale.planning import make_planning_policy
from opscale.runtime.live.settings import SERVICE_SETTINGS, load_settings

pytestmark = pytest.mark.unit


class _Config(BaseModel):
    tiers: TierList


def _problems(data: object) -> str:
    with pytest.raises(ValidationError) as err:
        _Config.model_validate({"tiers": data})
    return str(err.value)


def test_every_default_table_is_the_builtin_one() -> None:
    assert tier_table(default_tier_models()) == DEFAULT_TIERS
    assert builtin_demo_scenario().tier_specs() == DEFAULT_TIERS
    for cls in SERVICE_SETTINGS.values():
        assert load_settings(cls).tier_specs() == DEFAULT_TIERS
    objective = latency_objective(DEFAULT_TIERS)
    for name in ("reactive", "chiron"):
        assert make_planning_policy(name, [], lambda *_: 1.0).objective == objective  # type: ignore[attr-defined]


def test_a_model_and_its_spec_round_trip() -> None:
    for spec in DEFAULT_TIERS.values():
        assert TierModel.of(spec).spec() == spec


def test_errors_name_the_field() -> None:
    assert "tiers.0.name\n  Field required" in _problems([{"ttft_slo_s": 1.0, "tbt_slo_s": 0.1}])
    assert "tiers.0.ttft_slo_s\n  Input should be greater than 0" in _problems(
        [{"name": "gold", "ttft_slo_s": -1.0, "tbt_slo_s": 0.1}])
    assert "tiers.1.tbt_slo_s\n  Input should be a finite number" in _problems(
        [{"name": "gold", "ttft_slo_s": 1.0, "tbt_slo_s": 0.1}, {"name": "x", "ttft_slo_s": 1.0, "tbt_slo_s": "inf"}])
    assert "tiers.0.name\n  String should match pattern" in _problems(
        [{"name": "gold tier", "ttft_slo_s": 1.0, "tbt_slo_s": 0.1}])
    assert "tiers.0.deadline_s\n  Input should be greater than 0" in _problems(
        [{"name": "bulk", "ttft_slo_s": 1.0, "tbt_slo_s": 0.1, "deadline_s": 0}])
    assert "tiers.0.ttft_slo_ms\n  Extra inputs are not permitted" in _problems(
        [{"name": "gold", "ttft_slo_ms": 1.0, "ttft_slo_s": 1.0, "tbt_slo_s": 0.1}])
    assert "tiers\n  Value error, tier 'gold' appears twice" in _problems(
        [{"name": "gold", "ttft_slo_s": 1.0, "tbt_slo_s": 0.1}] * 2)
    assert "tiers\n  List should have at least 1 item" in _problems([])


def test_the_objective_is_the_strictest_latency_sensitive_tiers() -> None:
    tiers = {"chat": TierSpec("chat", 2.0, 0.1), "fast": TierSpec("fast", 0.5, 0.2),
             "bulk": TierSpec("bulk", 0.1, 0.01, deadline_s=3600.0)}
    assert latency_objective(tiers) == LatencyObjective(ttft_slo_s=0.5, tbt_slo_s=0.1)  # bulk has a deadline
    only_deadlines = {"bulk": TierSpec("bulk", 60.0, 1.0, deadline_s=3600.0)}
    assert latency_objective(only_deadlines) == LatencyObjective(60.0, 1.0)
    with pytest.raises(ValueError, match="tiers: none given"):
        latency_objective({})


def test_a_scenario_names_an_unknown_tier_and_its_field(tmp_path: Path) -> None:
    data = builtin_demo_scenario().model_dump(mode="json")
    data["tiers"] = [{"name": "interactive", "ttft_slo_s": 2.0, "tbt_slo_s": 0.1}]
    with pytest.raises(ValidationError, match=r"workload.tier_weights: unknown tiers \['batch'\]; the "
                                              r"scenario's tiers: \['interactive'\]"):
        Scenario.model_validate(data)
    path = tmp_path / "scenario.yaml"
    data["tiers"] = [{"name": "interactive", "ttft_slo_s": -2.0, "tbt_slo_s": 0.1}]
    path.write_text(yaml.safe_dump(data))
    with pytest.raises(ScenarioError, match=r"scenario.yaml: tiers.0.ttft_slo_s: Input should be greater than 0"):
        load_scenario(path)

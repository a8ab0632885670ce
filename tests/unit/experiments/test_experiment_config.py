"""Experiment configs: a bad field is rejected with its name, variants change only what they may, --hours
reshapes a generated workload, and the shipped configs load."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml

from opscale.experiments.comparison import (
    ExperimentError,
    Variant,
    find_experiment,
    load_experiment,
    shipped_experiments,
    variant_scenario,
)

pytestmark = pytest.mark.unit


def base_scenario() -> dict[str, Any]:
    return {
        "name": "base", "seed": 5, "duration_s": 600.0,
        "hosts": [{"region": "eu", "sku": "H100-80GB", "gpus": 8, "count": 1}],
        "deployments": [{"model": "Llama-3-8B", "sku": "H100-80GB", "tp": 1}],
        "workload": {"seed": 5, "start_s": 10.0, "duration_s": 590.0,
                     "streams": [{"model": "Llama-3-8B", "region": "eu", "base_rps": 1.0}]},
        "planner": {"interval_s": 10.0, "demand_window_s": 30.0},
    }


def config(**changes: Any) -> dict[str, Any]:
    data: dict[str, Any] = {"name": "t", "base": base_scenario(),
                            "variants": [{"name": "a", "policy": "reactive"}, {"name": "b", "policy": "static"}]}
    data.update(changes)
    return data


def load(tmp_path: Path, data: Any) -> Any:
    path = tmp_path / "exp.yaml"
    path.write_text(yaml.safe_dump(data))
    return load_experiment(path)


@pytest.mark.parametrize(("changes", "expected"), [
    ({"variants": []}, "variants: List should have at least 1 item"),
    ({"variants": [{"name": "a", "policy": "reactive"}, {"name": "a", "policy": "kpa"}]},
     "names ['a'] appear more than once"),
    ({"variants": [{"name": "bad name/", "policy": "reactive"}]}, "variants.0.name"),
    ({"variants": [{"name": "a", "policy": "reactive", "overrides": {"shaped": None}}]},
     "variants.0.overrides: Value error, ['shaped'] are the same for every variant"),
    ({"variants": [{"name": "a", "policy": "reactive", "overrides": {"colour": 1}}]},
     "variants.0.overrides: Value error, unknown scenario fields ['colour']"),
    ({"variants": [{"name": "a", "policy": "reactive", "extra": 1}]}, "variants.0.extra: Extra inputs"),
    ({"parallel": 0}, "parallel: Input should be greater than or equal to 1"),
    ({"base": None}, "give exactly one of 'base'"),
    ({"base": {**base_scenario(), "duration_s": -1}}, "base.duration_s: Input should be greater than 0"),
    ({"reference": [{"claim": "c", "source": "s", "metric": "gpu_hours", "variants": ["zz"], "baseline": "a"}]},
     "reference.0: variants ['zz'] are not in 'variants'"),
])
def test_bad_configs_name_the_field(tmp_path: Path, changes: dict[str, Any], expected: str) -> None:
    with pytest.raises(ExperimentError) as info:
        load(tmp_path, config(**changes))
    assert expected in str(info.value)
    assert str(tmp_path / "exp.yaml") in str(info.value)


def test_unreadable_files_are_named(tmp_path: Path) -> None:
    with pytest.raises(ExperimentError, match="does not exist"):
        load_experiment(tmp_path / "missing.yaml")
    (tmp_path / "bad.yaml").write_text("variants: [\n")
    with pytest.raises(ExperimentError, match="invalid YAML"):
        load_experiment(tmp_path / "bad.yaml")
    (tmp_path / "list.yaml").write_text("- 1\n")
    with pytest.raises(ExperimentError, match="expected a mapping"):
        load_experiment(tmp_path / "list.yaml")
    with pytest.raises(ExperimentError, match="shipped: .*sageserve"):
        find_experiment(str(tmp_path / "nowhere.yaml"))


def test_base_file_is_read_relative_to_the_config_and_its_errors_are_named(tmp_path: Path) -> None:
    (tmp_path / "scenarios").mkdir()
    (tmp_path / "scenarios" / "base.yaml").write_text(yaml.safe_dump(base_scenario()))
    data = config(base=None, base_file="scenarios/base.yaml")
    exp, base = load(tmp_path, data)
    assert exp.base is None and base.seed == 5
    (tmp_path / "scenarios" / "base.yaml").write_text(yaml.safe_dump({**base_scenario(), "hosts": []}))
    with pytest.raises(ExperimentError, match="base_file: scenario file .*hosts"):
        load(tmp_path, data)


def test_variant_scenario_sets_the_policy_and_merges_overrides(tmp_path: Path) -> None:
    _, base = load(tmp_path, config())
    variant = Variant(name="v", policy="kpa", policy_params={"target_util": 0.6}, routing_policy="p2c",
                      overrides={"planner": {"interval_s": 5.0}, "load_time_scale": 0.5})
    scenario = variant_scenario(base, variant)
    assert (scenario.policy, scenario.policy_params, scenario.routing_policy) == ("kpa", {"target_util": 0.6}, "p2c")
    assert scenario.planner.interval_s == 5.0 and scenario.planner.demand_window_s == 30.0  # merged, not replaced
    assert scenario.load_time_scale == 0.5 and scenario.name == "base | v"
    assert (scenario.seed, scenario.workload) == (base.seed, base.workload)
    with pytest.raises(ExperimentError, match="variant 'w': planner.interval_s"):
        variant_scenario(base, Variant(name="w", policy="kpa", overrides={"planner": {"interval_s": -1}}))


def test_hours_reshapes_the_generated_workload(tmp_path: Path) -> None:
    _, base = load(tmp_path, config())
    scenario = variant_scenario(base, Variant(name="v", policy="reactive"), hours=0.5)
    assert scenario.duration_s == 1800.0
    assert scenario.workload is not None and scenario.workload.duration_s == 1790.0
    with pytest.raises(ExperimentError, match="ends before the first arrival"):
        variant_scenario(base, Variant(name="v", policy="reactive"), hours=1 / 3600)


def test_the_shipped_sageserve_config_loads() -> None:
    assert "sageserve" in shipped_experiments()
    exp, base = load_experiment(find_experiment("sageserve"))
    names = [v.name for v in exp.variants]
    assert names[:2] == ["static", "reactive"]
    assert {"kpa", "chiron", "sageserve_reactive", "sageserve_lt_i", "sageserve_lt_u", "sageserve_lt_ua"} <= set(names)
    assert base.regions() == ["centralus", "eastus", "westus"]
    assert len({d.model for d in base.deployments}) == 4
    assert base.shaped is not None and {t.name for t in base.tiers} == {"interactive", "batch"}
    assert {r.baseline for r in exp.reference} <= set(names)

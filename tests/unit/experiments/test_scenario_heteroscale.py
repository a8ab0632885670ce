"""A scenario file names `heteroscale` and its parameters as README.md shows them; the planning stack is
built from it, and a bad parameter is an error naming the field."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from opscale.experiments import runner
from opscale.experiments.scenario import load_scenario

pytestmark = pytest.mark.unit

SCENARIO = """
name: pd
duration_s: 600
hosts:
  - {region: eu-west, sku: H100-80GB, count: 2, s0: leaf-a, s1: pod-1}
  - {region: eu-west, sku: H20, count: 4, s0: leaf-b, s1: pod-1}
deployments:
  - model: Llama-3-8B
    prefill: {sku: H100-80GB, tp: 1, min_replicas: 1, max_replicas: 8}
    decode: {sku: H20, tp: 1, min_replicas: 2, max_replicas: 16}
  - model: Llama-3-70B
    prefill: {sku: H100-80GB, tp: 4, min_replicas: 1, max_replicas: 2}
    decode: {sku: H20, tp: 4, min_replicas: 1, max_replicas: 4}
policy: heteroscale
policy_params:
  decode_tps_per_instance: 300
  pd_ratio: "1:2"
  soft_scale_in_s: 60
  ready_ratio_tolerance: 0.25
  services:
    Llama-3-70B: {mode: periodic, entries: [{at_s: 0, prefill: 1, decode: 2}, {at_s: 28800, prefill: 2, decode: 4}]}
"""


def _write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "scenario.yaml"
    path.write_text(text)
    return path


def test_the_readme_shaped_scenario_builds_its_heteroscale_planner(tmp_path: Path) -> None:
    world, _ = runner.build_world(load_scenario(_write(tmp_path, SCENARIO)))
    policy = world.planner.policy
    assert policy.name == "heteroscale"
    assert sorted(policy.controllers) == ["Llama-3-70B", "Llama-3-8B"]  # type: ignore[attr-defined]


def test_a_ratio_of_zero_in_the_scenario_is_an_error_naming_pd_ratio(tmp_path: Path) -> None:
    data = yaml.safe_load(SCENARIO)
    data["policy_params"]["services"]["Llama-3-8B"] = {"pd_ratio": 0}
    with pytest.raises(ValueError, match=r"services\.Llama-3-8B\.pd_ratio"):
        runner.build_world(load_scenario(_write(tmp_path, yaml.safe_dump(data))))

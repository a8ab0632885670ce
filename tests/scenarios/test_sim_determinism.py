"""A simulation run is a pure function of its scenario and seed: the same seed gives the same result,
decisions and timeline (wall time aside), in this process or in another one with a different string
hash seed (so no result may depend on set or dict-of-str iteration order); another seed differs."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from _sim_scenarios import fingerprint

from opscale.experiments.runner import run_scenario
from opscale.experiments.scenario import builtin_demo_scenario

pytestmark = pytest.mark.sim

DURATION_S = 600.0

_RUN_IN_CHILD = """
import sys
sys.path.insert(0, sys.argv[1])
from _sim_scenarios import fingerprint
from opscale.experiments.runner import run_scenario
from opscale.experiments.scenario import builtin_demo_scenario
print(fingerprint(run_scenario(builtin_demo_scenario(seed=int(sys.argv[2]), duration_s=float(sys.argv[3])))))
"""


@pytest.fixture(scope="module")
def seed_1() -> str:
    return fingerprint(run_scenario(builtin_demo_scenario(seed=1, duration_s=DURATION_S)))


def test_same_seed_gives_the_same_run_in_another_process(seed_1: str) -> None:
    # A hash seed different from this process's (whatever it is) changes every str-keyed set order.
    hash_seed = "1" if os.environ.get("PYTHONHASHSEED") != "1" else "2"
    child = subprocess.run(
        [sys.executable, "-c", _RUN_IN_CHILD, str(Path(__file__).parent), "1", str(DURATION_S)],
        env={**os.environ, "PYTHONHASHSEED": hash_seed}, capture_output=True, text=True, check=True)
    assert child.stdout.strip() == seed_1


def test_same_seed_gives_the_same_run_in_this_process(seed_1: str) -> None:
    assert fingerprint(run_scenario(builtin_demo_scenario(seed=1, duration_s=DURATION_S))) == seed_1


def test_another_seed_gives_another_run(seed_1: str) -> None:
    other = run_scenario(builtin_demo_scenario(seed=2, duration_s=DURATION_S))
    assert fingerprint(other) != seed_1
    assert other.result["requests"] > 0

"""The optional compiled build (OPSCALE_COMPILE=1: the modules of opscale._native_modules compiled with
mypyc) runs a simulation exactly as the Python source does: the same seed gives the same result,
decisions and timeline. Slow: it builds the compiled package (a minute or so) unless
bench/_compiled_build.py has it cached for these sources, and needs the package index and a C compiler."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from _fingerprint import fingerprint

from opscale.experiments.runner import run_scenario
from opscale.experiments.scenario import builtin_demo_scenario

pytestmark = [pytest.mark.sim, pytest.mark.slow]

REPO = Path(__file__).resolve().parents[2]
DURATION_S = 600.0

# The child checks that it runs the compiled modules, then prints the run's fingerprint.
_RUN_COMPILED = """
import sys
sys.path[:0] = sys.argv[1:3]
from _compiled_build import compiled_modules_loaded
from _fingerprint import fingerprint
from opscale._native_modules import NATIVE_MODULES
from opscale.experiments.runner import run_scenario
from opscale.experiments.scenario import builtin_demo_scenario
missing = [m for m, compiled in compiled_modules_loaded(NATIVE_MODULES).items() if not compiled]
if missing:
    sys.exit(f"not compiled in the child: {missing}")
print(fingerprint(run_scenario(builtin_demo_scenario(seed=int(sys.argv[3]), duration_s=float(sys.argv[4])))))
"""


def _compiled_site() -> Path:
    sys.path.insert(0, str(REPO / "bench"))  # the benchmark's builder: one way to build, cached for both
    try:
        from _compiled_build import compiled_build
    finally:
        sys.path.remove(str(REPO / "bench"))
    return compiled_build(log=False).site


def test_compiled_build_runs_the_demo_exactly_as_the_python_source() -> None:
    site = _compiled_site()
    path = [str(site)] + [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(path)}
    child = subprocess.run(
        [sys.executable, "-c", _RUN_COMPILED, str(REPO / "bench"), str(Path(__file__).parent), "1", str(DURATION_S)],
        env=env, capture_output=True, text=True)
    assert child.returncode == 0, child.stderr
    pure = fingerprint(run_scenario(builtin_demo_scenario(seed=1, duration_s=DURATION_S)))
    assert child.stdout.strip() == pure

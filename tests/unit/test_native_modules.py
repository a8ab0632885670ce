"""The optional compiled build's module list and build hooks (the build itself is checked by the slow
tests/scenarios/test_compiled_build.py): the listed modules exist, this development install runs their
Python source, and only a compiled wheel build asks for mypy."""

from __future__ import annotations

import importlib
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from _paths import REPO

from opscale._native_modules import MYPY_REQUIREMENT, NATIVE_MODULES

pytestmark = pytest.mark.unit


def test_every_listed_module_is_a_python_source_file() -> None:
    for name in NATIVE_MODULES:
        assert (REPO / "libs" / Path(*name.split("."))).with_suffix(".py").is_file(), name


def test_the_development_install_runs_the_python_source() -> None:
    # A compiled extension left beside a source file would be imported instead of it, and edits to
    # the .py would silently stop taking effect (and tests that patch engine internals would break).
    for name in NATIVE_MODULES:
        origin = str(importlib.import_module(name).__file__)
        assert origin.endswith(".py"), f"{name} is imported from {origin}, not its source"


_QUERY = """
import json, sys
sys.path.insert(0, "_build_backend")
import backend
print(json.dumps({"wheel": backend.get_requires_for_build_wheel(),
                  "editable": backend.get_requires_for_build_editable()}))
"""


def _build_requires(compile_env: str | None) -> dict[str, list[str]]:
    env = {k: v for k, v in os.environ.items() if k != "OPSCALE_COMPILE"}
    if compile_env is not None:
        env["OPSCALE_COMPILE"] = compile_env
    # In a process of its own, as a build front end calls it: setuptools rewrites sys.argv.
    out = subprocess.run([sys.executable, "-c", _QUERY], cwd=REPO, env=env, capture_output=True, text=True,
                         check=True).stdout
    return json.loads(out.splitlines()[-1])


def test_only_a_compiled_wheel_build_requires_mypy() -> None:
    plain = _build_requires(None)
    assert not any(r.startswith("mypy") for r in plain["wheel"] + plain["editable"])
    # With OPSCALE_COMPILE=1, setup.py must not compile while the requirements are worked out (mypy
    # is not installed yet then), and an editable install never compiles.
    compiled = _build_requires("1")
    assert MYPY_REQUIREMENT in compiled["wheel"]
    assert not any(r.startswith("mypy") for r in compiled["editable"])

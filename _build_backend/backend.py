"""The build backend: setuptools' own, with mypy added to the build requirements of a compiled build.

A wheel built with OPSCALE_COMPILE=1 compiles the modules of opscale._native_modules with mypyc (see
setup.py), so it needs mypy in its build environment; no other build does, so an ordinary install
(`pip install -e ".[dev]"`, `pip install .`) never fetches it. Only `build_wheel` ever compiles: every
other hook runs setup.py with the variable cleared, the requirement queries because mypy is not
installed yet when they run, the metadata and sdist steps because they have nothing to compile, and an
editable install because it must run the .py files in place so that edits take effect. This is the
wrapper pattern of setuptools' documentation ("Dynamic build dependencies and other build_meta tweaks").
"""

from __future__ import annotations

import os
import runpy
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from setuptools import build_meta as _setuptools

COMPILE_ENV = "OPSCALE_COMPILE"
_NATIVE_MODULES = Path(__file__).resolve().parent.parent / "libs" / "opscale" / "_native_modules.py"

ConfigSettings = dict[str, Any] | None


def _compiling() -> bool:
    return os.environ.get(COMPILE_ENV) == "1"


@contextmanager
def _pure() -> Iterator[None]:
    """setuptools calls inside build without mypyc: OPSCALE_COMPILE is cleared, then put back."""
    saved = os.environ.pop(COMPILE_ENV, None)
    try:
        yield
    finally:
        if saved is not None:
            os.environ[COMPILE_ENV] = saved


def get_requires_for_build_wheel(config_settings: ConfigSettings = None) -> list[str]:
    compiling = _compiling()
    with _pure():
        requires = list(_setuptools.get_requires_for_build_wheel(config_settings))
    if compiling:
        requires.append(runpy.run_path(str(_NATIVE_MODULES))["MYPY_REQUIREMENT"])
    return requires


def prepare_metadata_for_build_wheel(metadata_directory: str, config_settings: ConfigSettings = None) -> str:
    with _pure():
        return _setuptools.prepare_metadata_for_build_wheel(metadata_directory, config_settings)


def build_wheel(wheel_directory: str, config_settings: ConfigSettings = None,
                metadata_directory: str | None = None) -> str:
    return _setuptools.build_wheel(wheel_directory, config_settings, metadata_directory)


def get_requires_for_build_editable(config_settings: ConfigSettings = None) -> list[str]:
    with _pure():
        return _setuptools.get_requires_for_build_editable(config_settings)


def prepare_metadata_for_build_editable(metadata_directory: str, config_settings: ConfigSettings = None) -> str:
    with _pure():
        return _setuptools.prepare_metadata_for_build_editable(metadata_directory, config_settings)


def build_editable(wheel_directory: str, config_settings: ConfigSettings = None,
                   metadata_directory: str | None = None) -> str:
    if _compiling():
        print(f"{COMPILE_ENV}=1 is ignored by an editable install: it runs the Python source", file=sys.stderr)
    with _pure():
        return _setuptools.build_editable(wheel_directory, config_settings, metadata_directory)


def get_requires_for_build_sdist(config_settings: ConfigSettings = None) -> list[str]:
    with _pure():
        return _setuptools.get_requires_for_build_sdist(config_settings)


def build_sdist(sdist_directory: str, config_settings: ConfigSettings = None) -> str:
    with _pure():
        return _setuptools.build_sdist(sdist_directory, config_settings)

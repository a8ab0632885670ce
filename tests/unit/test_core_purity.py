"""The decision core must not do I/O (DESIGN.md principle 1): nothing under libs/opscale outside
runtime/live and the generated v1 package may import a network or async library. And the layers hold:
import-linter's contracts (pyproject.toml) pass, and every top-level module of opscale, opscale_services
and opscale_loadgen is placed in the layers contract or excused below with its reason, so a new module
cannot slip past the contracts unnoticed."""

from __future__ import annotations

import ast
import re
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest
from _paths import REPO

pytestmark = pytest.mark.unit

ROOT = REPO
CORE = ROOT / "libs" / "opscale"
# Where each root package's source lives (setup.py maps the folders to these names).
PACKAGE_FOLDERS = {"opscale": CORE, "opscale_services": ROOT / "services", "opscale_loadgen": ROOT / "loadgen"}
# Packages whose modules are placed one by one (each child is its own layer entry), not as a whole.
SPLIT_PACKAGES = {"opscale": "its subpackages are the layers", "opscale.runtime": "clock, sim and live sit apart"}
# Top-level modules with no layer, and why.
UNLAYERED = {
    "opscale._native_modules": "build metadata: setup.py and the build backend read it by path; it imports nothing",
}
FORBIDDEN = {"nats", "grpc", "redis", "asyncio", "aiohttp", "httpx", "opentelemetry", "uvloop"}
EXEMPT = (CORE / "runtime" / "live", CORE / "v1")


def _imports(path: Path) -> set[str]:
    tree = ast.parse(path.read_text(), filename=str(path))
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module.split(".")[0])
    return names


def core_modules() -> list[Path]:
    return [p for p in CORE.rglob("*.py") if not any(p.is_relative_to(e) for e in EXEMPT)]


def test_core_imports_no_io_library() -> None:
    offenders = {str(p.relative_to(ROOT)): sorted(_imports(p) & FORBIDDEN) for p in core_modules()}
    offenders = {k: v for k, v in offenders.items() if v}
    assert offenders == {}, f"decision-core modules import I/O libraries: {offenders}"


def test_checker_catches_a_violation(tmp_path: Path) -> None:
    bad = tmp_path / "bad.py"
    bad.write_text("import asyncio\nfrom redis.asyncio import Redis\n")
    assert _imports(bad) & FORBIDDEN == {"asyncio", "redis"}


def test_import_linter_contract_holds() -> None:
    """The same rule, transitively, through import-linter's contract in pyproject.toml."""
    lint = Path(sys.executable).with_name("lint-imports")
    if not lint.exists():
        pytest.skip("import-linter is not installed")
    result = subprocess.run([str(lint), "--no-cache"], cwd=ROOT, capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr


def _importlinter() -> dict:
    return tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["importlinter"]


def _layered(config: dict) -> set[str]:
    """Every module the layers contract names."""
    (contract,) = [c for c in config["contracts"] if c["type"] == "layers"]
    return {name.strip() for layer in contract["layers"] for name in re.split(r"[|:]", layer)}


def placed_modules(folders: dict[str, Path], split: set[str]) -> set[str]:
    """The modules that must each have a place: each root package as a whole, except those in `split`,
    whose direct children (modules and packages) are placed one by one, recursively so."""
    def children(name: str, folder: Path) -> set[str]:
        out: set[str] = set()
        for child in sorted(folder.iterdir()):
            if child.suffix == ".py" and child.stem != "__init__":
                out.add(f"{name}.{child.stem}")
            elif child.is_dir() and (child / "__init__.py").exists():
                out |= children(f"{name}.{child.name}", child) if f"{name}.{child.name}" in split \
                    else {f"{name}.{child.name}"}
        return out

    placed: set[str] = set()
    for name, folder in folders.items():
        placed |= children(name, folder) if name in split else {name}
    return placed


def test_every_module_has_a_layer_or_a_reason() -> None:
    config = _importlinter()
    assert set(config["root_packages"]) == set(PACKAGE_FOLDERS)
    layered = _layered(config)
    placed = placed_modules(PACKAGE_FOLDERS, set(SPLIT_PACKAGES))
    unplaced = placed - layered - set(UNLAYERED)
    assert not unplaced, (f"modules outside the layers contract: {sorted(unplaced)}; add each to a layer in "
                          f"pyproject.toml, or to UNLAYERED here with the reason")
    stale = (layered | set(UNLAYERED)) - placed
    assert not stale, f"named in the contract or UNLAYERED but not found: {sorted(stale)}"


def test_the_listing_finds_a_new_module(tmp_path: Path) -> None:
    (tmp_path / "pkg" / "runtime" / "sim").mkdir(parents=True)
    for path in ("pkg/__init__.py", "pkg/new_thing.py", "pkg/runtime/__init__.py", "pkg/runtime/clock.py",
                 "pkg/runtime/sim/__init__.py", "pkg/runtime/sim/loop.py"):
        (tmp_path / path).write_text("")
    (tmp_path / "pkg" / "data").mkdir()  # not a package: no module in it
    (tmp_path / "other").mkdir()
    assert placed_modules({"pkg": tmp_path / "pkg", "other": tmp_path / "other"}, {"pkg", "pkg.runtime"}) == {
        "pkg.new_thing", "pkg.runtime.clock", "pkg.runtime.sim", "other"}

"""The decision core must not do I/O (DESIGN.md principle 1): nothing under libs/opscale outside
runtime/live and the generated v1 package may import a network or async library."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest
from _paths import REPO

pytestmark = pytest.mark.unit

ROOT = REPO
CORE = ROOT / "libs" / "opscale"
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

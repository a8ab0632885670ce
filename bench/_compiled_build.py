"""The compiled build of opscale (see libs/opscale/_native_modules.py), built once per source version.

`compiled_build()` returns a folder holding the `opscale` package as `OPSCALE_COMPILE=1 pip install .`
installs it, the listed modules compiled with mypyc: put it first on PYTHONPATH and a process imports
the compiled package instead of the development install. It is built from a copy of the sources into
.bench-venvs/compiled-<hash>/ and reused while the sources that go into it are unchanged, so the
working tree never sees a build artifact and a rebuild happens only after an edit. Building needs the
build requirements from the package index (setuptools, wheel and the pinned mypy) and a C compiler,
and takes a minute or so on two cores.

Used by bench/sim_speed.py and the compiled-build test (tests/scenarios/test_compiled_build.py).
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
import sysconfig
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
CACHE = REPO / ".bench-venvs"
# What the build reads, and so what the cache key covers. README.md is copied too (the package metadata
# names it) but not hashed: it changes no code.
HASHED_SOURCES = ("pyproject.toml", "setup.py", "_build_backend", "libs")
COPIED_SOURCES = (*HASHED_SOURCES, "README.md", "services", "loadgen")
_SKIPPED = shutil.ignore_patterns("__pycache__", "*.pyc", "*.so", "*.egg-info", "build")
KEPT_BUILDS = 2  # older compiled-* folders are removed after a build


@dataclass(frozen=True, slots=True)
class CompiledBuild:
    site: Path  # put first on PYTHONPATH
    modules: tuple[str, ...]  # the compiled modules
    mypy_requirement: str
    build_s: float  # how long the build took when it was made
    reused: bool  # found in the cache rather than built now

    @property
    def mypy_version(self) -> str:
        """The compiler's version: the build pins it exactly (opscale._native_modules.MYPY_REQUIREMENT)."""
        return self.mypy_requirement.partition("==")[2] or self.mypy_requirement


def _native_list() -> tuple[tuple[str, ...], str]:
    from opscale._native_modules import MYPY_REQUIREMENT, NATIVE_MODULES

    return NATIVE_MODULES, MYPY_REQUIREMENT


def _files(top: Path) -> list[Path]:
    if top.is_file():
        return [top]
    found: list[Path] = []
    for folder, subfolders, names in os.walk(top):
        ignored = _SKIPPED(folder, subfolders + names)
        subfolders[:] = sorted(d for d in subfolders if d not in ignored)
        found += [Path(folder) / n for n in sorted(names) if n not in ignored]
    return found


def source_hash() -> str:
    """A key for the compiled build: the sources it is built from, the compiler and the interpreter."""
    modules, mypy_requirement = _native_list()
    digest = hashlib.sha256()
    digest.update(json.dumps([modules, mypy_requirement, sys.implementation.cache_tag,
                              sysconfig.get_platform()]).encode())
    for name in HASHED_SOURCES:
        for path in _files(REPO / name):
            digest.update(str(path.relative_to(REPO)).encode() + b"\0")
            digest.update(path.read_bytes() + b"\0")
    return digest.hexdigest()[:16]


def compiled_build(log: bool = True) -> CompiledBuild:
    """The compiled build of the current sources, from the cache or built now (raises on failure)."""
    modules, mypy_requirement = _native_list()
    key = source_hash()
    final = CACHE / f"compiled-{key}"
    manifest = final / "build.json"
    if manifest.exists():
        meta = json.loads(manifest.read_text())
        return CompiledBuild(final / "site", modules, mypy_requirement, meta["build_s"], reused=True)
    CACHE.mkdir(exist_ok=True)
    if log:
        print(f"building the compiled package ({len(modules)} modules, {mypy_requirement}) into {final.name}",
              file=sys.stderr)
    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix=".tmp-compiled-", dir=CACHE) as tmp:
        work = Path(tmp)
        source = work / "source"
        for name in COPIED_SOURCES:
            if (REPO / name).is_dir():
                shutil.copytree(REPO / name, source / name, ignore=_SKIPPED)
            else:
                source.mkdir(exist_ok=True)
                shutil.copy2(REPO / name, source / name)
        site = work / "out" / "site"
        command = [sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", "--target", str(site),
                   str(source)]
        built = subprocess.run(command, env={**os.environ, "OPSCALE_COMPILE": "1"}, capture_output=True,
                               text=True)
        if built.returncode != 0:
            raise RuntimeError(f"the compiled build failed ({' '.join(command)}):\n{built.stdout}{built.stderr}")
        # Only the opscale package: the other packages and scripts of the install stay the development ones.
        for extra in ("opscale_services", "opscale_loadgen", "bin"):
            shutil.rmtree(site / extra, ignore_errors=True)
        build_s = time.perf_counter() - started
        (work / "out" / "build.json").write_text(json.dumps(
            {"modules": modules, "mypy_requirement": mypy_requirement, "build_s": build_s}))
        try:
            (work / "out").rename(final)
        except OSError:
            if not manifest.exists():  # not a concurrent build of the same sources that finished first
                raise
    _prune(keep=final)
    return CompiledBuild(final / "site", modules, mypy_requirement, build_s, reused=False)


def _prune(keep: Path) -> None:
    """Remove all but the newest few compiled builds: each is a full copy of the package."""
    builds = sorted(CACHE.glob("compiled-*"), key=lambda p: p.stat().st_mtime, reverse=True)
    for old in [b for b in builds if b != keep][KEPT_BUILDS - 1:]:
        shutil.rmtree(old, ignore_errors=True)


def compiled_modules_loaded(modules: tuple[str, ...]) -> dict[str, bool]:
    """For each module, whether this process imported it as a compiled extension (not its .py file)."""
    import importlib

    return {name: not str(importlib.import_module(name).__file__).endswith(".py") for name in modules}

"""Package discovery, and the optional compiled build (everything else is in pyproject.toml).

Discovery: the top-level `services/` and `loadgen/` folders install as the packages `opscale_services`
and `opscale_loadgen`, which pyproject's `packages.find` cannot express (it cannot rename a folder).

The router's per-token relay (services/router/_chunk_relay.c) and its reading of plain requests
(services/router/_request_head.c) are two small C extensions, built by every install that has a C
compiler and the Python headers; they are optional: where they cannot be built, the install goes on and
the router uses the same relay in Python (services/router/chunk_relay.py) and llhttp's reading for every
request, at more CPU per token and per request.

Compiled build: with OPSCALE_COMPILE=1, a wheel build (`OPSCALE_COMPILE=1 pip install .`) compiles the
modules listed in libs/opscale/_native_modules.py to C extensions with mypyc; the build backend
(_build_backend/backend.py) adds mypy to the build requirements for that build only, and never lets an
editable install compile. Without the variable nothing here needs mypy, and everything but the router's two extensions is pure Python.
"""

import os
import runpy
from pathlib import Path
from typing import Any

from setuptools import Extension, find_packages, setup

HERE = Path(__file__).resolve().parent
COMPILE_ENV = "OPSCALE_COMPILE"
COMPILED_BUILD_DIR = os.path.join("build", "mypyc")
# mypy reads the modules that are not compiled only for their types and reports nothing in them. It
# never looks at installed packages (pydantic, numpy, ...: typed Any), so the compiled code does not
# depend on what the environment that builds it happens to have. Its cache goes with the rest of the
# compiled build's output.
MYPY_OPTIONS = ["--follow-imports=silent", "--no-site-packages", "--ignore-missing-imports",
                "--cache-dir", os.path.join(COMPILED_BUILD_DIR, "mypy-cache")]


def renamed(folder: str, package: str) -> list[str]:
    return [package] + [f"{package}.{sub}" for sub in find_packages(folder)]


# optional: a failed build of either is a warning, and the Python relay or llhttp's reading stands in
ROUTER_EXTENSIONS = [Extension(f"opscale_services.router.{name}", [os.path.join("services", "router", f"{name}.c")],
                               optional=True) for name in ("_chunk_relay", "_request_head")]


def compiled_build() -> dict[str, Any]:
    """setup() arguments of the compiled build: the mypyc extensions of the native modules (mypy is a
    build requirement of this build only), built in a folder of their own. setuptools packs whatever
    its build folder holds, so a pure build made after a compiled one in the shared build/ would ship
    the compiled modules' stale .so files; apart, neither build sees the other's output."""
    from mypyc.build import mypycify

    # Read by path: importing the package would need its run-time dependencies in the build environment.
    native = runpy.run_path(str(HERE / "libs" / "opscale" / "_native_modules.py"))["NATIVE_MODULES"]
    sources = [os.path.join("libs", *name.split(".")) + ".py" for name in native]
    return {"ext_modules": [*mypycify([*MYPY_OPTIONS, *sources], opt_level="3", target_dir=COMPILED_BUILD_DIR),
                            *ROUTER_EXTENSIONS],
            "options": {"build": {"build_base": COMPILED_BUILD_DIR}}}


setup(
    packages=find_packages("libs") + renamed("services", "opscale_services") + renamed("loadgen", "opscale_loadgen"),
    **(compiled_build() if os.environ.get(COMPILE_ENV) == "1" else {"ext_modules": ROUTER_EXTENSIONS}),
)

"""A git revision of this repository unpacked beside the working tree, so a benchmark can run it as a
baseline in the same run (bench/router_instructions.py, bench/router_proxy.py --baseline).

The tree is unpacked with `git archive`; the two folders that install under other names (services ->
opscale_services, loadgen -> opscale_loadgen) are linked as those packages under `_packages`, so that
`python_path(tree)` put in PYTHONPATH imports the revision's code ahead of the installed package, with
this checkout's virtual environment. The revision's C extensions (the router's relay and request reader)
are built in place, as an editable install builds them, so that the baseline runs what an install of it
runs; where they cannot be built, it runs without them (its Python relay, llhttp's reading) and
`unpack` says so on stderr.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def unpack(ref: str, into: Path) -> Path:
    """The tree of `ref`, unpacked into `into` (which must not exist)."""
    archive = subprocess.run(["git", "-C", str(ROOT), "archive", "--format=tar", ref], capture_output=True, check=False)
    if archive.returncode != 0:
        raise SystemExit(f"git archive {ref}: {archive.stderr.decode(errors='replace').strip()}")
    into.mkdir(parents=True)
    subprocess.run(["tar", "-x", "-C", str(into)], input=archive.stdout, check=True)
    aliases = into / "_packages"
    aliases.mkdir()
    (aliases / "opscale_services").symlink_to(into / "services")
    (aliases / "opscale_loadgen").symlink_to(into / "loadgen")
    built = subprocess.run([sys.executable, "setup.py", "-q", "build_ext", "--inplace"], cwd=into, capture_output=True,
                           text=True, check=False)
    sources = sorted((into / "services" / "router").glob("_*.c"))
    missing = [c.name for c in sources if not any(c.parent.glob(f"{c.stem}.*.so"))]
    if missing:  # (optional extensions: a failed build is only a warning, so the modules themselves say)
        print(f"{ref}: {', '.join(missing)} not built, so it runs without them:\n{built.stderr[-2000:]}",
              file=sys.stderr)
    return into


def python_path(tree: Path) -> str:
    """The PYTHONPATH that imports `tree`'s packages (from `unpack`) ahead of the installed ones."""
    return os.pathsep.join([str(tree / "libs"), str(tree / "_packages")])


def commit_of(ref: str) -> str | None:
    """The full commit id `ref` names, or None."""
    done = subprocess.run(["git", "-C", str(ROOT), "rev-parse", ref], capture_output=True, text=True, check=False)
    return done.stdout.strip() if done.returncode == 0 else None

"""Run the fault suite (tests/faults, pytest marker `faults`) and print its table: for each case the
requests sent, completed, failed by class, lost (must be 0), and the time to recover.

    python bench/faults.py            # every case, the slow ones too (about 10 minutes on 2 cores)
    python bench/faults.py --quick    # the default run's short cases only (about 2 minutes)
    python bench/faults.py --table-from DIR   # print the table of figures already written to DIR

Each case writes its figures to $OPSCALE_FAULTS_OUT/<case>.json; this script points that at a fresh
folder (or `--out`), runs pytest, and prints the figures as JSON, then as the README's markdown table.
The exit code is pytest's (a case that lost a request fails).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
OUT_ENV = "OPSCALE_FAULTS_OUT"


def read_figures(folder: Path) -> list[dict[str, Any]]:
    return [json.loads(p.read_text()) for p in sorted(folder.glob("*.json"))]


def markdown(rows: list[dict[str, Any]]) -> str:
    lines = ["| case | fault | sent | completed | failed (by class) | lost | recovery (s) | recovery timed |",
             "|---|---|---:|---:|---|---:|---:|---|"]
    for r in rows:
        failed = ", ".join(f"{n} {cls}" for cls, n in r["failed"].items()) or "0"
        recovery = "-" if r["recovery_s"] is None else f"{r['recovery_s']:.1f}"
        lines.append(f"| {r['case']} | {r['fault']} | {r['sent']} | {r['completed']} | {failed} | {r['lost']} "
                     f"| {recovery} | {r['recovery_what']} |")
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="only the default run's short cases")
    parser.add_argument("--out", type=Path, help="folder for the figures (default: a new temporary one)")
    parser.add_argument("--table-from", type=Path, help="print the table of this folder's figures; run nothing")
    parser.add_argument("-k", dest="keyword", help="pytest -k expression: only the matching cases")
    args = parser.parse_args()
    code = 0
    if args.table_from is not None:
        out = args.table_from
    else:
        out = args.out or Path(tempfile.mkdtemp(prefix="opscale-faults-"))
        marker = "faults and not slow" if args.quick else "faults"
        cmd = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-m", marker, "tests/faults"]
        if args.keyword:
            cmd += ["-k", args.keyword]
        code = subprocess.run(cmd, cwd=ROOT, env=dict(os.environ, **{OUT_ENV: str(out)}), check=False).returncode
    rows = read_figures(out)
    print(json.dumps(rows, indent=2))
    print(markdown(rows))
    return code


if __name__ == "__main__":
    sys.exit(main())

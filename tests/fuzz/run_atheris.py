"""Run one fuzz target (fuzz_targets.py) under atheris, libFuzzer's coverage-guided engine for Python.

    python tests/fuzz/run_atheris.py TARGET [libFuzzer flags, e.g. -max_total_time=20 -runs=100000]

opscale's own modules are instrumented for coverage. The target's seeds are copied into a fresh corpus
folder (libFuzzer writes what it finds there, never into the repository); a crash is written under
that folder too, and the run exits non-zero with the failing input's traceback. atheris comes with the
`fuzz` extra (`pip install -e ".[dev,fuzz]"`).
"""

from __future__ import annotations

import sys
import tempfile
from pathlib import Path

import atheris

with atheris.instrument_imports(include=["opscale", "opscale_services"]):
    from fuzz_targets import SEEDS, TARGETS


def main() -> None:
    if len(sys.argv) < 2 or sys.argv[1] not in TARGETS:
        sys.exit(f"usage: run_atheris.py TARGET [libFuzzer flags]; targets: {', '.join(TARGETS)}")
    name, flags = sys.argv[1], sys.argv[2:]
    work = Path(tempfile.mkdtemp(prefix=f"opscale-atheris-{name}-"))
    corpus = work / "corpus"
    corpus.mkdir()
    for index, seed in enumerate(SEEDS[name]):
        (corpus / f"seed-{index}").write_bytes(seed)
    print(f"fuzzing {name}: corpus and crashes in {work}", flush=True)
    target = TARGETS[name]

    def one_input(data: bytes) -> None:
        target(data)  # whether it accepted is for the seed test; libFuzzer reads a returned -1 as "reject"

    atheris.Setup([sys.argv[0], f"-artifact_prefix={work}/", *flags, str(corpus)], one_input)
    atheris.Fuzz()


if __name__ == "__main__":
    main()

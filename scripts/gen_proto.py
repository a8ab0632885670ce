"""Regenerate the protobuf and gRPC code under libs/opscale/v1 from proto/ (one command:
`python scripts/gen_proto.py`). `--check` exits non-zero when the checked-in code is stale."""

from __future__ import annotations

import argparse
import filecmp
import shutil
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PROTO_DIR = ROOT / "proto"
OUT_DIR = ROOT / "libs" / "opscale" / "v1"
GENERATED = ("events_pb2.py", "events_pb2.pyi", "control_pb2.py", "control_pb2.pyi", "control_pb2_grpc.py",
             "events_pb2_grpc.py")


def generate(into: Path) -> None:
    from grpc_tools import protoc  # dev dependency, imported only when generating

    sources = sorted(str(p.relative_to(PROTO_DIR)) for p in (PROTO_DIR / "opscale" / "v1").glob("*.proto"))
    args = ["grpc_tools.protoc", f"-I{PROTO_DIR}", f"--python_out={into}", f"--pyi_out={into}",
            f"--grpc_python_out={into}", *sources]
    if protoc.main(args) != 0:
        raise SystemExit("protoc failed")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--check", action="store_true", help="fail if the generated code is not current")
    ns = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        generate(Path(tmp))
        produced = Path(tmp) / "opscale" / "v1"
        if ns.check:
            stale = [n for n in GENERATED if not (OUT_DIR / n).exists()
                     or not filecmp.cmp(produced / n, OUT_DIR / n, shallow=False)]
            if stale:
                print(f"generated code is stale: {', '.join(stale)}; run python scripts/gen_proto.py")
                return 1
            print("generated code is current")
            return 0
        OUT_DIR.mkdir(parents=True, exist_ok=True)
        for name in GENERATED:
            shutil.copyfile(produced / name, OUT_DIR / name)
        (OUT_DIR / "__init__.py").write_text('"""Generated from proto/opscale/v1 by scripts/gen_proto.py. Do not edit."""\n')
    print(f"wrote {len(GENERATED)} files to {OUT_DIR.relative_to(ROOT)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

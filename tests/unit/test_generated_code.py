"""The checked-in protobuf/gRPC code must be what `python scripts/gen_proto.py` makes from proto/."""

from __future__ import annotations

import subprocess
import sys

import pytest
from _paths import REPO

pytestmark = pytest.mark.unit

ROOT = REPO


def test_generated_code_is_current() -> None:
    pytest.importorskip("grpc_tools")
    result = subprocess.run([sys.executable, str(ROOT / "scripts" / "gen_proto.py"), "--check"], cwd=ROOT,
                            capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr

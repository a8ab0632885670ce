"""Where the tests find the repository and the shared data beside it (tests/ is on sys.path through its
conftest, so every tier imports these names whatever its depth)."""

from __future__ import annotations

from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
"""The repository's root folder."""

SHARED_DATA = REPO.parent / "shared" / "data"
"""The real traces and GPU profiles laid beside the repository (absent on a bare clone: tests skip)."""

"""Fixtures shared by every test tier. Kept small: tier-specific fixtures live in that tier's conftest."""

from __future__ import annotations

import os
import secrets

import pytest
from hypothesis import settings

# The default run (README's test command, CI) draws the same examples every time, so a property test
# passes or fails on the code, not on the draw; the nightly target explores fresh ones, more of them
# (HYPOTHESIS_PROFILE=explore), and what it finds becomes a pinned example.
settings.register_profile("default", derandomize=True)
settings.register_profile("explore", derandomize=False, max_examples=500)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "default"))


@pytest.fixture
def namespace() -> str:
    """A fresh bus/store namespace per test, so tests sharing one NATS or Redis server never see each
    other's subjects, streams or keys (lower case: stream names are upper-cased from it)."""
    return "t" + secrets.token_hex(4)

"""Fixtures shared by every test tier. Kept small: tier-specific fixtures live in that tier's conftest."""

from __future__ import annotations

import secrets

import pytest


@pytest.fixture
def namespace() -> str:
    """A fresh bus/store namespace per test, so tests sharing one NATS or Redis server never see each
    other's subjects, streams or keys (lower case: stream names are upper-cased from it)."""
    return "t" + secrets.token_hex(4)

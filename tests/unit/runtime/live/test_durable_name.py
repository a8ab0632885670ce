"""Durable consumer names: valid for JetStream whatever the identity, and two identities never share one."""

from __future__ import annotations

import re

import pytest
from hypothesis import given
from hypothesis import strategies as st

from opscale.runtime.live.bus import durable_name

pytestmark = pytest.mark.unit

identities = st.text(min_size=1, max_size=80)


@given(identities)
def test_every_identity_gives_a_valid_name(identity: str) -> None:
    assert re.fullmatch(r"[A-Za-z0-9_-]{1,64}", durable_name("router", identity, "heartbeats", "ns"))


@given(identities, identities)
def test_two_long_identities_with_a_common_start_stay_apart(a: str, b: str) -> None:
    # pod names run to 63 characters and share their Deployment's prefix: cutting at 64 would merge them
    prefix = "opscale-router-" + "x" * 60
    left = durable_name("router", prefix + a, "heartbeats", "ns")
    right = durable_name("router", prefix + b, "heartbeats", "ns")
    assert (left == right) == (re.sub(r"[^A-Za-z0-9_-]", "_", a) == re.sub(r"[^A-Za-z0-9_-]", "_", b))


def test_a_short_name_reads_as_its_parts() -> None:
    assert durable_name("router", "pod.a", "plans", "") == "router-pod_a-plans"

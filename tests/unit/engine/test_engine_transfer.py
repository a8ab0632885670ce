"""KV-cache and activation transfer times by network path (opscale.perf.transfer)."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from opscale.perf import load_catalog
from opscale.perf.transfer import (
    Link,
    Placement,
    Topology,
    TransferParams,
    activation_bytes,
    kv_bytes,
    kv_transfer_s,
    topology_between,
)

pytestmark = pytest.mark.unit

CATALOG = load_catalog()
LLAMA3_8B = CATALOG.model("Llama-3-8B")


def test_kv_bytes_are_tokens_times_the_models_kv_per_token() -> None:
    # Llama-3-8B: 2 (K, V) x 32 layers x 8 KV heads x 128 dims x 2 bytes = 131072 bytes per token.
    assert LLAMA3_8B.kv_bytes_per_token == 131072
    assert kv_bytes(LLAMA3_8B, 2048) == 2048 * 131072
    assert activation_bytes(LLAMA3_8B, 10) == 10 * 4096 * 2


def test_transfer_time_is_latency_plus_bytes_over_bandwidth() -> None:
    params = TransferParams()
    expected = 100e-6 + 2048 * 131072 / 40e9
    assert kv_transfer_s(LLAMA3_8B, 2048, Topology.SAME_SWITCH, params) == pytest.approx(expected)
    assert kv_transfer_s(LLAMA3_8B, 2048, "cross_region") == pytest.approx(0.040 + 2048 * 131072 / 1.25e9)
    assert kv_transfer_s(LLAMA3_8B, 0, Topology.CROSS_SWITCH) == pytest.approx(200e-6)


def test_farther_paths_are_slower() -> None:
    times = [kv_transfer_s(LLAMA3_8B, 4096, t, sku_name="H100-80GB") for t in Topology]
    assert times == sorted(times) and len(set(times)) == len(Topology) == 6
    # HeteroScale: about 20% less KV bandwidth across switches than under one; taken again per tier above.
    p = TransferParams()
    assert p.cross_switch_gbps / p.same_switch_gbps == pytest.approx(0.8)
    assert p.cross_s1_gbps / p.cross_switch_gbps == pytest.approx(0.8)
    assert p.cross_s2_gbps / p.cross_s1_gbps == pytest.approx(0.8, rel=0.01)


def test_transfer_time_by_switch_tier() -> None:
    # The module docstring's example: 2048 tokens of Llama-3-8B (268 MB) over one link per tier.
    nbytes = 2048 * 131072
    expected = {Topology.SAME_SWITCH: 100e-6 + nbytes / 40e9, Topology.CROSS_SWITCH: 200e-6 + nbytes / 32e9,
                Topology.CROSS_S1: 300e-6 + nbytes / 25.6e9, Topology.CROSS_S2: 400e-6 + nbytes / 20.5e9}
    for topology, seconds in expected.items():
        assert kv_transfer_s(LLAMA3_8B, 2048, topology) == pytest.approx(seconds)
    assert kv_transfer_s(LLAMA3_8B, 2048, Topology.CROSS_S1) == pytest.approx(0.0108, abs=1e-4)
    assert kv_transfer_s(LLAMA3_8B, 2048, Topology.CROSS_S2) == pytest.approx(0.0135, abs=1e-4)


def test_same_host_bandwidth_follows_the_sku() -> None:
    p = TransferParams()
    assert p.link(Topology.SAME_HOST, "H100-80GB").gbps == 360.0  # NVLink
    assert p.link(Topology.SAME_HOST, "L40S").gbps == 20.0  # PCIe peer to peer
    assert p.link(Topology.SAME_HOST, "unknown-gpu").gbps == 20.0
    assert TransferParams(same_host_gbps=100.0).link("same_host", "H100-80GB").gbps == 100.0


def test_tensor_parallel_shards_move_in_parallel_except_across_regions() -> None:
    one = kv_transfer_s(LLAMA3_8B, 8192, Topology.SAME_SWITCH)
    four = kv_transfer_s(LLAMA3_8B, 8192, Topology.SAME_SWITCH, parallel_links=4)
    assert four - 100e-6 == pytest.approx((one - 100e-6) / 4)
    assert kv_transfer_s(LLAMA3_8B, 8192, Topology.CROSS_REGION, parallel_links=4) == pytest.approx(
        kv_transfer_s(LLAMA3_8B, 8192, Topology.CROSS_REGION))


def test_topology_between_placements() -> None:
    a = Placement("eu", "s1", "h1")
    assert topology_between(a, Placement("eu", "s1", "h1")) is Topology.SAME_HOST
    assert topology_between(a, Placement("eu", "s1", "h2")) is Topology.SAME_SWITCH
    assert topology_between(a, Placement("eu", "s2", "h3")) is Topology.CROSS_SWITCH
    assert topology_between(a, Placement("us", "s1", "h1")) is Topology.CROSS_REGION


def test_topology_is_the_nearest_switch_tier_two_hosts_share() -> None:
    a = Placement("eu", "leaf-1", "h1", s1="pod-a", s2="big-1")
    assert topology_between(a, Placement("eu", "leaf-1", "h1", "pod-a", "big-1")) is Topology.SAME_HOST
    assert topology_between(a, Placement("eu", "leaf-1", "h2", "pod-a", "big-1")) is Topology.SAME_SWITCH
    assert topology_between(a, Placement("eu", "leaf-2", "h3", "pod-a", "big-1")) is Topology.CROSS_SWITCH
    assert topology_between(a, Placement("eu", "leaf-3", "h4", "pod-b", "big-1")) is Topology.CROSS_S1
    assert topology_between(a, Placement("eu", "leaf-4", "h5", "pod-c", "big-2")) is Topology.CROSS_S2
    assert topology_between(a, Placement("us", "leaf-1", "h1", "pod-a", "big-1")) is Topology.CROSS_REGION


def test_bad_inputs_are_clear_errors() -> None:
    with pytest.raises(ValueError, match="unknown topology 'next_door'; known: same_host, same_switch"):
        kv_transfer_s(LLAMA3_8B, 10, "next_door")
    with pytest.raises(ValueError, match="tokens must be an integer >= 0, got -1"):
        kv_bytes(LLAMA3_8B, -1)
    with pytest.raises(ValueError, match="parallel_links must be a positive integer, got 0"):
        kv_transfer_s(LLAMA3_8B, 10, Topology.SAME_HOST, parallel_links=0)
    with pytest.raises(ValueError, match="link gbps must be a finite positive number"):
        Link(0.0, 0.0)
    with pytest.raises(ValueError, match="link latency_s"):
        Link(-1.0, 10.0)
    with pytest.raises(ValueError, match="bytes to transfer must be >= 0"):
        Link(0.0, 1.0).transfer_s(-5)
    with pytest.raises(ValidationError, match="same_switch_gbps"):
        TransferParams(same_switch_gbps=0)
    with pytest.raises(ValidationError, match="extra"):
        TransferParams(nvlink=1)  # type: ignore[call-arg]

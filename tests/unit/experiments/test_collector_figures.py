"""The result figures HeteroScale's experiment compares, as RunCollector computes them: the cost per
million output tokens served, and the KV transfers' effective bandwidth per topology and over all."""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

import pytest

from opscale.experiments.collector import RunCollector
from opscale.model import DEFAULT_TIERS, InstanceSpec, RequestOutcome
from opscale.perf.catalog import default_catalog
from opscale.perf.transfer import Topology

pytestmark = pytest.mark.unit


def _engine(**counts: float) -> Any:
    fields = dict.fromkeys(("energy_j", "busy_s", "flops", "peak_flops_per_s", "decode_tokens", "prefill_tokens",
                            "prefill_tokens_computed", "prefix_hit_tokens", "prefix_queried_tokens",
                            "prefix_host_hit_tokens"), 0)
    return SimpleNamespace(**{**fields, **counts})


def _outcome(request_id: str, tokens: int, status: str = "ok") -> RequestOutcome:
    return RequestOutcome(request_id, "m", "interactive", "eu", "eu", "i1", 0.0, 0.5, 2.0, 100, tokens, status)


def test_cost_per_million_output_tokens_counts_what_was_served() -> None:
    catalog = default_catalog()
    collector = RunCollector(dict(DEFAULT_TIERS), catalog.sku)
    collector.engine_started(InstanceSpec("i1", "m", "H20", 2), "eu", 0.0, 0.0)
    collector.engine_stopped("i1", _engine(), 3600.0)  # 2 H20 GPUs for an hour
    for i in range(4):
        collector.outcome(_outcome(f"r{i}", 250_000))
    collector.outcome(_outcome("dropped", 999_999, status="rejected"))  # served nothing
    result = collector.summary(3600.0)
    cost = 2 * catalog.sku("H20").price_usd_per_h
    assert result["cost_usd"] == pytest.approx(cost)
    assert result["usd_per_m_output_tokens"] == pytest.approx(cost / 1.0)  # 1 M tokens served
    assert "kv_transfers" not in result and "kv_effective_gbps" not in result  # nothing disaggregated


def test_effective_kv_bandwidth_is_bytes_over_transfer_time_per_topology_and_overall() -> None:
    collector = RunCollector(dict(DEFAULT_TIERS), default_catalog().sku)
    collector.kv_transfer("a", Topology.CROSS_SWITCH, 0.01, 320e6, 1.0)  # 32 GB/s
    collector.kv_transfer("b", Topology.CROSS_SWITCH, 0.03, 960e6, 2.0)
    collector.kv_transfer("c", Topology.CROSS_S1, 0.05, 1280e6, 3.0)  # 25.6 GB/s
    result = collector.summary(60.0)
    near, far = result["kv_transfers"]["cross_switch"], result["kv_transfers"]["cross_s1"]
    assert near["count"] == 2 and near["gb"] == pytest.approx(1.28) and near["gbps"] == pytest.approx(32.0)
    assert near["mean_s"] == pytest.approx(0.02) and far["gbps"] == pytest.approx(25.6)
    assert result["kv_effective_gbps"] == pytest.approx(2.56e9 / 0.09 / 1e9)
    assert result["kv_transfer_mean_s"] == pytest.approx(0.03)
    assert result["usd_per_m_output_tokens"] is None  # no request served: no cost per token


def test_curation_reads_an_experiment_variants_scenario_and_names_an_unknown_variant() -> None:
    from pathlib import Path

    from opscale.experiments.heteroscale_curation import curation_scenario

    homogeneous = curation_scenario(Path("heteroscale"), "heteroscale_homogeneous")
    assert {(d.prefill.sku, d.decode.sku) for d in homogeneous.deployments if d.prefill and d.decode} == {("H20", "H20")}
    with pytest.raises(ValueError, match="--variant: 'nope' is not a variant of heteroscale"):
        curation_scenario(Path("heteroscale"), "nope")


def test_peak_gpus_counts_operator_replicas_as_gpu_hours_do() -> None:
    """Operator replicas held beside a base engine count in the peak (their GPU-equivalents), as they do
    in gpu_hours; the peak is the most held at one time, not the sum over the run."""
    from opscale.model import OperatorReplicas

    collector = RunCollector(dict(DEFAULT_TIERS), default_catalog().sku)
    collector.engine_started(InstanceSpec("i1", "m", "H100-80GB", 1), "eu", 0.0, 0.0)
    engine = _engine()
    mlp = OperatorReplicas(("mlp",), 3, 1, 0.25, 64)  # 0.75 GPU-equivalents
    collector.operator_replicas("i1", (mlp,), (mlp,), engine, 100.0)
    collector.operator_replicas("i1", (), (), engine, 200.0)  # removed before the next ones come
    two = OperatorReplicas(("attention",), 2, 1, 0.5, 64)  # 1.0 GPU-equivalent
    collector.operator_replicas("i1", (two,), (two,), engine, 300.0)
    collector.engine_stopped("i1", engine, 400.0)
    result = collector.summary(400.0)
    assert result["peak_gpus"] == pytest.approx(2.0)  # the base and the two half-GPU replicas
    assert result["gpu_hours"] == pytest.approx((400 + 0.75 * 100 + 1.0 * 100) / 3600)
    assert result["mean_gpus"] <= result["peak_gpus"]


def test_slo_attainment_is_split_by_model() -> None:
    collector = RunCollector(dict(DEFAULT_TIERS), default_catalog().sku)
    tier = next(iter(DEFAULT_TIERS.values()))
    fast = RequestOutcome("a", "m1", tier.name, "eu", "eu", "i1", 0.0, 0.1, 0.5, 100, 100)
    late = RequestOutcome("b", "m2", tier.name, "eu", "eu", "i2", 0.0, tier.ttft_slo_s + 1, tier.ttft_slo_s + 2, 100, 2)
    dropped = RequestOutcome("c", "m2", tier.name, "eu", "eu", "", 0.0, None, None, 100, 2, "rejected")
    for outcome in (fast, late, dropped):
        collector.outcome(outcome)
    result = collector.summary(10.0)
    assert result["slo_by_model"] == {"m1": {tier.name: 1.0}, "m2": {tier.name: 0.0}}
    assert result["tiers"][tier.name]["slo_attainment"] == pytest.approx(1 / 3)


def test_gpus_are_priced_at_their_regions_price_as_the_vm_bill_is() -> None:
    """One owner for a GPU-hour's price: the region catalogue's (an offer's explicit price, else the list
    price times the region's multiplier; the list price where the catalogue does not know the region)."""
    from opscale.cloud import default_region_catalog
    from opscale.model import Purchase

    regions = default_region_catalog()
    collector = RunCollector(dict(DEFAULT_TIERS), default_catalog().sku)
    collector.engine_started(InstanceSpec("i1", "m", "H100-80GB", 2), "eu-west", 0.0, 0.0)  # multiplier 1.10
    collector.engine_started(InstanceSpec("i2", "m", "H100-80GB", 1), "lab", 0.0, 0.0)  # not a catalogue region
    for instance_id in ("i1", "i2"):
        collector.engine_stopped(instance_id, _engine(), 3600.0)
    eu_west = regions.price("eu-west", "H100-80GB", Purchase.ON_DEMAND)
    assert eu_west == pytest.approx(1.10 * default_catalog().sku("H100-80GB").price_usd_per_h)
    assert collector.summary(3600.0)["cost_usd"] == pytest.approx(2 * eu_west + default_catalog().sku(
        "H100-80GB").price_usd_per_h)

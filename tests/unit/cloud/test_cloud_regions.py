"""The region catalogue: built-in contents, price lookups and fallbacks, and errors naming the field."""

from __future__ import annotations

from pathlib import Path

import pytest

from opscale.cloud import RegionCatalogError, default_region_catalog, load_regions, parse_regions
from opscale.model import Purchase
from opscale.perf import UnknownNameError, default_catalog

pytestmark = pytest.mark.unit

GOOD = """
regions:
  - name: r1
    provider: aws
    provider_region: us-east-1
    price_multiplier: 1.5
    spot_price_multiplier: 2.0
    spot_preemptions_per_h: 0.1
    spot_notice_s: 120
    rtt_ms: {r2: 70}
    skus:
      - {name: H100-80GB, gpu_quota: 16, on_demand_provision_s: 300, spot_provision_s: 400,
         on_demand_usd_per_gpu_h: 5.0}
      - {name: A10G, gpu_quota: 8, on_demand_provision_s: 100, spot_provision_s: 200}
  - name: r2
    provider: gcp
    provider_region: asia-east1
    spot_preemptions_per_h: 0
    spot_notice_s: 30
    skus:
      - {name: A100-80GB, gpu_quota: 8, on_demand_provision_s: 300, spot_provision_s: 400}
"""


def test_builtin_catalogue_covers_the_demo_regions_and_real_provider_regions() -> None:
    catalog = default_region_catalog()
    assert {"us-east", "us-west", "eu-west", "asia-east"} <= set(catalog.names)
    notices = {r.provider: r.spot_notice_s for r in catalog.regions}
    assert notices["aws"] == 120 and notices["azure"] == 30 and notices["gcp"] == 30
    skus = set(default_catalog().sku_names)
    for region in catalog.regions:
        assert region.offers and {o.sku for o in region.offers} <= skus
        assert all(o.spot_provision_s >= o.on_demand_provision_s > 0 for o in region.offers)
        assert set(region.rtt_ms) == set(catalog.names) - {region.name}, region.name


def test_rtts_are_symmetric_and_intra_region_is_small() -> None:
    catalog = default_region_catalog()
    for a in catalog.names:
        for b in catalog.names:
            assert catalog.rtt_ms(a, b) == catalog.rtt_ms(b, a)
    assert catalog.rtt_ms("us-east", "us-east") < catalog.rtt_ms("us-east", "us-west")


def test_price_prefers_explicit_then_multiplier_then_sku_list_price() -> None:
    catalog = parse_regions(GOOD)
    h100, a10g = default_catalog().sku("H100-80GB"), default_catalog().sku("A10G")
    assert catalog.price("r1", "H100-80GB", Purchase.ON_DEMAND) == 5.0  # explicit on the offer
    assert catalog.price("r1", "H100-80GB", Purchase.SPOT) == pytest.approx(h100.spot_price_usd_per_h * 2.0)
    assert catalog.price("r1", "A10G", Purchase.ON_DEMAND) == pytest.approx(a10g.price_usd_per_h * 1.5)
    # a region the catalogue does not know: the SKU's own (US list) price
    assert catalog.price("nowhere", "A10G", Purchase.SPOT) == a10g.spot_price_usd_per_h
    assert catalog.price("r2", "A10G", Purchase.ON_DEMAND) == a10g.price_usd_per_h  # multiplier defaults to 1
    with pytest.raises(UnknownNameError, match="unknown sku 'B200'"):
        catalog.price("r1", "B200", Purchase.SPOT)


def test_builtin_prices_are_the_list_price_in_us_east_and_dearer_in_europe() -> None:
    catalog, skus = default_region_catalog(), default_catalog()
    for purchase in Purchase:
        for sku in ("A100-80GB", "H100-80GB"):
            us = catalog.price("us-east", sku, purchase)
            listed = skus.sku(sku).spot_price_usd_per_h if purchase is Purchase.SPOT else skus.sku(sku).price_usd_per_h
            assert us == listed
            assert catalog.price("eu-west", sku, purchase) > us


def test_rtts_given_on_one_side_are_mirrored_and_model_region_carries_quotas() -> None:
    catalog = parse_regions(GOOD)
    assert catalog.rtt_ms("r2", "r1") == 70
    region = catalog.region("r1").to_model()
    assert region.gpu_quota == {"H100-80GB": 16, "A10G": 8} and region.rtt_ms == {"r2": 70}
    assert catalog.region("R1").name == "r1"  # case-insensitive
    with pytest.raises(UnknownNameError, match="known regions: r1, r2"):
        catalog.region("r3")


@pytest.mark.parametrize(("old", "new", "message"), [
    ("    spot_notice_s: 120\n", "", r"region 1 \('r1'\): field 'spot_notice_s' is missing"),
    ("spot_notice_s: 120", "spot_notice_s: soon", r"region 1 \('r1'\): field 'spot_notice_s': expected a number"),
    ("spot_preemptions_per_h: 0.1", "spot_preemptions_per_h: -1", r"field 'spot_preemptions_per_h': must be >= 0"),
    ("price_multiplier: 1.5", "price_multiplier: 0", r"field 'price_multiplier': must be > 0"),
    ("{name: A10G, gpu_quota: 8", "{name: A10G, gpu_quota: -8",
     r"region 1 \('r1'\): sku 2 \('A10G'\): field 'gpu_quota': expected a whole number"),
    ("{name: A10G,", "{name: B200,", r"sku 2 \('B200'\): field 'name': unknown sku 'B200'"),
    ("on_demand_usd_per_gpu_h: 5.0", "on_demand_usd_per_gpu_h: free", r"'on_demand_usd_per_gpu_h': expected a number"),
    ("provider: gcp", "provider: gcp\n    colour: blue", r"region 2 \('r2'\): field 'colour' is not known"),
    ("rtt_ms: {r2: 70}", "rtt_ms: {r9: 70}", r"field 'rtt_ms': unknown region 'r9'"),
    ("    spot_notice_s: 30\n", "    spot_notice_s: 30\n    rtt_ms: {r1: 90}\n", r"'r1' is 90.0 ms here but 70.0 ms"),
    ("  - name: r2", "  - name: R1", "duplicate region names"),
    ("      - {name: A100-80GB", "      - {name: A100-80GB, gpu_quota: 1, on_demand_provision_s: 1, spot_provision_s: 1}"
                                  "\n      - {name: A100-80GB", "listed twice"),
])
def test_malformed_entries_name_the_region_and_field(old: str, new: str, message: str) -> None:
    assert old in GOOD
    with pytest.raises(RegionCatalogError, match=message):
        parse_regions(GOOD.replace(old, new, 1), "regions.yaml")


def test_unreadable_or_invalid_files_are_named(tmp_path: Path) -> None:
    with pytest.raises(RegionCatalogError, match="cannot read"):
        load_regions(tmp_path / "absent.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("regions:\n  - name: [unclosed\n")
    with pytest.raises(RegionCatalogError, match=r"bad.yaml:\d+: invalid YAML"):
        load_regions(bad)
    bad.write_text("zones: []\n")
    with pytest.raises(RegionCatalogError, match="top-level 'regions:'"):
        load_regions(bad)
    good = tmp_path / "good.yaml"
    good.write_text(GOOD)
    assert load_regions(good).names == ("r1", "r2")


@pytest.mark.parametrize("module", ["opscale.cloud.regions", "opscale.cloud.events", "opscale.cloud.actuator"])
def test_docstring_examples_hold(module: str) -> None:
    import doctest
    import importlib

    result = doctest.testmod(importlib.import_module(module))
    assert result.attempted > 0 and result.failed == 0

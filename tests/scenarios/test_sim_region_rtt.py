"""The simulator prices a request sent to another region with that pair's round trip from the region
catalogue (regions.yaml), not one flat figure; a multi-region fleet over a region the catalogue does not
know is refused with the region named."""

from __future__ import annotations

from pathlib import Path

import pytest

from opscale.cloud import default_region_catalog
from opscale.experiments.runner import run_scenario
from opscale.experiments.scenario import HostGroup, Scenario, TraceSource
from opscale.model import Request
from opscale.planning import DeploymentSpec
from opscale.traces import write_csv_trace

pytestmark = pytest.mark.sim

MODEL = "Llama-3-8B"
SKU = "H100-80GB"
SERVING = "westus"


def _scenario(tmp_path: Path, origin: str) -> Scenario:
    """One instance in westus; identical lone requests (far apart: no queueing) from `origin`, whose
    own hosts serve nothing, so each is dispatched to westus."""
    requests = [Request(f"r{i}", MODEL, "interactive", origin, 20.0 + 5.0 * i, 512, 8) for i in range(4)]
    trace = tmp_path / f"{origin}.csv"
    write_csv_trace(trace, requests)
    return Scenario(
        name=f"from {origin}", seed=1, duration_s=45.0, drain_s=60.0,
        hosts=[HostGroup(region=SERVING, sku=SKU, gpus=8, count=1), HostGroup(region=origin, sku=SKU, gpus=8)],
        deployments=[DeploymentSpec(model=MODEL, sku=SKU, tp=1, regions=[SERVING], min_replicas=1,
                                    max_replicas=1)],
        trace=TraceSource(path=trace, format="csv"), policy="static", policy_params={"replicas": 1},
        warm_start_s=60.0)


def _ttfts(scenario: Scenario) -> list[float]:
    run = run_scenario(scenario)
    assert run.result["dropped"] == 0 and run.result["completed"] == 4
    return run.collector.latencies("interactive", "ttft")


def test_a_remote_dispatch_takes_half_the_catalogue_round_trip_of_its_pair(tmp_path: Path) -> None:
    catalog = default_region_catalog()
    east, central = _ttfts(_scenario(tmp_path, "eastus")), _ttfts(_scenario(tmp_path, "centralus"))
    # The same lone request on the same idle instance: TTFTs differ only by the one-way network time.
    extra_s = min(east) - min(central)
    expected_s = (catalog.rtt_ms("eastus", SERVING) - catalog.rtt_ms("centralus", SERVING)) / 2000.0
    assert extra_s == pytest.approx(expected_s, abs=0.002)
    assert catalog.rtt_ms("eastus", SERVING) != catalog.rtt_ms("centralus", SERVING)  # not one flat figure


def test_the_world_takes_each_pair_from_the_catalogue(tmp_path: Path) -> None:
    from opscale.experiments.runner import build_world

    world, _ = build_world(_scenario(tmp_path, "eastus"))
    catalog = default_region_catalog()
    assert world.config.region_rtt_ms == {("eastus", SERVING): catalog.rtt_ms("eastus", SERVING),
                                          (SERVING, "eastus"): catalog.rtt_ms(SERVING, "eastus")}


def test_a_fleet_over_a_region_the_catalogue_does_not_know_is_refused_naming_it(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="atlantis") as caught:
        _scenario(tmp_path, "atlantis")
    assert "not in the region catalogue" in str(caught.value)


def test_a_single_region_fleet_may_name_its_region_freely(tmp_path: Path) -> None:
    scenario = _scenario(tmp_path, SERVING).model_copy(update={"hosts": [HostGroup(region="lab", sku=SKU)]})
    assert Scenario.model_validate(scenario.model_dump() | {"deployments": [
        DeploymentSpec(model=MODEL, sku=SKU, tp=1, min_replicas=1, max_replicas=1)]}).region_rtt_ms() == {}

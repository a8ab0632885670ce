"""A scenario's `vms:` block: the cloud catalogue one run uses, and a fleet the cloud cannot sell refused
before the run, naming the field."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from opscale.cloud import gpu_quotas
from opscale.experiments.scenario import Fault, HostGroup, Scenario
from opscale.experiments.vm_fleet import VmFleetConfig
from opscale.model import Purchase
from opscale.planning import DeploymentSpec

pytestmark = pytest.mark.unit


def _scenario(region: str = "us-east", count: int = 1, gpus: int = 8, **vms: object) -> Scenario:
    return Scenario(duration_s=60.0, hosts=[HostGroup(region=region, sku="A100-80GB", gpus=gpus, count=count)],
                    deployments=[DeploymentSpec(model="Llama-3-8B", sku="A100-80GB")], vms={"enabled": True, **vms})


def test_a_stand_in_lends_its_offers_and_the_block_overrides_quotas_and_spot_behaviour() -> None:
    config = VmFleetConfig(enabled=True, stand_ins={"lab-north": "us-west"}, quotas={"lab-north": {"A100-80GB": 24}},
                           spot_preemptions_per_h=2.0, spot_notice_s=30.0)
    catalog = config.cloud_catalog(["lab-north", "us-east"])
    assert catalog.names == ("lab-north", "us-east")
    west = catalog.region("lab-north")
    assert west.provider_region == "us-west-2"  # us-west's offers, prices and boot times
    assert west.gpu_quota("A100-80GB") == 24 and west.gpu_quota("L40S") == 256
    assert catalog.price("lab-north", "A100-80GB", Purchase.SPOT) == catalog.price("us-east", "A100-80GB", Purchase.SPOT)
    assert all(r.spot_preemptions_per_h == 2.0 and r.spot_notice_s == 30.0 for r in catalog.regions)
    assert gpu_quotas(catalog)[("lab-north", "A100-80GB")] == 24


@pytest.mark.parametrize(("changes", "named"), [
    ({"region": "lab-north"}, "vms.stand_ins: region 'lab-north' is not in the region catalogue"),
    ({"stand_ins": {"us-east": "mars"}}, "vms.stand_ins.us-east: 'mars' is not a catalogue region"),
    ({"stand_ins": {"eu-west": "us-east"}}, "vms.stand_ins.eu-west: no hosts in that region"),
    ({"quotas": {"us-east": {"H20": 8}}}, "vms.quotas.us-east.H20: region 'us-east' does not sell H20"),
    ({"quotas": {"us-east": {"A100-80GB": 8}}, "count": 2}, "initial fleet holds 16 GPUs, above the quota of 8"),
    ({"gpus": 4}, "gpus is 4, but a A100-80GB VM has 8 GPUs"),
    ({"region": "cn-north"}, "hosts cn-north/A100-80GB: the cloud region does not sell A100-80GB"),
    ({"purchase": "reserved"}, "vms.purchase"),
    ({"release_drain_s": 0}, "vms.release_drain_s"),
])
def test_a_fleet_the_cloud_cannot_sell_is_refused_naming_the_field(changes: dict, named: str) -> None:
    with pytest.raises(ValidationError, match=named.replace("(", r"\(").replace(")", r"\)")):
        _scenario(**changes)


def test_with_vms_off_nothing_is_checked_against_the_cloud() -> None:
    scenario = Scenario(duration_s=60.0, hosts=[HostGroup(region="lab-north", sku="A100-80GB", gpus=4)],
                        deployments=[DeploymentSpec(model="Llama-3-8B", sku="A100-80GB")])
    assert not scenario.vms.enabled


def test_a_spot_preemption_fault_needs_spot_vms() -> None:
    with pytest.raises(ValidationError, match="faults.0: a spot_preemption needs spot VMs"):
        Scenario(duration_s=60.0, hosts=[HostGroup(region="us-east", sku="A100-80GB", gpus=8)],
                 deployments=[DeploymentSpec(model="Llama-3-8B", sku="A100-80GB")], vms={"enabled": True},
                 faults=[Fault(kind="spot_preemption", at_s=10.0, host="us-east-a100-80gb-1")])

"""A scenario's `vms:` block: its hosts become VMs of the simulated cloud (opscale.runtime.sim.vms).

    vms:
      enabled: true
      purchase: on_demand           # how the scenario's hosts (the fleet in place at the start) are bought
      stand_ins: {westus: us-west}  # a scenario region the catalogue does not know takes a catalogue
                                    # region's offers: quotas, prices, boot times, spot behaviour
      quotas: {westus: {A100-80GB: 64}}  # GPUs per region and SKU, over the catalogue's
      spot_preemptions_per_h: 0.5   # every region's spot preemption rate (default: the catalogue's)
      spot_notice_s: 120            # every region's notice before a preempted VM goes
      scale_in_delay_s: 600         # a pool over its target this long gives VMs back
      release_drain_s: 300          # a released VM drains this long at most before it is given back

Off (the default), the hosts are fixed, as they always were. The cloud's regions are those of
`opscale/data/regions.yaml` (opscale.cloud.regions), adjusted by this block: `cloud_catalog` builds the
catalogue the simulated cloud of one run uses, and `fleet_problems` says what in a scenario's fleet the
cloud could not sell, so that a scenario is refused before it runs, naming the field.
"""

from __future__ import annotations

from collections.abc import Iterable

from pydantic import BaseModel, ConfigDict, Field

from opscale.cloud import RegionCatalog, SimCloudConfig, account_catalog, default_region_catalog
from opscale.model import Purchase


class VmFleetConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")
    enabled: bool = Field(False, description="The hosts are VMs bought and released through the simulated cloud")
    purchase: Purchase = Field(Purchase.ON_DEMAND, description="How the scenario's hosts, the fleet running when "
                               "the run starts, are bought: on_demand or spot")
    stand_ins: dict[str, str] = Field(default_factory=dict, description="Scenario region -> the catalogue region "
                                      "whose offers it takes, for a region the catalogue does not know")
    quotas: dict[str, dict[str, int]] = Field(default_factory=dict, description="Region -> SKU -> GPUs the "
                                              "account may hold there, replacing the catalogue's quota")
    spot_preemptions_per_h: float | None = Field(None, ge=0, description="Poisson rate at which a running spot "
                                                 "VM is preempted, in every region; None: each region's own")
    spot_notice_s: float | None = Field(None, ge=0, description="Notice before a preempted VM goes, in every "
                                        "region; None: each region's own")
    scale_in_delay_s: float = Field(600.0, ge=0, description="VMs are given back only once their pool has held "
                                    "more than the plan's count this long without a break (Kubernetes' cluster "
                                    "autoscaler: 10 min)")
    release_drain_s: float = Field(300.0, gt=0, description="A VM the plan gives back drains at most this long "
                                   "(its instances move first), then it is released")
    provision_jitter: float = Field(0.25, ge=0, lt=1, description="A VM boots in its region's typical time x "
                                    "uniform [1 - jitter, 1 + jitter]")

    def cloud_config(self, seed: int) -> SimCloudConfig:
        return SimCloudConfig(seed=seed, provision_jitter=self.provision_jitter)

    def cloud_catalog(self, regions: Iterable[str], base: RegionCatalog | None = None) -> RegionCatalog:
        """The regions of one run's simulated cloud: each scenario region as the catalogue (`base`, the
        built-in one by default) has it, or as its stand-in, with this block's quotas and spot settings.
        A ValueError names the field that cannot be met."""
        return account_catalog(base if base is not None else default_region_catalog(), regions,
                               stand_ins=self.stand_ins, quotas=self.quotas,
                               spot_preemptions_per_h=self.spot_preemptions_per_h, spot_notice_s=self.spot_notice_s)


def fleet_problems(config: VmFleetConfig, hosts: Iterable[tuple[str, str, int, int]]) -> str:
    """What the cloud could not sell of a fleet of host groups (region, SKU, GPUs per host, count), ""
    when it can: a SKU the region does not sell, hosts not shaped as the SKU's VM, more than the quota."""
    groups = list(hosts)
    catalog = config.cloud_catalog(region for region, _, _, _ in groups)
    held: dict[tuple[str, str], int] = {}
    for region, sku, gpus, count in groups:
        spec = catalog.region(region)
        offer = spec.offer(sku)
        if offer is None:
            return (f"hosts {region}/{sku}: the cloud region does not sell {sku} (it sells "
                    f"{', '.join(o.sku for o in spec.offers)}); with vms on, every host is a VM it sells")
        per_vm = catalog.skus.sku(offer.sku).gpus_per_vm
        if gpus != per_vm:
            return f"hosts {region}/{sku}: gpus is {gpus}, but a {sku} VM has {per_vm} GPUs (skus.yaml gpus_per_vm)"
        held[(region, offer.sku)] = held.get((region, offer.sku), 0) + gpus * count
    for (region, sku), gpus in sorted(held.items()):
        quota = catalog.region(region).gpu_quota(sku)
        if gpus > quota:
            return (f"hosts {region}/{sku}: the initial fleet holds {gpus} GPUs, above the quota of {quota} "
                    f"(raise vms.quotas.{region}.{sku})")
    return ""

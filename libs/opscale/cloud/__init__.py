"""The cloud model: regions with prices, quotas and spot behaviour; a simulated cloud; VM actuators.

Pure: no I/O beyond reading a catalogue file when asked, no clock (every call takes `now_s`). The live
back ends of the actuator contract live in opscale.runtime.live (cloud_local, cloud_k8s). docs/cloud.md
describes the API for wiring this into the simulator and the planner.
"""

from opscale.cloud.actuator import (
    AsyncAdapter,
    AsyncVmActuator,
    EnsureResult,
    SimulatedActuator,
    VmActuator,
    VmCount,
    choose_release,
    pool_vms,
    vm_count_table,
)
from opscale.cloud.billing import AccountLine, BillingPolicy, BillingStart, BillingStop, CloudAccount, account
from opscale.cloud.driver import CloudDriver
from opscale.cloud.events import CloudEvent, CloudEventKind, diff_events
from opscale.cloud.regions import (
    RegionCatalog,
    RegionCatalogError,
    RegionSpec,
    SkuOffer,
    account_catalog,
    default_region_catalog,
    gpu_quotas,
    load_regions,
    parse_regions,
)
from opscale.cloud.simulated import RequestResult, SimCloudConfig, SimulatedCloud

__all__ = [
    "AccountLine", "AsyncAdapter", "AsyncVmActuator", "BillingPolicy", "BillingStart", "BillingStop",
    "CloudAccount", "CloudDriver", "CloudEvent", "CloudEventKind", "EnsureResult", "RegionCatalog",
    "RegionCatalogError", "RegionSpec", "RequestResult", "SimCloudConfig", "SimulatedActuator", "SimulatedCloud",
    "SkuOffer", "VmActuator", "VmCount", "account", "account_catalog", "choose_release", "default_region_catalog",
    "diff_events", "gpu_quotas", "load_regions", "parse_regions", "pool_vms", "vm_count_table",
]

"""Data movement between GPUs: KV-cache transfer from a prefill to a decode instance, and activations
between operator groups, priced by the network path between the two ends.

time = link latency + bytes / link bandwidth, with the link chosen by topology. Hosts sit under switches
as in HeteroScale's clusters: S0 (the host's leaf), S1 (a mini-pod of leaves), S2 (a big-pod of mini-pods).
The path is the nearest level two ends share: the same host (NVLink or PCIe peer-to-peer), the same S0
(RDMA under one leaf), the same S1 (through the mini-pod switch; HeteroScale measures about 20% less KV
bandwidth across switches than under one), the same S2 (through the big-pod switch), the same region
across big-pods, or across regions (WAN). The KV of a
tensor-parallel instance is sharded over its GPUs, and with one NIC per GPU (GPUDirect RDMA) or one
NVLink port per GPU the shards move in parallel over `parallel_links` links; a WAN path does not scale.

Example: 2048 prompt tokens of Llama-3-8B carry 2048 x 131072 B = 268 MB of KV: 6.7 ms over one 40 GB/s
RDMA link under one switch and 8.4 ms across leaves of one mini-pod (plus 0.1 and 0.2 ms of latency),
10.5 ms across mini-pods, 13.1 ms across big-pods, 255 ms across regions (214 ms at 1.25 GB/s plus 40 ms).

Pure arithmetic: no I/O, no clock.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from enum import StrEnum

from pydantic import BaseModel, ConfigDict, Field

from opscale.model import ModelSpec
from opscale.perf.latency import DEFAULT_INTERCONNECT_GBPS

# A SKU the interconnect table does not know is taken to copy peer-to-peer over PCIe Gen4 x16.
PCIE_P2P_GBPS = 20.0


class Topology(StrEnum):
    """Where two GPUs are relative to each other, nearest first."""

    SAME_HOST = "same_host"
    SAME_SWITCH = "same_switch"  # different hosts under one S0 (leaf)
    CROSS_SWITCH = "cross_switch"  # different S0s under one S1 (mini-pod)
    CROSS_S1 = "cross_s1"  # different S1s under one S2 (big-pod)
    CROSS_S2 = "cross_s2"  # different S2s in one region
    CROSS_REGION = "cross_region"


@dataclass(frozen=True, slots=True)
class Link:
    """One path between two GPUs: a fixed latency and a bandwidth in GB/s."""

    latency_s: float
    gbps: float

    def __post_init__(self) -> None:
        if not (self.latency_s >= 0 and math.isfinite(self.latency_s)):
            raise ValueError(f"link latency_s must be a finite number >= 0, got {self.latency_s!r}")
        if not (self.gbps > 0 and math.isfinite(self.gbps)):
            raise ValueError(f"link gbps must be a finite positive number, got {self.gbps!r}")

    def transfer_s(self, nbytes: float, parallel_links: int = 1) -> float:
        """Seconds to move `nbytes`, split evenly over `parallel_links` such links."""
        if nbytes < 0:
            raise ValueError(f"bytes to transfer must be >= 0, got {nbytes!r}")
        _check_links(parallel_links)
        return self.latency_s + nbytes / (self.gbps * 1e9 * parallel_links)


class TransferParams(BaseModel):
    """Bandwidth and latency of each kind of path. Defaults: 400 Gb/s RDMA NICs, one per GPU, at about
    80% of line rate; HeteroScale's ~20% loss across switches, taken again for each switch tier above
    (the paper measures only the first tier: an assumption, to be replaced by measured figures); a
    10 Gb/s inter-region flow."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    same_host_gbps: float | None = Field(
        None, gt=0, description="GPU-to-GPU copy bandwidth inside one host, GB/s per link; None: the SKU's "
                                "NVLink figure from DEFAULT_INTERCONNECT_GBPS, else PCIe peer-to-peer.")
    same_host_latency_s: float = Field(
        10e-6, ge=0, description="Fixed cost of one copy inside a host, seconds.")
    same_switch_gbps: float = Field(
        40.0, gt=0, description="RDMA bandwidth between hosts under one leaf switch, GB/s per link.")
    same_switch_latency_s: float = Field(
        100e-6, ge=0, description="Fixed cost of one RDMA transfer under one switch (set-up and "
                                  "completion included), seconds.")
    cross_switch_gbps: float = Field(
        32.0, gt=0, description="RDMA bandwidth between hosts under different leaf switches, GB/s per link.")
    cross_switch_latency_s: float = Field(
        200e-6, ge=0, description="Fixed cost of one RDMA transfer through the mini-pod (S1) switch, seconds.")
    cross_s1_gbps: float = Field(
        25.6, gt=0, description="RDMA bandwidth between hosts of different mini-pods under one big-pod (S2), "
                                "GB/s per link: cross_switch_gbps less another ~20% (one more switch tier).")
    cross_s1_latency_s: float = Field(
        300e-6, ge=0, description="Fixed cost of one RDMA transfer through the big-pod (S2) switch, seconds.")
    cross_s2_gbps: float = Field(
        20.5, gt=0, description="RDMA bandwidth between hosts of different big-pods in one region, GB/s per "
                                "link: cross_s1_gbps less another ~20%.")
    cross_s2_latency_s: float = Field(
        400e-6, ge=0, description="Fixed cost of one RDMA transfer through the tier above the big-pods, seconds.")
    cross_region_gbps: float = Field(
        1.25, gt=0, description="Bandwidth of one transfer between regions, GB/s (does not scale with links).")
    cross_region_latency_s: float = Field(
        0.040, ge=0, description="One-way latency between regions, seconds.")

    def link(self, topology: Topology | str, sku_name: str | None = None) -> Link:
        """The path of `topology`; `sku_name` picks the NVLink bandwidth of a same-host copy."""
        match _topology(topology):
            case Topology.SAME_HOST:
                gbps = self.same_host_gbps
                if gbps is None:
                    gbps = DEFAULT_INTERCONNECT_GBPS.get((sku_name or "").casefold(), PCIE_P2P_GBPS)
                return Link(self.same_host_latency_s, gbps)
            case Topology.SAME_SWITCH:
                return Link(self.same_switch_latency_s, self.same_switch_gbps)
            case Topology.CROSS_SWITCH:
                return Link(self.cross_switch_latency_s, self.cross_switch_gbps)
            case Topology.CROSS_S1:
                return Link(self.cross_s1_latency_s, self.cross_s1_gbps)
            case Topology.CROSS_S2:
                return Link(self.cross_s2_latency_s, self.cross_s2_gbps)
            case Topology.CROSS_REGION:
                return Link(self.cross_region_latency_s, self.cross_region_gbps)
        raise AssertionError(topology)  # _topology admits nothing else


@dataclass(frozen=True, slots=True)
class Placement:
    """Where an instance (or an operator replica) runs: region, leaf switch (S0) and host names, and the
    mini-pod (S1) and big-pod (S2) above the leaf; an empty s1 or s2 is unknown, and two unknowns count
    as the same switch (a placement that names only leaves prices every cross-leaf path alike)."""

    region: str
    switch: str
    host: str
    s1: str = ""
    s2: str = ""


def topology_between(a: Placement, b: Placement) -> Topology:
    """The path between two placements: the nearest level they share. Switch and host names are taken as
    unique within a region."""
    if a.region != b.region:
        return Topology.CROSS_REGION
    if a.s2 != b.s2:
        return Topology.CROSS_S2
    if a.s1 != b.s1:
        return Topology.CROSS_S1
    if a.switch != b.switch:
        return Topology.CROSS_SWITCH
    if a.host != b.host:
        return Topology.SAME_SWITCH
    return Topology.SAME_HOST


def handoff_s(params: TransferParams, source: Placement, dest: Placement, nbytes: float, *,
              source_sku: str | None, source_tp: int, dest_tp: int) -> tuple[Topology, float]:
    """The path between a prefill instance at `source` and a decode instance at `dest`, and the seconds
    its `nbytes` of KV take over it: the shards of a tensor-parallel instance move in parallel over
    min(source_tp, dest_tp) links, except across regions (one WAN flow). The one pricing of a P/D
    hand-off: the simulator's world and the live node-agent's decode side both use it."""
    topology = topology_between(source, dest)
    links = 1 if topology is Topology.CROSS_REGION else min(source_tp, dest_tp)
    return topology, params.link(topology, source_sku).transfer_s(nbytes, links)


def kv_bytes(model: ModelSpec, tokens: int) -> int:
    """KV-cache bytes of `tokens` tokens: tokens x model.kv_bytes_per_token (all layers, K and V)."""
    _check_tokens(tokens)
    return tokens * model.kv_bytes_per_token


def activation_bytes(model: ModelSpec, tokens: int) -> int:
    """Bytes of the hidden states of `tokens` tokens at a layer boundary: tokens x hidden x bytes_per_param."""
    _check_tokens(tokens)
    return tokens * model.hidden * model.bytes_per_param


def kv_transfer_s(
    model: ModelSpec, tokens: int, topology: Topology | str, params: TransferParams | None = None, *,
    sku_name: str | None = None, parallel_links: int = 1,
) -> float:
    """Seconds to move the KV of `tokens` tokens between two instances `topology` apart.

    `parallel_links`: links used at once, typically min(tp of the prefill instance, tp of the decode
    instance) over RDMA or NVLink; ignored across regions, where the flow shares one WAN path.
    """
    p = params if params is not None else TransferParams()
    links = 1 if _topology(topology) is Topology.CROSS_REGION else parallel_links
    _check_links(parallel_links)
    return p.link(topology, sku_name).transfer_s(kv_bytes(model, tokens), links)


def _topology(topology: Topology | str) -> Topology:
    try:
        return Topology(topology)
    except ValueError:
        known = ", ".join(t.value for t in Topology)
        raise ValueError(f"unknown topology {topology!r}; known: {known}") from None


def _check_tokens(tokens: int) -> None:
    if isinstance(tokens, bool) or not isinstance(tokens, int) or tokens < 0:
        raise ValueError(f"tokens must be an integer >= 0, got {tokens!r}")


def _check_links(parallel_links: int) -> None:
    if isinstance(parallel_links, bool) or not isinstance(parallel_links, int) or parallel_links < 1:
        raise ValueError(f"parallel_links must be a positive integer, got {parallel_links!r}")

"""Scenarios: everything one simulation run needs (fleet, deployments, tiers, workload, policies), as a
validated pydantic model that loads from YAML. `builtin_demo_scenario` is what `opscale demo` runs."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from opscale.cloud import default_region_catalog
from opscale.engine import EngineConfig
from opscale.experiments.shaped_workload import ShapedWorkloadConfig
from opscale.experiments.vm_fleet import VmFleetConfig, fleet_problems
from opscale.model import RdmaPriority, Request, TierList, TierSpec, default_tier_models, tier_table
from opscale.perf.transfer import TransferParams
from opscale.planning import DeploymentSpec
from opscale.planning.placement import AgentSlot, fits
from opscale.services.aggregator import AggregatorConfig
from opscale.services.forecaster import ForecasterConfig
from opscale.services.planner import PlannerConfig
from opscale.services.router import RouterConfig
from opscale.traces import LengthDistribution, StreamSpec, SyntheticWorkloadConfig, TraceWindow, trace_format


class ScenarioError(ValueError):
    """A scenario that cannot be run: the message names the file and field."""


class HostGroup(BaseModel):
    """`count` identical GPU hosts (one node-agent each) in one region.

    Where they sit in the network (HeteroScale's switch tiers, which price a KV transfer between two
    hosts: opscale.perf.transfer): under the leaf switch `s0`, in the mini-pod `s1`, in the big-pod `s2`.
    By default a group's hosts share one leaf named after the group (`<region>-<sku>`), that leaf is its
    own mini-pod, and every mini-pod of a region sits in one big-pod named after the region. Switch names
    are a tree: a leaf is under one mini-pod and a mini-pod under one big-pod, in one region.

    `rdma_priority` is the priority of the RDMA subgroup the hosts belong to (HeteroScale, PAPERS.md §3.6:
    low, an S2 of one GPU type; medium, an S2 of several types; high, S1s of mixed types, kept for the most
    demanding P/D services). Placement spends low-priority hosts first and high last, and scale-in frees
    high first. The default is low: hosts nobody declared scarce are the ordinary pool, and a fleet that
    declares no priorities is placed by fit alone.
    """

    model_config = ConfigDict(extra="forbid")
    region: str = Field(min_length=1)
    sku: str = Field(min_length=1, description="GPU SKU name from the catalogue")
    gpus: int = Field(8, ge=1, description="GPUs per host")
    count: int = Field(1, ge=1, description="How many such hosts")
    weight_cache_gb: float = Field(512.0, ge=0, description="Host memory that keeps model weights after an "
                                   "instance loads or stops, so the next instance of that model here loads warm")
    s0: str | None = Field(None, min_length=1, description="Leaf switch of these hosts; default `<region>-<sku>`")
    s1: str | None = Field(None, min_length=1, description="Mini-pod switch above the leaf; default: the leaf's name")
    s2: str | None = Field(None, min_length=1, description="Big-pod switch above the mini-pod; default: the region")
    rdma_priority: RdmaPriority = Field(RdmaPriority.LOW, description="Priority of these hosts' RDMA subgroup: "
                                        "low (used first), medium, high (used last, freed first)")

    def switches(self) -> tuple[str, str, str]:
        """(S0, S1, S2) of these hosts, defaults filled in (see the class docstring)."""
        s0 = self.s0 or f"{self.region}-{self.sku.lower()}"
        return s0, self.s1 or s0, self.s2 or self.region

    def host_ids(self, first: int = 1) -> list[str]:
        """The hosts' agent ids, `<region>-<sku>-<n>` from n = `first`: the same in the simulator and a live
        stack started from the scenario, so a fault or a plan that names a host means one host in both.
        Scenario.host_groups numbers on across the groups of one region and SKU."""
        return [f"{self.region}-{self.sku.lower()}-{first + i}" for i in range(self.count)]


class TraceSource(BaseModel):
    """A trace file to replay, and how to label its requests. Public traces name no model, tier or
    origin region (their readers label them "default"); `assign` draws each from weights so that they
    match the scenario's deployments and regions."""

    model_config = ConfigDict(extra="forbid")
    path: Path
    format: str | None = Field(None, description="Trace format (opscale.traces.registry); None: detected")
    assign: dict[Literal["model", "tier", "region"], dict[str, float]] = Field(
        default_factory=dict, description="Per label, relative weights of the values drawn for each request")
    compress: float = Field(1.0, gt=0, description="Time compression factor (2: the trace plays twice as fast)")
    window_start_s: float | None = Field(None, ge=0, description="Replay only arrivals from this trace second "
                                         "on; it becomes time 0 (as `opscale loadgen replay --window` does)")
    window_end_s: float | None = Field(None, gt=0, description="Replay only arrivals before this trace second")
    max_requests: int | None = Field(None, ge=1, description="Replay at most this many requests of the window")
    model: str | None = Field(None, min_length=1, description="Label every request with this model (as "
                              "`opscale loadgen replay --model` sends every request to one model)")

    @model_validator(mode="after")
    def _window_order(self) -> TraceSource:
        self.window()  # an end before the start is named here
        return self

    def window(self) -> TraceWindow:
        return TraceWindow(self.window_start_s, self.window_end_s)

    @field_validator("format")
    @classmethod
    def _known_format(cls, value: str | None) -> str | None:
        return None if value is None else trace_format(value).value


class Fault(BaseModel):
    """Something that goes wrong during a run, at a simulated time. `planner_restart`: the planner
    process dies and a new one starts from the plan it stored (its policy's memory is lost).
    `spot_preemption`: the cloud reclaims host `host` (an agent id, `<region>-<sku>-<n>`) after
    `notice_s` of notice."""

    model_config = ConfigDict(extra="forbid")
    kind: Literal["planner_restart", "spot_preemption"]
    at_s: float = Field(ge=0, description="When it happens, seconds of simulated time")
    host: str | None = Field(None, description="spot_preemption: the host reclaimed")
    notice_s: float = Field(120.0, ge=0, description="spot_preemption: notice before the host goes (AWS: 120 s)")

    @model_validator(mode="after")
    def _host_named(self) -> Fault:
        if self.kind == "spot_preemption" and not self.host:
            raise ValueError("a spot_preemption fault names its host")
        return self


class Scenario(BaseModel):
    """One simulation run. Times are seconds of simulated time."""

    model_config = ConfigDict(extra="forbid")
    name: str = "scenario"
    seed: int = 0
    duration_s: float = Field(gt=0, description="Arrivals are simulated up to this time")
    drain_s: float = Field(900.0, ge=0, description="After the last arrival, time allowed to finish in-flight work")
    hosts: list[HostGroup] = Field(min_length=1)
    deployments: list[DeploymentSpec] = Field(min_length=1)
    tiers: TierList = Field(default_factory=default_tier_models, description="Service tiers and their latency "
                            "objectives (opscale.model.tiers: the built-in ones by default)")
    workload: SyntheticWorkloadConfig | None = None
    trace: TraceSource | None = None
    shaped: ShapedWorkloadConfig | None = Field(None, description="Generated multi-region traffic with a real "
                                                "(ServeGen) or synthetic daily and weekly shape")
    policy: str = Field("reactive", description="Planning policy (opscale.planning.registry)")
    policy_params: dict[str, Any] = Field(default_factory=dict)
    routing_policy: str = Field("jsq_tokens", description="Routing policy (opscale.routing.registry)")
    router: dict[str, Any] = Field(default_factory=dict, description="Further RouterConfig fields for every "
                                   "region's router: policy_params, hold_order, max_outstanding_tokens_per_instance, "
                                   "spill_over, ...")
    engine: EngineConfig = Field(default_factory=lambda: EngineConfig(emit_tokens=False))
    load_time_scale: float = Field(1.0, gt=0, description="Multiplies every modelled load time")
    warm_loads: Literal["off", "host_memory", "host_memory_and_peers"] = Field(
        "host_memory", description="Where an instance may load its weights warm from: the host's memory "
        "(the model ran on this host recently), also a peer already serving the model in the region "
        "(weights over the network), or nowhere (every load from remote storage)")
    start_provisioned: bool = Field(True, description="Instances placed before the first request arrives start "
                                    "loaded, as in a fleet already running; False: the run starts cold")
    warm_start_s: float = Field(0.0, ge=0, description="With start_provisioned, instances started up to this long "
                                "after the first arrival also start loaded: the fleet the planner sizes from the "
                                "first minutes of traffic is taken as the one running when the run begins")
    planner: PlannerConfig = Field(default_factory=PlannerConfig)
    aggregator: AggregatorConfig = Field(default_factory=AggregatorConfig)
    forecaster: ForecasterConfig = Field(default_factory=ForecasterConfig)
    sample_interval_s: float = Field(60.0, gt=0, description="Spacing of the timeline in result plots")
    faults: list[Fault] = Field(default_factory=list, description="Failures injected during the run")
    transfer: TransferParams = Field(default_factory=TransferParams, description="Bandwidth and latency of "
                                     "each network path a disaggregated deployment's KV cache takes")
    profiles_dir: Path | None = Field(None, description="Measured operator profiles (vidur's data/profiling "
                                      "layout) for the engines and capacity estimates; None: the calibrated "
                                      "roofline model shipped with opscale")
    vms: VmFleetConfig = Field(default_factory=VmFleetConfig, description="Hosts as VMs of the simulated cloud, "
                               "bought and released on the plan's VM counts (opscale.experiments.vm_fleet); off: "
                               "the hosts are fixed")

    @model_validator(mode="after")
    def _vm_fleet(self) -> Scenario:
        if self.vms.enabled:
            problem = fleet_problems(self.vms, ((h.region, h.sku, h.gpus, h.count) for h in self.hosts))
            if problem:
                raise ValueError(problem)
            preempted = [i for i, f in enumerate(self.faults) if f.kind == "spot_preemption"]
            if preempted and self.vms.purchase != "spot":
                raise ValueError(f"faults.{preempted[0]}: a spot_preemption needs spot VMs, and vms.purchase is "
                                 f"{self.vms.purchase.value}")
        return self

    @field_validator("router")
    @classmethod
    def _router_fields(cls, value: dict[str, Any]) -> dict[str, Any]:
        fixed = {"router_id", "region", "policy", "models"} & set(value)
        if fixed:
            raise ValueError(f"router: {sorted(fixed)} are set by the scenario itself (routing_policy, "
                             f"hosts, deployments)")
        unknown = sorted(set(value) - set(RouterConfig.model_fields))
        if unknown:
            raise ValueError(f"router: unknown fields {unknown}; known: {sorted(RouterConfig.model_fields)}")
        RouterConfig.model_validate(value)  # bad values fail here, named
        return value

    @model_validator(mode="after")
    def _one_source(self) -> Scenario:
        # None at all is a fleet without traffic: what `opscale up --scenario` runs, and what `opscale
        # simulate --config` gives a trace to.
        if sum(source is not None for source in (self.workload, self.trace, self.shaped)) > 1:
            raise ValueError("give at most one of 'workload' (synthetic), 'trace' (a file) or 'shaped' "
                             "(generated with a production shape)")
        regions = {h.region for h in self.hosts}
        if self.shaped is not None:
            deployed = {d.model for d in self.deployments}
            unserved = sorted({s.model for s in self.shaped.streams} - deployed)
            if unserved:
                raise ValueError(f"shaped.streams: models {unserved} have no deployment; deployed: "
                                 f"{sorted(deployed)}")
            hostless = sorted(set(self.shaped.region_offsets_s) - regions)
            if hostless:
                raise ValueError(f"shaped.region_offsets_s: regions {hostless} have no hosts; hosts are in "
                                 f"{sorted(regions)}")
        for dep in self.deployments:
            missing = [r for r in dep.regions if r not in regions]
            if missing:
                raise ValueError(f"deployment {dep.model!r} names regions without hosts: {missing}")
            self._role_hosts(dep)
        self._switch_tree()
        for dep in self.deployments:
            self._group_domains(dep)
        self._known_tiers()
        self.region_rtt_ms()  # a fleet over regions the catalogue cannot place is named here
        return self

    def region_rtt_ms(self) -> dict[tuple[str, str], float]:
        """Round trips (ms) between the fleet's regions, from the region catalogue (regions.yaml). A fleet
        in one region needs none, and may name its region freely; a fleet over several regions must use
        catalogue regions (the error names those it does not know)."""
        regions = self.regions()
        if len(regions) < 2:
            return {}
        return default_region_catalog().rtt_table(regions)

    def _role_hosts(self, dep: DeploymentSpec) -> None:
        """Each pool of a disaggregated deployment has hosts of its SKU in some region it serves."""
        if not dep.disaggregated:
            return
        served = set(dep.regions) or {h.region for h in self.hosts}
        for role in dep.roles():
            pool = dep.pool(role)
            skus = {sku.casefold() for sku, _ in pool.choices()}
            if not any(h.region in served and h.sku.casefold() in skus for h in self.hosts):
                also = f" (nor its compatible_skus {list(pool.compatible_skus)})" if pool.compatible_skus else ""
                raise ValueError(f"deployment {dep.model!r}: {role.value}.sku {pool.sku!r}{also} has no hosts in its "
                                 f"regions {sorted(served)}")

    def _group_domains(self, dep: DeploymentSpec) -> None:
        """A disaggregated deployment's groups have somewhere to go: every switch its `domains` names is one
        the hosts declare at its scheduling_domain tier, and in each region it serves some such domain holds
        its pools' minimum counts (placement refuses to open a group anywhere smaller)."""
        tier = dep.scheduling_domain
        if not dep.disaggregated or tier == "none":
            return
        served = set(dep.regions) or set(self.regions())
        slots = [slot for slot in self.agent_slots() if slot.region in served]
        declared = {slot.switch(tier) for slot in slots}
        unknown = sorted(set(dep.domains) - declared)
        if unknown:
            raise ValueError(f"deployment {dep.model!r}: domains names {unknown}, which no host group declares as "
                             f"an {tier} switch in its regions {sorted(served)}; declared: {sorted(declared)}")
        if not self.planner.topology_aware:
            return  # a blind planner places no groups
        need = {role: dep.pool(role).min_replicas for role in dep.roles()}
        for region in sorted(served):
            domains: dict[str, list[AgentSlot]] = {}
            for slot in slots:
                if slot.region == region and (not dep.domains or slot.switch(tier) in dep.domains):
                    domains.setdefault(slot.switch(tier), []).append(slot)
            if not domains or any(fits(dep, members, {s.agent_id: s.gpus_total for s in members}, need)
                                  for members in domains.values()):
                continue
            wanted = ", ".join(f"{n} {role.value} x tp {dep.pool(role).tp} on "
                               f"{'/'.join(sku for sku, _ in dep.pool(role).choices())}" for role, n in need.items())
            largest, members = max(domains.items(), key=lambda kv: (sum(s.gpus_total for s in kv[1]), kv[0]))
            by_sku: dict[str, int] = {}
            for s in members:
                by_sku[s.sku] = by_sku.get(s.sku, 0) + s.gpus_total
            held = ", ".join(f"{sku} {gpus}" for sku, gpus in sorted(by_sku.items()))
            raise ValueError(f"deployment {dep.model!r}: scheduling_domain {tier}: no {tier} switch of region "
                             f"{region!r} can hold the group's minimum ({wanted}); the largest, {largest!r}, has "
                             f"{sum(by_sku.values())} GPUs ({held})")

    def host_groups(self) -> list[tuple[HostGroup, list[str]]]:
        """Each host group with its hosts' agent ids. Several groups of one region and SKU (the same GPUs
        under different switches) number on, `<region>-<sku>-1` to `-<n>` over all of them, so no two
        hosts share an id."""
        first: dict[tuple[str, str], int] = {}
        groups = []
        for group in self.hosts:
            kind = (group.region, group.sku.lower())
            n = first.get(kind, 1)
            groups.append((group, group.host_ids(n)))
            first[kind] = n + group.count
        return groups

    def agent_slots(self) -> list[AgentSlot]:
        """Every host as placement sees it (its SKU, GPUs, switches and subgroup priority), nothing placed."""
        return [AgentSlot(agent_id, group.region, group.sku, group.gpus, frozenset(), *group.switches(),
                          group.rdma_priority)
                for group, ids in self.host_groups() for agent_id in ids]

    def _switch_tree(self) -> None:
        """Every switch has one parent (a leaf one mini-pod, a mini-pod one big-pod) and one region."""
        parent: dict[tuple[str, str], tuple[str, str]] = {}  # (tier, switch) -> (parent or region, group)
        for group in self.hosts:
            s0, s1, s2 = group.switches()
            where = f"hosts {group.region}/{group.sku}"
            for tier, switch, above in (("s0", s0, s1), ("s1", s1, s2), ("s2", s2, group.region)):
                known = parent.setdefault((tier, switch), (above, where))
                if known[0] != above:
                    kind = "region" if tier == "s2" else "parent"
                    raise ValueError(f"hosts: {tier} switch {switch!r} has {kind} {known[0]!r} ({known[1]}) and "
                                     f"{above!r} ({where}); a switch sits under one {kind}")

    def host_switches(self) -> dict[str, tuple[str, str, str]]:
        """Every host's (S0, S1, S2), by agent id."""
        return {agent_id: group.switches() for group, ids in self.host_groups() for agent_id in ids}

    def _known_tiers(self) -> None:
        """Every tier the workload draws is one of `tiers`, so each request is judged by an objective."""
        named = {t.name for t in self.tiers}
        drawn = {"workload.tier_weights": self.workload.tier_weights if self.workload else {},
                 "shaped.tier_weights": self.shaped.tier_weights if self.shaped else {},
                 "trace.assign.tier": self.trace.assign.get("tier", {}) if self.trace else {}}
        for where, weights in drawn.items():
            unknown = sorted(set(weights) - named)
            if unknown:
                raise ValueError(f"{where}: unknown tiers {unknown}; the scenario's tiers: {sorted(named)}")

    def tier_specs(self) -> dict[str, TierSpec]:
        return tier_table(self.tiers)

    def regions(self) -> list[str]:
        return sorted({h.region for h in self.hosts})


def load_scenario(path: Path) -> Scenario:
    data = read_yaml(path, "scenario file")
    try:
        return Scenario.model_validate(data or {})
    except ValidationError as exc:
        raise ScenarioError(validation_message(exc, f"scenario file {path}")) from None


def read_yaml(path: Path, what: str) -> Any:
    """The YAML document at `path`; a missing file or bad YAML is a ScenarioError naming `what` and the file."""
    try:
        return yaml.safe_load(path.read_text())
    except FileNotFoundError:
        raise ScenarioError(f"{what} {path} does not exist") from None
    except yaml.YAMLError as exc:
        raise ScenarioError(f"{what} {path}: invalid YAML: {exc}") from None


def validation_message(exc: ValidationError, where: str) -> str:
    problems = "; ".join(f"{'.'.join(str(p) for p in e['loc'])}: {e['msg']}" for e in exc.errors())
    return f"{where}: {problems}"


DEMO_REGIONS = ("eu-west", "us-east")


def builtin_demo_scenario(seed: int = 1, policy: str = "reactive", duration_s: float = 7200.0) -> Scenario:
    """Two regions, two models, two hours: one compressed day of diurnal load, the regions a quarter
    of a day apart, so capacity must follow load up and down in each region."""
    models = (("Llama-3-8B", "H100-80GB", 1, 14.0), ("Llama-3-70B", "H100-80GB", 4, 3.0))
    return Scenario(
        name="demo: 2 regions x 2 models, 2 h",
        seed=seed,
        duration_s=duration_s,
        hosts=[HostGroup(region=r, sku="H100-80GB", gpus=8, count=4) for r in DEMO_REGIONS],
        deployments=[DeploymentSpec(model=m, sku=sku, tp=tp, min_replicas=1, max_replicas=16,
                                    typical_prompt_tokens=1024, typical_output_tokens=256)
                     for m, sku, tp, _ in models],
        workload=SyntheticWorkloadConfig(
            # traffic starts at 10 s: the initial plan is placed (and loaded) before the first request
            seed=seed, start_s=10.0, duration_s=duration_s - 10.0, amplitude=0.7, period_s=duration_s,
            streams=tuple(StreamSpec(model=m, region=r, base_rps=rps) for m, _, _, rps in models
                          for r in DEMO_REGIONS),
            region_phase_s={"eu-west": 0.0, "us-east": duration_s / 4},
            tier_weights={"interactive": 0.8, "batch": 0.2},
            prompt_tokens=LengthDistribution(median_tokens=1024, sigma=0.8, max_tokens=6144),
            output_tokens=LengthDistribution(median_tokens=256, sigma=0.7, max_tokens=1536),
        ),
        policy=policy,
        warm_start_s=120.0,
    )


def scenario_for_trace(trace: Path, fmt: str | None, *, base: Scenario | None, seed: int, policy: str | None,
                       assign: dict[str, dict[str, float]] | None = None, compress: float = 1.0,
                       window: TraceWindow | None = None, max_requests: int | None = None,
                       model: str | None = None) -> Scenario:
    """The scenario to replay `trace` (read as `fmt`, detected when None; cut to `window`, its start
    moved to time 0, and `max_requests`; every request's model set to `model`, other labels drawn from
    `assign`; time compressed by `compress`): `base`'s fleet and policies (the demo's when none), the
    slice's own duration."""
    window = window or TraceWindow()
    # The config's own trace section labels the requests too: its `assign` (each label the command line
    # gives replaces the config's for that label) and its `model`, unless --model names one.
    configured = base.trace if base is not None else None
    if configured is not None:
        assign = {**configured.assign, **(assign or {})}
        model = model if model is not None else configured.model
    try:
        source = TraceSource(path=trace, format=fmt, assign=assign or {}, compress=compress,
                             window_start_s=window.start_s, window_end_s=window.end_s, max_requests=max_requests,
                             model=model)
    except ValidationError as exc:
        raise ScenarioError(validation_message(exc, f"trace {trace}")) from None
    last = 0.0
    models: set[str] = set()
    regions: set[str] = set()
    for request in trace_requests(source, seed):  # validates every line before the run starts
        last = request.arrival_s
        models.add(request.model)
        regions.add(request.region)
    template = base or builtin_demo_scenario(seed=seed)
    deployed = {d.model for d in template.deployments}
    unknown = sorted(models - deployed)
    if unknown:
        raise ScenarioError(f"trace {trace} requests models that no deployment serves: {unknown}; "
                            f"deployed: {sorted(deployed)} (give --config with a matching scenario, or "
                            f"--assign model=NAME to label the trace's requests)")
    update: dict[str, Any] = {"trace": source, "workload": None, "shaped": None,
                              "duration_s": max(last + 1.0, 1.0), "seed": seed, "name": f"trace {trace.name}"}
    if policy is not None:
        update["policy"] = policy
    return Scenario.model_validate({**template.model_dump(), **update})


def context_hint(scenario: Scenario) -> str | None:
    """A hint when some of the scenario's trace requests are longer than the context of the model they
    would be served by (they would be dropped as `longer_than_context`); None when all fit or there is no
    trace. Names the longest context the catalogue offers and how to choose the fleet."""
    if scenario.trace is None:
        return None
    from opscale.perf import default_catalog

    catalog = default_catalog()
    limits = {d.model: scenario.engine.max_model_len or catalog.model(d.model).max_context
              for d in scenario.deployments}
    total = too_long = 0
    for request in trace_requests(scenario.trace, scenario.seed):
        total += 1
        limit = limits.get(request.model)
        too_long += limit is not None and request.prompt_tokens + request.output_tokens > limit
    if not too_long:
        return None
    longest = max(catalog.models, key=lambda m: m.max_context)
    served = ", ".join(f"{m} ({n:,} tokens)" for m, n in sorted(limits.items()))
    dropped = (f"{too_long:,} of {total:,} requests are longer than their model's context and are dropped "
               f"(deployed: {served})")
    if longest.max_context <= min(limits.values()):
        return f"{dropped}; no model in the catalogue has a longer context."
    return (f"{dropped}. Replay the trace on a fleet with a long-context model: write a scenario YAML with its "
            f"hosts and deployments and give it with --config (e.g. {longest.name}, {longest.max_context:,} "
            f"tokens; see the README's \"Simulating a Mooncake trace\").")


def trace_requests(source: TraceSource, seed: int) -> Iterator[Request]:
    """The requests of `source`, labelled and compressed as it says, lazily."""
    from opscale.traces import assign_by_weights, compress_time, read_trace

    requests: Iterator[Request] = source.window().select(read_trace(source.path, source.format), rebase=True,
                                                         max_requests=source.max_requests)
    for offset, (label, weights) in enumerate(sorted(source.assign.items())):
        requests = assign_by_weights(requests, label, weights, seed + offset)
    if source.model is not None:  # one model for every request, whatever the trace or `assign` says
        requests = assign_by_weights(requests, "model", {source.model: 1.0}, seed)
    if source.compress != 1.0:
        requests = compress_time(requests, source.compress)
    return requests

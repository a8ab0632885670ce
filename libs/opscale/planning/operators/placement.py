"""Contention-aware placement of operator replicas on the GPUs of hosts (issue 14 item 5; OpScale's
placement, PAPERS.md §1.6): "interference-aware best fit, opening a GPU only if no SLO-feasible spot
exists; tie-break same device, then intra-server NVLink, then cross-server".

What is placed. Each replica asks for an SM share of `tp` GPUs and memory on each. A replica of tp > 1
or of a whole GPU's SMs takes whole GPUs of its own, on one host (its all-reduce runs over NVLink);
the others (share < 1, tp 1) share GPUs as MPS partitions (`opscale.perf.sm_share`): a GPU holds
partitions whose shares sum to at most 1 and whose memory sums to at most its usable memory.

Best fit with an interference penalty. Partitions are placed largest dominant share (max of SM share
and memory fraction) first, each on the open GPU of least cost, where cost = the room it leaves (SM
fraction + memory fraction) + the GPU-equivalents contention costs there: every partition j on the GPU
runs `share_j x busy_j x (slowdown_j - 1)` of a GPU longer, the slowdown coming from
`sm_share.contention_slowdown` (memory-bound partitions suffer from each other's HBM traffic far more
than compute-bound ones; each stage's HBM-bound fraction from `StageCosts.memory_bound_fraction`, its
busy fraction from the plan's utilisation). Ties go to the nearest GPU to the stages it exchanges
activations with (the same device, then a GPU of the same host, then another host), then the lowest
index.

SLO-feasible spots. The planner prices each partition at the flat co-location allowance
(`SmShareParams.interference`); placement replaces the allowance by the slowdown of the replicas the GPU
actually holds. A stage's replicas share one queue, so its service time is its slowest replica's: S' =
S + busy x (f / allowance - 1), with busy the kernel time of a full batch, and its wait is the M/M/R
Erlang-C quantile at mu' = batch / S' (`queueing`). A spot is feasible when every phase path it touches
(the sum of its stages' wait + service + transfer) still meets the phase's budget, and memory and SMs
fit. A new GPU is opened only when no open GPU is feasible; a replica alone on a GPU runs at slowdown 1,
so opening one never breaks a budget that held.

Communication. Every DAG edge between stages (`OperatorDag.crossings_between`) placed on different GPUs
is priced by `opscale.perf.transfer`: nothing on the same device (both partitions read the buffer in
place: CUDA IPC, an assumption), the `same_host` link (NVLink) within a host, the `between_hosts` link
across hosts; per forward pass, edges x latency + bytes / bandwidth, bytes for the stage's full batch.
A hop goes to the nearest replica of the next stage (locality-aware dispatch among equal queues, an
assumption: the router's capacity-weighted shortest queue may send it further) and a stage's transfer
is its worst replica's. The placed latency of each phase (`PlacedPhase`) swaps the planner's transfer
(priced at `OperatorPlannerConfig.topology`) for this one; while placing, the planner's transfer is
used, and the placed one is checked once every replica has its GPU (`Packing.meets_slo`).

Hosts. The whole-GPU replicas are placed a phase at a time (its stages exchange activations; prefill
and decode do not), round robin over its stages so that a host fills with partners; then the
partitions of both phases together, so that the largest go first and the small fill the gaps. Where the phase's path would break its budget with every edge on the network,
whole-GPU replicas leave a GPU of each host free and each partition stage first puts a replica on every
host holding its partners (while it has replicas): spots on other hosts are taken as infeasible then
(a conservative test: it prices every edge of the path on the network). A
stage of fewer replicas than the hosts its partners span still sends some edges over the network, and
the placed latency says whether the budget survives.

Replication over resharding. Changing a running stage's tp or SM share restarts every replica of it
with new shards; adding replicas at its layout loads only the new ones. OpScale measures resharding at
11x the cost of replicating (PAPERS.md §1.6): `reconfiguration_s` prices both, `grow_stage` picks the
cheapest layout that serves a grown load. The runtime policy re-plans at the running layout
(`OperatorPlanner.plan_partition` with pinned shares).

`pack` is the special case with no stages, budgets or topology: best fit decreasing of shares and memory.
Vector bin packing is NP-hard; best fit decreasing is the usual heuristic, and the lower bound
`ceil(max(sum of shares, sum of memory fractions))` is reported beside it.

Pure arithmetic: no I/O, no clock.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from enum import IntEnum
from typing import TYPE_CHECKING

from opscale.model import Sku
from opscale.perf.operators import Operator
from opscale.perf.sm_share import SmShareParams, contention_slowdown, slowdown
from opscale.perf.transfer import Link, Topology
from opscale.planning.operators.config import OperatorPlannerConfig, Workload
from opscale.planning.operators.costs import StageCosts
from opscale.planning.operators.dag import OperatorDag, Phase
from opscale.planning.operators.queueing import erlang_c, wait_quantile_s

if TYPE_CHECKING:
    from opscale.planning.operators.plan import PhasePlan, StagePlan

_EPS = 1e-9
RESHARD_COST_RATIO = 11.0  # OpScale: resharding a stage costs 11x replicating it (PAPERS.md §1.6)


class Locality(IntEnum):
    """How far apart two GPUs are, nearest first."""

    SAME_DEVICE = 0
    SAME_HOST = 1  # NVLink
    NETWORK = 2


@dataclass(frozen=True, slots=True)
class ReplicaDemand:
    """One replica of a stage: `label` names it (phase/stage#index), `share` of each of its `tp` GPUs'
    SMs, `memory_bytes` on each of them."""

    label: str
    share: float
    memory_bytes: float
    tp: int = 1

    @property
    def whole(self) -> bool:
        return self.tp > 1 or self.share >= 1.0 - _EPS


@dataclass(frozen=True, slots=True)
class GpuSlot:
    """One GPU of host `host` and the replicas on it (a replica of tp > 1 appears on each of its GPUs)."""

    replicas: tuple[str, ...]
    sm_share: float
    memory_bytes: float
    host: int = 0


@dataclass(frozen=True, slots=True)
class PlacedStage:
    """A stage as placed: its slowest replica's contention `slowdown`, the transfer of its outgoing
    edges from where its replicas sit, and its latency (wait + service + transfer) with both."""

    phase: Phase
    name: str
    slowdown: float
    transfer_s: float
    latency_s: float


@dataclass(frozen=True, slots=True)
class PlacedPhase:
    phase: Phase
    budget_s: float
    latency_s: float

    @property
    def meets_budget(self) -> bool:
        return self.latency_s <= self.budget_s * (1 + _EPS)


@dataclass(frozen=True, slots=True)
class Packing:
    """Whole GPUs holding every replica; with a plan, the placed latency of each stage and phase."""

    gpu_memory_bytes: float
    slots: tuple[GpuSlot, ...]
    lower_bound: int
    stages: tuple[PlacedStage, ...] = ()
    phases: tuple[PlacedPhase, ...] = ()

    @property
    def gpus(self) -> int:
        return len(self.slots)

    @property
    def hosts(self) -> int:
        return len({s.host for s in self.slots})

    @property
    def meets_slo(self) -> bool:
        return all(p.meets_budget for p in self.phases)


# --- replication over resharding ----------------------------------------------------------------------

@dataclass(frozen=True, slots=True)
class StageLayout:
    """How a stage runs: `replicas` replicas of `tp` GPUs at SM `share` each."""

    tp: int
    share: float
    replicas: int

    @property
    def gpus(self) -> float:
        return self.tp * self.share * self.replicas


def reconfiguration_s(current: StageLayout, target: StageLayout, replica_load_s: float) -> float:
    """Replica-load seconds to go from `current` to `target` (see the module docstring): each replica
    added at the running tp and share loads once; a change of tp or share reshards every replica of
    the target, each at `RESHARD_COST_RATIO` loads. Removing replicas costs nothing."""
    if not (replica_load_s >= 0 and math.isfinite(replica_load_s)):
        raise ValueError(f"replica_load_s must be a finite number >= 0, got {replica_load_s!r}")
    if (target.tp, target.share) == (current.tp, current.share):
        return max(0, target.replicas - current.replicas) * replica_load_s
    return target.replicas * RESHARD_COST_RATIO * replica_load_s


def grow_stage(current: StageLayout, candidates: Iterable[StageLayout], replica_load_s: float) -> StageLayout:
    """Of `candidates` (layouts that each serve the stage's grown load), the one reached at the least
    reconfiguration cost, then the fewest GPUs: more replicas at the running layout whenever offered."""
    options = list(candidates)
    if not options:
        raise ValueError("candidates: none given; growing a stage needs at least one layout that serves it")
    return min(options, key=lambda t: (reconfiguration_s(current, t, replica_load_s), t.gpus, t.tp))


# --- placement ----------------------------------------------------------------------------------------

@dataclass(slots=True)
class _Replica:
    label: str
    share: float
    memory_bytes: float
    tp: int
    stage: int = -1  # index into the placement's stages; -1: none (`pack`)
    memory_fraction: float = 0.0
    busy: float = 0.0  # fraction of time its kernels run
    slowdown: float = 1.0
    gpu: int = -1
    index: int = 0  # among its stage's replicas

    @property
    def whole(self) -> bool:
        return self.tp > 1 or self.share >= 1.0 - _EPS

    @property
    def memory_load(self) -> float:
        return self.share * self.busy * self.memory_fraction

    @property
    def compute_load(self) -> float:
        return self.share * self.busy * (1.0 - self.memory_fraction)


@dataclass(slots=True)
class _Stage:
    phase: int
    plan: StagePlan
    allowance: float  # the slowdown the planner priced
    partners: tuple[tuple[int, float, float], ...]  # (stage, edges, bytes per full batch) it sends to
    slowdown: float = 1.0  # its slowest placed replica's
    network_s: float = 0.0  # its transfer with every partner on another host


class _Layout:
    """The GPUs and hosts opened so far and what each holds; with stages, the SLO check."""

    def __init__(self, gpu_bytes: float, gpus_per_host: int, stages: Sequence[_Stage] = (),
                 budgets: Sequence[float] = (), sharing: SmShareParams | None = None,
                 quantile: float | None = None) -> None:
        self.gpu_bytes, self.per_host = gpu_bytes, gpus_per_host
        self.stages, self.budgets, self.sharing, self.quantile = stages, budgets, sharing, quantile
        self.sm: list[float] = []
        self.mem: list[float] = []
        self.host: list[int] = []
        self.held: list[list[_Replica]] = []
        self.partitioned: list[int] = []  # GPUs opened for partitions, in opening order
        self.host_free: list[int] = []
        self.stage_gpus: list[set[int]] = [set() for _ in stages]
        self.stage_hosts: list[set[int]] = [set() for _ in stages]

    # -- locality --

    def rank(self, gpu: int, host: int, stage: int) -> int:
        """Distance from a GPU (or, gpu -1, a new one on `host`) to the nearest replica of `stage`; 0
        while the stage has none (every spot is alike then)."""
        if not self.stage_hosts[stage]:
            return Locality.SAME_DEVICE
        if gpu in self.stage_gpus[stage]:
            return Locality.SAME_DEVICE
        return Locality.SAME_HOST if host in self.stage_hosts[stage] else Locality.NETWORK

    def locality(self, r: _Replica, gpu: int, host: int) -> int:
        if r.stage < 0:
            return 0
        return sum(self.rank(gpu, host, t) for t, _, _ in self.stages[r.stage].partners)

    # -- opening GPUs --

    def open(self, r: _Replica, count: int, *, reserve: bool = False, host: int | None = None) -> list[int]:
        """`count` new GPUs on one host for `r`: `host` if given, else the nearest host with room (ties: the
        lowest), else a new one. `reserve` keeps a GPU free on the host where it can (for partitions of
        partner stages), opening a new host before taking a host's last GPU."""
        if host is None:
            hosts = [h for h, free in enumerate(self.host_free) if free >= count + reserve]
            if not hosts and reserve and self.per_host > count:
                hosts = [len(self.host_free)]
                self.host_free.append(self.per_host)
            hosts = hosts or [h for h, free in enumerate(self.host_free) if free >= count]
            if hosts:
                host = min(hosts, key=lambda h: (self.locality(r, -1, h), h))
            else:
                host = len(self.host_free)
                self.host_free.append(self.per_host)
        self.host_free[host] -= count
        opened = []
        for _ in range(count):
            self.sm.append(0.0)
            self.mem.append(0.0)
            self.host.append(host)
            self.held.append([])
            opened.append(len(self.sm) - 1)
        return opened

    def put(self, r: _Replica, gpu: int, share: float) -> None:
        self.sm[gpu] += share
        self.mem[gpu] += r.memory_bytes
        self.held[gpu].append(r)
        r.gpu = gpu
        if r.stage >= 0:
            self.stage_gpus[r.stage].add(gpu)
            self.stage_hosts[r.stage].add(self.host[gpu])

    # -- contention and the SLO --

    def trial(self, r: _Replica, gpu: int) -> tuple[bool, float, list[tuple[_Replica, float]]]:
        """(feasible, GPU-equivalents lost to contention, new slowdowns) of `r` joining `gpu`."""
        if self.sharing is None or r.stage < 0:
            return True, 0.0, []
        here = self.held[gpu]
        mem_load = sum(j.memory_load for j in here)
        cmp_load = sum(j.compute_load for j in here)
        own = contention_slowdown(r.memory_fraction, mem_load, cmp_load, self.sharing)
        changes = [(r, own)]
        lost = r.share * r.busy * (own - 1.0)
        for j in here:
            f = contention_slowdown(j.memory_fraction, mem_load - j.memory_load + r.memory_load,
                                    cmp_load - j.compute_load + r.compute_load, self.sharing)
            changes.append((j, f))
            lost += j.share * j.busy * (f - j.slowdown)
        raised = {}
        for j, f in changes:
            stage = self.stages[j.stage]
            if f > max(stage.slowdown, raised.get(j.stage, 0.0)):
                raised[j.stage] = f
        for p in {self.stages[t].phase for t in raised}:
            members = [(t, raised.get(t, s.slowdown)) for t, s in enumerate(self.stages) if s.phase == p]
            if all(f <= self.stages[t].allowance + _EPS for t, f in members):
                continue  # every stage within what the planner priced: the budget holds
            if sum(self.latency(t, f) for t, f in members) > self.budgets[p] * (1 + _EPS):
                return False, lost, changes
        return True, lost, changes

    def commit(self, changes: list[tuple[_Replica, float]]) -> None:
        for j, f in changes:
            j.slowdown = f
            stage = self.stages[j.stage]
            stage.slowdown = max(stage.slowdown, f)

    def latency(self, t: int, factor: float, transfer_s: float | None = None) -> float:
        """Stage `t`'s wait + service + transfer with its kernels `factor` slower than alone (see the
        module docstring); the planner's transfer unless `transfer_s` is given."""
        stage = self.stages[t]
        plan = stage.plan
        service = plan.service_s + plan.busy_s * (factor / stage.allowance - 1.0)
        transfer = plan.transfer_s if transfer_s is None else transfer_s
        if factor == stage.allowance:
            return plan.wait_s + service + transfer
        mu = plan.batch / service
        load = plan.arrival_rate / mu
        if load >= plan.replicas:
            return math.inf
        c = erlang_c(plan.replicas, load)
        drain = plan.replicas * mu - plan.arrival_rate
        wait = c / drain if self.quantile is None else wait_quantile_s(c, drain, self.quantile)
        return wait + service + transfer


def _place(groups: Sequence[tuple[list[_Replica], bool]], layout: _Layout) -> None:
    """Every replica onto GPUs of `layout` (see the module docstring): group by group (a phase: its
    stages exchange activations), its whole-GPU replicas; then the partitions of every group together,
    best fit decreasing. A group's flag `cover`: its budget does not survive its edges crossing the
    network, so its whole-GPU replicas leave a GPU of each host free and each of its partition stages
    first puts a replica on each host holding its partners (while it has replicas)."""
    gpu_bytes = layout.gpu_bytes

    def dominant_first(d: _Replica) -> tuple[float, str]:
        return -max(d.share, d.memory_bytes / gpu_bytes), d.label

    rest: list[_Replica] = []
    for replicas, cover in groups:
        parts = sorted((r for r in replicas if not r.whole), key=dominant_first)
        for r in replicas:
            if r.whole:
                if r.tp > layout.per_host:
                    raise ValueError(f"replica {r.label!r} spans tp={r.tp} GPUs, more than a host's "
                                     f"gpus_per_host={layout.per_host}")
                for gpu in layout.open(r, r.tp, reserve=cover and bool(parts)):
                    layout.put(r, gpu, 1.0)
        rest.extend(_cover_hosts(parts, layout) if cover else parts)
    rest.sort(key=dominant_first)
    for r in rest:
        gpu, changes = _best_spot(r, layout, layout.partitioned)
        if gpu < 0:
            gpu = layout.open(r, 1)[0]
            layout.partitioned.append(gpu)
            changes = [(r, 1.0)] if r.stage >= 0 and layout.sharing is not None else []
        layout.put(r, gpu, r.share)
        layout.commit(changes)


def _best_spot(r: _Replica, layout: _Layout, gpus: Iterable[int]) -> tuple[int, list[tuple[_Replica, float]]]:
    """The open GPU of `gpus` of least cost (room left + GPU-equivalents lost to contention; ties: the
    nearest to `r`'s partners, then the lowest) where `r` fits and every budget holds; -1 if none."""
    gpu_bytes = layout.gpu_bytes
    best: tuple[float, int, int] | None = None
    best_changes: list[tuple[_Replica, float]] = []
    for g in gpus:
        sm, mem = layout.sm[g], layout.mem[g]
        if sm + r.share > 1 + _EPS or mem + r.memory_bytes > gpu_bytes * (1 + _EPS):
            continue
        left = (1 - sm - r.share) + (gpu_bytes - mem - r.memory_bytes) / gpu_bytes
        if best is not None and left > best[0] + _EPS:
            continue  # cannot win: the penalty is never negative
        ok, lost, changes = layout.trial(r, g)
        if not ok:
            continue
        key = (left + lost, layout.locality(r, g, layout.host[g]), g)
        if best is None or key < best:
            best, best_changes = key, changes
    return (-1, []) if best is None else (best[2], best_changes)


def _cover_hosts(parts: list[_Replica], layout: _Layout) -> list[_Replica]:
    """Puts a replica of each partition stage on each host holding replicas of its partners and none of
    its own (on a partition GPU of that host, else a new GPU there when the host has one free), while the
    stage has replicas left; returns the replicas still to place."""
    left = list(parts)
    for s in sorted({r.stage for r in parts}):
        partners = [t for t, _, _ in layout.stages[s].partners]
        for host in sorted({h for t in partners for h in layout.stage_hosts[t]}):
            if host in layout.stage_hosts[s]:
                continue
            r = next((x for x in left if x.stage == s), None)
            if r is None:
                break
            gpu, changes = _best_spot(r, layout, [g for g in layout.partitioned if layout.host[g] == host])
            if gpu < 0:
                if layout.host_free[host] < 1:
                    continue
                gpu = layout.open(r, 1, host=host)[0]
                layout.partitioned.append(gpu)
                changes = [(r, 1.0)] if layout.sharing is not None else []
            layout.put(r, gpu, r.share)
            layout.commit(changes)
            left.remove(r)
    return left


def _slots(layout: _Layout) -> tuple[GpuSlot, ...]:
    return tuple(GpuSlot(tuple(r.label for r in held), sm, mem, host)
                 for held, sm, mem, host in zip(layout.held, layout.sm, layout.mem, layout.host, strict=True))


def _lower_bound(replicas: Sequence[_Replica], gpu_bytes: float) -> int:
    whole = sum(r.tp for r in replicas if r.whole)
    parts = [r for r in replicas if not r.whole]
    frac = max(sum(r.share for r in parts), sum(r.memory_bytes for r in parts) / gpu_bytes)
    return whole + math.ceil(frac - _EPS)


def _checked(demands: Iterable[ReplicaDemand], gpu_memory_bytes: float) -> list[_Replica]:
    if not gpu_memory_bytes > 0:
        raise ValueError(f"gpu_memory_bytes must be positive, got {gpu_memory_bytes!r}")
    out = []
    for d in demands:
        if not 0 < d.share <= 1 or d.memory_bytes < 0 or d.memory_bytes > gpu_memory_bytes * (1 + _EPS):
            raise ValueError(f"replica {d.label!r}: share {d.share!r} and {d.memory_bytes / 1e9:.2f} GB do not fit "
                             f"one GPU of {gpu_memory_bytes / 1e9:.2f} GB")
        out.append(_Replica(d.label, d.share, d.memory_bytes, d.tp))
    return out


def pack(demands: Iterable[ReplicaDemand], gpu_memory_bytes: float, gpus_per_host: int = 8) -> Packing:
    """Whole-GPU replicas on GPUs of their own, the rest best fit decreasing, with no interference,
    budgets or locality (see the module docstring).

    Raises ValueError naming the replica whose demand no GPU can hold."""
    replicas = _checked(demands, gpu_memory_bytes)
    layout = _Layout(gpu_memory_bytes, gpus_per_host)
    _place([(replicas, False)], layout)
    return Packing(gpu_memory_bytes, _slots(layout), _lower_bound(replicas, gpu_memory_bytes))


class Placer:
    """Places the replicas of an operator plan of `costs`' model on GPUs of `config.hosts` (see the
    module docstring). Memoises per stage shape what does not depend on the load."""

    def __init__(self, costs: StageCosts, dags: Mapping[Phase, OperatorDag], config: OperatorPlannerConfig,
                 sku: Sku) -> None:
        self.costs, self.dags = costs, dags
        self.sharing, self.quantile = config.sharing, config.wait_quantile
        self.gpu_bytes = costs.memory_bytes(1)
        self.gpus_per_host = config.hosts.gpus_per_host or sku.gpus_per_vm
        self.links: dict[Locality, Link] = {
            Locality.SAME_HOST: config.transfer.link(Topology.SAME_HOST, sku.name),
            Locality.NETWORK: config.transfer.link(config.hosts.between_hosts, sku.name)}
        self._fractions: dict[tuple[Phase, frozenset[Operator], int, int, float, float], float] = {}
        self._crossings: dict[tuple[Phase, frozenset[Operator], frozenset[Operator]], tuple[int, int]] = {}

    def place(self, phases: Sequence[PhasePlan], workload: Workload) -> Packing:
        """Every replica of `phases` on GPUs, each phase path still within its budget where a feasible
        spot exists (see the module docstring). Raises ValueError naming a replica no GPU can hold."""
        stages: list[_Stage] = []
        replicas: list[_Replica] = []
        for p_index, phase in enumerate(phases):
            first = len(stages)
            for s in phase.stages:
                stages.append(_Stage(p_index, s, slowdown(s.share, self.sharing), ()))
            network = self.links[Locality.NETWORK]
            for t in range(first, len(stages)):
                stages[t].partners = self._partners(phase.phase, workload, stages, t, range(first, len(stages)))
                stages[t].network_s = sum(e * network.latency_s + b / (network.gbps * 1e9)
                                          for _, e, b in stages[t].partners)
            seq = workload.mean_seq(phase.phase)
            for t in range(first, len(stages)):
                s = stages[t].plan
                if not 0 < s.share <= 1 or s.replica_bytes > self.gpu_bytes * (1 + _EPS):
                    raise ValueError(f"replica {phase.phase.value}/{s.name}: share {s.share!r} and "
                                     f"{s.replica_bytes / 1e9:.2f} GB do not fit one GPU of {self.gpu_bytes / 1e9:.2f} GB")
                fraction = self._fraction(phase.phase, s, seq) if s.share < 1 else 0.0
                busy = min(1.0, s.busy_fraction)
                prefix = f"{phase.phase.value}/{s.name}#"
                replicas.extend(_Replica(f"{prefix}{i}", s.share, s.replica_bytes, s.tp, t, fraction, busy, index=i)
                                for i in range(s.replicas))
        layout = _Layout(self.gpu_bytes, self.gpus_per_host, stages, [p.budget_s for p in phases],
                         self.sharing, self.quantile)
        # A phase at a time (its stages exchange activations; the phases do not), and within it the
        # whole-GPU replicas round robin over its stages, so that a host fills with partners (stage A's
        # replica 0, stage B's replica 0, A's 1, ...), not with one stage alone.
        replicas.sort(key=lambda r: (stages[r.stage].phase, r.index, r.stage))
        groups = []
        for p_index, phase in enumerate(phases):
            members = [t for t, s in enumerate(stages) if s.phase == p_index]
            # Cover hosts only where the path would break its budget with every edge on the network.
            over_network = sum(layout.latency(t, stages[t].allowance, stages[t].network_s) for t in members)
            groups.append(([r for r in replicas if stages[r.stage].phase == p_index],
                           over_network > phase.budget_s * (1 + _EPS)))
        _place(groups, layout)
        placed = []
        totals = [0.0] * len(phases)
        by_stage: list[list[_Replica]] = [[] for _ in stages]
        for r in replicas:
            by_stage[r.stage].append(r)
        for t, stage in enumerate(stages):
            transfer = max(self._transfer_s(layout, r, stage) for r in by_stage[t])
            latency = layout.latency(t, stage.slowdown, transfer)
            totals[stage.phase] += latency
            placed.append(PlacedStage(phases[stage.phase].phase, stage.plan.name, stage.slowdown, transfer, latency))
        return Packing(self.gpu_bytes, _slots(layout), _lower_bound(replicas, self.gpu_bytes), tuple(placed),
                       tuple(PlacedPhase(p.phase, p.budget_s, total) for p, total in zip(phases, totals, strict=True)))

    def _transfer_s(self, layout: _Layout, r: _Replica, stage: _Stage) -> float:
        """Seconds per forward pass of `r`'s outgoing edges to the nearest replica of each partner."""
        total = 0.0
        for t, edges, nbytes in stage.partners:
            rank = layout.rank(r.gpu, layout.host[r.gpu], t)
            if rank != Locality.SAME_DEVICE:
                link = self.links[Locality(rank)]
                total += edges * link.latency_s + nbytes / (link.gbps * 1e9)
        return total

    def _partners(self, phase: Phase, workload: Workload, stages: Sequence[_Stage], t: int,
                  peers: Iterable[int]) -> tuple[tuple[int, float, float], ...]:
        src = stages[t].plan
        out = []
        for u in peers:
            if u == t:
                continue
            key = (phase, src.operators, stages[u].plan.operators)
            found = self._crossings.get(key)
            if found is None:
                c = self.dags[phase].crossings_between(src.operators, stages[u].plan.operators)
                found = self._crossings[key] = (c.edges, c.bytes_per_token)
            if found[0]:
                tokens = src.batch * workload.tokens_per_customer(phase)
                out.append((u, float(found[0]), float(found[1] * tokens)))
        return tuple(out)

    def _fraction(self, phase: Phase, s: StagePlan, seq: float) -> float:
        key = (phase, s.operators, s.tp, s.batch, seq, s.share)
        found = self._fractions.get(key)
        if found is None:
            found = self._fractions[key] = self.costs.memory_bound_fraction(s.operators, phase, s.tp, s.batch,
                                                                            seq, s.share)
        return found

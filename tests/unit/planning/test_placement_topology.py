"""The topology-aware, heterogeneous placement cycle (HeteroScale §3.6): deployment groups stay in one
scheduling domain, high-priority subgroups are spent last and freed first, compatible SKUs are taken
only when the preferred one is full, a blind cycle ignores switches, and no cycle over-commits a host or
books one instance twice."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from opscale.model import InstanceSpec, InstanceState, PoolKey, RdmaPriority, Role
from opscale.planning import DeploymentSpec
from opscale.planning.base import Effects, RolePoolSpec
from opscale.planning.placement import AgentSlot, PlacementResult, place, prestage
from opscale.services.planner import PlannerConfig, PlannerCore

pytestmark = pytest.mark.unit

LOW, MEDIUM, HIGH = RdmaPriority.LOW, RdmaPriority.MEDIUM, RdmaPriority.HIGH
P, D = PoolKey("m", "eu", Role.PREFILL), PoolKey("m", "eu", Role.DECODE)


def split(domain: str = "s1", **pools: dict) -> DeploymentSpec:
    prefill = {"sku": "H20", "min_replicas": 1, **pools.get("prefill", {})}
    decode = {"sku": "H20", "min_replicas": 1, **pools.get("decode", {})}
    return DeploymentSpec(model="m", prefill=RolePoolSpec(**prefill), decode=RolePoolSpec(**decode),
                          scheduling_domain=domain)


def pod(name: str, hosts: int, priority: RdmaPriority = LOW, sku: str = "H20", gpus: int = 8,
        s2: str = "big") -> list[AgentSlot]:
    """`hosts` hosts of `sku` under mini-pod `name` (two hosts a leaf)."""
    return [AgentSlot(f"{name}-{i}", "eu", sku, gpus, frozenset(), f"{name}-leaf{i // 2}", name, s2, priority)
            for i in range(hosts)]


def where(result: PlacementResult, agents: list[AgentSlot]) -> dict[str, dict[Role, int]]:
    """S1 -> instances per role."""
    s1 = {a.agent_id: a.s1 for a in agents}
    out: dict[str, dict[Role, int]] = {}
    for agent_id, specs in result.assignments.items():
        for s in specs:
            roles = out.setdefault(s1[agent_id], {})
            roles[s.role] = roles.get(s.role, 0) + 1
    return out


def again(result: PlacementResult, desired: dict[PoolKey, int], agents: list[AgentSlot], deps: dict,
          **kw: bool) -> PlacementResult:
    """The next cycle, from `result`'s assignments, every instance ready."""
    states = {s.instance_id: InstanceState.READY for specs in result.assignments.values() for s in specs}
    return place(desired, result.assignments, agents, deps, states, result.next_seq, **kw)


def test_a_group_stays_in_one_domain_as_it_grows_and_spills_into_a_new_group_when_full() -> None:
    agents = pod("pod-a", 2) + pod("pod-b", 2) + pod("pod-c", 1)
    deps = {"m": split("s1")}
    first = place({P: 2, D: 4}, {}, agents, deps, {}, 1)
    # best fit: pod-c (8 GPUs) holds the whole request with nothing left over, the pods of 16 would not
    assert where(first, agents) == {"pod-c": {Role.PREFILL: 2, Role.DECODE: 4}}
    grown = again(first, {P: 2, D: 6}, agents, deps)
    assert where(grown, agents) == {"pod-c": {Role.PREFILL: 2, Role.DECODE: 6}} and not grown.unplaced
    # pod-c is full: the growth opens one new group, with both roles, in one other pod
    spilled = again(grown, {P: 4, D: 12}, agents, deps)
    assert not spilled.unplaced
    assert where(spilled, agents) == {"pod-c": {Role.PREFILL: 2, Role.DECODE: 6},
                                      "pod-a": {Role.PREFILL: 2, Role.DECODE: 6}}


def test_the_first_group_needs_a_domain_that_holds_the_minimum_and_says_so() -> None:
    agents = pod("pod-a", 1) + pod("pod-b", 1)
    deps = {"m": split("s1", prefill={"min_replicas": 4}, decode={"min_replicas": 6})}
    result = place({P: 4, D: 6}, {}, agents, deps, {}, 1)
    assert result.unplaced == {P: 4, D: 6}
    assert "no s1 domain of region eu has room for the group's minimum (4 prefill, 6 decode)" in result.reasons[P]
    # the same fleet under one big-pod holds it when the group may span the S2
    s2 = place({P: 4, D: 6}, {}, agents, {"m": split("s2", prefill={"min_replicas": 4},
                                                     decode={"min_replicas": 6})}, {}, 1)
    assert not s2.unplaced


def test_a_high_priority_subgroup_is_used_last_and_freed_first() -> None:
    # the high-priority pod is the better fit (no GPU left over), yet the low one is used while it has room
    agents = pod("pod-low", 2, LOW) + pod("pod-mid", 2, MEDIUM) + pod("pod-high", 1, HIGH)
    deps = {"m": split("s1")}
    first = place({P: 2, D: 6}, {}, agents, deps, {}, 1)
    assert set(where(first, agents)) == {"pod-low"}
    full = again(first, {P: 6, D: 26}, agents, deps)  # 32 instances: low (16), then medium (16)
    assert set(where(full, agents)) == {"pod-low", "pod-mid"} and not full.unplaced
    spill = again(full, {P: 7, D: 27}, agents, deps)  # only high has room now
    assert set(where(spill, agents)) == {"pod-low", "pod-mid", "pod-high"}
    # scale-in frees the high-priority pod before touching the others, then medium before low
    shrunk = again(spill, {P: 6, D: 26}, agents, deps)
    assert set(where(shrunk, agents)) == {"pod-low", "pod-mid"}
    before = where(shrunk, agents)
    after = where(again(shrunk, {P: 4, D: 12}, agents, deps), agents)
    for role in (Role.PREFILL, Role.DECODE):
        if after["pod-low"].get(role, 0) < before["pod-low"].get(role, 0):
            assert after.get("pod-mid", {}).get(role, 0) == 0, "a low-priority instance went before a medium one"
    assert after["pod-low"] == {Role.PREFILL: 3, Role.DECODE: 12}  # low keeps all but one (the mid pod ran out)


def test_in_an_s2_group_prefill_and_decode_share_a_mini_pod_when_they_can() -> None:
    agents = pod("pod-a", 2) + pod("pod-b", 2)  # one big-pod, two mini-pods
    result = place({P: 2, D: 10}, {}, agents, {"m": split("s2")}, {}, 1)
    assert set(where(result, agents)) == {"pod-a"}


def test_compatible_skus_only_when_the_preferred_one_is_full_with_their_own_tp() -> None:
    agents = pod("pod-a", 1, sku="H20") + pod("pod-b", 1, sku="L20", s2="big")
    deps = {"m": split("s2", decode={"compatible_skus": {"L20": 2}})}
    result = place({P: 1, D: 7}, {}, agents, deps, {}, 1)
    decode = [s for specs in result.assignments.values() for s in specs if s.role is Role.DECODE]
    assert {(s.sku, s.tp) for s in decode} == {("H20", 1)}  # 1 P + 7 D fill the H20 host
    more = again(result, {P: 1, D: 9}, agents, deps)
    spilled = [(a, s) for a, specs in more.assignments.items() for s in specs if s.sku == "L20"]
    assert [(a, s.tp, s.role) for a, s in spilled] == [("pod-b-0", 2, Role.DECODE)] * 2
    # prefill lists no compatible SKU: when H20 is full it is short, and says where it looked
    short = again(more, {P: 2, D: 9}, agents, deps)
    assert short.unplaced == {P: 1} and "H20" in short.reasons[P]


def test_blind_placement_ignores_domains_and_priorities() -> None:
    agents = pod("pod-a", 1, HIGH) + pod("pod-b", 1, LOW)
    deps = {"m": split("s1")}
    aware = place({P: 2, D: 2}, {}, agents, deps, {}, 1)
    assert set(where(aware, agents)) == {"pod-b"}
    blind = place({P: 2, D: 2}, {}, agents, deps, {}, 1, topology_aware=False)
    assert set(where(blind, agents)) == {"pod-a", "pod-b"}  # each instance on the emptiest host


def test_requests_of_one_cycle_see_each_others_choices() -> None:
    # two deployments, each able to fill one pod: the bigger picks first, the other takes what is left
    agents = pod("pod-a", 1) + pod("pod-b", 2)
    big = DeploymentSpec(model="big", prefill=RolePoolSpec(sku="H20", tp=2), decode=RolePoolSpec(sku="H20", tp=2),
                         scheduling_domain="s1")
    small = DeploymentSpec(model="small", prefill=RolePoolSpec(sku="H20"), decode=RolePoolSpec(sku="H20"),
                           scheduling_domain="s1")
    desired = {PoolKey("big", "eu", Role.PREFILL): 2, PoolKey("big", "eu", Role.DECODE): 4,
               PoolKey("small", "eu", Role.PREFILL): 2, PoolKey("small", "eu", Role.DECODE): 6}
    result = place(desired, {}, agents, {"big": big, "small": small}, {}, 1)
    assert not result.unplaced
    s1 = {a.agent_id: a.s1 for a in agents}
    homes = {m: {s1[a] for a, specs in result.assignments.items() for s in specs if s.model == m}
             for m in ("big", "small")}
    assert homes == {"big": {"pod-b"}, "small": {"pod-a"}}


def test_prestage_follows_the_group() -> None:
    agents = pod("pod-a", 2) + pod("pod-b", 2) + pod("pod-c", 2)
    deps = {"m": split("s1")}
    current = place({P: 2, D: 14}, {}, agents, deps, {}, 1)
    assert set(where(current, agents)) == {"pod-a"}  # full
    # growth beyond the full group goes to one new group: its weights are staged on one host there
    staged = prestage({D: 18}, current.assignments, agents, deps)
    assert list(staged.values()) == [("m",)] and next(iter(staged)).startswith(("pod-b", "pod-c"))
    assert prestage({D: 14}, current.assignments, agents, deps) == {}


class StaticCounts:
    """A policy that always wants the same counts."""

    name = "counts"

    def __init__(self, desired: dict[PoolKey, int]) -> None:
        self.desired = desired

    def initial_state(self) -> None:
        return None

    def decide(self, observation: object, state: None, now_s: float) -> Effects:
        return Effects(dict(self.desired), None)


def test_the_planner_gives_placement_the_heartbeats_switches_and_priorities() -> None:
    from _builders import heartbeat

    dep = split("s1")
    planner = PlannerCore(StaticCounts({P: 1, D: 1}), [dep], PlannerConfig(topology_aware=True))
    for agent in pod("pod-high", 1, HIGH) + pod("pod-low", 1, LOW):
        hb = heartbeat(agent.agent_id, "eu", sku="H20")
        planner.handle(type(hb)(**{**{f: getattr(hb, f) for f in hb.__dataclass_fields__}, "s0": agent.s0,
                                   "s1": agent.s1, "s2": agent.s2, "rdma_priority": agent.rdma_priority}), 0.0)
    planner.tick(0.0)
    placed = {a for a, specs in planner.plan.assignments.items() if specs}
    assert placed == {"pod-low-0"}


HOSTS = st.lists(st.tuples(st.sampled_from(["pod-a", "pod-b", "pod-c"]), st.sampled_from(list(RdmaPriority)),
                           st.sampled_from(["H20", "L20"]), st.sampled_from([4, 8])), min_size=1, max_size=8)


@settings(max_examples=150, deadline=None)
@given(hosts=HOSTS, counts=st.lists(st.integers(0, 10), min_size=6, max_size=6),
       domain=st.sampled_from(["s1", "s2", "none"]), aware=st.booleans())
def test_no_cycle_over_commits_a_host_or_books_an_instance_twice(
        hosts: list[tuple[str, RdmaPriority, str, int]], counts: list[int], domain: str, aware: bool) -> None:
    agents = [AgentSlot(f"h{i}", "eu", sku, gpus, frozenset(), f"{s1}-l", s1, "big", prio)
              for i, (s1, prio, sku, gpus) in enumerate(hosts)]
    deps = {"m": DeploymentSpec(model="m", prefill=RolePoolSpec(sku="H20", tp=2, min_replicas=0),
                                decode=RolePoolSpec(sku="H20", min_replicas=0, compatible_skus={"L20": 2}),
                                scheduling_domain=domain),
            "u": DeploymentSpec(model="u", sku="L20", tp=4, compatible_skus=["H20"])}
    keys = [P, D, PoolKey("u", "eu")]
    result = PlacementResult({}, 1, {})
    for step in (counts[:3], counts[3:]):  # a cycle, then another from its result: growth and shrinkage
        desired = dict(zip(keys, step, strict=True))
        result = again(result, desired, agents, deps, topology_aware=aware)
        ids = [s.instance_id for specs in result.assignments.values() for s in specs]
        assert len(ids) == len(set(ids))
        for agent in agents:
            specs = result.assignments[agent.agent_id]
            assert sum(s.gpus for s in specs) <= agent.gpus_total
            for s in specs:  # each on a SKU its pool allows, with that SKU's tp
                assert (s.sku, s.tp) in deps[s.model].pool(s.role).choices() and s.sku == agent.sku
        for key, want in desired.items():
            placed = sum(1 for specs in result.assignments.values() for s in specs
                         if s.model == key.model and s.role == key.role)
            assert placed + result.unplaced.get(key, 0) == want
            assert (key in result.unplaced) == (key in result.reasons)


def test_instances_already_running_stay_where_they_are() -> None:
    agents = pod("pod-a", 1) + pod("pod-b", 1)
    current = {"pod-b-0": (InstanceSpec("m-eu-prefill-00001", "m", "H20", 1, Role.PREFILL),)}
    result = place({P: 1, D: 2}, current, agents, {"m": split("s1")}, {}, 2)
    assert where(result, agents) == {"pod-b": {Role.PREFILL: 1, Role.DECODE: 2}}

"""The planner running `heteroscale` on a disaggregated deployment: the engines' measured figures reach
the policy, both pools scale together, and a soft scale-in withdraws instances (still assigned, still
running), restores them at once without a new load when the load comes back, or stops them after the
window."""

from __future__ import annotations

import pytest

from opscale.model import InstanceState, InstanceStatus, PoolKey, Role, TierSpec
from opscale.planning import DeploymentSpec, make_planning_policy
from opscale.planning.base import RolePoolSpec
from opscale.services.events import AgentHeartbeat, RouterLoad
from opscale.services.planner import PlannerConfig, PlannerCore

pytestmark = pytest.mark.unit

DEP = DeploymentSpec(model="m", prefill=RolePoolSpec(sku="H100-80GB", min_replicas=1, max_replicas=16),
                     decode=RolePoolSpec(sku="H20", min_replicas=1, max_replicas=48))
PREFILL, DECODE = PoolKey("m", "eu", Role.PREFILL), PoolKey("m", "eu", Role.DECODE)
TIERS = {"chat": TierSpec("chat", ttft_slo_s=1.0, tbt_slo_s=0.05)}
AGENTS = {"ap": "H100-80GB", "ad": "H20"}


def _rps(*_: object, **__: object) -> float:
    return 1.0


def planner(**params: object) -> PlannerCore:
    fields: dict[str, object] = {"decode_tps_per_instance": 100.0, "pd_ratio": "1:3", "period_s": 10.0,
                                 "scale_out_cooldown_s": 0.0, "scale_in_cooldown_s": 0.0,
                                 "scale_in_step_fraction": 1.0, "soft_scale_in_s": 60.0, **params}
    policy = make_planning_policy("heteroscale", [DEP], _rps, tiers=TIERS, **fields)
    return PlannerCore(policy, [DEP], PlannerConfig(interval_s=10.0))


def beat(core: PlannerCore, now_s: float, decode_tps: float, *, loading: frozenset[str] = frozenset(),
         sm_activity: float = 0.3) -> None:
    """Every agent reports its assigned instances ready (but `loading`); the decode instances share
    `decode_tps` evenly, withdrawn ones included (they still finish their requests)."""
    specs = [s for specs in core.plan.assignments.values() for s in specs]
    decoders = max(1, sum(1 for s in specs if s.role is Role.DECODE))
    for agent, sku in AGENTS.items():
        statuses = tuple(InstanceStatus(
            s.instance_id, s.model, s.sku, s.tp, s.role,
            InstanceState.LOADING if s.instance_id in loading else InstanceState.READY,
            busy_frac=0.9, sm_activity=sm_activity, decode_tps=decode_tps / decoders if s.role is Role.DECODE else 0.0,
            prefill_tps=500.0 if s.role is Role.PREFILL else 0.0,
            prefill_missed_tps=300.0 if s.role is Role.PREFILL else 0.0)
            for s in core.plan.assignments.get(agent, ()))
        core.handle(AgentHeartbeat(agent, "eu", sku, 64, f"{agent}:1", core.plan.epoch, now_s, statuses), now_s)


def step(core: PlannerCore, now_s: float, decode_tps: float) -> None:
    beat(core, now_s, decode_tps)
    core.tick(now_s)


def ids(core: PlannerCore, role: Role) -> set[str]:
    return {s.instance_id for s in core.plan.instances().values() if s.role is role}


def counts(core: PlannerCore) -> tuple[int, int]:
    """Discoverable (prefill, decode) instances of the plan."""
    found = [s.role for s in core.plan.discoverable().values()]
    return found.count(Role.PREFILL), found.count(Role.DECODE)


def test_the_pools_observation_carries_the_engines_measured_figures() -> None:
    core = planner()
    step(core, 0.0, 0.0)
    beat(core, 5.0, 900.0, sm_activity=0.25)
    obs = core.observe(5.0)
    assert obs.pools[DECODE].decode_tps == pytest.approx(900.0)
    assert obs.pools[PREFILL].prefill_tps == pytest.approx(500.0)
    assert obs.pools[PREFILL].prefill_missed_tps == pytest.approx(300.0)
    assert obs.pools[DECODE].sm_activity == pytest.approx(0.25) and obs.pools[DECODE].busy_frac == pytest.approx(0.9)
    # the routers' demand is theirs, untouched by the engines' figures
    core.handle(RouterLoad("r0", "eu", 5.0, {}, 5.0, {"m": 10}, {"m": 1000}, {"m": 100}), 5.0)
    assert core.observe(5.0).pools[DECODE].output_tokens_per_s > 0
    assert core.observe(5.0).pools[DECODE].decode_tps == pytest.approx(900.0)


def test_both_pools_scale_together_on_decode_tps() -> None:
    core = planner()
    step(core, 0.0, 0.0)
    assert counts(core) == (1, 1)  # the min split
    step(core, 10.0, 1200.0)
    assert counts(core) == (3, 9)


def _scaled_in(core: PlannerCore) -> tuple[set[str], set[str]]:
    """Scale out to 3P/9D, then in to 1P/3D; the instance ids before, and those withdrawn."""
    step(core, 0.0, 0.0)
    step(core, 10.0, 1200.0)
    step(core, 20.0, 1200.0)
    before = set(core.plan.instances())
    step(core, 30.0, 400.0)
    return before, set(core.plan.withdrawn)


def test_a_soft_scale_in_withdraws_instances_that_keep_running() -> None:
    core = planner()
    before, withdrawn = _scaled_in(core)
    assert counts(core) == (1, 3)
    assert len(withdrawn) == 8 and withdrawn <= before
    assert set(core.plan.instances()) == before  # still assigned: their agents keep them running
    obs = core.observe(31.0)
    assert (obs.pools[PREFILL].ready, obs.pools[DECODE].ready) == (1, 3)
    assert (obs.pools[PREFILL].withdrawn, obs.pools[DECODE].withdrawn) == (2, 6)


def test_a_withdrawn_instance_is_restored_at_once_without_a_new_load() -> None:
    core = planner()
    before, _ = _scaled_in(core)
    next_seq = core._next_seq
    step(core, 40.0, 1200.0)  # the load is back within the window
    assert counts(core) == (3, 9)
    assert core.plan.withdrawn == {}
    assert set(core.plan.instances()) == before  # the same instances: nothing new to load
    assert core._next_seq == next_seq  # no instance id was drawn for a new one


def test_a_withdrawn_instance_is_stopped_after_the_window() -> None:
    core = planner()
    before, withdrawn = _scaled_in(core)
    step(core, 60.0, 400.0)
    assert set(core.plan.withdrawn) == withdrawn  # still watched
    step(core, 90.0, 400.0)  # 60 s after the scale-in: unassigned, so drained and stopped
    assert core.plan.withdrawn == {}
    assert set(core.plan.instances()) == before - withdrawn
    assert counts(core) == (1, 3)


def test_without_a_window_a_scale_in_unassigns_at_once() -> None:
    core = planner(soft_scale_in_s=0.0)
    step(core, 0.0, 0.0)
    step(core, 10.0, 1200.0)
    step(core, 20.0, 1200.0)
    step(core, 30.0, 400.0)
    assert core.plan.withdrawn == {} and len(core.plan.instances()) == 4


def test_the_plan_asks_routers_to_gate_the_ready_ratio() -> None:
    core = planner(ready_ratio_tolerance=0.2)
    step(core, 0.0, 0.0)
    assert core.plan.ready_ratio_tolerance == {"m": 0.2}

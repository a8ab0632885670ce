"""SageServe's NIW deferral on whole simulated runs (fixed seeds): the router holds batch work while
interactive work needs the room and feeds it as room frees, so adding batch load leaves interactive SLO
attainment where it was; every held request ends dispatched or refused, none lost; and result.json
reports the batch tier's deadline attainment. Behaviour is asserted, not exact figures."""

from __future__ import annotations

import random
from pathlib import Path
from typing import Any

import pytest

from opscale.experiments.runner import run_scenario
from opscale.experiments.scenario import HostGroup, Scenario, TraceSource
from opscale.model import Request, TierModel
from opscale.planning import DeploymentSpec
from opscale.traces import write_csv_trace

pytestmark = pytest.mark.sim

MODEL = "Llama-3-8B"
SKU = "H100-80GB"
FIRST_ARRIVAL_S = 12.0  # after the planner's first plan (10 s)
HOLDING = {"hold_order": "tier_priority", "hold_order_params": {"deadline_fraction": 0.8},
           "batch_admission_share": 0.3, "max_pending_per_model": 100_000}


def _tiers(batch_deadline_s: float) -> list[TierModel]:
    return [TierModel(name="interactive", ttft_slo_s=2.0, tbt_slo_s=0.1),
            TierModel(name="batch", ttft_slo_s=batch_deadline_s, tbt_slo_s=1.0, deadline_s=batch_deadline_s,
                      priority=1)]


def _trace(path: Path, *, seconds: float, interactive_rps: float, batch_rps: float, seed: int) -> int:
    rng = random.Random(seed)
    requests: list[Request] = []
    for tier, rps in (("interactive", interactive_rps), ("batch", batch_rps)):
        t = FIRST_ARRIVAL_S
        while rps > 0 and t < seconds:
            t += rng.expovariate(rps)
            requests.append(Request(f"{tier}-{len(requests)}", MODEL, tier, "eu", t,
                                    rng.randint(512, 2048), rng.randint(64, 256)))
    requests.sort(key=lambda r: r.arrival_s)
    return write_csv_trace(path, requests)


def _run(trace: Path, *, router: dict[str, Any], batch_deadline_s: float, duration_s: float,
         drain_s: float) -> dict[str, Any]:
    scenario = Scenario(
        name=trace.stem, seed=3, duration_s=duration_s, drain_s=drain_s, tiers=_tiers(batch_deadline_s),
        trace=TraceSource(path=trace), router=router,
        hosts=[HostGroup(region="eu", sku=SKU, gpus=8, count=1)],
        deployments=[DeploymentSpec(model=MODEL, sku=SKU, tp=1, min_replicas=2, max_replicas=2)],
        policy="static", policy_params={"replicas": 2}, warm_start_s=60.0)
    return run_scenario(scenario).result


def _accounted(result: dict[str, Any], sent: int) -> None:
    """Every request ends completed or dropped with a named cause: none is lost in the hold queue."""
    assert result["requests"] == sent
    assert result["completed"] + result["dropped"] == sent
    assert sum(result["dropped_by_cause"].values()) == result["dropped"]


def test_holding_batch_keeps_interactive_slo_and_meets_the_batch_deadline(tmp_path: Path) -> None:
    alone, mixed = tmp_path / "interactive.csv", tmp_path / "mixed.csv"
    # Interactive load the two instances serve within its SLO, and ten times as much batch work: at once,
    # it crowds interactive requests out; held, it fills the room they leave and drains well within its
    # deadline after the traffic ends.
    sent_alone = _trace(alone, seconds=150.0, interactive_rps=6.0, batch_rps=0.0, seed=5)
    sent_mixed = _trace(mixed, seconds=150.0, interactive_rps=6.0, batch_rps=60.0, seed=5)
    kwargs: dict[str, Any] = dict(batch_deadline_s=900.0, duration_s=155.0, drain_s=1200.0)
    base, held = _run(alone, router=HOLDING, **kwargs), _run(mixed, router=HOLDING, **kwargs)
    at_once = _run(mixed, router={"max_pending_per_model": 100_000}, **kwargs)
    for result, sent in ((base, sent_alone), (held, sent_mixed), (at_once, sent_mixed)):
        _accounted(result, sent)
        assert result["dropped"] == 0
    interactive = held["tiers"]["interactive"]
    assert interactive["slo_attainment"] >= base["tiers"]["interactive"]["slo_attainment"] - 0.01
    assert at_once["tiers"]["interactive"]["slo_attainment"] < interactive["slo_attainment"] - 0.2
    batch = held["tiers"]["batch"]
    assert batch["deadline_s"] == 900.0 and batch["deadline_attainment"] == 1.0
    assert "deadline_attainment" not in interactive


def test_batch_that_cannot_be_served_by_its_deadline_ends_dispatched_or_refused_never_lost(tmp_path: Path) -> None:
    trace = tmp_path / "overload.csv"
    # Far more batch than two instances serve in its 60 s deadline. Without an admission limit a held
    # request is dispatched at its latest start (0.8 x 60 s) at the latest, and may finish late; under an
    # admission limit the rest is refused at the deadline, with its cause.
    sent = _trace(trace, seconds=90.0, interactive_rps=4.0, batch_rps=90.0, seed=9)
    kwargs: dict[str, Any] = dict(batch_deadline_s=60.0, duration_s=95.0, drain_s=300.0)
    late = _run(trace, router=HOLDING, **kwargs)
    limited = _run(trace, router={**HOLDING, "max_outstanding_tokens_per_instance": 60_000}, **kwargs)
    for result in (late, limited):
        _accounted(result, sent)
        assert result["tiers"]["batch"]["deadline_attainment"] < 1.0
        assert result["tiers"]["interactive"]["dropped"] == 0
    assert late["dropped"] == 0
    assert limited["tiers"]["batch"]["dropped"] > 0
    assert set(limited["dropped_by_cause"]) <= {"no_capacity_in_time", "unfinished"}

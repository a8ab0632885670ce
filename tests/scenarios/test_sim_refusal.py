"""A request that no instance of its model can ever hold (prompt + output beyond the model's context)
is refused with status `rejected` and counted as dropped; the requests around it are unaffected."""

from __future__ import annotations

from pathlib import Path

import pytest
from _sim_scenarios import MODEL, REGION, Phase, RecordingCollector, one_pool_scenario, phase_requests

from opscale.experiments import runner
from opscale.experiments.runner import run_scenario
from opscale.experiments.scenario import context_hint
from opscale.model import Request
from opscale.perf import default_catalog
from opscale.traces import write_csv_trace

pytestmark = pytest.mark.sim


def test_request_beyond_max_context_is_rejected_and_counted(tmp_path: Path) -> None:
    max_context = default_catalog().model(MODEL).max_context
    requests = list(phase_requests(Phase(10.0, 120.0, 3.0), seed=31))
    neighbour = requests[len(requests) // 2]
    too_long = Request("too-long", MODEL, "interactive", REGION, neighbour.arrival_s, max_context - 100, 200)
    requests.insert(len(requests) // 2 + 1, too_long)
    trace = tmp_path / "too_long.csv"
    write_csv_trace(trace, requests)

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(runner, "RunCollector", RecordingCollector)
        run = run_scenario(one_pool_scenario(trace, 140.0, name="one request too long", seed=31))
    collector = run.collector
    assert isinstance(collector, RecordingCollector)

    assert collector.status_of["too-long"] == "rejected"
    assert {s for rid, s in collector.status_of.items() if rid != "too-long"} == {"ok"}
    assert len(collector.status_of) == len(requests)
    assert run.result["dropped"] == 1
    assert run.result["dropped_by_cause"] == {"longer_than_context": 1}
    assert run.result["tiers"]["interactive"]["dropped"] == 1
    assert run.result["completed"] == len(requests) - 1
    hint = context_hint(run.scenario)
    assert hint is not None and hint.startswith("1 of ") and "--config" in hint
    refusals = [d for d in collector.decisions if d["message"].startswith("too-long refused")]
    assert len(refusals) == 1 and str(max_context) in refusals[0]["message"]

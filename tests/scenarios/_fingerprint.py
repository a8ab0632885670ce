"""A run's fingerprint, for tests that compare whole runs. Apart from _sim_scenarios so that a child
process can compute one importing nothing else of the tests (that module subclasses RunCollector,
which the compiled build does not allow)."""

from __future__ import annotations

import dataclasses
import json

from opscale.experiments.runner import RunResult


def fingerprint(run: RunResult) -> str:
    """Everything a run reports except its wall-clock time, as canonical JSON: the result, every
    logged decision and the timeline. Equal strings mean equal runs (NaN included, unlike ==)."""
    result = {k: v for k, v in run.result.items() if k != "wall_s"}
    timeline = [dataclasses.asdict(p) for p in run.collector.timeline]
    return json.dumps({"result": result, "decisions": run.collector.decisions, "timeline": timeline},
                      sort_keys=True)

"""Request records reach the aggregator in batches (see opscale.runtime.sim.world), yet each at the time
and in the place among the other events that a bus event of its own would have had, and none that is
due is left behind when the loop stops."""

from __future__ import annotations

from typing import Any

import pytest

from opscale.experiments import runner
from opscale.experiments.scenario import builtin_demo_scenario
from opscale.model import RequestOutcome
from opscale.services.actions import Action
from opscale.services.aggregator import AggregatorCore
from opscale.services.events import Event, RequestFinished

pytestmark = pytest.mark.sim


class _RecordingAggregator(AggregatorCore):
    """The real aggregator, also noting what reached it and the time it was handled at."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.log: list[tuple[Event | None, float]] = []  # None: a tick

    def handle(self, event: Event, now_s: float) -> list[Action]:
        self.log.append((event, now_s))
        return super().handle(event, now_s)

    def tick(self, now_s: float) -> list[Action]:
        self.log.append((None, now_s))
        return super().tick(now_s)


def test_records_reach_the_aggregator_at_their_bus_delivery_times_in_order_and_none_is_left_behind(
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(runner, "AggregatorCore", _RecordingAggregator)
    scenario = builtin_demo_scenario(seed=3, duration_s=150.0)
    world, collector = runner.build_world(scenario)
    outcomes: list[RequestOutcome] = []
    original = collector.outcome
    monkeypatch.setattr(collector, "outcome", lambda o: (outcomes.append(o), original(o)))
    world.start(runner.requests_of(scenario), until_s=scenario.duration_s)
    stop_s = 97.3  # mid-run: records due by then have been delivered when the loop stops
    world.loop.run(stop_s)

    aggregator = world.aggregator
    assert isinstance(aggregator, _RecordingAggregator)
    latency_s = world.config.bus_latency_s
    records = [(e.outcome, t) for e, t in aggregator.log if isinstance(e, RequestFinished)]
    finished = [o for o in outcomes if o.finish_s is not None]
    assert finished and all(o.status == "ok" for o in finished)
    due = [o for o in finished if o.finish_s + latency_s <= stop_s]  # type: ignore[operator]
    assert [o for o, _ in records] == due  # every due record, in the order they were published
    assert all(t == o.finish_s + latency_s for o, t in records)  # type: ignore[operator]
    times = [t for _, t in aggregator.log]
    assert times == sorted(times)  # interleaved with heartbeats and ticks in time order
    assert any(e is None for e, _ in aggregator.log)

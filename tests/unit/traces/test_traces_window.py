"""TraceWindow: the one definition of a replayed slice (`opscale trace`, `simulate`, `loadgen replay`)."""

from __future__ import annotations

import math

import pytest
from hypothesis import given
from hypothesis import strategies as st

from opscale.model import Request
from opscale.traces import TraceWindow

pytestmark = pytest.mark.unit


def _trace(arrivals: list[float]) -> list[Request]:
    return [Request(f"r{i}", "m", "interactive", "eu", t, 10, 10) for i, t in enumerate(sorted(arrivals))]


@given(st.lists(st.floats(0, 1000, allow_nan=False), max_size=60), st.floats(0, 1000), st.floats(0, 1000),
       st.booleans())
def test_select_keeps_exactly_the_arrivals_in_the_window(arrivals: list[float], a: float, b: float,
                                                         rebase: bool) -> None:
    start, end = min(a, b), max(a, b) + 1.0
    trace = _trace(arrivals)
    kept = list(TraceWindow(start, end).select(trace, rebase=rebase))
    expected = [r for r in trace if start <= r.arrival_s < end]
    assert [r.request_id for r in kept] == [r.request_id for r in expected]
    offset = start if rebase else 0.0
    assert all(math.isclose(k.arrival_s, e.arrival_s - offset, abs_tol=1e-9) for k, e in zip(kept, expected, strict=True))


def test_open_bounds_and_a_request_cap() -> None:
    trace = _trace([float(t) for t in range(10)])
    assert len(list(TraceWindow().select(trace))) == 10
    assert [r.arrival_s for r in TraceWindow(start_s=7.0).select(trace, rebase=True)] == [0.0, 1.0, 2.0]
    assert [r.arrival_s for r in TraceWindow(end_s=3.0).select(trace)] == [0.0, 1.0, 2.0]
    assert len(list(TraceWindow(2.0, None).select(trace, max_requests=4))) == 4


@pytest.mark.parametrize("text, window", [(None, TraceWindow()), ("", TraceWindow()), ("600:", TraceWindow(600.0)),
                                          (":3600", TraceWindow(None, 3600.0)), (" 1:2 ", TraceWindow(1.0, 2.0))])
def test_parse(text: str | None, window: TraceWindow) -> None:
    assert TraceWindow.parse(text) == window
    assert TraceWindow.parse(window.describe()) == window


@pytest.mark.parametrize("text, message", [("600", "expected START:END"), ("5:5", "END (5 s) must be after START"),
                                           ("x:9", "START 'x' is not a number"), ("1:inf", "END must be a finite"),
                                           ("-1:5", "START must be a finite number >= 0")])
def test_parse_names_the_option_and_the_problem(text: str, message: str) -> None:
    with pytest.raises(ValueError, match="--window") as err:
        TraceWindow.parse(text)
    assert message in str(err.value)

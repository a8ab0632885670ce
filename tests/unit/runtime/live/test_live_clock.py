"""Clocks: the wall clock speaks epoch seconds; the virtual clock only moves forward."""

from __future__ import annotations

import pytest

from opscale.runtime.clock import Clock, VirtualClock, WallClock

pytestmark = pytest.mark.unit


def test_wall_clock_is_epoch_seconds() -> None:
    clock = WallClock()
    assert isinstance(clock, Clock)
    assert clock.now_s() > 1_600_000_000  # after September 2020: epoch seconds, not a monotonic counter


def test_virtual_clock_moves_forward_only() -> None:
    clock = VirtualClock(10.0)
    assert isinstance(clock, Clock)
    assert clock.advance(2.5) == 12.5 and clock.now_s() == 12.5
    assert clock.set(20) == 20.0 and clock.set(20.0) == 20.0
    with pytest.raises(ValueError, match="cannot move backwards: now_s=19.0 < current 20.0"):
        clock.set(19.0)
    with pytest.raises(ValueError, match="delta_s must be a finite number >= 0, got -1"):
        clock.advance(-1)
    with pytest.raises(ValueError, match="start_s must be a finite number, got inf"):
        VirtualClock(float("inf"))
    with pytest.raises(ValueError, match="now_s must be a finite number, got True"):
        clock.set(True)

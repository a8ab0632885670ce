"""The token bucket's law: when it admits (a take succeeds), everything taken and charged so far, less
what was refunded, is at most rate * elapsed + burst, whatever the sequence of takes, charges and
refunds (a charge may overshoot, as a request's output tokens do, but then nothing is admitted until the
debt is repaid); and the wait it answers is exactly the time until the bucket has room."""

from __future__ import annotations

import math

import pytest
from hypothesis import given
from hypothesis import strategies as st

from opscale.routing.token_bucket import TokenBucket

pytestmark = pytest.mark.unit

rates = st.floats(0.01, 1000.0)
bursts = st.floats(1.0, 1000.0)
# (gap since the previous call, what to do, amount)
steps = st.lists(st.tuples(st.floats(0.0, 10.0), st.sampled_from(["take", "charge", "refund"]),
                           st.floats(0.0, 50.0)), max_size=60)


@given(rates, bursts, steps)
def test_never_admits_more_than_rate_times_elapsed_plus_burst(rate: float, burst: float,
                                                             ops: list[tuple[float, str, float]]) -> None:
    bucket = TokenBucket(rate, burst, now_s=0.0)
    now, admitted, refunded = 0.0, 0.0, 0.0
    for gap, op, amount in ops:
        now += gap
        if op == "take":
            if bucket.try_take(amount, now) == 0.0:
                admitted += amount
                assert admitted - refunded <= rate * now + burst + 1e-6 * (1 + admitted)
        elif op == "charge":
            bucket.charge(amount, now)
            admitted += amount
        else:
            # only what was admitted can come back (a request refused downstream)
            amount = min(amount, admitted - refunded)
            bucket.refund(amount, now)
            refunded += amount
        assert bucket.level(now) <= burst


@given(rates, bursts, st.floats(0.0, 1000.0), st.floats(0.0, 100.0))
def test_the_wait_answered_is_when_the_take_succeeds(rate: float, burst: float, drained: float,
                                                     amount: float) -> None:
    bucket = TokenBucket(rate, burst, now_s=0.0)
    bucket.charge(drained, 0.0)
    wait = bucket.try_take(amount, 0.0)
    if amount > burst:
        assert wait == math.inf
        return
    if wait > 0:
        if wait * 0.999 < wait:  # a time before it exists (not for a subnormal wait, which rounds onto it)
            assert bucket.try_take(amount, wait * 0.999) > 0  # not before
        assert bucket.try_take(amount, wait * (1 + 1e-9) + 1e-9) == 0.0  # from then on


def test_worked_example_of_the_module_docstring() -> None:
    bucket = TokenBucket(1.0, 2.0, now_s=0.0)
    assert bucket.try_take(1, 0.0) == 0.0 and bucket.try_take(1, 0.0) == 0.0
    assert bucket.try_take(1, 0.5) == pytest.approx(0.5)
    assert bucket.try_take(1, 1.0) == 0.0


def test_debt_is_waited_out_and_a_refund_never_overfills() -> None:
    bucket = TokenBucket(10.0, 100.0, now_s=0.0)
    bucket.charge(300.0, 0.0)  # output tokens learnt after the fact: 200 in debt
    assert bucket.wait_s(1, 0.0) == pytest.approx(20.1)
    bucket.refund(1000.0, 0.0)
    assert bucket.level(0.0) == 100.0


def test_a_clock_that_steps_back_refills_nothing() -> None:
    bucket = TokenBucket(1.0, 5.0, now_s=10.0)
    bucket.charge(5.0, 10.0)
    assert bucket.level(9.0) == 0.0 and bucket.level(12.0) == pytest.approx(2.0)


@pytest.mark.parametrize(("rate", "burst", "field"), [(0.0, 1.0, "rate_per_s"), (math.nan, 1.0, "rate_per_s"),
                                                      (1.0, 0.5, "burst"), (1.0, math.inf, "burst")])
def test_bad_parameters_are_refused_by_name(rate: float, burst: float, field: str) -> None:
    with pytest.raises(ValueError, match=field):
        TokenBucket(rate, burst)

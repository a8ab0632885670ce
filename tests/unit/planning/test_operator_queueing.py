"""Erlang-B/C of the operator planner against their closed forms, and the M/M/R wait's laws."""

from __future__ import annotations

import math
from fractions import Fraction

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from opscale.planning.operators import erlang_b, erlang_c, mmr_wait

pytestmark = pytest.mark.unit


def closed_form_c(servers: int, load: Fraction) -> Fraction:
    """The textbook Erlang-C, in exact rationals: (a^R/R!)(R/(R-a)) / (sum_{k<R} a^k/k! + that)."""
    top = load**servers / math.factorial(servers) * Fraction(servers) / (servers - load)
    return top / (sum(load**k / math.factorial(k) for k in range(servers)) + top)


@settings(max_examples=200, deadline=None)
@given(servers=st.integers(1, 60), utilisation=st.fractions(Fraction(1, 1000), Fraction(999, 1000)))
def test_erlang_c_matches_its_closed_form(servers: int, utilisation: Fraction) -> None:
    load = utilisation * servers
    exact = closed_form_c(servers, load)
    assert erlang_c(servers, float(load)) == pytest.approx(float(exact), rel=1e-9, abs=1e-15)


@settings(max_examples=100, deadline=None)
@given(servers=st.integers(1, 40), load=st.fractions(Fraction(0), Fraction(80)))
def test_erlang_b_matches_its_closed_form(servers: int, load: Fraction) -> None:
    terms = [load**k / math.factorial(k) for k in range(servers + 1)]
    assert erlang_b(servers, float(load)) == pytest.approx(float(terms[-1] / sum(terms)), rel=1e-9, abs=1e-15)


def test_erlang_c_stays_finite_where_the_closed_form_overflows() -> None:
    # 500 servers at 95%: a^R / R! overflows a float, the recursion does not.
    c = erlang_c(500, 475.0)
    assert 0.0 < c < 1.0


@settings(max_examples=100, deadline=None)
@given(servers=st.integers(1, 50), utilisation=st.floats(0.01, 0.99), mu=st.floats(0.1, 100.0))
def test_more_replicas_never_wait_longer(servers: int, utilisation: float, mu: float) -> None:
    lam = utilisation * servers * mu
    now, more = mmr_wait(servers, lam, mu), mmr_wait(servers + 1, lam, mu)
    assert more.p_wait <= now.p_wait + 1e-12
    assert more.mean_wait_s <= now.mean_wait_s + 1e-12
    assert more.quantile_wait_s <= now.quantile_wait_s + 1e-12


def test_a_saturated_stage_waits_forever() -> None:
    q = mmr_wait(2, 10.0, 5.0)
    assert q.utilisation == 1.0 and q.p_wait == 1.0
    assert math.isinf(q.mean_wait_s) and math.isinf(q.quantile_wait_s)
    assert erlang_c(3, 4.0) == 1.0


def test_mm1_wait_is_the_textbook_one() -> None:
    # M/M/1: P(wait) = rho, E[W] = rho / (mu - lam); the 0.99 quantile ln(rho / 0.01) / (mu - lam).
    q = mmr_wait(1, 8.0, 10.0, quantile=0.99)
    assert q.p_wait == pytest.approx(0.8)
    assert q.mean_wait_s == pytest.approx(0.8 / 2.0)
    assert q.quantile_wait_s == pytest.approx(math.log(80) / 2.0)


@pytest.mark.parametrize(("kwargs", "field"), [
    ({"servers": 0, "arrival_rate": 1.0, "service_rate": 1.0}, "servers"),
    ({"servers": 1, "arrival_rate": -1.0, "service_rate": 1.0}, "arrival_rate"),
    ({"servers": 1, "arrival_rate": 1.0, "service_rate": 0.0}, "service_rate"),
    ({"servers": 1, "arrival_rate": 1.0, "service_rate": 2.0, "quantile": 1.0}, "quantile"),
])
def test_bad_queue_arguments_name_the_field(kwargs: dict[str, float], field: str) -> None:
    with pytest.raises(ValueError, match=field):
        mmr_wait(**kwargs)  # type: ignore[arg-type]

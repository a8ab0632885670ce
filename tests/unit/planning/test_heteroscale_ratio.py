"""Laws of the P/D split: a required capacity covers both roles' shares, within one instance of the ratio."""

from __future__ import annotations

import math

import pytest
from hypothesis import given
from hypothesis import strategies as st

from opscale.planning.heteroscale.ratio import covering_total, prefill_share, ratio_error, split

pytestmark = pytest.mark.unit


@given(required=st.floats(0.01, 500.0), pd_ratio=st.floats(0.1, 10.0))
def test_covering_total_gives_each_role_at_least_its_share(required: float, pd_ratio: float) -> None:
    total = covering_total(required, pd_ratio)
    prefill, decode = split(total, pd_ratio)
    share = prefill_share(pd_ratio)
    assert total >= math.ceil(required - 1e-9)
    assert prefill >= required * share - 1e-6 and decode >= required * (1 - share) - 1e-6
    assert abs(ratio_error(prefill, decode, pd_ratio)) <= 1.0  # still within one instance of the ratio
    smaller = split(total - 1, pd_ratio)
    assert total - 1 < required - 1e-9 or smaller[0] < required * share - 1e-9 or smaller[1] < required * (1 - share) - 1e-9


def test_nine_required_at_one_to_three_is_not_rounded_short_of_prefill() -> None:
    assert split(9, 1 / 3) == (2, 7)  # nearest rounding alone leaves prefill 0.25 short
    assert covering_total(9.0, 1 / 3) == 10 and split(10, 1 / 3) == (3, 7)

"""Model load times: cold from remote storage, warm from host memory or a peer."""

from __future__ import annotations

import pytest

from opscale.perf import LoadTimeParams, load_catalog, load_time_s

pytestmark = pytest.mark.unit

CATALOG = load_catalog()
LLAMA3_8B = CATALOG.model("Llama-3-8B")
LLAMA3_70B = CATALOG.model("Llama-3-70B")
H100 = CATALOG.sku("H100-80GB")


def test_cold_start_is_engine_start_plus_download() -> None:
    expected = 30.0 + LLAMA3_8B.weight_bytes / 1.5e9
    assert load_time_s(LLAMA3_8B, H100, 1, "cold") == pytest.approx(expected)


def test_warm_start_is_much_faster_and_scales_with_tp() -> None:
    cold = load_time_s(LLAMA3_70B, H100, 4, "cold")
    warm4 = load_time_s(LLAMA3_70B, H100, 4, "warm")
    warm8 = load_time_s(LLAMA3_70B, H100, 8, "warm")
    assert warm8 < warm4 < cold / 5


def test_parameters_override_the_defaults() -> None:
    params = LoadTimeParams(cold_start_s=0.0, remote_storage_gbps=10.0)
    assert load_time_s(LLAMA3_8B, H100, 1, "cold", params) == pytest.approx(LLAMA3_8B.weight_bytes / 10e9)


def test_bad_inputs_are_clear_errors() -> None:
    with pytest.raises(ValueError, match="'cold' or 'warm', got 'lukewarm'"):
        load_time_s(LLAMA3_8B, H100, 1, "lukewarm")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="do not fit 1 x H100-80GB"):
        load_time_s(LLAMA3_70B, H100, 1, "cold")
    with pytest.raises(ValueError, match="tp must be a positive integer"):
        load_time_s(LLAMA3_8B, H100, 0, "warm")
    with pytest.raises(ValueError, match="remote_storage_gbps"):
        LoadTimeParams(remote_storage_gbps=0)

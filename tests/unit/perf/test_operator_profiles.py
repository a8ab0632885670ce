"""Operator profiles (issue 14 item 3): the SM-share law, attention memory with and without
FlashAttention, and measured vidur times where a profile covers the model (skips without ../shared/data)."""

from __future__ import annotations

import pytest
from _paths import SHARED_DATA
from hypothesis import given, settings
from hypothesis import strategies as st

from opscale.perf import default_catalog, load_profiles
from opscale.perf.operator_profiles import (
    AttentionKernel,
    OperatorProfiles,
    Phase,
    attention_workspace_bytes,
)
from opscale.perf.operators import Operator, operator_weight_bytes
from opscale.perf.sm_share import SmShareParams, bandwidth_share, partition_sku, slowdown

pytestmark = pytest.mark.unit

CATALOG = default_catalog()
QWEN7 = CATALOG.model("Qwen2-7B")
LLAMA7 = CATALOG.model("Llama-2-7B")
H100 = CATALOG.sku("H100-80GB")
PROFILES = OperatorProfiles(QWEN7, H100)
SHARES = st.floats(0.05, 1.0)


# --- the SM-share law ------------------------------------------------------------------------------------

@settings(max_examples=60, deadline=None)
@given(op=st.sampled_from(list(Operator)), phase=st.sampled_from(list(Phase)), batch=st.integers(1, 256),
       seq=st.sampled_from([128, 1024, 8192]), s=SHARES, t=SHARES)
def test_time_is_monotone_in_the_share(op: Operator, phase: Phase, batch: int, seq: int, s: float, t: float) -> None:
    low, high = sorted((s, t))
    slow = PROFILES.latency(op, phase, batch, seq, share=low)
    fast = PROFILES.latency(op, phase, batch, seq, share=high)
    assert slow.time_s >= fast.time_s and slow.busy_s >= fast.busy_s


def test_compute_bound_time_scales_as_one_over_share_and_memory_bound_less_with_a_floor() -> None:
    no_interference = SmShareParams(interference=0.0)
    proportional = OperatorProfiles(QWEN7, H100, sharing=no_interference)
    floored = OperatorProfiles(QWEN7, H100, sharing=SmShareParams(interference=0.0, bandwidth_floor=0.5))
    # A 64K-token prefill MLP is compute-bound: a quarter of the SMs takes four times as long.
    whole = proportional.latency(Operator.MLP, Phase.PREFILL, 16, 4096).busy_s
    quarter = proportional.latency(Operator.MLP, Phase.PREFILL, 16, 4096, share=0.25).busy_s
    assert quarter == pytest.approx(4 * whole, rel=1e-9)
    # A batch-1 decode MLP is bandwidth-bound: with a 50% bandwidth floor a quarter is only twice as slow.
    whole_d = floored.latency(Operator.MLP, Phase.DECODE, 1, 1024).busy_s
    quarter_d = floored.latency(Operator.MLP, Phase.DECODE, 1, 1024, share=0.25).busy_s
    assert quarter_d == pytest.approx(2 * whole_d, rel=1e-9)
    assert bandwidth_share(0.25, SmShareParams()) == 0.25  # default: proportional


def test_co_location_costs_the_interference_factor_below_a_whole_gpu() -> None:
    params = SmShareParams(interference=0.2)
    assert slowdown(1.0, params) == 1.0 and slowdown(0.5, params) == pytest.approx(1.2)
    a = OperatorProfiles(QWEN7, H100, sharing=params).latency(Operator.MLP, Phase.PREFILL, 4, 1024, share=0.5)
    b = OperatorProfiles(QWEN7, H100, sharing=SmShareParams(interference=0.0)).latency(
        Operator.MLP, Phase.PREFILL, 4, 1024, share=0.5)
    assert a.busy_s == pytest.approx(1.2 * b.busy_s)
    # The partition keeps the GPU's memory and power figures: only its roof shrinks.
    part = partition_sku(H100, 0.5, params)
    assert part.gpu_memory_gb == H100.gpu_memory_gb and part.peak_tflops == H100.peak_tflops / 2


@pytest.mark.parametrize("bad", [0.0, -0.5, 1.5, float("nan")])
def test_a_bad_share_is_refused_naming_it(bad: float) -> None:
    with pytest.raises(ValueError, match="share"):
        PROFILES.latency(Operator.MLP, Phase.DECODE, 1, 128, share=bad)
    with pytest.raises(ValueError, match="shares"):
        SmShareParams(shares=(bad,))


# --- memory --------------------------------------------------------------------------------------------

@settings(max_examples=40, deadline=None)
@given(batch=st.integers(1, 256), seq=st.integers(16, 65536))
def test_eager_attention_uses_more_memory_and_the_gap_grows_with_seq_squared(batch: int, seq: int) -> None:
    def both(n: int) -> tuple[float, float]:
        eager = PROFILES.memory(Operator.ATTENTION, Phase.PREFILL, batch, n, kernel=AttentionKernel.EAGER)
        flash = PROFILES.memory(Operator.ATTENTION, Phase.PREFILL, batch, n, kernel=AttentionKernel.FLASH)
        assert eager.kv_cache == flash.kv_cache and eager.weights == flash.weights
        return eager.attention_workspace, flash.attention_workspace

    (eager, flash), (eager2, flash2) = both(seq), both(2 * seq)
    assert eager > flash
    # Doubling the sequence quadruples the materialised scores; FlashAttention's O(seq) stats only double,
    # so the gap grows at least fourfold.
    assert eager2 == pytest.approx(4 * eager) and flash2 == pytest.approx(2 * flash)
    assert eager2 - flash2 >= 4 * (eager - flash)


def test_memory_holds_weights_kv_and_workspace() -> None:
    mlp = PROFILES.memory(Operator.MLP, Phase.DECODE, 8, 1024)
    assert mlp.weights == operator_weight_bytes(QWEN7, Operator.MLP) and mlp.kv_cache == 0
    attn = PROFILES.memory(Operator.ATTENTION, Phase.DECODE, 8, 1024, tp=2)
    assert attn.kv_cache == 8 * 1024 * QWEN7.kv_bytes_per_token / 2 and attn.weights == 0
    # Decode has one query per sequence: eager scores are linear in the context there.
    assert attention_workspace_bytes(QWEN7, 8, 1, 2048, "eager") == 2 * attention_workspace_bytes(QWEN7, 8, 1, 1024, "eager")


def test_the_grid_spans_batch_seq_and_share() -> None:
    rows = list(PROFILES.table(batches=(1, 256), seqs=(128, 65536), shares=(0.25, 1.0)))
    assert len(rows) == len(Operator) * 2 * 2 * 2 * 2
    assert {r["source"] for r in rows} == {"roofline"}
    assert all(float(r["latency_s"]) > 0 and float(r["memory_bytes"]) >= 0 for r in rows)  # type: ignore[arg-type]


# --- measured profiles ---------------------------------------------------------------------------------

VIDUR = SHARED_DATA / "vidur_profiling"


@pytest.mark.skipif(not VIDUR.is_dir(), reason=f"{VIDUR} is absent")
def test_measured_families_come_from_vidur_and_attention_from_the_roofline() -> None:
    measured = OperatorProfiles(LLAMA7, H100, profiles=load_profiles(VIDUR))
    assert measured.source(Operator.MLP) == "vidur" and measured.source(Operator.ATTN_PROJ) == "vidur"
    assert measured.source(Operator.ATTENTION) == "roofline" and measured.source(Operator.LM_HEAD) == "roofline"
    assert measured.latency(Operator.MLP, Phase.PREFILL, 2, 1024).source == "vidur"
    # Within the roofline's calibration error of the same operator (bench/perf_fidelity.py: a few %).
    roof = OperatorProfiles(LLAMA7, H100).latency(Operator.MLP, Phase.PREFILL, 2, 1024).time_s
    assert measured.latency(Operator.MLP, Phase.PREFILL, 2, 1024).time_s == pytest.approx(roof, rel=0.3)
    # Shares scale measured times by the roofline's ratio: monotone as well.
    times = [measured.latency(Operator.MLP, Phase.DECODE, 32, 1024, share=s).time_s for s in (0.25, 0.5, 1.0)]
    assert times == sorted(times, reverse=True)

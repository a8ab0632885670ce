"""Operator profiles (reader, curves), the profiled latency model and the roofline calibration, on small
literal inputs. The same pieces against the real vidur profiles are in test_perf_fidelity.py."""

from __future__ import annotations

import math
from pathlib import Path

import pytest

from opscale.model import ModelSpec
from opscale.perf import (
    CALIBRATED_PARAMS,
    GENERIC,
    Curve,
    GpuRoof,
    LatencyModel,
    ModelShape,
    NetworkProfile,
    OperatorProfile,
    ProfiledLatencyModel,
    ProfileError,
    ProfileLookupError,
    RooflineLatencyModel,
    RooflineParams,
    attn_pairs,
    calibrated_params,
    dense_layer_work,
    fit_allreduce,
    fit_roofline,
    latency_model_for,
    load_catalog,
    load_profiles,
)
from opscale.perf.calibration import layer_model, layer_time_s
from opscale.perf.profiles import LAYER_OPS, ProfileSet, parse_compute_csv, parse_network_csv

pytestmark = pytest.mark.unit

CATALOG = load_catalog()
LLAMA2_7B = CATALOG.model("Llama-2-7B")
A100 = CATALOG.sku("A100-80GB")

# Two TP degrees, tokens 1/2/8 at tp 1 (8 measured twice) and 1/8 at tp 2; times in ms. `foo` is an op
# vidur does not have; the shape columns are Llama-2-7B's (vocabulary padded, as vidur does).
COMPUTE_CSV = """\
time_stats.emb.median,time_stats.attn_pre_proj.min,time_stats.attn_pre_proj.median,time_stats.mlp_up_proj.median,time_stats.foo.median,n_head,n_kv_head,n_embd,n_expanded_embd,vocab_size,use_gated_mlp,num_tokens,num_tensor_parallel_workers
0.004,0.060,0.064,0.120,9.0,32,32,4096,11008,32768,True,8,1
0.002,0.050,0.062,0.110,9.0,32,32,4096,11008,32768,True,1,1
0.006,0.060,0.066,0.140,9.0,32,32,4096,11008,32768,True,8,1
0.003,0.050,0.063,0.115,9.0,32,32,4096,11008,32768,True,2,1
0.002,0.030,0.033,0.060,9.0,32,32,4096,11008,32768,True,1,2

0.005,0.030,0.035,0.070,9.0,32,32,4096,11008,32768,True,8,2
"""

NETWORK_CSV = """\
,time_stats.all_reduce.min,time_stats.all_reduce.median,rank,num_workers,size,collective,devices_per_node,max_devices_per_node
0,0.02,0.030,0,2,2048,all_reduce,2,8
1,0.03,0.040,0,2,1048576,all_reduce,2,8
2,0.05,0.070,0,2,1048576,all_reduce,1,8
3,0.02,0.035,0,4,2048,all_reduce,4,8
4,0.04,0.050,0,4,1048576,all_reduce,4,8
"""


def compute_profile() -> OperatorProfile:
    return parse_compute_csv(COMPUTE_CSV, "mlp.csv", "a100", "meta-llama/Llama-2-7b-hf")


# --- the reader -------------------------------------------------------------------------------------

def test_reader_maps_names_sorts_the_grid_averages_repeats_and_converts_to_seconds() -> None:
    profile = compute_profile()
    assert (profile.sku, profile.model) == ("A100-80GB", "Llama-2-7B")
    assert (profile.vidur_sku, profile.vidur_model) == ("a100", "meta-llama/Llama-2-7b-hf")
    assert profile.tp_degrees == (1, 2)
    assert profile.tokens(1) == (1, 2, 8) and profile.tokens(2) == (1, 8)
    assert profile.op_s("attn_pre_proj", 8, 1) == pytest.approx(0.065e-3)  # mean of 0.064 and 0.066
    assert profile.op_s("emb", 1, 2) == pytest.approx(0.002e-3)
    assert profile.shape == ModelShape(heads=32, kv_heads=32, hidden=4096, intermediate=11008, vocab=32768,
                                       gated_mlp=True)


def test_an_unknown_op_column_is_ignored_and_an_unmeasured_op_is_absent() -> None:
    profile = compute_profile()
    assert profile.ops(1) == ("emb", "attn_pre_proj", "mlp_up_proj")
    with pytest.raises(ProfileLookupError, match="no op 'attn_rope'"):
        profile.op_s("attn_rope", 8, 1)
    # A layer is the sum of the layer ops measured: the embedding runs once per iteration, not per layer.
    assert profile.layer_s(8, 1) == pytest.approx((0.065 + 0.130) * 1e-3)


def test_names_the_catalogue_does_not_know_are_kept() -> None:
    profile = parse_compute_csv(COMPUTE_CSV, "mlp.csv", "b200", "acme/Foo-1B")
    assert (profile.sku, profile.model) == ("b200", "acme/Foo-1B")


@pytest.mark.parametrize(("text", "message"), [
    ("", r"^bad\.csv: empty file"),
    ("num_tokens,num_tensor_parallel_workers,time_stats.emb.median\n", r"^bad\.csv: no data rows"),
    ("num_tensor_parallel_workers,time_stats.emb.median\n1,0.1\n", r"^bad\.csv:1: missing column 'num_tokens'"),
    ("num_tokens,num_tensor_parallel_workers,time_stats.emb.median\n1,1,0.1\n2,1,abc\n",
     r"^bad\.csv:3: column 'time_stats\.emb\.median': expected a number, got 'abc'"),
    ("num_tokens,num_tensor_parallel_workers,time_stats.emb.median\n1,1,-0.1\n",
     r"^bad\.csv:2: column 'time_stats\.emb\.median': a time cannot be negative"),
    ("num_tokens,num_tensor_parallel_workers,time_stats.emb.median\n1,0,0.1\n",
     r"^bad\.csv:2: column 'num_tensor_parallel_workers': expected a positive integer, got '0'"),
    ("num_tokens,num_tensor_parallel_workers,time_stats.emb.median\n1,1\n",
     r"^bad\.csv:2: column 'time_stats\.emb\.median': missing value"),
    ("num_tokens,num_tensor_parallel_workers,time_stats.emb.mean\n1,1,0.1\n",
     r"^bad\.csv:1: missing column 'time_stats\.emb\.median'"),
    ("num_tokens,num_tensor_parallel_workers,time_stats.foo.median\n1,1,0.1\n",
     r"^bad\.csv:1: no time_stats\.<op>\.median column for any known op"),
])
def test_bad_compute_files_name_the_file_line_and_column(text: str, message: str) -> None:
    with pytest.raises(ProfileError, match=message):
        parse_compute_csv(text, "bad.csv", "a100", "m")


def test_a_file_mixing_two_model_shapes_is_refused() -> None:
    lines = COMPUTE_CSV.splitlines()
    lines[2] = lines[2].replace("32,32,4096", "32,8,4096")
    with pytest.raises(ProfileError, match=r"^mlp\.csv:3: model shape"):
        parse_compute_csv("\n".join(lines), "mlp.csv", "a100", "m")


def test_the_network_reader_keys_by_collective_workers_and_devices_per_node() -> None:
    curves = parse_network_csv(NETWORK_CSV, "all_reduce.csv", "all_reduce")
    assert set(curves) == {("all_reduce", 2, 2), ("all_reduce", 2, 1), ("all_reduce", 4, 4)}
    assert curves[("all_reduce", 2, 2)].at(1048576) == pytest.approx(0.040e-3)
    with pytest.raises(ProfileError, match=r"^ar\.csv:2: column 'size': expected a number, got 'big'"):
        parse_network_csv(NETWORK_CSV.replace(",2048,all_reduce,2", ",big,all_reduce,2"), "ar.csv", "all_reduce")
    with pytest.raises(ProfileError, match=r"^ar\.csv:1: missing column 'time_stats\.send_recv\.median'"):
        parse_network_csv(NETWORK_CSV.replace(",all_reduce,", ",send_recv,"), "ar.csv", "all_reduce")


def test_a_directory_in_vidur_layout_loads_with_catalogue_names(tmp_path: Path) -> None:
    for sku, model in (("a100", "meta-llama/Llama-2-7b-hf"), ("b200", "acme/Foo-1B")):
        folder = tmp_path / "compute" / sku / model
        folder.mkdir(parents=True)
        (folder / "mlp.csv").write_text(COMPUTE_CSV)
    (tmp_path / "network" / "a100_dgx").mkdir(parents=True)
    (tmp_path / "network" / "a100_dgx" / "all_reduce.csv").write_text(NETWORK_CSV)
    (tmp_path / "network" / "a100_pairwise_nvlink").mkdir(parents=True)
    (tmp_path / "network" / "a100_pairwise_nvlink" / "all_reduce.csv").write_text(NETWORK_CSV)
    profiles = load_profiles(tmp_path)
    assert {(p.sku, p.model) for p in profiles.compute} == {("A100-80GB", "Llama-2-7B"), ("b200", "acme/Foo-1B")}
    assert profiles.compute_for("a100-80gb", "llama-2-7b").vidur_model == "meta-llama/Llama-2-7b-hf"
    network = profiles.network_for("A100-80GB")
    assert network is not None and network.topology == "dgx"  # NVSwitch preferred over pairwise links
    assert profiles.network_for("A100-80GB", "pairwise_nvlink") is not None
    assert profiles.network_for("b200") is None
    with pytest.raises(ProfileLookupError, match="no compute profile for model 'Llama-3-8B'.*profiled: "):
        profiles.compute_for("A100-80GB", "Llama-3-8B")


def test_bad_directories_are_refused_with_the_path(tmp_path: Path) -> None:
    with pytest.raises(ProfileError, match="not a directory"):
        load_profiles(tmp_path / "absent")
    with pytest.raises(ProfileError, match="neither compute/ nor network/"):
        load_profiles(tmp_path)
    (tmp_path / "network" / "a100").mkdir(parents=True)
    (tmp_path / "network" / "a100" / "all_reduce.csv").write_text(NETWORK_CSV)
    with pytest.raises(ProfileError, match=r"a100: expected a folder named <sku>_<topology>"):
        load_profiles(tmp_path)


# --- curves -----------------------------------------------------------------------------------------

def test_a_curve_is_exact_on_its_grid_and_a_power_law_between_points() -> None:
    curve = Curve((1.0, 4.0, 16.0), (1e-3, 2e-3, 8e-3))
    assert [curve.at(x) for x in (1, 4, 16)] == [1e-3, 2e-3, 8e-3]
    assert curve.at(2) == pytest.approx(math.sqrt(2) * 1e-3)  # sqrt(x) between 1 and 4
    assert curve.at(8) == pytest.approx(4e-3)  # x between 4 and 16
    assert curve.at(0) == 0.0


def test_a_curve_extrapolates_linearly_above_and_holds_its_floor_below() -> None:
    curve = Curve((4.0, 8.0, 16.0), (2e-3, 3e-3, 5e-3))
    assert curve.at(1) == 2e-3
    # The anchor is the largest grid point at most half the last one: 8, so the slope is 2e-3 / 8.
    assert curve.at(32) == pytest.approx(5e-3 + 2e-3 / 8 * 16)
    # Two points 1 % apart do not set the slope of a dense grid: the anchor at half the size does.
    dense = Curve((50.0, 99.0, 100.0), (1e-3, 2e-3, 1.9e-3))
    assert dense.at(200) == pytest.approx(1.9e-3 + 0.9e-3 / 50 * 100)


def test_hold_out_drops_every_third_interior_point() -> None:
    grid = tuple(float(x) for x in range(1, 11))
    profile = OperatorProfile("A100-80GB", "m", {1: {"mlp_up_proj": Curve(grid, tuple(x * 1e-3 for x in grid))}})
    kept, held = profile.hold_out(3)
    assert held == {1: (2, 5, 8)}
    assert kept.tokens(1) == (1, 3, 4, 6, 7, 9, 10)
    assert kept.op_s("mlp_up_proj", 5, 1) == pytest.approx(5e-3, rel=0.01)


# --- the profiled model -----------------------------------------------------------------------------

def llama2_7b_profile() -> OperatorProfile:
    """Every op of a Llama-2-7B layer at tp 1 and 2 on a doubling grid: 10 us floors plus a linear term."""
    grid = tuple(float(2**k) for k in range(13))
    curves = {tp: {op: Curve(grid, tuple((10 + (i + 1) * x / tp / 50) * 1e-6 for x in grid))
                   for i, op in enumerate(("emb", *LAYER_OPS))} for tp in (1, 2)}
    shape = ModelShape(heads=32, kv_heads=32, hidden=4096, intermediate=11008, vocab=32768, gated_mlp=True)
    return OperatorProfile("A100-80GB", "Llama-2-7B", curves, shape=shape)


def network_profile() -> NetworkProfile:
    return NetworkProfile("A100-80GB", "dgx", {("all_reduce", 2, 2): Curve((1e3, 1e6, 1e8), (2e-5, 3e-5, 5e-4))})


def profiled(tp: int = 1, network: NetworkProfile | None = None) -> ProfiledLatencyModel:
    fallback = RooflineLatencyModel(LLAMA2_7B, A100, tp, calibrated_params(A100.name))
    return ProfiledLatencyModel(LLAMA2_7B, A100, tp, llama2_7b_profile(), fallback, network=network)


def test_it_implements_the_latency_protocol() -> None:
    assert isinstance(profiled(), LatencyModel)


def test_profiled_operators_are_each_layers_ops_times_layers_plus_the_embedding() -> None:
    model, profile = profiled(), llama2_7b_profile()
    expected = profile.layer_s(300, 1) * LLAMA2_7B.layers + profile.op_s("emb", 300, 1)
    assert model.operators_s(300) == pytest.approx(expected)
    assert model.operators_s(0) == 0.0


@pytest.mark.parametrize("tp", [1, 2])
def test_decode_stays_linear_in_the_total_context(tp: int) -> None:
    model = profiled(tp, network_profile())
    for batch in (1, 7, 64):
        fixed_s, per_ctx_s = model.decode_step_coeffs(batch)
        busy_fixed_s, busy_per_ctx_s = model.decode_busy_coeffs(batch)
        assert per_ctx_s == busy_per_ctx_s == model.fallback.decode_attention_s_per_ctx_token > 0
        for ctx in (batch, 1000, 250_000):
            cost = model.iteration_cost(0, 0, batch, ctx)
            assert cost.time_s == fixed_s + per_ctx_s * ctx
            assert cost.busy_s == busy_fixed_s + busy_per_ctx_s * ctx
            assert model.iteration_s(0, 0, batch, ctx) == cost.time_s
    assert model.decode_step_coeffs(0) == (model.params.iteration_overhead_s, model.decode_step_coeffs(1)[1])


def test_attention_lm_head_and_overhead_come_from_the_roofline() -> None:
    fallback = RooflineLatencyModel(LLAMA2_7B, A100, 1, calibrated_params(A100.name, whole_iteration=True))
    model = ProfiledLatencyModel(LLAMA2_7B, A100, 1, llama2_7b_profile(), fallback)
    roof = model.fallback
    tokens, ctx = 512, 3000
    p = roof.params
    gpu_s = model.operators_s(tokens) + roof.lm_head_s(1) + roof.prefill_attention_s(
        attn_pairs(tokens, ctx), tokens + ctx)
    # The whole-iteration terms as the roofline prices them: host floor, serial host work, and the
    # prefill attention that does not shrink with TP.
    expected = (max(gpu_s, p.host_layer_s * LLAMA2_7B.layers) + p.iteration_overhead_s + p.sequence_overhead_s
                + p.prefill_overhead_s + p.prefill_pair_s * LLAMA2_7B.layers * attn_pairs(tokens, ctx))
    assert p.host_layer_s > 0 and p.prefill_overhead_s > 0
    assert model.prefill_s(tokens, ctx) == pytest.approx(expected)
    # Cached context makes the chunk's attention, and only it, slower.
    assert model.prefill_s(tokens, ctx) > model.prefill_s(tokens, 0)
    mixed = model.iteration_cost(tokens, 0, 8, 4000)
    assert mixed.time_s > model.prefill_s(tokens) and 0 < mixed.utilisation < 1


def test_all_reduce_comes_from_the_network_profile_when_it_measured_the_tp_degree() -> None:
    with_network = profiled(2, network_profile())
    without = profiled(2)
    hidden_bytes = LLAMA2_7B.hidden * LLAMA2_7B.bytes_per_param
    assert with_network.allreduce_s(100) == pytest.approx(
        2 * LLAMA2_7B.layers * network_profile().time_s("all_reduce", 100 * hidden_bytes, 2))
    assert without.allreduce_s(100) == without.fallback.allreduce_s(100) > 0
    assert with_network.network is not None and without.network is None
    assert profiled(1, network_profile()).allreduce_s(100) == 0.0


def test_inconsistent_pieces_are_refused() -> None:
    profile = llama2_7b_profile()
    fallback = RooflineLatencyModel(LLAMA2_7B, A100, 4)
    with pytest.raises(ValueError, match="no measurements at tp=4; measured tp: 1, 2"):
        ProfiledLatencyModel(LLAMA2_7B, A100, 4, profile, fallback)
    llama3 = CATALOG.model("Llama-3-8B")
    with pytest.raises(ValueError, match="n_kv_head=32, but model 'Llama-3-8B' has kv_heads=8"):
        ProfiledLatencyModel(llama3, A100, 1, profile, RooflineLatencyModel(llama3, A100, 1))
    h100 = CATALOG.sku("H100-80GB")
    with pytest.raises(ValueError, match="measured on 'A100-80GB', not 'H100-80GB'"):
        ProfiledLatencyModel(LLAMA2_7B, h100, 1, profile, RooflineLatencyModel(LLAMA2_7B, h100, 1))
    with pytest.raises(ValueError, match="fallback .* is not for"):
        ProfiledLatencyModel(LLAMA2_7B, A100, 1, profile, RooflineLatencyModel(LLAMA2_7B, A100, 2))
    norms_only = OperatorProfile("A100-80GB", "Llama-2-7B", {1: {"add": Curve((1.0,), (1e-6,))}})
    with pytest.raises(ValueError, match="lacks attn_pre_proj, attn_post_proj, mlp_up_proj, mlp_down_proj"):
        ProfiledLatencyModel(LLAMA2_7B, A100, 1, norms_only, RooflineLatencyModel(LLAMA2_7B, A100, 1))
    with pytest.raises(ValueError, match="prefill_tokens=-1"):
        profiled().iteration_s(-1, 0, 0, 0)


def test_latency_model_for_prefers_a_profile_and_falls_back_to_the_calibrated_roofline() -> None:
    profiles = ProfileSet(compute=(llama2_7b_profile(),), network=(network_profile(),))
    chosen = latency_model_for(LLAMA2_7B, A100, 2, profiles=profiles)
    assert isinstance(chosen, ProfiledLatencyModel) and chosen.network is not None
    for tp, prof in ((4, profiles), (1, None)):
        fallback = latency_model_for(LLAMA2_7B, A100, tp, profiles=prof)
        assert isinstance(fallback, RooflineLatencyModel)
        assert fallback.params == CALIBRATED_PARAMS["a100-80gb"]
    unprofiled_sku = latency_model_for(LLAMA2_7B, CATALOG.sku("L40S"), 1)
    assert isinstance(unprofiled_sku, RooflineLatencyModel) and unprofiled_sku.params == CALIBRATED_PARAMS[GENERIC]


# --- the roofline's new terms and the calibration ---------------------------------------------------

def test_default_params_leave_elementwise_kernels_and_layer_time_out() -> None:
    plain = RooflineLatencyModel(LLAMA2_7B, A100, 1)
    work = dense_layer_work(LLAMA2_7B, 1, 100)
    gemm_s = sum(max(f / (312e12 * 0.6), b / (2039e9 * 0.8)) for f, b in zip(work.gemm_flops, work.gemm_bytes,
                                                                              strict=True))
    assert plain.dense_layers_s(100) == pytest.approx(gemm_s)
    priced = RooflineLatencyModel(LLAMA2_7B, A100, 1, RooflineParams(elementwise_efficiency=0.5,
                                                                      layer_overhead_s=1e-5))
    extra_s = work.elementwise_bytes / (2039e9 * 0.5) + 1e-5 * LLAMA2_7B.layers
    assert priced.dense_layers_s(100) == pytest.approx(gemm_s + extra_s)
    assert priced.decode_step_coeffs(100)[0] == pytest.approx(plain.decode_step_coeffs(100)[0] + extra_s)
    assert priced.decode_step_coeffs(0) == plain.decode_step_coeffs(0)  # an empty iteration runs no kernels


def test_the_fit_prices_layers_exactly_as_the_roofline_does() -> None:
    params = RooflineParams(compute_efficiency=0.7, bandwidth_efficiency=0.75, elementwise_efficiency=0.4,
                            layer_overhead_s=3e-5)
    for model_name, tp in (("Llama-2-7B", 1), ("Llama-3-70B", 4), ("Mixtral-8x7B", 2)):
        model = CATALOG.model(model_name)
        roofline = RooflineLatencyModel(model, A100, tp, params)
        for tokens in (1, 100, 5000):
            assert layer_time_s(model, GpuRoof.of(A100), tp, tokens, params) == pytest.approx(
                roofline.dense_layers_s(tokens), rel=1e-12)


def test_the_fit_recovers_the_params_that_generated_a_profile() -> None:
    truth = RooflineParams(compute_efficiency=0.68, bandwidth_efficiency=0.81, elementwise_efficiency=0.45,
                           layer_overhead_s=3e-5)
    shape = ModelShape(heads=32, kv_heads=8, hidden=4096, intermediate=14336, vocab=128256, gated_mlp=True)
    probe = OperatorProfile("A100-80GB", "m", {}, shape=shape)
    one_layer = layer_model(probe)
    assert isinstance(one_layer, ModelSpec)
    grid = tuple(float(x) for x in (1, 2, 4, 8, 16, 32, 64, 96, 128, 192, 256, 512, 1024, 2048, 4096, 8192))
    roof = GpuRoof.of(A100)
    curves = {tp: {"mlp_up_proj": Curve(grid, tuple(layer_time_s(one_layer, roof, tp, int(t), truth) for t in grid))}
              for tp in (1, 2, 4)}
    fit = fit_roofline([OperatorProfile("A100-80GB", "m", curves, shape=shape)], {"a100-80gb": roof})
    assert fit.params.compute_efficiency == pytest.approx(0.68, abs=0.006)
    assert fit.params.bandwidth_efficiency == pytest.approx(0.81, abs=0.006)
    assert fit.params.elementwise_efficiency == pytest.approx(0.45, rel=0.05)
    assert fit.params.layer_overhead_s == pytest.approx(3e-5, rel=0.1)
    assert fit.mape < 0.01 and fit.points == 3 * len(grid) and fit.skus == ("A100-80GB",)


def test_the_fit_skips_what_it_cannot_price_and_refuses_an_empty_fit() -> None:
    ungated = ModelShape(heads=32, kv_heads=32, hidden=2560, intermediate=10240, vocab=51200, gated_mlp=False)
    phi = OperatorProfile("A100-80GB", "phi-2", {1: {"mlp_up_proj": Curve((1.0,), (1e-5,))}}, shape=ungated)
    unknown = OperatorProfile("b200", "m", {1: {"mlp_up_proj": Curve((1.0,), (1e-5,))}},
                              shape=ModelShape(32, 8, 4096, 14336, 128256, True))
    with pytest.raises(ValueError, match=r"phi-2: ungated MLP.*b200/m: no peak FLOP/s"):
        fit_roofline([phi, unknown], {"a100-80gb": GpuRoof.of(A100)})


def test_the_all_reduce_fit_recovers_latency_and_bus_bandwidth() -> None:
    sizes = (2048.0, 65536.0, 1048576.0, 16777216.0, 67108864.0)
    curves = {("all_reduce", n, n): Curve(sizes, tuple(25e-6 + 2 * (n - 1) / n * s / 300e9 for s in sizes))
              for n in (2, 4, 8)}
    fit = fit_allreduce(NetworkProfile("H100-80GB", "dgx", curves))
    assert fit is not None
    assert fit.allreduce_latency_s == pytest.approx(25e-6, rel=1e-6)
    assert fit.interconnect_gbps == pytest.approx(300.0, rel=1e-6)
    assert fit_allreduce(NetworkProfile("H100-80GB", "dgx", {})) is None


def test_calibrated_params_cover_the_profiled_catalogue_and_fall_back_to_the_generic_fit() -> None:
    assert calibrated_params("a100-80GB") == CALIBRATED_PARAMS["a100-80gb"]
    assert calibrated_params("H100-80GB") == CALIBRATED_PARAMS["h100-80gb"]
    assert calibrated_params("L40S") == CALIBRATED_PARAMS[GENERIC]
    for params in CALIBRATED_PARAMS.values():
        assert params.elementwise_efficiency is not None and params.layer_overhead_s > 0

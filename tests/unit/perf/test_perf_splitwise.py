"""The roofline model against Splitwise's measured Llama-2-70B iteration times (shared/data).

Splitwise measured prompt (prefill) and per-token (decode) times of Llama-2-70B on A100 and H100 at
TP 2, 4 and 8. At TP 8 its decode time stays near 30-45 ms whatever the GPU count (a floor of its
software stack, not of the hardware), so the uncalibrated comparison covers TP 2 and 4, batch 1,
prompts >= 512. The whole-iteration terms (host floor, serial host work, long-prompt attention) are
fitted to these rows and judged with each TP degree held out of their fit.
Skips when ../shared/data is absent.
"""

from __future__ import annotations

import csv
from collections import defaultdict

import pytest
from _paths import SHARED_DATA

from opscale.perf import (
    LatencyModel,
    RooflineLatencyModel,
    RooflineParams,
    calibrated_params,
    load_catalog,
)
from opscale.perf.calibration import GENERIC, WHOLE_ITERATION_TERMS
from opscale.perf.iteration_fit import (
    IterationSample,
    ModelAt,
    fit_iteration,
    iteration_mape,
    kernel_params,
    leave_one_tp_out,
    parse_splitwise_csv,
)

pytestmark = pytest.mark.unit

CSV = SHARED_DATA / "splitwise_perf_model" / "perf_model.csv"
SKUS = {"a100-80gb": "A100-80GB", "h100-80gb": "H100-80GB"}


@pytest.fixture(scope="module")
def measured() -> dict[tuple[str, int, int], tuple[float, float, int]]:
    if not CSV.exists():
        pytest.skip(f"{CSV} is absent")
    samples: dict[tuple[str, int, int], list[tuple[float, float, int]]] = defaultdict(list)
    with CSV.open(newline="") as handle:
        for row in csv.DictReader(handle):
            if row["model"] == "llama2-70b" and row["hardware"] in SKUS and row["batch_size"] == "1":
                key = (row["hardware"], int(row["tensor_parallel"]), int(row["prompt_size"]))
                samples[key].append((float(row["prompt_time"]) / 1e3, float(row["token_time"]) / 1e3,
                                     int(row["token_size"])))
    return {k: (sum(s[0] for s in v) / len(v), sum(s[1] for s in v) / len(v), v[0][2])
            for k, v in samples.items()}


def test_prefill_and_decode_are_within_half_to_one_and_a_half_of_splitwise(
    measured: dict[tuple[str, int, int], tuple[float, float, int]],
) -> None:
    model = load_catalog().model("Llama-2-70B")
    compared = 0
    for (hardware, tp, prompt), (prompt_s, token_s, output) in measured.items():
        if tp not in (2, 4) or prompt < 512:
            continue
        lm = RooflineLatencyModel(model, load_catalog().sku(SKUS[hardware]), tp)
        fixed_s, per_ctx_s = lm.decode_step_coeffs(1)
        decode_s = fixed_s + per_ctx_s * (prompt + output / 2)  # mean context over the generation
        assert 0.5 < lm.prefill_s(prompt) / prompt_s < 1.5, (hardware, tp, prompt)
        assert 0.5 < decode_s / token_s < 1.5, (hardware, tp, prompt)
        compared += 1
    assert compared >= 20


# --- whole iterations: the fitted terms, judged on a TP degree held out of their fit -------------------

SPLITWISE_MODELS = {"llama2-70b": "Llama-2-70B"}


@pytest.fixture(scope="module")
def iterations() -> dict[tuple[str, str], list[IterationSample]]:
    if not CSV.exists():
        pytest.skip(f"{CSV} is absent")
    return parse_splitwise_csv(CSV.read_text(), SKUS, SPLITWISE_MODELS)


def roofline_at(sku_name: str) -> ModelAt:
    catalog = load_catalog()
    model, sku = catalog.model("Llama-2-70B"), catalog.sku(sku_name)

    def make(tp: int, params: RooflineParams) -> LatencyModel:
        return RooflineLatencyModel(model, sku, tp, params)
    return make


@pytest.mark.parametrize("sku_name", ["A100-80GB", "H100-80GB"])
def test_each_held_out_tp_degree_is_within_15_percent(
    iterations: dict[tuple[str, str], list[IterationSample]], sku_name: str,
) -> None:
    # Issue 14's acceptance: fitted on two TP degrees, judged on the third, per phase.
    samples = iterations[(sku_name, "Llama-2-70B")]
    model = load_catalog().model("Llama-2-70B")
    kernel = kernel_params(calibrated_params(sku_name))
    held_out = leave_one_tp_out(samples, model, roofline_at(sku_name), kernel)
    assert sorted(held_out) == [2, 4, 8]
    for tp, (params, held) in held_out.items():
        assert {s.tp for s in held} == {tp}
        errors = iteration_mape(held, roofline_at(sku_name), params)
        assert set(errors) == {"prefill", "decode"}
        assert max(errors.values()) <= 0.15, (sku_name, tp, errors)
        # Without the whole-iteration terms, TP 8 is far off: the terms are what closes the gap.
        if tp == 8:
            assert max(iteration_mape(held, roofline_at(sku_name), kernel).values()) > 0.3


@pytest.mark.parametrize("sku_name", ["A100-80GB", "H100-80GB"])
def test_the_shipped_whole_iteration_terms_are_what_the_data_gives(
    iterations: dict[tuple[str, str], list[IterationSample]], sku_name: str,
) -> None:
    shipped = calibrated_params(sku_name, whole_iteration=True)
    fit = fit_iteration(iterations[(sku_name, "Llama-2-70B")], load_catalog().model("Llama-2-70B"),
                        roofline_at(sku_name), shipped)
    assert fit.params == shipped
    assert kernel_params(shipped) == calibrated_params(sku_name)  # the kernel calibration is not touched
    for field, generic in WHOLE_ITERATION_TERMS[GENERIC].items():
        assert generic == pytest.approx(
            (WHOLE_ITERATION_TERMS["a100-80gb"][field] + WHOLE_ITERATION_TERMS["h100-80gb"][field]) / 2)


def test_splitwise_rows_become_one_sample_per_configuration(
    iterations: dict[tuple[str, str], list[IterationSample]],
) -> None:
    samples = iterations[("A100-80GB", "Llama-2-70B")]
    # 7 prompt sizes x ... : 19 (prompt, batch, output) configurations per TP, 13 of them at batch 1.
    assert sum(s.phase == "decode" for s in samples) == 3 * 19
    assert sum(s.phase == "prefill" for s in samples) == 3 * 13
    assert all(s.measured_s > 0.02 for s in samples)

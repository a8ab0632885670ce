"""The roofline model against Splitwise's measured Llama-2-70B iteration times (shared/data).

Splitwise measured prompt (prefill) and per-token (decode) times of Llama-2-70B on A100 and H100 at
TP 2, 4 and 8. At TP 8 its decode time stays near 30-45 ms whatever the GPU count (a floor of its
software stack, not of the hardware), so the comparison covers TP 2 and 4, batch 1, prompts >= 512.
Skips when ../shared/data is absent.
"""

from __future__ import annotations

import csv
from collections import defaultdict

import pytest
from _paths import SHARED_DATA

from opscale.perf import RooflineLatencyModel, load_catalog

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

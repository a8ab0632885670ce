"""ServeGen workload generation from a small model folder built here (and the real one when
../shared/data is present): counts follow the rates, seeds reproduce, windows are independent,
clients without a dataset borrow the busiest client's, and the summed rate series is exact."""

from __future__ import annotations

import gzip
import itertools
import json
from pathlib import Path

import pytest
from _paths import SHARED_DATA

from opscale.traces import ServeGenConfig, TraceFormatError, generate_servegen_requests, servegen_rate_series

pytestmark = pytest.mark.unit

DATA = SHARED_DATA


def model_dir(tmp_path: Path) -> Path:
    folder = tmp_path / "m-tiny"
    folder.mkdir()
    rows = {
        0: ["0,1.0,2.5,Gamma,0.16,6.25", "600,0,0,,0,0", "1200,0.5,1.2,Weibull,0.8,1.7"],
        1: ["0,3.0,1.0,Gamma,1.0,0.33", "600,1.0,0,,0,0", "1200,0.25,3.0,Pareto,1,1"],
    }
    for client, lines in rows.items():
        (folder / f"chunk-{client}-trace.csv.gz").write_bytes(gzip.compress(("\n".join(lines) + "\n").encode()))
    dataset = {"0": {"input_tokens": "{100: 0.5, 300: 0.5}", "output_tokens": "{0: 0.2, 20: 0.8}"},
               "21600": {"input_tokens": "{}", "output_tokens": "{}"}}
    (folder / "chunk-1-dataset.json.gz").write_bytes(gzip.compress(json.dumps(dataset).encode()))
    return folder


def test_counts_follow_rates_and_lengths_follow_the_pmfs(tmp_path: Path) -> None:
    folder = model_dir(tmp_path)
    requests = list(generate_servegen_requests(ServeGenConfig(model_dir=folder, seed=4)))
    assert all(a.arrival_s <= b.arrival_s for a, b in itertools.pairwise(requests))
    per_window = [sum(1 for r in requests if k * 600 <= r.arrival_s < (k + 1) * 600) for k in range(3)]
    assert per_window == [2400, 600, 450]  # (1 + 3) * 600, 1 * 600, (0.5 + 0.25) * 600: integers, so exact
    assert len({r.request_id for r in requests}) == len(requests)
    # client 0 has no dataset file: it borrows client 1's (the only one), so every length is from its PMFs
    assert {r.prompt_tokens for r in requests} == {100, 300}
    assert {r.output_tokens for r in requests} == {1, 20}  # a 0-token output becomes 1


def test_seeds_reproduce_and_windows_do_not_depend_on_the_rest(tmp_path: Path) -> None:
    folder = model_dir(tmp_path)
    whole = list(generate_servegen_requests(ServeGenConfig(model_dir=folder, seed=9)))
    assert whole == list(generate_servegen_requests(ServeGenConfig(model_dir=folder, seed=9)))
    assert whole != list(generate_servegen_requests(ServeGenConfig(model_dir=folder, seed=10)))
    part = list(generate_servegen_requests(ServeGenConfig(model_dir=folder, seed=9, start_s=1200, end_s=1800)))
    assert [(r.arrival_s, r.prompt_tokens) for r in part] == \
        [(r.arrival_s, r.prompt_tokens) for r in whole if r.arrival_s >= 1200]


def test_scale_clients_and_rebase(tmp_path: Path) -> None:
    folder = model_dir(tmp_path)
    config = ServeGenConfig(model_dir=folder, clients=(1,), rate_scale=0.1, start_s=600, end_s=1800, rebase=True)
    requests = list(generate_servegen_requests(config))
    assert all(r.request_id.startswith("sg0-c1-") for r in requests)
    assert all(0 <= r.arrival_s < 1200 for r in requests)
    assert len(requests) == 60 + 15


def test_rate_series_sums_clients_and_averages_steps(tmp_path: Path) -> None:
    folder = model_dir(tmp_path)
    assert servegen_rate_series(folder, 600) == pytest.approx([4.0, 1.0, 0.75])
    assert servegen_rate_series(folder, 1200) == pytest.approx([2.5, 0.75])
    assert servegen_rate_series(folder, 300, clients=[0]) == pytest.approx([1, 1, 0, 0, 0.5, 0.5])


def test_bad_folders_and_rows_are_named(tmp_path: Path) -> None:
    with pytest.raises(TraceFormatError, match="not a folder"):
        servegen_rate_series(tmp_path / "nope")
    folder = model_dir(tmp_path)
    with pytest.raises(TraceFormatError, match=r"no trace file for client\(s\) \[7\]"):
        list(generate_servegen_requests(ServeGenConfig(model_dir=folder, clients=(7,))))
    (folder / "chunk-2-trace.csv").write_text("0,1,1,Gamma,1,1\n600,fast,1,Gamma,1,1\n")
    with pytest.raises(TraceFormatError, match=r"chunk-2-trace\.csv:2: field 'rate': expected a number, got 'fast'"):
        servegen_rate_series(folder)


def test_real_mm_image_rates_match_the_data_readme() -> None:
    folder = DATA / "servegen" / "multimodal" / "mm-image"
    if not folder.exists():
        pytest.skip("shared data servegen/multimodal/mm-image is absent")
    series = servegen_rate_series(folder)
    assert len(series) == 144
    assert sum(series) / len(series) == pytest.approx(9.5, abs=0.05)
    assert max(series) == pytest.approx(13.3, abs=0.05)
    requests = list(generate_servegen_requests(ServeGenConfig(model_dir=folder, end_s=600, seed=1)))
    assert len(requests) == pytest.approx(series[0] * 600, abs=1)
    assert all(r.prompt_tokens >= 1 for r in requests)

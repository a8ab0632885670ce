"""`opscale trace`: stats writes stats.json and a PNG, convert applies transforms, and bad input is one
red line and exit code 2."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from opscale.cli import app
from opscale.traces import read_csv_trace

pytestmark = pytest.mark.unit

runner = CliRunner()

AZURE = ("TIMESTAMP,ContextTokens,GeneratedTokens\n"
         + "".join(f"2023-11-16 18:{10 + i // 60:02d}:{i % 60:02d}.5000000,{100 + i},{1 + i % 9}\n" for i in range(240)))


def fixture(tmp_path: Path, text: str = AZURE, name: str = "azure.csv") -> Path:
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return path


def test_stats_prints_and_writes_json_and_png(tmp_path: Path) -> None:
    out = tmp_path / "out"
    result = runner.invoke(app, ["trace", "stats", str(fixture(tmp_path)), "--out", str(out)])
    assert result.exit_code == 0, result.output
    assert "requests         240" in result.output
    stats = json.loads((out / "stats.json").read_text())
    assert stats["requests"] == 240
    assert stats["duration_s"] == pytest.approx(239.0)
    assert stats["peak_rate_rps"] == pytest.approx(1.0)
    assert stats["prompt_tokens"]["p50"] == pytest.approx(219.5)
    assert stats["invalid_records"] == 0
    assert (out / "rate.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_stats_skip_invalid_reports_the_count(tmp_path: Path) -> None:
    path = fixture(tmp_path, AZURE + "2023-11-16 19:00:00,oops,1\n")
    result = runner.invoke(app, ["trace", "stats", str(path), "--skip-invalid", "--out", str(tmp_path / "o")])
    assert result.exit_code == 0, result.output
    assert "invalid lines    1 skipped" in result.output
    assert json.loads((tmp_path / "o" / "stats.json").read_text())["invalid_records"] == 1


@pytest.mark.parametrize(("args", "message"), [
    (["trace", "stats", "{missing}"], "does not exist"),
    (["trace", "stats", "{bad}"], ":242: field 'ContextTokens': expected an integer >= 1, got 'oops'"),
    (["trace", "stats", "{good}", "--format", "parquet"], "unknown trace format 'parquet'"),
    (["trace", "convert", "{good}", "{out}", "--to", "xml"], "--to must be csv or jsonl"),
    (["trace", "convert", "{good}", "{out}", "--window", "10"], "--window '10': expected START:END"),
    (["trace", "convert", "{good}", "{out}", "--rule", "tier batch"], "cannot read rule"),
    (["trace", "fetch", "imagenet"], "unknown trace dataset 'imagenet'; known: azure2023, azure2024"),
])
def test_bad_input_is_one_red_line_and_exit_2(tmp_path: Path, args: list[str], message: str) -> None:
    paths = {"missing": tmp_path / "missing.csv", "good": fixture(tmp_path),
             "bad": fixture(tmp_path, AZURE + "2023-11-16 19:00:00,oops,1\n", "bad.csv"), "out": tmp_path / "o.csv"}
    result = runner.invoke(app, [a.format(**paths) for a in args])
    assert result.exit_code == 2
    assert message in result.output
    assert "Traceback" not in result.output
    assert not (tmp_path / "o.csv").exists()


def test_convert_applies_window_scale_and_assignment(tmp_path: Path) -> None:
    out = tmp_path / "converted.csv"
    result = runner.invoke(app, ["trace", "convert", str(fixture(tmp_path)), str(out), "--window", "60:180",
                                 "--compress", "2", "--assign", "region=eu:1,us:1", "--assign", "model=Llama-3-8B",
                                 "--rule", "tier=batch if prompt_tokens>=250", "--scale", "2", "--seed", "5"])
    assert result.exit_code == 0, result.output
    requests = list(read_csv_trace(out))
    assert len(requests) == 240  # 120 in the window, twice
    assert {r.region for r in requests} == {"eu", "us"}
    assert {r.model for r in requests} == {"Llama-3-8B"}
    assert {r.tier for r in requests if r.prompt_tokens >= 250} == {"batch"}
    assert {r.tier for r in requests if r.prompt_tokens < 250} == {"interactive"}
    assert min(r.arrival_s for r in requests) == 0.0  # row 60 of one row a second, rebased
    assert max(r.arrival_s for r in requests) < 119 / 2 + 60.0  # compressed twice; copies shifted < 60 s


def test_convert_rotates_regions_to_jsonl(tmp_path: Path) -> None:
    out = tmp_path / "rotated.jsonl"
    result = runner.invoke(app, ["trace", "convert", str(fixture(tmp_path)), str(out), "--to", "jsonl",
                                 "--assign", "region=us", "--shift-region", "us=100", "--period-s", "240"])
    assert result.exit_code == 0, result.output
    lines = [json.loads(line) for line in out.read_text().splitlines()]
    assert len(lines) == 240
    assert lines[0]["arrival_s"] == pytest.approx(0.0) and lines[0]["request_id"] == "azure-140"

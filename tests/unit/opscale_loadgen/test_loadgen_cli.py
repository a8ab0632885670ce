"""`opscale loadgen` as a user meets it: a replay against a real local endpoint writes a report whose
request count equals the slice's (with --window and --max-requests), a stopped replay still accounts for
every request, `compare` prints two reports side by side, and bad input exits with code 2 and one line
naming the problem, never a traceback."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import pytest
from test_loadgen_endpoint import ScriptedHost, endpoint_in_thread, free_port, running_endpoint
from typer.testing import CliRunner

from opscale.cli import app
from opscale.model import Request
from opscale.reporting.latency_report import read_latency_csv
from opscale.traces import write_csv_trace

from opscale_loadgen.replay import ReplayConfig, replay
from opscale_loadgen.trace_source import TraceWindow

pytestmark = pytest.mark.unit

runner = CliRunner()


def _trace(path: Path, n: int, every_s: float = 1.0) -> Path:
    write_csv_trace(path, (Request(f"q{i}", "m", "interactive" if i % 3 else "batch", "eu-west", i * every_s,
                                   prompt_tokens=20 + i, output_tokens=1 + i % 4) for i in range(n)))
    return path


def _fails(args: list[str], *words: str) -> None:
    result = runner.invoke(app, ["loadgen", *args])
    assert result.exit_code == 2, result.output
    assert "Traceback" not in result.output and result.exception is None or isinstance(result.exception, SystemExit)
    for word in words:
        assert word in result.output, result.output


def test_replay_writes_a_report_with_one_entry_per_request_of_the_slice(tmp_path: Path) -> None:
    trace = _trace(tmp_path / "t.csv", 40, every_s=1.0)
    out = tmp_path / "out"
    with endpoint_in_thread() as (url, host):
        result = runner.invoke(app, [
            "loadgen", "replay", str(trace), "--url", f"{url}/instances/ok", "--compress", "100",
            "--window", "5:30", "--max-requests", "20", "--out", str(out), "--no-progress", "--api", "completions",
            "--api-key", "sk-test"])
    assert result.exit_code == 0, result.output
    report = json.loads((out / "report.json").read_text())
    rows = list(read_latency_csv(out / "requests.csv"))
    expected = [f"q{i}" for i in range(5, 25)]
    assert report["requests"] == 20 and report["completed"] == 20 and report["errors"] == {}
    assert sorted(r["request_id"] for r in rows) == sorted(expected)
    assert set(report["tiers"]) == {"interactive", "batch"}
    assert report["run"]["slice_requests"] == 20 and report["run"]["origin_s"] == 5.0
    assert report["replay"]["intended_rps"] == pytest.approx(100.0)
    assert sum(int(r["output_tokens"]) for r in rows) == sum(1 + i % 4 for i in range(5, 25))
    assert len(host.seen) == 20
    assert host.authorizations == {"Bearer sk-test"} and "sk-test" not in (out / "report.json").read_text()
    assert "replay of" in result.output and "wrote" in result.output

    compared = runner.invoke(app, ["loadgen", "compare", str(out / "report.json"), str(out / "report.json")])
    assert compared.exit_code == 0, compared.output
    assert "ttft_p99_s" in compared.output and "interactive" in compared.output


async def test_a_stopped_replay_reports_every_request_of_the_slice(tmp_path: Path) -> None:
    trace = _trace(tmp_path / "t.csv", 30, every_s=1.0)
    host = ScriptedHost()
    stop = asyncio.Event()
    async with running_endpoint(host) as url:
        async def stop_after_three() -> None:
            while len(host.seen) < 3:
                await asyncio.sleep(0.01)  # noqa: TID251 - polling a real server
            stop.set()  # as Ctrl-C does

        stopper = asyncio.create_task(stop_after_three())
        config = ReplayConfig(trace=trace, url=url + "/instances/ok", out=tmp_path / "out", compress=20.0,
                              window=TraceWindow(), progress=False, drain_s=5.0)
        result = await asyncio.wait_for(replay(config, stop=stop), 60)
        await stopper
    report = result.report
    rows = list(read_latency_csv(result.requests_path))
    assert report["requests"] == 30 == len(rows) == len({r["request_id"] for r in rows})
    assert report["run"]["stopped_early"] and report["not_sent"] >= 1
    assert report["completed"] + report["dropped"] + report["not_sent"] == 30
    assert json.loads(result.report_path.read_text())["requests"] == 30


def test_compare_lines_up_a_replay_with_a_simulator_result(tmp_path: Path) -> None:
    tier = {"requests": 10, "completed": 9, "dropped": 1, "ttft_p50_s": 0.2, "ttft_p99_s": 1.5,
            "slo_attainment": 0.9}
    sim = {**tier, "tiers": {"interactive": tier}, "gpu_hours": 1.0}
    live = {**tier, "ttft_p90_s": 0.9, "ttft_p99_s": 3.0, "tiers": {"interactive": tier, "batch": tier}}
    (tmp_path / "sim.json").write_text(json.dumps(sim))
    (tmp_path / "live.json").write_text(json.dumps(live))
    result = runner.invoke(app, ["loadgen", "compare", str(tmp_path / "sim.json"), str(tmp_path / "live.json")])
    assert result.exit_code == 0, result.output
    assert "+100.0%" in result.output  # ttft p99: 1.5 s -> 3.0 s
    assert "batch" in result.output


def test_bad_input_exits_2_with_a_message(tmp_path: Path) -> None:
    trace = _trace(tmp_path / "t.csv", 5)
    url = f"http://127.0.0.1:{free_port()}"
    _fails(["replay", str(tmp_path / "missing.csv"), "--url", url], "does not exist")
    _fails(["replay", str(trace), "--url", "localhost:8000"], "http://")
    _fails(["replay", str(trace), "--url", url, "--no-progress"], "cannot reach")
    _fails(["replay", str(trace), "--url", url, "--window", "10"], "START:END")
    _fails(["replay", str(trace), "--url", url, "--window", "9:3"], "END (3 s) must be after START (9 s)")
    _fails(["replay", str(trace), "--url", url, "--window", "100:"], "no request in window")
    _fails(["replay", str(trace), "--url", url, "--compress", "0"], "--compress")
    _fails(["replay", str(trace), "--url", url, "--api", "embeddings"], "--api")
    _fails(["replay", str(trace), "--url", url, "--format", "parquet"], "unknown trace format")
    _fails(["replay", str(trace), "--url", url, "--tiers", str(tmp_path / "none.yaml")], "does not exist")
    (tmp_path / "tiers.yaml").write_text("tiers:\n  - {name: gold, ttft_slo_s: -1, tbt_slo_s: 0.1}\n")
    _fails(["replay", str(trace), "--url", url, "--tiers", str(tmp_path / "tiers.yaml")], "ttft_slo_s")
    bad = tmp_path / "bad.csv"
    bad.write_text(trace.read_text().replace("\n3.0,", "\nsoon,"))
    _fails(["replay", str(bad), "--url", url], "bad.csv:5", "arrival_s")
    _fails(["compare", str(tmp_path / "none.json"), str(trace)], "does not exist")
    _fails(["compare", str(trace), str(trace)], "not JSON")
    (tmp_path / "x.json").write_text("{}")
    _fails(["compare", str(tmp_path / "x.json"), str(tmp_path / "x.json")], "not a latency report")


def test_ctrl_c_stops_sending_and_writes_the_partial_report(tmp_path: Path) -> None:
    import signal
    import subprocess
    import sys
    import time

    trace = _trace(tmp_path / "t.csv", 600, every_s=0.1)  # a minute of sends at 10 req/s
    out = tmp_path / "out"
    with endpoint_in_thread() as (url, host):
        proc = subprocess.Popen(
            [sys.executable, "-m", "opscale.cli", "loadgen", "replay", str(trace), "--url", f"{url}/instances/ok",
             "--out", str(out), "--no-progress"], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        try:
            deadline = time.monotonic() + 60
            while len(host.seen) < 5:  # the replay is under way
                assert proc.poll() is None and time.monotonic() < deadline, proc.stdout and proc.stdout.read()
                time.sleep(0.05)
            proc.send_signal(signal.SIGINT)
            output, _ = proc.communicate(timeout=60)
        finally:
            if proc.poll() is None:
                proc.kill()
    assert proc.returncode == 0, output
    assert "Traceback" not in output and "interrupted" in output and "stopped early" in output
    report = json.loads((out / "report.json").read_text())
    rows = list(read_latency_csv(out / "requests.csv"))
    assert report["run"]["stopped_early"] and report["requests"] == 600 == len(rows)
    assert report["not_sent"] > 0 and report["completed"] >= 5

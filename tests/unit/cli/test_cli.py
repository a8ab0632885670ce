"""The command line as a user meets it: the demo's outputs and determinism, simulate on a CSV trace,
and clear errors (exit code 2, a message naming the problem, no traceback) for bad input."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from opscale.cli import SERVICE_NAMES, app
from opscale.model import Request
from opscale.traces import write_csv_trace

pytestmark = pytest.mark.sim

RESULT_KEYS = {"requests", "completed", "dropped", "ttft_p50_s", "ttft_p90_s", "ttft_p99_s", "tbt_p50_s", "tbt_p90_s",
               "tbt_p99_s", "e2e_p50_s", "e2e_p90_s", "e2e_p99_s", "slo_attainment", "gpu_hours", "cost_usd",
               "energy_kwh", "mean_gpu_util", "cold_starts", "warm_migrations", "scaling_gpu_s", "oscillations", "wall_s",
               "policy", "seed", "tiers"}
TIER_KEYS = {"requests", "completed", "dropped", "ttft_p50_s", "ttft_p90_s", "ttft_p99_s", "tbt_p50_s", "tbt_p90_s",
             "tbt_p99_s", "e2e_p50_s", "e2e_p90_s", "e2e_p99_s", "slo_attainment"}

runner = CliRunner()


def _demo(out: Path, seed: int = 1) -> dict:
    result = runner.invoke(app, ["demo", "--seed", str(seed), "--minutes", "4", "--out", str(out)])
    assert result.exit_code == 0, result.output
    assert (out / "load_vs_capacity.png").stat().st_size > 10_000
    return json.loads((out / "result.json").read_text())


def test_demo_writes_the_result_schema_and_is_deterministic(tmp_path: Path) -> None:
    first = _demo(tmp_path / "a")
    assert RESULT_KEYS <= set(first)
    assert set(first["tiers"]) == {"interactive", "batch"}
    assert all(TIER_KEYS <= set(t) for t in first["tiers"].values())
    assert first["requests"] > 1000 and first["dropped"] == 0 and first["seed"] == 1
    second = _demo(tmp_path / "b")
    first.pop("wall_s"), second.pop("wall_s")
    assert first == second


def test_simulate_replays_a_csv_trace(tmp_path: Path) -> None:
    trace = tmp_path / "trace.csv"
    write_csv_trace(trace, [Request(f"q{i}", "Llama-3-8B", "interactive", "eu-west", 20.0 + i * 0.5, 500, 50)
                            for i in range(200)])
    out = tmp_path / "out"
    result = runner.invoke(app, ["simulate", "--trace", str(trace), "--out", str(out), "--policy", "reactive"])
    assert result.exit_code == 0, result.output
    data = json.loads((out / "result.json").read_text())
    assert data["requests"] == data["completed"] == 200 and data["policy"] == "reactive"


def test_simulate_replays_the_window_and_model_that_loadgen_replay_would(tmp_path: Path) -> None:
    # The same --window and --model as `opscale loadgen replay`: the slice's start becomes time 0 and every
    # request goes to the one model, whatever the trace names.
    trace = tmp_path / "trace.csv"
    write_csv_trace(trace, [Request(f"q{i}", "gpt-9", "interactive", "eu-west", float(i), 500, 50)
                            for i in range(300)])
    out = tmp_path / "out"
    result = runner.invoke(app, ["simulate", "--trace", str(trace), "--window", "100:160", "--model", "Llama-3-8B",
                                 "--out", str(out)])
    assert result.exit_code == 0, result.output
    data = json.loads((out / "result.json").read_text())
    assert data["requests"] == data["completed"] == 60
    assert data["simulated_s"] < 100  # rebased: the run covers the 60 s slice (and its drain), not trace time
    capped = runner.invoke(app, ["simulate", "--trace", str(trace), "--window", "100:", "--max-requests", "25",
                                 "--model", "Llama-3-8B", "--out", str(tmp_path / "capped")])
    assert capped.exit_code == 0, capped.output
    assert json.loads((tmp_path / "capped" / "result.json").read_text())["requests"] == 25


@pytest.mark.parametrize("window, message", [("600", "expected START:END"), ("9:3", "END (3 s) must be after START"),
                                             ("a:5", "START 'a' is not a number")])
def test_simulate_names_a_bad_window(tmp_path: Path, window: str, message: str) -> None:
    trace = tmp_path / "trace.csv"
    write_csv_trace(trace, [Request("q1", "Llama-3-8B", "interactive", "eu-west", 1.0, 10, 10)])
    result = runner.invoke(app, ["simulate", "--trace", str(trace), "--window", window])
    assert result.exit_code == 2 and "--window" in result.output and message in result.output
    assert "Traceback" not in result.output


def test_simulate_names_the_bad_line_of_a_trace(tmp_path: Path) -> None:
    trace = tmp_path / "bad.csv"
    trace.write_text("arrival_s,model,tier,region,prompt_tokens,output_tokens\n"
                     "1.0,Llama-3-8B,interactive,eu-west,100,10\n"
                     "2.0,Llama-3-8B,interactive,eu-west,lots,10\n")
    result = runner.invoke(app, ["simulate", "--trace", str(trace), "--out", str(tmp_path / "o")])
    assert result.exit_code == 2
    assert "bad.csv:3" in result.output and "prompt_tokens" in result.output
    assert "Traceback" not in result.output


def test_simulate_refuses_models_no_deployment_serves(tmp_path: Path) -> None:
    trace = tmp_path / "t.csv"
    write_csv_trace(trace, [Request("q1", "gpt-9", "interactive", "eu-west", 1.0, 10, 10)])
    result = runner.invoke(app, ["simulate", "--trace", str(trace)])
    assert result.exit_code == 2 and "gpt-9" in result.output and "Traceback" not in result.output


@pytest.mark.parametrize("args, message", [
    (["simulate", "--trace", "/nonexistent/trace.csv"], "does not exist"),
    (["serve", "scheduler"], "unknown service 'scheduler'"),
    (["demo", "--policy", "magic", "--minutes", "1"], "unknown planning policy 'magic'"),
])
def test_bad_arguments_get_a_clear_error(args: list[str], message: str) -> None:
    result = runner.invoke(app, args)
    assert result.exit_code == 2 and message in result.output and "Traceback" not in result.output


def test_bad_service_settings_name_the_field(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OPSCALE_ROUTER_HTTP_PORT", "eighty")
    result = runner.invoke(app, ["serve", "router"])
    assert result.exit_code == 2 and "http_port" in result.output and "OPSCALE_ROUTER_HTTP_PORT" in result.output


def test_every_service_name_has_a_process() -> None:
    import importlib

    from opscale_services.launcher import MODULES

    assert set(MODULES) == set(SERVICE_NAMES)
    for module in MODULES.values():
        assert callable(importlib.import_module(f"opscale_services.{module}.main").run)


def test_simulate_takes_the_configs_trace_labels_and_kv_aware_routing(tmp_path: Path) -> None:
    # A Mooncake trace names no model: the config's trace.assign labels it (no --assign needed), and its
    # engine and routing settings (prefix caching, KV events, kv_aware) are the run's.
    trace = tmp_path / "chat.jsonl"
    trace.write_text("".join(json.dumps({"timestamp": 1000 * i, "input_length": 2100 + 600 * i, "output_length": 20,
                                         "hash_ids": list(range(5 + i))}) + "\n" for i in range(12)))
    config = tmp_path / "scenario.yaml"
    config.write_text(f"""
name: mooncake on qwen
duration_s: 60
hosts: [{{region: local, sku: H100-80GB, gpus: 8, count: 1}}]
deployments:
  - {{model: Qwen2-7B, sku: H100-80GB, tp: 1, min_replicas: 4, max_replicas: 4}}
policy: static
routing_policy: kv_aware
engine: {{enable_prefix_caching: true, kv_events: true, emit_tokens: false}}
trace: {{path: {trace}, assign: {{model: {{Qwen2-7B: 1}}}}}}
""")
    out = tmp_path / "out"
    result = runner.invoke(app, ["simulate", "--config", str(config), "--trace", str(trace), "--out", str(out)])
    assert result.exit_code == 0, result.output
    data = json.loads((out / "result.json").read_text())
    assert data["completed"] == 12 and data["dropped_by_cause"] == {}
    assert data["routing_policy"] == "kv_aware"
    # every turn after the first finds its predecessor's blocks: kv_aware sent it where they are
    assert data["prefix_hit_tokens"] >= 11 * 4 * 512

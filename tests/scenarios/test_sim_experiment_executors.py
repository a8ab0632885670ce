"""Where an experiment's runs go does not change what it writes: the in-process (serial) executor, the
local process pool and a local Ray (slow: the nightly target installs the `ray` extra) give the same
result.json and summary.json bytes, wall times aside. `--seeds N` runs each variant over N seeds, one
folder per seed, and reports each figure's mean and 95% interval; bad executor options are one error
line naming the flag."""

from __future__ import annotations

import json
import os
import re
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
from test_sim_experiment import runner, tiny_config, write_config

from opscale.cli import app
from opscale.experiments.comparison import load_experiment
from opscale.experiments.pipeline import run_and_write

pytestmark = pytest.mark.sim

WALL_LINE = re.compile(rb'^\s*"wall_s": [^\n]*\n', re.MULTILINE)


def two() -> list[dict[str, Any]]:
    return [{"name": "static", "policy": "static"}, {"name": "reactive", "policy": "reactive"}]


def run(tmp_path: Path, out: str, *, seeds: int = 1, variants: list[dict[str, Any]] | None = None,
        **options: Any) -> tuple[Path, list[tuple[str, float]]]:
    """The tiny experiment run with `options`; its folder and the progress reports it made."""
    config, base = load_experiment(write_config(tmp_path, tiny_config(variants or two())))
    reports: list[tuple[str, float]] = []
    run_and_write(config, base, tmp_path / out, seeds=seeds,
                  progress=lambda label, now_s, end_s: reports.append((label, now_s)), **options)
    return tmp_path / out, reports


def json_files(out: Path) -> dict[str, bytes]:
    """Every result.json and summary.json under `out`, by relative path, without its wall-time lines."""
    return {str(p.relative_to(out)): WALL_LINE.sub(b"", p.read_bytes())
            for p in sorted(out.rglob("*.json"))}


def assert_same_files(a: Path, b: Path) -> None:
    first, second = json_files(a), json_files(b)
    assert sorted(first) == sorted(second)
    assert any(name.endswith("result.json") for name in first)
    for name in first:
        assert first[name] == second[name], name  # byte for byte, wall time aside


def test_serial_and_pool_executors_write_the_same_files_over_seeds(tmp_path: Path) -> None:
    reactive = two()[1:]  # one variant, two seeds: two worker processes (their start-up is most of the time)
    serial, serial_reports = run(tmp_path, "serial", executor="serial", seeds=2, variants=reactive)
    pool, pool_reports = run(tmp_path, "pool", executor="pool", parallel=2, seeds=2, variants=reactive)
    assert_same_files(serial, pool)
    labels = {"reactive seed-11", "reactive seed-12"}
    assert {label for label, _ in serial_reports} == labels
    assert {label for label, _ in pool_reports} == labels  # the workers' progress reaches this process


def test_seeds_write_a_folder_per_seed_and_intervals_over_them(tmp_path: Path) -> None:
    out, _ = run(tmp_path, "out", executor="serial", seeds=3)
    summary = json.loads((out / "summary.json").read_text())
    assert summary["seeds"] == [11, 12, 13] and summary["seed"] == 11
    for variant in summary["variants"]:
        name = variant["name"]
        results = [json.loads((out / name / f"seed-{s}" / "result.json").read_text()) for s in (11, 12, 13)]
        assert [r["seed"] for r in results] == [11, 12, 13]
        assert len({r["requests"] for r in results}) == 3  # each seed its own traffic
        assert not (out / name / "result.json").exists()
        # `result` keeps its one-seed meaning: the base seed's run
        assert variant["result"]["requests"] == results[0]["requests"]
        assert [s["seed"] for s in variant["seeds"]] == [11, 12, 13] and all(s["ok"] for s in variant["seeds"])
        gpu_hours = variant["interval"]["gpu_hours"]
        assert gpu_hours["values"] == pytest.approx([r["gpu_hours"] for r in results])
        assert gpu_hours["n"] == 3 and gpu_hours["low"] <= gpu_hours["mean"] <= gpu_hours["high"]
        slo = variant["interval"]["tiers.interactive.slo_attainment"]
        assert slo["mean"] == pytest.approx(sum(r["tiers"]["interactive"]["slo_attainment"] for r in results) / 3)
        assert "wall_s" not in variant["interval"] and "seed" not in variant["interval"]
    table = (out / "summary.md").read_text()
    assert "## Over the seeds (3; mean [95% interval, Student t])" in table
    assert re.search(r"\| static \| 3 / 3 \| [0-9.]+% \[", table), table


def test_one_seed_keeps_the_summary_shape(tmp_path: Path) -> None:
    out, _ = run(tmp_path, "out", executor="serial")
    summary = json.loads((out / "summary.json").read_text())
    assert "seeds" not in summary
    assert all(set(v) == {"name", "policy", "ok", "error", "result"} for v in summary["variants"])
    assert (out / "static" / "result.json").exists() and not (out / "static" / "seed-11").exists()
    assert "Over the seeds" not in (out / "summary.md").read_text()


def cli(tmp_path: Path, *options: str) -> Any:
    config = write_config(tmp_path, tiny_config(two()))
    return runner.invoke(app, ["experiment", "run", str(config), "--out", str(tmp_path / "out"), *options])


@pytest.mark.parametrize(("options", "expected"), [
    (["--seeds", "0"], "--seeds"),
    (["--executor", "slurm"], "--executor: unknown executor 'slurm'; known: pool, serial, ray"),
    (["--address", "10.0.0.1:6379"], "--address is a Ray cluster's address: it needs --executor ray"),
])
def test_bad_executor_options_name_the_flag(tmp_path: Path, options: list[str], expected: str) -> None:
    result = cli(tmp_path, *options)
    assert result.exit_code == 2, result.output
    assert expected in result.output and "Traceback" not in result.output
    assert not (tmp_path / "out" / "static").exists()


def test_ray_missing_says_to_install_the_extra(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(__import__("sys").modules, "ray", None)  # `import ray` raises ImportError
    result = cli(tmp_path, "--executor", "ray")
    assert result.exit_code == 2, result.output
    assert "pip install 'opscale[ray]'" in result.output and "Traceback" not in result.output


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_an_unreachable_ray_address_is_named(tmp_path: Path) -> None:
    pytest.importorskip("ray")
    address = f"127.0.0.1:{closed_port()}"
    result = cli(tmp_path, "--executor", "ray", "--address", address)
    assert result.exit_code == 2, result.output
    assert f"--address {address}: no Ray cluster answers there" in result.output
    assert "Traceback" not in result.output


@pytest.mark.slow
def test_ray_executor_writes_the_same_files_as_the_pool(tmp_path: Path) -> None:
    pytest.importorskip("ray")
    pool, _ = run(tmp_path, "pool", parallel=2, seeds=2)
    on_ray, reports = run(tmp_path, "ray", executor="ray", parallel=2, seeds=2)
    assert_same_files(pool, on_ray)
    assert {label for label, _ in reports} == {"static seed-11", "static seed-12", "reactive seed-11",
                                               "reactive seed-12"}  # the tasks' progress came back
    for name in ("static", "reactive"):
        assert (on_ray / name / "seed-11" / "load_vs_capacity.png").stat().st_size > 5_000


def wait_for_port(port: int, head: subprocess.Popen[bytes], within_s: float = 120.0) -> None:
    """Until the head answers at `port` (a setup wait, not a measurement)."""
    deadline = time.monotonic() + within_s
    while time.monotonic() < deadline:
        assert head.poll() is None, "ray start --head exited"
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1.0).close()
            return
        except OSError:
            time.sleep(0.5)
    raise AssertionError(f"the Ray head did not answer at port {port}")


@pytest.mark.slow
def test_ray_executor_on_a_cluster_at_an_address(tmp_path: Path) -> None:
    """A cluster started apart (`ray start --head`) and joined by `opscale experiment run --address`, as a
    user does, from a process of its own: the same files as the pool, and the cluster is left running (the
    experiment only disconnects). (In one Python process, Ray 2.60 does not join a cluster after a local
    Ray of a different authentication mode: hence the command, not run_and_write, here.)"""
    pytest.importorskip("ray")
    port = closed_port()
    env = {**os.environ, "RAY_AUTH_MODE": "disabled"}  # a test cluster on this machine, joined without a token
    bin_dir = Path(sys.executable).parent
    head = subprocess.Popen([str(bin_dir / "ray"), "start", "--head", "--block", "--port", str(port),
                             "--num-cpus", "2", "--include-dashboard", "false", "--disable-usage-stats"],
                            env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_for_port(port, head)
        reactive = two()[1:]
        pool, _ = run(tmp_path, "pool", seeds=2, variants=reactive)
        config = write_config(tmp_path, tiny_config(reactive))
        joined = subprocess.run([str(bin_dir / "opscale"), "experiment", "run", str(config), "--executor", "ray",
                                 "--address", f"127.0.0.1:{port}", "--seeds", "2", "--out", str(tmp_path / "cluster")],
                                env=env, capture_output=True, text=True, timeout=600)
        assert joined.returncode == 0, joined.stdout + joined.stderr
        assert_same_files(pool, tmp_path / "cluster")
        assert head.poll() is None  # still running
    finally:
        head.terminate()  # `ray start --block` stops the processes it started
        head.wait(timeout=60)

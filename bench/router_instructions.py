"""The router's user-space instructions per request, counted by valgrind's callgrind: the working tree
against a git revision, in the same run.

`bench/router_proxy.py` reads CPU time, which on a shared machine moves by 10-20% between runs (other
jobs, a neighbour on the host, frequency); callgrind counts the instructions the router process runs,
the same for the same code and inputs whatever else the machine does, so a change of a few percent to
the router's Python shows. It does not see the kernel (system calls are about half the router's CPU per
request, and equal to vllm-router's), and an instruction is not a fixed time, so it complements the CPU
figures rather than replacing them; vllm-router is not counted here, its threads' idle work counts
with time rather than with requests.

Each target is opscale's router built as `router_proxy.py --role opscale` builds it (API keys on,
request metrics, HTTP limits), run under `valgrind --tool=callgrind` with instrumentation off until a
warm-up of 20 requests is done, then on for `--requests` sequential streaming requests through a
fixed-latency upstream (bench/_loopback_http.py), one per token count in `--tokens`. With two token
counts the figure splits into a fixed part per request and a part per token. The baseline is the
revision `--baseline` (default HEAD), unpacked with `git archive` into a temporary folder and imported
ahead of the installed package (PYTHONPATH), with this checkout's virtual environment.

    python bench/router_instructions.py [--baseline REF] [--requests 300] [--tokens 1 16]

About 20 s per target and token count on a 2-core machine. The last line of output is one JSON object.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _machine import machine  # noqa: E402
from _revision import commit_of, python_path, unpack  # noqa: E402

from opscale.runtime.live.local_servers import free_port, terminate  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
MODEL = "bench-model"
BENCH_KEY = "sk-bench-0123456789abcdef"  # router_proxy.py's: its opscale role asks for it
WARM_UP = 20


async def _requests(url: str, tokens: int, count: int) -> None:
    import aiohttp

    body = {"model": MODEL, "prompt": "hello", "max_tokens": tokens, "stream": True}
    headers = {"Authorization": f"Bearer {BENCH_KEY}"}
    async with aiohttp.ClientSession() as session:
        for _ in range(count):
            async with session.post(f"{url}/v1/completions", json=body, headers=headers) as resp:
                data = await resp.read()
                if resp.status != 200 or not data.endswith(b"data: [DONE]\n\n"):
                    raise SystemExit(f"the router answered {resp.status}: {data[-200:]!r}")


def count(tree: Path, env: dict[str, str], tokens: int, requests: int, workdir: Path, tag: str) -> dict[str, Any]:
    """Instructions per request of the router from `tree` (its bench/router_proxy.py opscale role)."""
    up_port, port = free_port(), free_port()
    python = sys.executable
    upstream = subprocess.Popen([python, str(ROOT / "bench" / "router_proxy.py"), "--role", "upstream", "--port",
                                 str(up_port), "--tokens", str(tokens), "--token-gap-ms", "1"])
    out = workdir / f"callgrind.{tag}"
    router = subprocess.Popen(["valgrind", "--tool=callgrind", "--instr-atstart=no", f"--callgrind-out-file={out}",
                               python, str(tree / "bench" / "router_proxy.py"), "--role", "opscale", "--port",
                               str(port), "--upstream", f"http://127.0.0.1:{up_port}"],
                              stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, env=env, cwd=tree)
    try:
        assert router.stdout is not None
        ready = router.stdout.readline()
        if b"ready" not in ready:
            raise SystemExit(f"the router under valgrind did not start ({tag}): {ready!r}")
        _wait_http(f"http://127.0.0.1:{up_port}/health")
        url = f"http://127.0.0.1:{port}"
        asyncio.run(_requests(url, tokens, WARM_UP))
        subprocess.run(["callgrind_control", "-i", "on", str(router.pid)], check=True, capture_output=True)
        started = time.perf_counter()
        asyncio.run(_requests(url, tokens, requests))
        wall_s = time.perf_counter() - started
        subprocess.run(["callgrind_control", "-i", "off", str(router.pid)], check=True, capture_output=True)
        router.send_signal(signal.SIGTERM)
        router.wait(120)  # callgrind writes its counts at the exit
    finally:
        terminate(router, 10.0)
        terminate(upstream, 10.0)
    total = 0
    for path in workdir.glob(f"callgrind.{tag}*"):
        for line in path.read_text().splitlines():
            if line.startswith("totals:"):  # ("summary:" is written too, but holds 0 when counting began late)
                total += int(line.split()[1])
                break
    return {"tokens": tokens, "requests": requests, "instructions": total,
            "instructions_per_request": round(total / requests), "wall_s_under_valgrind": round(wall_s, 1)}


def _wait_http(url: str, timeout_s: float = 60.0) -> None:
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            with urllib.request.urlopen(url, timeout=2):
                return
        except OSError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.2)


def split(points: list[dict[str, Any]]) -> dict[str, float] | None:
    """Fixed instructions per request and instructions per token, from the lowest and highest token counts."""
    if len(points) < 2:
        return None
    low, high = min(points, key=lambda p: p["tokens"]), max(points, key=lambda p: p["tokens"])
    per_token = (high["instructions_per_request"] - low["instructions_per_request"]) / (high["tokens"] - low["tokens"])
    return {"per_token": round(per_token), "fixed": round(low["instructions_per_request"] - per_token * low["tokens"])}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--baseline", default="HEAD", help="git revision to compare the working tree against")
    parser.add_argument("--requests", type=int, default=300, help="Requests counted per target and token count")
    parser.add_argument("--tokens", type=int, nargs="+", default=[1, 16], help="Tokens per streamed answer")
    args = parser.parse_args()
    for tool in ("valgrind", "callgrind_control", "git", "tar"):
        if shutil.which(tool) is None:
            print(json.dumps({"skipped": f"{tool} is not installed", "machine": machine()}))
            return
    results: dict[str, Any] = {}
    with tempfile.TemporaryDirectory(prefix="opscale-instructions-") as tmp:
        work = Path(tmp)
        baseline = unpack(args.baseline, work / "baseline")
        base_env = {**os.environ, "PYTHONPATH": python_path(baseline)}
        tree_env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
        for name, tree, env in (("working_tree", ROOT, tree_env), ("baseline", baseline, base_env)):
            points = []
            for tokens in args.tokens:
                points.append(count(tree, env, tokens, args.requests, work, f"{name}.{tokens}"))
                print(f"{name}, {tokens} tokens: {points[-1]['instructions_per_request']:,} instructions a request",
                      file=sys.stderr)
            results[name] = {"points": points, "split": split(points)}
    ratios = {str(p["tokens"]): round(p["instructions_per_request"] / b["instructions_per_request"], 4)
              for p, b in zip(results["working_tree"]["points"], results["baseline"]["points"], strict=True)}
    results["baseline_commit"] = commit_of(args.baseline)
    valgrind = subprocess.run(["valgrind", "--version"], capture_output=True, text=True).stdout.strip()
    print(json.dumps({"benchmark": "router_instructions", "machine": machine(), "valgrind": valgrind,
                      "baseline_ref": args.baseline, **results,
                      "ratio_working_tree_to_baseline": ratios}))


if __name__ == "__main__":
    main()

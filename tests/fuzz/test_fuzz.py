"""The fuzz targets (fuzz_targets.py): every parser of outside bytes answers with its own clean error or
a result, never another exception.

Default run: each target under hypothesis, on its seeds mutated (bytes replaced, inserted, cut) and on
raw bytes, a few hundred inputs in all. Slow run (`pytest -m slow`): each target under atheris for
`OPSCALE_FUZZ_SECONDS` (20 s by default), skipped when atheris (the `fuzz` extra) is not installed.
"""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
from pathlib import Path

import pytest
from fuzz_targets import _CHUNK, SEEDS, TARGETS
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

HERE = Path(__file__).resolve().parent
FUZZ_SECONDS = int(os.environ.get("OPSCALE_FUZZ_SECONDS", "20"))


@st.composite
def mutated(draw: st.DrawFn, seeds: list[bytes]) -> bytes:
    """A seed with a few edits: a span replaced by random bytes, bytes inserted, or the tail cut."""
    if not seeds or draw(st.integers(0, 9)) == 0:
        return draw(st.binary(max_size=512))
    data = bytearray(draw(st.sampled_from(seeds)))
    for _ in range(draw(st.integers(1, 4))):
        at = draw(st.integers(0, len(data)))
        action = draw(st.sampled_from(("replace", "insert", "cut", "digits", "nest")))
        if action == "replace":
            data[at:at + draw(st.integers(1, 8))] = draw(st.binary(min_size=1, max_size=8))
        elif action == "insert":
            data[at:at] = draw(st.binary(min_size=1, max_size=16)) or b"\x00"
        elif action == "cut":
            del data[at:]
        elif action == "digits":  # huge numbers: past float range, past int's 4300-digit conversion limit
            data[at:at] = b"9" * draw(st.sampled_from((20, 400, 5000)))
        else:  # deep nesting: past json's recursion limit
            data[at:at] = b"[" * 100_000
    return bytes(data)


@pytest.mark.unit
@pytest.mark.parametrize("name", sorted(TARGETS))
def test_seeds_are_accepted(name: str) -> None:
    """The seeds are valid inputs, so mutations start from the parsers' accepting paths."""
    for seed in SEEDS[name]:
        assert TARGETS[name](seed), f"{name} refused its seed {seed[:60]!r}"


@pytest.mark.unit
@pytest.mark.parametrize("name", sorted(TARGETS))
def test_mutated_inputs_get_clean_errors(name: str) -> None:
    target = TARGETS[name]

    @settings(max_examples=40, deadline=None, derandomize=True,
              suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
    @given(data=mutated(SEEDS[name]))
    def run(data: bytes) -> None:
        target(data)

    run()


@pytest.mark.slow
@pytest.mark.parametrize("name", sorted(TARGETS))
def test_atheris_finds_nothing(name: str) -> None:
    if importlib.util.find_spec("atheris") is None:
        pytest.skip('atheris is not installed (pip install -e ".[dev,fuzz]")')
    proc = subprocess.run(
        [sys.executable, str(HERE / "run_atheris.py"), name, f"-max_total_time={FUZZ_SECONDS}",
         "-timeout=20", "-rss_limit_mb=3072", "-print_final_stats=1"],
        capture_output=True, text=True, timeout=FUZZ_SECONDS + 120, cwd=HERE)
    output = proc.stdout + proc.stderr
    assert proc.returncode == 0, f"atheris found a failing input for {name}:\n{output[-6000:]}"
    runs = [line for line in output.splitlines() if line.startswith("stat::number_of_executed_units")]
    print(f"{name}: {runs[-1] if runs else 'no stats'}")


# Inputs that broke a target before the fix named beside each: kept so that they stay fixed.
_HUGE = b"9" * 5000  # past int's 4300-digit conversion limit: json raises ValueError, not JSONDecodeError
_DEEP = b"[" * 100_000  # past json's recursion limit: RecursionError
FOUND: list[tuple[str, bytes]] = [
    # parse_completion answered a ValueError (a 500) instead of a 400
    ("openai_request", b'{"model":"m","prompt":"x","max_tokens":' + _HUGE + b"}"),
    # JSONL readers raised ValueError / RecursionError instead of a TraceFormatError naming the line
    ("trace_mooncake", SEEDS["trace_mooncake"][0] + b'{"timestamp":' + _HUGE + b"}\n"),
    ("trace_mooncake", SEEDS["trace_mooncake"][0] + _DEEP + b"\n"),
    ("trace_jsonl", SEEDS["trace_jsonl"][0] + b'{"arrival_s":' + _HUGE + b"}\n"),
    ("trace_mapped", SEEDS["trace_mapped"][1] + _DEEP + b"\n"),
    # format detection raised RecursionError on a deeply nested first line
    ("trace_detected", b"{" + b'"a":' * 1 + _DEEP + b"\n"),
    # a ServeGen dataset file raised RecursionError; a window key of 1e5000 became start_s=inf
    ("trace_servegen", b'{"0": ' + _DEEP + b"}"),
    ("trace_servegen", b'{"' + _HUGE + b'": {"input_tokens": "{1: 1}"}}'),
    # a gzip member whose deflate data is corrupt raised zlib.error (not an OSError) out of both ServeGen
    # readers instead of a TraceFormatError naming the file (found by atheris)
    ("trace_servegen", b"\x1f\x8b\x08\x08" + b"\x08" * 39 + b"V" * 14 + b"\x08" * 26 + b"'" + b"\x08" * 9 + b"\x00"
                       + b"\x08" * 9 + b" "),
    # an engine's SSE event or error body that was deeply nested or held a huge integer raised out of the
    # router's stream (decode_event, event_usage, error_detail) instead of an UpstreamError
    ("sse_decoder", b"\xff" + b"data: " + b"[" * 3000 + b"\n\n"),
    ("sse_decoder", b"\xff" + b'data: {"usage":{"completion_tokens":' + _HUGE + b"}}\n\n"),
    ("sse_forwarder", b"\xff" + b"data: " + b"[" * 3000 + b"\n\n"),
    # SseForwarder took a line `dat)data: [DONE]` (a field named `dat)data`) for the end of the stream and
    # counted -1 output chunks for it (found by atheris)
    ("sse_forwarder", b"\x1f: keep-alive\n\n" + _CHUNK + b'da"text":"","finish_reason":"length"}]}\n\n'
                      b"dat)data: [DONE]\n\n"),
    ("http_response", b"\xffHTTP/1.1 500 Oops\r\nContent-Length: 1000\r\n\r\n" + b"[" * 1000),
    ("http_response", b"\xffHTTP/1.1 200 OK\r\nContent-Length: 1000\r\n\r\ndata: " + b"[" * 990 + b"\n\n"),
    # the router's API server answered a chunked body whose trailer llhttp refused with 400 but kept the
    # connection open for the linger, though its parser could read nothing more (found by atheris)
    ("http_request", b"\x07POST /stream HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n"
                     b"5\r\nhello\r\n3;ext=1\r\nabc\r\n0\r\n\r\x1d"),
]


@pytest.mark.unit
@pytest.mark.parametrize(("name", "data"), FOUND, ids=[f"{n}-{i}" for i, (n, _) in enumerate(FOUND)])
def test_inputs_found_on_the_way_stay_fixed(name: str, data: bytes) -> None:
    TARGETS[name](data)

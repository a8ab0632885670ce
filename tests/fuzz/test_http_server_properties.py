"""Properties of the router's HTTP/1.1 request reader (opscale_services.router.http1_server), under
hypothesis: however the bytes are split into reads, pipelined requests (with `Content-Length` or chunked
bodies) are each answered once, in order, with their bodies read whole; a bad request line is 400, a head
over its bounds 431 and a body over its bound 413, each with OpenAI's error body and the close, and
nothing is read or answered after it. The server connection runs on a transport that keeps what it
writes (fuzz_targets.serve_reads), so no socket is opened."""

from __future__ import annotations

import asyncio
import json

import pytest
from fuzz_targets import SERVER_LIMITS, read_answers, serve_reads
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

pytestmark = pytest.mark.unit

MAX_BODY = SERVER_LIMITS.max_body_bytes
PROPERTY = settings(max_examples=60, deadline=None, derandomize=True, suppress_health_check=[HealthCheck.too_slow])


def run(reads: list[bytes]) -> tuple[list[tuple[int, dict[str, str], bytes]], bool]:
    loop = asyncio.new_event_loop()
    try:
        written, closed = loop.run_until_complete(serve_reads(reads))
    finally:
        loop.close()
    return read_answers(written), closed


def split(data: bytes, cuts: list[int]) -> list[bytes]:
    points = sorted({c % (len(data) + 1) for c in cuts} | {0, len(data)})
    return [data[a:b] for a, b in zip(points, points[1:], strict=False) if b > a]


def chunked(body: bytes, sizes: list[int]) -> bytes:
    out, at = b"", 0
    for size in sizes:
        piece = body[at:at + size]
        if not piece:
            break
        out += b"%x\r\n%b\r\n" % (len(piece), piece)
        at += len(piece)
    if at < len(body):
        out += b"%x\r\n%b\r\n" % (len(body) - at, body[at:])
    return out + b"0\r\n\r\n"


_request = st.tuples(st.sampled_from(["/v1/completions", "/stream", "/v1/models"]),
                     st.binary(max_size=MAX_BODY), st.booleans(), st.lists(st.integers(1, 64), max_size=6))


def encode(path: str, body: bytes, as_chunks: bool, sizes: list[int]) -> bytes:
    if as_chunks:
        return (f"POST {path} HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n".encode()
                + chunked(body, sizes))
    return f"POST {path} HTTP/1.1\r\nHost: x\r\nContent-Length: {len(body)}\r\n\r\n".encode() + body


@PROPERTY
@given(requests=st.lists(_request, min_size=1, max_size=5), cuts=st.lists(st.integers(0, 10_000), max_size=12))
def test_pipelined_requests_are_answered_once_each_in_order_however_split(
        requests: list[tuple[str, bytes, bool, list[int]]], cuts: list[int]) -> None:
    data = b"".join(encode(*r) for r in requests)
    answers, closed = run(split(data, cuts))
    assert not closed  # a kept connection
    assert [status for status, _, _ in answers] == [200] * len(requests)
    for (path, body, _, _), (_, headers, answer) in zip(requests, answers, strict=True):
        if path == "/stream":
            assert headers["transfer-encoding"] == "chunked"
            answer = answer.split(b"\n\n")[0].removeprefix(b"data: ")
        summary = json.loads(answer)
        assert summary == {"method": "POST", "path": path, "body": len(body), "digest": sum(body) % 65521}


def assert_refused(answers: list[tuple[int, dict[str, str], bytes]], status: int, code: str) -> None:
    *before, (last_status, headers, body) = answers
    assert all(s == 200 for s, _, _ in before)
    assert last_status == status and headers["connection"] == "close"
    error = json.loads(body)["error"]
    assert error["code"] == code and error["type"] == "invalid_request_error" and error["message"]


_line_char = st.sampled_from([bytes([b]) for b in range(256) if b not in b"\r\n"])


@PROPERTY
@given(line=st.lists(_line_char, min_size=1, max_size=80).map(b"".join), cuts=st.lists(st.integers(0, 200)))
def test_a_request_line_that_is_not_http_is_400_then_the_close(line: bytes, cuts: list[int]) -> None:
    good = b"GET /v1/models HTTP/1.1\r\nHost: x\r\n\r\n"
    bad = b"\x00" + line + b"\r\nHost: x\r\n\r\n"  # no method starts with a NUL
    answers, closed = run(split(good + bad + good, cuts))
    assert closed
    assert_refused(answers, 400, "bad_http_request")
    assert len(answers) == 2  # the request after the bad one is never answered


@PROPERTY
@given(extra=st.integers(1, 3000), many=st.booleans(), cuts=st.lists(st.integers(0, 5000), max_size=8))
def test_a_head_over_its_bounds_is_431_then_the_close(extra: int, many: bool, cuts: list[int]) -> None:
    limit = SERVER_LIMITS.max_header_bytes
    if many:
        fields = "".join(f"X-H{i}: v\r\n" for i in range(SERVER_LIMITS.max_headers + min(extra, 50)))
    else:
        fields = f"X-Big: {'a' * (limit + extra)}\r\n"
    head = f"POST /v1/completions HTTP/1.1\r\nHost: x\r\n{fields}Content-Length: 2\r\n\r\n{{}}".encode()
    answers, closed = run(split(head, cuts))
    assert closed
    assert_refused(answers, 431, "request_header_fields_too_large")


@PROPERTY
@given(over=st.integers(1, 4 * MAX_BODY), as_chunks=st.booleans(), sizes=st.lists(st.integers(1, 300), max_size=8),
       cuts=st.lists(st.integers(0, 5000), max_size=8))
def test_a_body_over_its_bound_is_413_then_the_close(over: int, as_chunks: bool, sizes: list[int],
                                                     cuts: list[int]) -> None:
    data = encode("/v1/completions", b"x" * (MAX_BODY + over), as_chunks, sizes)
    answers, closed = run(split(data, cuts))
    assert closed  # the whole refused body was read (and dropped): the close comes at its end
    assert_refused(answers, 413, "request_too_large")


@PROPERTY
@given(body=st.binary(max_size=MAX_BODY), sizes=st.lists(st.integers(1, 300), min_size=1, max_size=8),
       cuts=st.lists(st.integers(0, 5000), max_size=8))
def test_a_chunked_body_within_its_bound_is_read_whole(body: bytes, sizes: list[int], cuts: list[int]) -> None:
    answers, _ = run(split(encode("/v1/completions", body, True, sizes), cuts))
    [(status, _, answer)] = answers
    assert status == 200 and json.loads(answer)["body"] == len(body)


_UPGRADES = ["Connection: Upgrade, HTTP2-Settings\r\nUpgrade: h2c\r\nHTTP2-Settings: AAMAAABkAARAAAAAAAIAAAAA\r\n",
             "Connection: Upgrade\r\nUpgrade: websocket\r\n"]


@PROPERTY
@given(upgrade=st.sampled_from(_UPGRADES), body=st.binary(max_size=MAX_BODY), before=st.booleans(),
       cuts=st.lists(st.integers(0, 2000), max_size=8))
def test_a_request_asking_for_an_upgrade_is_answered_once_as_http11_with_its_body_then_the_close(
        upgrade: str, body: bytes, before: bool, cuts: list[int]) -> None:
    # as `curl --http2` asks on http://: the Upgrade ignored, the request served, and nothing after it
    good = encode("/v1/completions", b"{}", False, [])
    asked = (f"POST /v1/completions HTTP/1.1\r\nHost: x\r\n{upgrade}Content-Length: {len(body)}\r\n\r\n".encode()
             + body)
    answers, closed = run(split((good if before else b"") + asked + good, cuts))
    assert closed
    assert [status for status, _, _ in answers] == [200] * (1 + before)
    _, headers, answer = answers[-1]
    assert headers["connection"] == "close" and json.loads(answer)["body"] == len(body)


def test_a_connect_request_is_answered_once_then_the_close() -> None:
    answers, closed = run([b"CONNECT example.com:443 HTTP/1.1\r\nHost: example.com:443\r\n\r\n\x16\x03\x01"])
    assert closed and len(answers) == 1 and answers[0][1]["connection"] == "close"


@PROPERTY
@given(keep=st.booleans(), count=st.integers(1, 3), cuts=st.lists(st.integers(0, 500), max_size=6))
def test_an_http10_client_is_told_when_its_connection_is_kept(keep: bool, count: int, cuts: list[int]) -> None:
    one = b"GET /v1/models HTTP/1.0\r\n%b\r\n" % (b"Connection: keep-alive\r\n" if keep else b"")
    answers, closed = run(split(one * count, cuts))
    if keep:  # each answered, each saying the connection stays (a 1.0 client assumes the close otherwise)
        assert not closed and [h["connection"] for _, h, _ in answers] == ["keep-alive"] * count
    else:  # the first answered, with the close
        assert closed and [h["connection"] for _, h, _ in answers] == ["close"]

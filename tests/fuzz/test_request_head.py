"""The server's reading of whole, plain requests in one call (services/router/_request_head.c,
`http1_server.parse_request`): what it reads, what it leaves to llhttp, and, on generated requests split
into reads at random points, the same requests, answers and close as llhttp's reading of the same bytes
(fuzz_targets.read_alike, the differential that atheris also runs)."""

from __future__ import annotations

import shutil
import sysconfig

import pytest
from fuzz_targets import _LOOP, _serve_recorded, read_alike
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from opscale_services.router import http1_server

pytestmark = pytest.mark.unit

parse = http1_server.parse_request
built = pytest.mark.skipif(parse is None, reason="the extension is not built: llhttp reads every request")

BODY = b'{"model":"m","prompt":"hi","max_tokens":4,"stream":true}'
SDK_HEAD = (  # the openai SDK's headers (v1), as it sends them
    "Host: router:8000\r\nAccept-Encoding: gzip, deflate\r\nConnection: keep-alive\r\nAccept: application/json\r\n"
    "Content-Type: application/json\r\nUser-Agent: OpenAI/Python 1.54.0\r\nX-Stainless-Lang: python\r\n"
    "X-Stainless-Package-Version: 1.54.0\r\nX-Stainless-OS: Linux\r\nX-Stainless-Arch: x64\r\n"
    "X-Stainless-Runtime: CPython\r\nX-Stainless-Runtime-Version: 3.11.7\r\nAuthorization: Bearer sk-a\r\n"
    "X-Stainless-Async: false\r\nX-Stainless-Retry-Count: 0\r\n")


def request(head: str, body: bytes = BODY, line: str = "POST /v1/completions HTTP/1.1") -> bytes:
    return f"{line}\r\n{head}Content-Length: {len(body)}\r\n\r\n".encode() + body


def read(data: bytes, start: int = 0, max_line: int = 8190, max_headers: int = 100) -> tuple[object, ...] | None:
    assert parse is not None
    return parse(data, start, max_line, max_headers)


@pytest.mark.skipif(sysconfig.get_config_var("CC") is None or shutil.which(
    str(sysconfig.get_config_var("CC")).split()[0]) is None, reason="no C compiler: llhttp reads every request")
def test_an_install_with_a_c_compiler_builds_the_request_reader() -> None:
    # optional in setup.py, so a failed build is only a warning at install time: here it would show as
    # every request read by llhttp's callbacks, at more CPU per request
    assert parse is not None


@built
def test_an_sdk_request_is_read_whole_with_lower_case_names() -> None:
    data = request(SDK_HEAD)
    method, target, version, headers, body, keep_alive, end = read(data)  # type: ignore[misc]
    assert (method, target, version, body, keep_alive, end) == ("POST", "/v1/completions", "1.1", BODY, True, len(data))
    assert headers["authorization"] == "Bearer sk-a" and headers["x-stainless-retry-count"] == "0"
    assert headers["content-length"] == str(len(BODY)) and len(headers) == 16
    assert all(name == name.lower() for name in headers)


@built
def test_repeated_headers_are_joined_and_pipelined_requests_read_in_turn() -> None:
    first = request("X-A: 1\r\nx-a:  2\r\nX-A:\r\n", b"abc", "PUT /a?q=%20 HTTP/1.1")
    second = b"GET /b HTTP/1.0\r\nConnection: Keep-Alive\r\n\r\n"
    data = first + second
    one = read(data)
    assert one is not None and one[3] == {"x-a": "1, 2, ", "content-length": "3"} and one[1] == "/a?q=%20"
    assert one[6] == len(first)
    two = read(data, len(first))
    assert two == ("GET", "/b", "1.0", {"connection": "Keep-Alive"}, b"", True, len(data))
    empty = read(b"GET / HTTP/1.1\r\nHost: \r\nHost:\r\n\r\n")  # (the empty str is one object: still joined)
    assert empty is not None and empty[3] == {"host": ", "}


@built
@pytest.mark.parametrize(("line", "head", "keep_alive"), [
    ("GET / HTTP/1.1", "", True),
    ("GET / HTTP/1.1", "Connection: close\r\n", False),
    ("GET / HTTP/1.1", "Connection: CLOSE\r\n", False),
    ("GET / HTTP/1.0", "", False),
    ("GET / HTTP/1.0", "Connection: keep-alive\r\n", True),
])
def test_keep_alive_follows_the_version_and_connection(line: str, head: str, keep_alive: bool) -> None:
    whole = read(f"{line}\r\n{head}\r\n".encode())
    assert whole is not None and whole[5] is keep_alive


@built
@pytest.mark.parametrize("data", [
    b"POST /v1/completions HTTP/1.1\r\nContent-Length: 10\r\n\r\nshort",  # the body still to come
    b"POST /v1/completions HTTP/1.1\r\nHost: x\r\n",  # the head still to come
    b"POST /v1/completions HTTP/1.1\r\nHost: x\r\n\r",
    b"CONNECT host:443 HTTP/1.1\r\n\r\n",
    b"PRI * HTTP/2.0\r\n\r\n",
    b"get / HTTP/1.1\r\n\r\n",
    b"GET http://host/v1/models HTTP/1.1\r\n\r\n",  # absolute form
    b"GET /a#frag HTTP/1.1\r\n\r\n",
    b"GET /a b HTTP/1.1\r\n\r\n",
    b"GET / HTTP/1.2\r\n\r\n",
    b"GET / HTTP/2.0\r\n\r\n",
    b"\r\nGET / HTTP/1.1\r\n\r\n",  # a CRLF between pipelined requests
    b"GET / HTTP/1.1\nHost: x\n\n",  # bare LF
    b"GET / HTTP/1.1\r\nHost : x\r\n\r\n",
    b"GET / HTTP/1.1\r\n Host: x\r\n\r\n",  # obs-fold
    b"GET / HTTP/1.1\r\nHost: x\r\n folded\r\n\r\n",
    b"GET / HTTP/1.1\r\nHost:\tx\r\n\r\n",
    b"GET / HTTP/1.1\r\nHost: x \r\n\r\n",  # a trailing space (llhttp keeps it)
    b"GET / HTTP/1.1\r\nHost: caf\xc3\xa9\r\n\r\n",
    b"GET / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
    b"GET / HTTP/1.1\r\nUpgrade: h2c\r\n\r\n",
    b"POST / HTTP/1.1\r\nExpect: 100-continue\r\nContent-Length: 1\r\n\r\nx",
    b"GET / HTTP/1.1\r\nProxy-Connection: close\r\n\r\n",
    b"GET / HTTP/1.1\r\nConnection: keep-alive, Upgrade\r\n\r\n",
    b"GET / HTTP/1.1\r\nConnection: close\r\nConnection: close\r\n\r\n",
    b"POST / HTTP/1.1\r\nContent-Length: 1\r\nContent-Length: 1\r\n\r\nx",
    b"POST / HTTP/1.1\r\nContent-Length: +1\r\n\r\nx",
    b"POST / HTTP/1.1\r\nContent-Length:\r\n\r\n",
    b"POST / HTTP/1.1\r\nContent-Length: 1234567890123456\r\n\r\n",
])
def test_what_is_not_a_whole_plain_request_is_left_to_llhttp(data: bytes) -> None:
    assert read(data) is None


@built
def test_what_is_over_the_servers_bounds_is_left_to_llhttp_which_refuses_it() -> None:
    assert read(b"GET /" + b"a" * 20 + b" HTTP/1.1\r\n\r\n", max_line=20) is None
    assert read(b"GET / HTTP/1.1\r\nX: " + b"a" * 18 + b"\r\n\r\n", max_line=20) is None  # (name, ": ", value)
    assert read(b"GET / HTTP/1.1\r\nX: " + b"a" * 17 + b"\r\n\r\n", max_line=20) is not None
    assert read(b"GET / HTTP/1.1\r\nA: 1\r\nB: 2\r\n\r\n", max_headers=1) is None


@built
def test_bad_arguments_are_refused() -> None:
    assert parse is not None
    with pytest.raises(TypeError):
        parse("GET / HTTP/1.1\r\n\r\n", 0, 10, 10)  # type: ignore[arg-type]
    with pytest.raises(TypeError):
        parse(b"", 0)  # type: ignore[call-arg]
    with pytest.raises(ValueError):
        parse(b"GET", 4, 10, 10)


@built
def test_plain_requests_are_read_in_one_call_each(monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[object] = []

    def counted(*args: object) -> object:
        whole = parse(*args)  # type: ignore[misc, arg-type]
        calls.append(whole)
        return whole

    monkeypatch.setattr(http1_server, "parse_request", counted)
    data = request("Host: x\r\nX-Key: k1\r\nAccept: text/event-stream\r\n") * 3  # (the fuzz server's bounds: 8 headers)
    seen, answers, closed = _LOOP.run_until_complete(_serve_recorded([data]))
    assert len(seen) == 3 and [status for status, _, _ in answers] == [200] * 3 and not closed
    assert len(calls) == 3 and all(whole is not None for whole in calls)


# -- generated requests: the C reading against llhttp's ------------------------------------------

_NAMES = (["Host", "X-Key", "Accept", "x-a", "X-A", "A!#$%&'*+-.^_`|~9", "Connection"],
          ["Transfer-Encoding", "Expect", "Upgrade", "Proxy-Connection", "Bad Name", "Bad\x7fName", "",
           "content-length"])
_VALUES = (["", "1", "k1", "no", "a  b", "x" * 40],
           ["01", "+1", "chunked", "100-continue", " x", "x ", "a\tb", "\tx", "caf\xe9", "\x01"])
_CONNECTION = (["close", "Close", "keep-alive", "KEEP-ALIVE"], ["upgrade", "keep-alive, Upgrade", "x"])


def pick(draw: st.DrawFn, choices: tuple[list[str], list[str]]) -> str:
    """Mostly what parse_request reads, one time in 32 what it leaves to llhttp (a request draws a dozen)."""
    plain, odd = choices
    return draw(st.sampled_from(odd if draw(st.integers(0, 31)) == 31 else plain))  # (hypothesis starts at 0)


@st.composite
def requests(draw: st.DrawFn) -> bytes:
    method = pick(draw, (["GET", "POST", "PUT", "DELETE", "HEAD", "OPTIONS", "PATCH"], ["CONNECT", "get", "PRI"]))
    target = pick(draw, (["/v1/completions", "/stream", "/", "/a?b=1&c=%20", "/" + "p" * 40],
                         ["/a#f", "*", "http://h/v1/models", "/a b", "/caf\xe9"]))
    version = pick(draw, (["HTTP/1.1", "HTTP/1.1", "HTTP/1.0"], ["HTTP/1.2", "HTTP/2.0", "http/1.1"]))
    eol = pick(draw, (["\r\n"], ["\n"]))
    lines = [f"{method} {target} {version}"]
    for _ in range(draw(st.integers(0, 5))):
        name = pick(draw, _NAMES)
        value = pick(draw, _CONNECTION if name == "Connection" else _VALUES)
        lines.append(f"{name}:{pick(draw, ([' ', '', '  '], [chr(9)]))}{value}")
    body = draw(st.binary(max_size=40))
    if draw(st.booleans()):
        lines.append(f"Content-Length: {len(body) + int(pick(draw, (['0'], ['-1', '1'])))}")
    head = eol.join(lines) + eol + eol
    return pick(draw, ([""], ["\r\n"])).encode() + head.encode("latin-1") + body


def read_both_ways(pipelined: list[bytes], cuts: list[int]) -> None:
    data = b"".join(pipelined)
    points = sorted({cut % (len(data) + 1) for cut in cuts} | {0, len(data)})
    read_alike([data[a:b] for a, b in zip(points, points[1:], strict=False) if b > a])


_PIPELINED = st.lists(requests(), min_size=1, max_size=4)
_CUTS = st.lists(st.integers(0, 4096), max_size=2)


@settings(max_examples=150, deadline=None, derandomize=True, suppress_health_check=[HealthCheck.too_slow])
@given(pipelined=_PIPELINED, cuts=_CUTS)
def test_generated_requests_are_read_as_llhttp_reads_them(pipelined: list[bytes], cuts: list[int]) -> None:
    read_both_ways(pipelined, cuts)


@pytest.mark.slow
@settings(max_examples=5000, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(pipelined=_PIPELINED, cuts=_CUTS)
def test_many_more_generated_requests_are_read_as_llhttp_reads_them(pipelined: list[bytes], cuts: list[int]) -> None:
    read_both_ways(pipelined, cuts)

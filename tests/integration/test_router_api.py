"""The router's HTTP API, the upstream client and the node-agent's engine server, on real loopback servers.

These need no NATS or Redis, so they are `unit` tests even though they open sockets. Timeouts passed
to the code under test are configuration; `asyncio.wait_for` guards only keep a broken build from hanging.
"""

from __future__ import annotations

import asyncio
import json
import socket
from collections.abc import AsyncIterator
from contextlib import AbstractAsyncContextManager
from typing import Any

import aiohttp
import pytest
from _router_service_loopback import serve
from aiohttp import web

from opscale.openai.routed_headers import (
    PROMPT_TOKENS_HEADER,
    REGION_HEADER,
    REQUEST_ID_HEADER,
    TIER_HEADER,
    routed_headers,
)
from opscale.openai.schema import ParsedRequest, RequestKind, TokenChunk
from opscale.openai.stream import EngineUsage
from opscale.runtime.live.server_limits import ServerLimits

from opscale_services.node_agent.engine_http import (
    EngineRequest,
    InstanceNotAccepting,
    RequestTooLarge,
    UnknownInstance,
    build_engine_app,
)
from opscale_services.router.api import RouteRejected, build_router_app
from opscale_services.router.upstream import UpstreamClient, UpstreamConfig, UpstreamError, completion_url

pytestmark = pytest.mark.unit

GUARD_S = 10.0  # hang guard only, never a performance threshold


def sse_payloads(raw: bytes) -> list[Any]:
    """Every `data:` payload of an SSE body, JSON-decoded except `[DONE]`."""
    assert raw.endswith(b"\n\n")
    out: list[Any] = []
    for event in raw.decode().split("\n\n")[:-1]:
        assert event.startswith("data: "), event
        data = event[len("data: "):]
        out.append(data if data == "[DONE]" else json.loads(data))
    return out


async def wait_for_event(event: asyncio.Event) -> None:
    await asyncio.wait_for(event.wait(), GUARD_S)


# -- a fake router back end -----------------------------------------------------------------------


class FakeBackend:
    """Yields `n_tokens` chunks per request, then `usage` when set (as an engine reports it); can
    refuse, fail, or stall. Records every request."""

    def __init__(self, n_tokens: int = 3, *, reject: RouteRejected | None = None, fail_after: int | None = None,
                 failure: Exception | None = None, stall_after: int | None = None, finish: bool = True,
                 usage: EngineUsage | None = None) -> None:
        self.n_tokens = n_tokens
        self.usage = usage
        self.reject = reject
        self.fail_after = fail_after
        self.failure = failure or RuntimeError("boom")
        self.stall_after = stall_after
        self.finish = finish
        self.seen: list[tuple[ParsedRequest, dict[str, str]]] = []
        self.closed = asyncio.Event()
        self.yielded = 0

    def models(self) -> list[str]:
        return ["m1", "m2"]

    def check(self, req: object) -> None:  # every name is known here
        return None

    async def generate(self, req: ParsedRequest,
                       trace_headers: dict[str, str]) -> AsyncIterator[TokenChunk | EngineUsage]:
        self.seen.append((req, trace_headers))
        try:
            if req.model not in self.models():  # as the router core decides
                raise RouteRejected(404, f"model {req.model!r} is not served here")
            if self.reject is not None:
                raise self.reject
            i = 0
            while self.stall_after is not None or i < self.n_tokens:
                if self.fail_after is not None and i == self.fail_after:
                    raise self.failure
                if self.stall_after is not None and i == self.stall_after:
                    await asyncio.Event().wait()  # a token that never comes
                last = self.stall_after is None and i == self.n_tokens - 1
                yield TokenChunk(f" t{i}", i, "length" if last and self.finish else None)
                self.yielded += 1
                i += 1
                await asyncio.sleep(0)  # noqa: TID251 - let the server notice a disconnect
            if self.usage is not None:
                yield self.usage
        finally:
            self.closed.set()


class EndlessBackend(FakeBackend):
    """Produces tokens until it is closed, with a short pause so a disconnect is seen between writes."""

    async def generate(self, req: ParsedRequest, trace_headers: dict[str, str]) -> AsyncIterator[TokenChunk]:
        try:
            i = 0
            while True:
                yield TokenChunk(f" t{i}", i, None)
                self.yielded += 1
                i += 1
                await asyncio.sleep(0.005)  # noqa: TID251 - pacing of a fake engine
        finally:
            self.closed.set()


# -- router API -----------------------------------------------------------------------------------


async def test_streaming_completion_sse_usage_and_done() -> None:
    backend = FakeBackend(3)
    async with serve(build_router_app(backend, wall_clock_s=lambda: 1234.9)) as url, aiohttp.ClientSession() as http:
        body = {"model": "m1", "prompt": "abcdefgh", "stream": True, "stream_options": {"include_usage": True},
                "opscale_tier": "batch"}
        headers = {"traceparent": "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01", "x-opscale-region": "eu"}
        async with http.post(f"{url}/v1/completions", json=body, headers=headers) as resp:
            assert resp.status == 200
            assert resp.content_type == "text/event-stream"
            raw = await resp.read()
            request_id = resp.headers["x-request-id"]
    payloads = sse_payloads(raw)
    assert payloads[-1] == "[DONE]"
    chunks, usage = payloads[:-2], payloads[-2]
    assert [c["choices"][0]["text"] for c in chunks] == [" t0", " t1", " t2"]
    assert [c["choices"][0]["finish_reason"] for c in chunks] == [None, None, "length"]
    assert all(c["object"] == "text_completion" and c["id"] == request_id and c["created"] == 1234 for c in chunks)
    assert all(c["usage"] is None for c in chunks)
    assert usage["choices"] == []
    assert usage["usage"] == {"prompt_tokens": 2, "completion_tokens": 3, "total_tokens": 5}
    req, trace = backend.seen[0]
    assert (req.tier, req.region, req.request_id) == ("batch", "eu", request_id)
    assert trace == {"traceparent": headers["traceparent"]}
    assert backend.closed.is_set()


async def test_streaming_chat_without_finish_reason_gets_a_closing_chunk() -> None:
    backend = FakeBackend(2, finish=False)
    async with serve(build_router_app(backend)) as url, aiohttp.ClientSession() as http:
        body = {"model": "m2", "messages": [{"role": "user", "content": "hi"}], "stream": True, "max_tokens": 5}
        async with http.post(f"{url}/v1/chat/completions", json=body) as resp:
            assert resp.status == 200
            payloads = sse_payloads(await resp.read())
    assert payloads[-1] == "[DONE]"
    chunks = payloads[:-1]
    assert chunks[0]["object"] == "chat.completion.chunk"
    assert chunks[0]["choices"][0]["delta"] == {"role": "assistant", "content": " t0"}
    assert chunks[1]["choices"][0]["delta"] == {"content": " t1"}
    assert chunks[2]["choices"][0] == {"index": 0, "delta": {"content": ""}, "logprobs": None, "finish_reason": "stop"}
    assert all("usage" not in c for c in chunks)  # not asked for


async def test_non_streaming_completion_and_chat_bodies() -> None:
    backend = FakeBackend(4)
    async with serve(build_router_app(backend, wall_clock_s=lambda: 7.0)) as url, aiohttp.ClientSession() as http:
        async with http.post(f"{url}/v1/completions", json={"model": "m1", "prompt": "x" * 12}) as resp:
            assert resp.status == 200
            body = await resp.json()
        async with http.post(f"{url}/v1/chat/completions",
                             json={"model": "m1", "messages": [{"role": "user", "content": "abcd"}]}) as resp:
            assert resp.status == 200
            chat = await resp.json()
    assert body["object"] == "text_completion" and body["created"] == 7
    assert body["choices"] == [{"index": 0, "text": " t0 t1 t2 t3", "logprobs": None, "finish_reason": "length"}]
    assert body["usage"] == {"prompt_tokens": 3, "completion_tokens": 4, "total_tokens": 7}
    assert chat["object"] == "chat.completion"
    assert chat["choices"][0]["message"] == {"role": "assistant", "content": " t0 t1 t2 t3"}
    assert chat["usage"]["prompt_tokens"] == 3 + 4 + 1  # priming + one message + "abcd"


async def test_the_engines_usage_wins_over_the_routers_estimate_in_both_answers() -> None:
    backend = FakeBackend(3, usage=EngineUsage(41, 3))
    async with serve(build_router_app(backend)) as url, aiohttp.ClientSession() as http:
        async with http.post(f"{url}/v1/completions", json={"model": "m1", "prompt": "abcdefgh"}) as resp:
            whole = await resp.json()
        body = {"model": "m1", "prompt": "abcdefgh", "stream": True, "stream_options": {"include_usage": True}}
        async with http.post(f"{url}/v1/completions", json=body) as resp:
            payloads = sse_payloads(await resp.read())
    assert whole["usage"] == {"prompt_tokens": 41, "completion_tokens": 3, "total_tokens": 44}  # not the estimate, 2
    assert [p["choices"][0]["text"] for p in payloads[:-2]] == [" t0", " t1", " t2"]
    assert payloads[-2]["usage"] == {"prompt_tokens": 41, "completion_tokens": 3, "total_tokens": 44}


async def test_models_list() -> None:
    async with serve(build_router_app(FakeBackend())) as url, aiohttp.ClientSession() as http:
        async with http.get(f"{url}/v1/models") as resp:
            body = await resp.json()
    assert body["object"] == "list"
    assert [m["id"] for m in body["data"]] == ["m1", "m2"]


BAD_REQUESTS: list[tuple[str, bytes, int, str | None, str]] = [
    ("/v1/completions", b"{oops", 400, None, "could not parse the JSON body"),
    ("/v1/completions", b'{"model": "m1"}', 400, "prompt", "prompt: Field required"),
    ("/v1/completions", b'{"model": "m1", "prompt": "x", "max_tokens": -3}', 400, "max_tokens", "-3"),
    ("/v1/completions", b'{"model": "m1", "prompt": ["a", "b"]}', 400, "prompt", "single prompt"),
    ("/v1/chat/completions", b'{"model": "m1", "messages": [{"role": "user", "content": 5}]}', 400,
     "messages[0].content", "messages[0].content: Input should be a valid string"),
    ("/v1/completions", b'{"model": "nope", "prompt": "x"}', 404, "model", "model 'nope' is not served here"),
]


@pytest.mark.parametrize(("path", "raw", "status", "param", "fragment"), BAD_REQUESTS)
async def test_bad_input_is_a_json_error_and_the_server_keeps_serving(
        path: str, raw: bytes, status: int, param: str | None, fragment: str) -> None:
    backend = FakeBackend(1)
    async with serve(build_router_app(backend)) as url, aiohttp.ClientSession() as http:
        async with http.post(f"{url}{path}", data=raw, headers={"Content-Type": "application/json"}) as resp:
            assert resp.status == status
            assert resp.content_type == "application/json"
            error = (await resp.json())["error"]
        async with http.post(f"{url}/v1/completions", json={"model": "m1", "prompt": "x"}) as resp:
            assert resp.status == 200  # the next request is served
    assert set(error) == {"message", "type", "param", "code"}
    assert error["param"] == param
    assert fragment in error["message"]
    if status == 404:
        assert error["code"] == "model_not_found"
    assert len(backend.seen) == (2 if status == 404 else 1)  # invalid bodies never reach the back end


async def test_oversized_body_is_413_declared_or_chunked() -> None:
    limits = ServerLimits(max_body_bytes=1000)
    async with serve(build_router_app(FakeBackend()), limits=limits) as url, aiohttp.ClientSession() as http:
        big = json.dumps({"model": "m1", "prompt": "x" * 5000}).encode()
        async with http.post(f"{url}/v1/completions", data=big) as resp:
            assert resp.status == 413
            assert (await resp.json())["error"]["code"] == "request_too_large"

        async def chunked() -> AsyncIterator[bytes]:
            for _ in range(10):
                yield b" " * 500

        async with http.post(f"{url}/v1/completions", data=chunked()) as resp:
            assert resp.status == 413
        async with http.post(f"{url}/v1/completions", json={"model": "m1", "prompt": "x"}) as resp:
            assert resp.status == 200


async def test_wrong_method_and_unknown_path_are_json_errors() -> None:
    async with serve(build_router_app(FakeBackend())) as url, aiohttp.ClientSession() as http:
        async with http.get(f"{url}/v1/completions") as resp:
            assert resp.status == 405
            assert "POST" in resp.headers["Allow"]
            assert (await resp.json())["error"]["type"] == "invalid_request_error"
        async with http.post(f"{url}/v2/nothing", json={}) as resp:
            assert resp.status == 404
            assert "error" in await resp.json()


@pytest.mark.parametrize(("reject", "status", "code", "retry_after"), [
    (RouteRejected(429, "overloaded", retry_after_s=1.5), 429, "rate_limit_exceeded", "2"),
    (RouteRejected(503, "no instance of m1 is ready", retry_after_s=5), 503, "no_capacity", "5"),
    (RouteRejected(404, "model m1 is not served in any region"), 404, "model_not_found", None),
])
async def test_route_rejections_map_to_status_and_retry_after(
        reject: RouteRejected, status: int, code: str, retry_after: str | None) -> None:
    async with serve(build_router_app(FakeBackend(reject=reject))) as url, aiohttp.ClientSession() as http:
        for stream in (False, True):
            async with http.post(f"{url}/v1/completions", json={"model": "m1", "prompt": "x", "stream": stream}) as resp:
                assert resp.status == status
                assert resp.headers.get("Retry-After") == retry_after
                error = (await resp.json())["error"]
                assert error["code"] == code and error["message"] == reject.message


async def test_unexpected_exception_is_500_without_traceback_and_serving_continues() -> None:
    backend = FakeBackend(3, fail_after=0, failure=ZeroDivisionError("secret internals"))
    async with serve(build_router_app(backend)) as url, aiohttp.ClientSession() as http:
        async with http.post(f"{url}/v1/completions", json={"model": "m1", "prompt": "x"}) as resp:
            assert resp.status == 500
            text = await resp.text()
        backend.fail_after = None
        async with http.post(f"{url}/v1/completions", json={"model": "m1", "prompt": "x"}) as resp:
            assert resp.status == 200
    error = json.loads(text)["error"]
    assert error["type"] == "server_error" and "request id" in error["message"]
    assert "secret" not in text and "Traceback" not in text and "ZeroDivisionError" not in text


@pytest.mark.parametrize(("failure", "code"), [
    (UpstreamError("protocol", "cut", before_first_token=False), "upstream_error"),
    (UpstreamError("timeout", "slow", before_first_token=False), "upstream_timeout"),
    (KeyError("internal"), "internal_error"),
])
async def test_failure_mid_stream_is_an_error_event_then_done(failure: Exception, code: str) -> None:
    backend = FakeBackend(5, fail_after=2, failure=failure)
    async with serve(build_router_app(backend)) as url, aiohttp.ClientSession() as http:
        async with http.post(f"{url}/v1/completions", json={"model": "m1", "prompt": "x", "stream": True}) as resp:
            assert resp.status == 200
            payloads = sse_payloads(await resp.read())
    assert [p["choices"][0]["text"] for p in payloads[:2]] == [" t0", " t1"]
    assert payloads[2]["error"]["code"] == code
    assert payloads[3] == "[DONE]"
    assert backend.closed.is_set()


async def test_upstream_failure_before_first_token_non_streaming_is_502() -> None:
    backend = FakeBackend(3, fail_after=0, failure=UpstreamError("connect", "refused", before_first_token=True))
    async with serve(build_router_app(backend)) as url, aiohttp.ClientSession() as http:
        async with http.post(f"{url}/v1/completions", json={"model": "m1", "prompt": "x"}) as resp:
            assert resp.status == 502
            assert (await resp.json())["error"]["code"] == "upstream_error"


async def _disconnect_after_first_event(url: str) -> None:
    async with aiohttp.ClientSession() as http:
        resp = await http.post(f"{url}/v1/completions", json={"model": "m1", "prompt": "x", "stream": True,
                                                                "max_tokens": 1000})
        assert resp.status == 200
        first = await resp.content.readuntil(b"\n\n")
        assert first.startswith(b"data: ")
        resp.close()  # drops the connection mid-stream


async def test_client_disconnect_while_back_end_waits_closes_the_generator() -> None:
    backend = FakeBackend(stall_after=1)  # one token, then waits forever for the next
    async with serve(build_router_app(backend)) as url:
        await _disconnect_after_first_event(url)
        await wait_for_event(backend.closed)
    assert backend.yielded == 1


async def test_client_disconnect_while_tokens_flow_closes_the_generator() -> None:
    backend = EndlessBackend()
    async with serve(build_router_app(backend)) as url:
        await _disconnect_after_first_event(url)
        await wait_for_event(backend.closed)  # the next failed write closes it


# -- engine server and upstream client ------------------------------------------------------------


class FakeEngineHost:
    """An EngineHost whose instances produce tokens with a short pause; records closed requests."""

    def __init__(self, *, stall_after: int | None = None, stop_after: int | None = None,
                 step: int = 1, fail_after: int | None = None, failure: Exception | None = None,
                 context_tokens: int = 1_000_000) -> None:
        self.instances = {"i-ready": "ready", "i-draining": "draining"}
        self.failure = failure or RuntimeError("engine crashed")
        self.context_tokens = context_tokens
        self.stall_after = stall_after
        self.stop_after = stop_after
        self.step = step
        self.fail_after = fail_after
        self.closed: list[str] = []
        self.closed_event = asyncio.Event()
        self.calls: list[tuple[str, str, int, int]] = []
        self.requests: list[EngineRequest] = []

    async def generate(self, instance_id: str, request: EngineRequest) -> AsyncIterator[int]:
        request_id, prompt_tokens, max_tokens = request.request_id, request.prompt_tokens, request.max_tokens
        state = self.instances.get(instance_id)
        if state is None:
            raise UnknownInstance(instance_id)
        if state != "ready":
            raise InstanceNotAccepting(state)
        if prompt_tokens + max_tokens > self.context_tokens:
            raise RequestTooLarge(f"{prompt_tokens} + {max_tokens} tokens > context of {self.context_tokens}")
        self.calls.append((instance_id, request_id, prompt_tokens, max_tokens))
        self.requests.append(request)
        try:
            count = 0
            limit = min(max_tokens, self.stop_after or max_tokens)
            while count < limit:
                if self.stall_after is not None and count == self.stall_after:
                    await asyncio.Event().wait()
                if self.fail_after is not None and count == self.fail_after:
                    raise self.failure
                await asyncio.sleep(0.001)  # noqa: TID251 - a fake engine's step time
                count = min(limit, count + self.step)
                yield count
        finally:
            self.closed.append(request_id)
            self.closed_event.set()


def engine(host: FakeEngineHost) -> AbstractAsyncContextManager[str]:
    return serve(build_engine_app(host))


async def collect(client: UpstreamClient, url: str, body: dict[str, Any], headers: dict[str, str] | None = None,
                  kind: RequestKind = RequestKind.COMPLETION) -> list[TokenChunk]:
    return [c async for c in client.stream_completion(url, body, headers, kind)]


def test_completion_url_forms() -> None:
    completion = RequestKind.COMPLETION
    assert completion_url("http://h:1/instances/i-1", completion) == "http://h:1/instances/i-1/v1/completions"
    assert completion_url("http://h:1/", RequestKind.CHAT) == "http://h:1/v1/chat/completions"
    assert completion_url("http://h:1/v1", completion) == "http://h:1/v1/completions"
    assert completion_url("http://h:1/v1/completions", completion) == "http://h:1/v1/completions"


async def test_upstream_streams_engine_tokens() -> None:
    host = FakeEngineHost()
    async with engine(host) as base, UpstreamClient() as client:
        chunks = await collect(client, f"{base}/instances/i-ready",
                               {"model": "m1", "prompt": "abcdefgh", "max_tokens": 4}, {"x-request-id": "req-1"})
    assert [c.text for c in chunks] == [" tok1", " tok2", " tok3", " tok4"]
    assert [c.index for c in chunks] == [0, 1, 2, 3]
    assert [c.finish_reason for c in chunks] == [None, None, None, "length"]
    assert host.calls == [("i-ready", "req-1", 2, 4)]
    assert host.closed == ["req-1"]


async def test_upstream_engine_stopping_early_and_multi_token_steps() -> None:
    host = FakeEngineHost(stop_after=3, step=2)
    async with engine(host) as base, UpstreamClient() as client:
        chunks = await collect(client, f"{base}/instances/i-ready",
                               {"model": "m1", "messages": [{"role": "user", "content": "q"}], "max_tokens": 9},
                               kind=RequestKind.CHAT)
    assert [c.text for c in chunks] == [" tok1", " tok2", " tok3", ""]
    assert chunks[-1].finish_reason == "stop" and not chunks[-1].is_token


async def test_engine_non_streaming_body() -> None:
    host = FakeEngineHost()
    async with engine(host) as base, aiohttp.ClientSession() as http:
        async with http.post(f"{base}/instances/i-ready/v1/completions",
                             json={"model": "m1", "prompt": "abcd", "max_tokens": 3}) as resp:
            assert resp.status == 200
            body = await resp.json()
        async with http.post(f"{base}/instances/i-ready/v1/completions", data=b"{bad") as resp:
            assert resp.status == 400
    assert body["choices"][0]["text"] == " tok1 tok2 tok3"
    assert body["usage"] == {"prompt_tokens": 1, "completion_tokens": 3, "total_tokens": 4}


async def test_the_engine_server_serves_a_request_under_the_routers_facts() -> None:
    host = FakeEngineHost()
    body = {"model": "m1", "prompt": "abcd", "max_tokens": 2, "opscale_tier": "gold"}
    routed = {REQUEST_ID_HEADER: "cmpl-r7", TIER_HEADER: "batch", REGION_HEADER: "us-east",
              PROMPT_TOKENS_HEADER: "123"}
    async with engine(host) as base, aiohttp.ClientSession() as http:
        url = f"{base}/instances/i-ready/v1/completions"
        async with http.post(url, json=body, headers=routed) as resp:
            assert resp.status == 200 and resp.headers[REQUEST_ID_HEADER] == "cmpl-r7"
            answer = await resp.json()
        async with http.post(url, json={**body, "stream": True, "stream_options": {"include_usage": True}},
                             headers=routed) as resp:
            streamed = sse_payloads(await resp.read())
        # a direct client: the body's tier (else interactive), the host's region, this server's estimate
        async with http.post(url, json=body) as resp:
            assert resp.status == 200
        async with http.post(url, json={"model": "m1", "prompt": "abcd", "max_tokens": 2}) as resp:
            assert resp.status == 200
            direct_id = resp.headers[REQUEST_ID_HEADER]
    assert host.requests[:2] == [EngineRequest("cmpl-r7", "batch", "us-east", 123, 2)] * 2
    assert answer["id"] == "cmpl-r7" and answer["usage"]["prompt_tokens"] == 123  # carried, not estimated again
    assert streamed[-2]["usage"]["prompt_tokens"] == 123 and streamed[0]["id"] == "cmpl-r7"
    tiered, plain = host.requests[2:]
    assert (tiered.tier, tiered.region, tiered.prompt_tokens) == ("gold", None, 1)
    assert (plain.request_id, plain.tier, plain.region) == (direct_id, "interactive", None)
    assert direct_id.startswith("cmpl-") and direct_id != "cmpl-r7"


@pytest.mark.parametrize(("header", "value"), [
    (REQUEST_ID_HEADER, "no spaces allowed"),
    (TIER_HEADER, "batch.low"),
    (REGION_HEADER, "us east"),
    (PROMPT_TOKENS_HEADER, "many"),
])
async def test_a_bad_routed_header_is_a_400_naming_it(header: str, value: str) -> None:
    host = FakeEngineHost()
    async with engine(host) as base, aiohttp.ClientSession() as http:
        url = f"{base}/instances/i-ready/v1/completions"
        for stream in (False, True):
            async with http.post(url, json={"model": "m1", "prompt": "x", "stream": stream},
                                 headers={header: value}) as resp:
                assert resp.status == 400
                error = (await resp.json())["error"]
                assert error["param"] == header and header in error["message"] and value in error["message"]
        async with http.post(url, json={"model": "m1", "prompt": "x", "max_tokens": 1}) as resp:
            assert resp.status == 200  # the server keeps serving
    assert len(host.requests) == 1


@pytest.mark.parametrize(("instance", "status", "code"), [
    ("i-unknown", 404, "instance_not_found"),
    ("i-draining", 503, "instance_not_accepting"),
])
async def test_unknown_and_draining_instances(instance: str, status: int, code: str) -> None:
    host = FakeEngineHost()
    async with engine(host) as base, UpstreamClient() as client, aiohttp.ClientSession() as http:
        with pytest.raises(UpstreamError) as caught:
            await collect(client, f"{base}/instances/{instance}", {"model": "m1", "prompt": "x"})
        async with http.post(f"{base}/instances/{instance}/v1/completions", json={"model": "m1", "prompt": "x"}) as resp:
            assert (await resp.json())["error"]["code"] == code
            assert ("Retry-After" in resp.headers) == (status == 503)
    error = caught.value
    assert (error.kind, error.status, error.before_first_token, error.retryable) == ("status", status, True, True)
    assert instance in error.message


async def test_upstream_400_is_not_retryable() -> None:
    async with engine(FakeEngineHost()) as base, UpstreamClient() as client:
        with pytest.raises(UpstreamError) as caught:
            await collect(client, f"{base}/instances/i-ready", {"model": "m1", "prompt": "x", "max_tokens": -1})
    assert (caught.value.kind, caught.value.status, caught.value.retryable) == ("status", 400, False)
    assert "max_tokens" in caught.value.message


async def test_engine_failure_mid_stream_is_reported_after_first_token() -> None:
    host = FakeEngineHost(fail_after=2)
    got: list[TokenChunk] = []
    async with engine(host) as base, UpstreamClient() as client:
        with pytest.raises(UpstreamError) as caught:
            async for chunk in client.stream_completion(f"{base}/instances/i-ready", {"model": "m", "prompt": "x"}):
                got.append(chunk)
    assert len(got) == 2
    assert (caught.value.kind, caught.value.before_first_token, caught.value.retryable) == ("status", False, False)


async def test_instance_stopped_mid_stream_is_a_503_error_event() -> None:
    host = FakeEngineHost(fail_after=1, failure=InstanceNotAccepting("instance i-ready stopped"))
    async with engine(host) as base, aiohttp.ClientSession() as http:
        async with http.post(f"{base}/instances/i-ready/v1/completions",
                             json={"model": "m", "prompt": "x", "stream": True}) as resp:
            assert resp.status == 200
            payloads = sse_payloads(await resp.read())
    assert payloads[0]["choices"][0]["text"] == " tok1"
    assert payloads[1]["error"]["code"] == "instance_not_accepting"
    assert "stopped" in payloads[1]["error"]["message"]
    assert payloads[2] == "[DONE]"


async def test_request_too_large_for_the_instance_is_400_and_not_retryable() -> None:
    host = FakeEngineHost(context_tokens=100)
    async with engine(host) as base, UpstreamClient() as client:
        with pytest.raises(UpstreamError) as caught:
            await collect(client, f"{base}/instances/i-ready", {"model": "m", "prompt": "x", "max_tokens": 200})
    assert (caught.value.kind, caught.value.status, caught.value.retryable) == ("status", 400, False)
    assert "context of 100" in caught.value.message


def _abrupt_app(tokens_before_close: int) -> web.Application:
    """An upstream that starts a stream, sends some tokens, then drops the connection."""

    async def handler(request: web.Request) -> web.StreamResponse:
        response = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await response.prepare(request)
        for _ in range(tokens_before_close):
            await response.write(b'data: {"choices": [{"index": 0, "text": "a", "finish_reason": null}]}\n\n')
        await response.write(b'data: {"choices": [{"index": 0, "te')  # half an event
        assert request.transport is not None
        request.transport.close()
        return response

    app = web.Application()
    app.router.add_post("/v1/completions", handler)
    return app


@pytest.mark.parametrize("tokens_before_close", [0, 2])
async def test_upstream_closing_mid_stream_says_whether_a_token_was_produced(tokens_before_close: int) -> None:
    got: list[TokenChunk] = []
    async with serve(_abrupt_app(tokens_before_close)) as base, UpstreamClient() as client:
        with pytest.raises(UpstreamError) as caught:
            async for chunk in client.stream_completion(base, {"model": "m", "prompt": "x"}):
                got.append(chunk)
    assert len(got) == tokens_before_close
    assert caught.value.kind == "protocol"
    assert caught.value.before_first_token is (tokens_before_close == 0)
    assert caught.value.retryable is (tokens_before_close == 0)


async def test_malformed_event_is_a_protocol_error() -> None:
    async def handler(request: web.Request) -> web.StreamResponse:
        response = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await response.prepare(request)
        await response.write(b"data: not json\n\n")
        return response

    app = web.Application()
    app.router.add_post("/v1/completions", handler)
    async with serve(app) as base, UpstreamClient() as client:
        with pytest.raises(UpstreamError, match="not JSON") as caught:
            await collect(client, base, {"model": "m", "prompt": "x"})
    assert (caught.value.kind, caught.value.before_first_token) == ("protocol", True)


async def test_connection_refused_is_a_connect_error() -> None:
    with socket.socket() as sock:  # a port that was free a moment ago and has no listener now
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    async with UpstreamClient(UpstreamConfig(connect_timeout_s=2.0)) as client:
        with pytest.raises(UpstreamError) as caught:
            await collect(client, f"http://127.0.0.1:{port}", {"model": "m", "prompt": "x"})
    assert (caught.value.kind, caught.value.before_first_token, caught.value.retryable) == ("connect", True, True)


@pytest.mark.parametrize(("stall_after", "before_first_token"), [(0, True), (2, False)])
async def test_stalled_upstream_hits_the_read_timeout(stall_after: int, before_first_token: bool) -> None:
    host = FakeEngineHost(stall_after=stall_after)
    config = UpstreamConfig(first_token_timeout_s=0.5, idle_timeout_s=0.5)
    got: list[TokenChunk] = []
    async with engine(host) as base, UpstreamClient(config) as client:
        with pytest.raises(UpstreamError) as caught:
            async with asyncio.timeout(GUARD_S):
                async for chunk in client.stream_completion(f"{base}/instances/i-ready",
                                                            {"model": "m", "prompt": "x", "max_tokens": 50}):
                    got.append(chunk)
        await wait_for_event(host.closed_event)  # the engine saw the router give up
    assert len(got) == stall_after
    assert (caught.value.kind, caught.value.before_first_token) == ("timeout", before_first_token)


# the upstream client's modules: the timers they arm (the engine server's and asyncio's are others)
CLIENT_MODULES = ("opscale_services.router.upstream", "opscale_services.router.http1")


def record_client_timers(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """The running loop's timers armed by the upstream client from now on (their callbacks' names), until
    `monkeypatch.undo()`."""
    loop = asyncio.get_running_loop()
    timers: list[str] = []
    call_at = loop.call_at

    def counted(when: float, callback: Any, *args: Any, **kwargs: Any) -> asyncio.TimerHandle:
        if getattr(callback, "__module__", "") in CLIENT_MODULES:  # not the engine's or wait_for's
            timers.append(callback.__qualname__)
        return call_at(when, callback, *args, **kwargs)

    monkeypatch.setattr(loop, "call_at", counted)
    return timers


async def test_the_first_token_deadline_needs_no_timer_of_its_own(monkeypatch: pytest.MonkeyPatch) -> None:
    """The first-token deadline bounds the wait for the response head and then for the first token, kept by
    the client's one watch over every exchange in flight: no timer is made per request (there were two per
    request, then one)."""
    host = FakeEngineHost(stall_after=0)  # answers the head, then never a token
    config = UpstreamConfig(first_token_timeout_s=0.3)
    async with engine(host) as base, UpstreamClient(config) as client:
        timers = record_client_timers(monkeypatch)
        with pytest.raises(UpstreamError) as caught:
            await asyncio.wait_for(collect(client, f"{base}/instances/i-ready", {"model": "m", "prompt": "x"}),
                                   GUARD_S)
        monkeypatch.undo()
    assert (caught.value.kind, caught.value.before_first_token) == ("timeout", True)
    assert timers == ["_DeadlineWatch._fire"]  # the watch, armed when the exchange opened; it fired at the deadline


async def test_streams_in_flight_share_one_deadline_timer(monkeypatch: pytest.MonkeyPatch) -> None:
    """Requests one after another and side by side arm the watch's timer once between them: an exchange only
    joins and leaves the watch, and a stream that stalls among them still fails at its idle timeout."""
    host = FakeEngineHost()
    stalled_host = FakeEngineHost(stall_after=2)
    config = UpstreamConfig(first_token_timeout_s=5.0, idle_timeout_s=0.3)
    async with engine(host) as base, engine(stalled_host) as stalled_base, UpstreamClient(config) as client:
        timers = record_client_timers(monkeypatch)
        body = {"model": "m", "prompt": "x", "max_tokens": 3}
        for _ in range(3):
            assert len(await collect(client, f"{base}/instances/i-ready", body)) == 3
        results = await asyncio.gather(*(collect(client, f"{base}/instances/i-ready", body) for _ in range(3)))
        assert [len(chunks) for chunks in results] == [3, 3, 3]
        # the watch's timer, and the pool's sweep of idle connections (armed once, for its keep-alive)
        assert sorted(timers) == ["Http1Pool._sweep_idle", "_DeadlineWatch._fire"]
        with pytest.raises(UpstreamError) as caught:
            await asyncio.wait_for(collect(client, f"{stalled_base}/instances/i-ready", {**body, "max_tokens": 50}),
                                   GUARD_S)
        monkeypatch.undo()
    assert (caught.value.kind, caught.value.before_first_token) == ("timeout", False)
    assert "next token within 0.3 s" in str(caught.value)


async def test_abandoning_the_stream_cancels_the_engine_request() -> None:
    host = FakeEngineHost()
    async with engine(host) as base, UpstreamClient() as client:
        stream = client.stream_completion(f"{base}/instances/i-ready", {"model": "m", "prompt": "x",
                                                                        "max_tokens": 100_000})
        first = await anext(stream)
        assert first.text == " tok1"
        await stream.aclose()
        await wait_for_event(host.closed_event)
    assert len(host.closed) == 1


async def test_stream_completion_requires_start() -> None:
    client = UpstreamClient()
    with pytest.raises(RuntimeError, match="before start"):
        await collect(client, "http://127.0.0.1:1", {"model": "m", "prompt": "x"})


# -- the whole path: client -> router API -> upstream client -> engine server ---------------------


class ProxyBackend:
    """A minimal router back end: one instance, the real upstream client."""

    def __init__(self, client: UpstreamClient, endpoint: str) -> None:
        self.client = client
        self.endpoint = endpoint

    def models(self) -> list[str]:
        return ["m1"]

    def check(self, req: object) -> None:  # every name is known here
        return None

    async def generate(self, req: ParsedRequest,
                       trace_headers: dict[str, str]) -> AsyncIterator[TokenChunk | EngineUsage]:
        headers = {**trace_headers, **routed_headers(req.as_request(0.0, "local"))}
        body = {**req.upstream_body(), "stream_options": {"include_usage": True}}
        async for chunk in self.client.stream_completion(self.endpoint, body, headers):
            yield chunk


async def test_streaming_passes_through_router_to_engine_and_disconnect_reaches_engine() -> None:
    host = FakeEngineHost()
    async with engine(host) as engine_base, UpstreamClient() as client:
        backend = ProxyBackend(client, f"{engine_base}/instances/i-ready")
        async with serve(build_router_app(backend)) as router, aiohttp.ClientSession() as http:
            body = {"model": "m1", "prompt": "abcdefgh", "max_tokens": 5, "stream": True,
                    "stream_options": {"include_usage": True}, "opscale_tier": "batch"}
            async with http.post(f"{router}/v1/completions", json=body, headers={REGION_HEADER: "eu"}) as resp:
                assert resp.status == 200
                payloads = sse_payloads(await resp.read())
                request_id = resp.headers["x-request-id"]
            assert "".join(p["choices"][0]["text"] for p in payloads[:-2]) == " tok1 tok2 tok3 tok4 tok5"
            assert payloads[-2]["usage"] == {"prompt_tokens": 2, "completion_tokens": 5, "total_tokens": 7}
            # the router's id, tier, origin region and prompt estimate reached the engine
            assert host.requests[0] == EngineRequest(request_id, "batch", "eu", 2, 5)

            host.closed_event.clear()
            await _disconnect_after_first_event(router)
            await wait_for_event(host.closed_event)  # the client's disconnect cancelled the engine request

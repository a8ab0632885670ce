"""The load generator's client against a real OpenAI-compatible server: opscale's own engine server
(services/node_agent/engine_http.py) on a local port, with a scripted engine behind it. Each error class
of the report comes from a real HTTP exchange: 4xx, 5xx, an error event mid-stream, a cut stream, a
timeout, no server at all. Also the home of the scripted endpoint the other loadgen tests use.

The script is chosen by the instance id in the base URL (`.../instances/<script>`): `ok`, `hold` (the
first request waits until released), `busy` (503), `too_large` (400), `fail_mid` (an error event after
two tokens), `stall` (one token, then nothing); `/cut` closes the connection mid-stream."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager, contextmanager
from dataclasses import dataclass, field

import aiohttp
import pytest
from aiohttp import web

from opscale.model import Request
from opscale.openai.sse import sse_event
from opscale.reporting.latency_report import RequestStatus
from opscale.runtime.live.local_servers import free_port

from opscale_loadgen.client import EndpointError, SendOptions, endpoint_base, send_request
from opscale_loadgen.clock import MonotonicClock
from opscale_loadgen.prompts import ApiKind
from opscale_services.node_agent.engine_http import (
    EngineRequest,
    InstanceNotAccepting,
    RequestTooLarge,
    build_engine_app,
    make_runner,
)

pytestmark = pytest.mark.unit


@dataclass
class ScriptedHost:
    """An `EngineHost` whose behaviour the instance id picks; it notes every request it receives."""

    seen: list[tuple[str, int, int]] = field(default_factory=list)  # (instance, prompt tokens, max tokens)
    authorizations: set[str | None] = field(default_factory=set)  # Authorization headers received
    release: asyncio.Event = field(default_factory=asyncio.Event)

    async def generate(self, instance_id: str, request: EngineRequest) -> AsyncIterator[int]:
        max_tokens = request.max_tokens
        self.seen.append((instance_id, request.prompt_tokens, max_tokens))
        if instance_id == "busy":
            raise InstanceNotAccepting("draining")
        if instance_id == "too_large":
            raise RequestTooLarge("prompt plus max_tokens exceed 8 tokens")
        if instance_id == "hold" and len(self.seen) == 1:
            await self.release.wait()
        for count in range(1, max_tokens + 1):
            if instance_id == "fail_mid" and count == 3:
                raise InstanceNotAccepting("stopped under the request")
            if instance_id == "stall" and count == 2:
                await asyncio.Event().wait()  # never set: the client's deadline ends it
            yield count


async def _cut_stream(request: web.Request) -> web.StreamResponse:
    """Two token events, then the connection drops with no [DONE]."""
    response = web.StreamResponse()
    response.content_type = "text/event-stream"
    await response.prepare(request)
    for text in (" a", " b"):
        await response.write(sse_event({"choices": [{"index": 0, "delta": {"content": text}}]}))
    assert request.transport is not None
    request.transport.close()
    return response


def endpoint_app(host: ScriptedHost) -> web.Application:
    app = build_engine_app(host)

    @web.middleware
    async def note_authorization(request: web.Request, handler):  # noqa: ANN001, ANN202
        host.authorizations.add(request.headers.get("Authorization"))
        return await handler(request)

    app.middlewares.append(note_authorization)
    app.router.add_post("/cut/v1/chat/completions", _cut_stream)
    return app


@asynccontextmanager
async def running_endpoint(host: ScriptedHost) -> AsyncIterator[str]:
    """The scripted endpoint on a free local port; yields `http://127.0.0.1:<port>`."""
    runner = make_runner(endpoint_app(host), shutdown_timeout=1.0)
    await runner.setup()
    try:
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        yield f"http://127.0.0.1:{runner.addresses[0][1]}"
    finally:
        await runner.cleanup()


@contextmanager
def endpoint_in_thread() -> Iterator[tuple[str, ScriptedHost]]:
    """The scripted endpoint served from a thread of its own, for callers that run their own event loop
    (the command line)."""
    ready = threading.Event()
    box: dict[str, object] = {}

    async def serve() -> None:
        host = ScriptedHost()
        stop = asyncio.Event()
        box.update(host=host, stop=stop, loop=asyncio.get_running_loop())
        async with running_endpoint(host) as url:
            box["url"] = url
            ready.set()
            await stop.wait()

    thread = threading.Thread(target=lambda: asyncio.run(serve()), daemon=True)
    thread.start()
    assert ready.wait(30), "the endpoint did not start"
    try:
        yield str(box["url"]), box["host"]  # type: ignore[misc]
    finally:
        loop: asyncio.AbstractEventLoop = box["loop"]  # type: ignore[assignment]
        loop.call_soon_threadsafe(box["stop"].set)  # type: ignore[attr-defined]
        thread.join(30)


# -- the client's error classes, each from a real exchange ------------------------------------------

REQUEST = Request("r1", "m", "interactive", "eu-west", 0.0, prompt_tokens=40, output_tokens=5)


async def _send(url: str, api: ApiKind = ApiKind.CHAT, timeout_s: float = 30.0, request: Request = REQUEST):
    async with aiohttp.ClientSession() as session:
        return await send_request(session, request, 0.0, MonotonicClock(), SendOptions(url, api, timeout_s=timeout_s))


@pytest.mark.parametrize("api", list(ApiKind))
async def test_a_complete_stream_is_measured_token_by_token(api: ApiKind) -> None:
    host = ScriptedHost()
    async with running_endpoint(host) as url:
        record = await _send(url + "/instances/ok", api)
    assert record.status == RequestStatus.OK and record.http_status == 200, record.error
    assert record.output_tokens == 5 and record.requested_tokens == 5
    assert record.token_gaps_s is not None and len(record.token_gaps_s) == 4  # one gap between each two tokens
    assert record.arrival_s is not None and record.first_token_s is not None and record.finish_s is not None
    assert record.arrival_s <= record.first_token_s <= record.finish_s
    # the synthetic prompt is exactly the trace's prompt length to opscale's token estimate
    assert host.seen == [("ok", 40, 5)]


@pytest.mark.parametrize(("script", "status", "http_status"), [
    ("busy", RequestStatus.HTTP_5XX, 503),
    ("too_large", RequestStatus.HTTP_4XX, 400),
    ("fail_mid", RequestStatus.STREAM_ERROR, 200),
])
async def test_error_answers_are_classified(script: str, status: RequestStatus, http_status: int) -> None:
    async with running_endpoint(ScriptedHost()) as url:
        record = await _send(f"{url}/instances/{script}")
    assert (record.status, record.http_status) == (status, http_status), record.error
    assert record.error  # the server's message is kept
    if script == "fail_mid":
        assert record.output_tokens == 2 and "instance_not_accepting" in record.error


async def test_a_cut_stream_and_a_stalled_one_and_no_server() -> None:
    async with running_endpoint(ScriptedHost()) as url:
        cut = await _send(url + "/cut")
        stalled = await _send(url + "/instances/stall", timeout_s=0.3)
    nobody = await _send(f"http://127.0.0.1:{free_port()}")
    assert cut.status == RequestStatus.STREAM_CUT and cut.output_tokens == 2
    assert stalled.status == RequestStatus.TIMEOUT and stalled.output_tokens == 1
    assert nobody.status == RequestStatus.CONNECT_ERROR and nobody.http_status is None
    assert all(r.finish_s is None for r in (cut, stalled, nobody))


def test_endpoint_base_accepts_host_port_and_v1_and_names_what_is_wrong() -> None:
    assert endpoint_base("http://127.0.0.1:8000") == "http://127.0.0.1:8000"
    assert endpoint_base("http://h:8000/v1/") == "http://h:8000"
    assert endpoint_base("https://h/prefix") == "https://h/prefix"
    for bad, words in (("127.0.0.1:8000", "http://"), ("ftp://h", "http://"), ("http://", "no host"),
                       ("http://h:port", "port"), ("http://h?x=1", "query")):
        with pytest.raises(EndpointError, match=words):
            endpoint_base(bad)

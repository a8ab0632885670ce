"""The live router's back end: the router core's decisions turned into proxied token streams.

A request enters the core; the decision (Dispatch or Reject) may come back at once or later, when a
held request finds an instance, so each waiting request has a future that the action handler resolves.
A dispatched request streams from its instance; if the instance fails before the first token, the core
hears DispatchFailed and routes it again. A streaming request gets the engine's own server-sent events,
forwarded as bytes (the engine is asked for usage when the client is); a non-streaming one is assembled
from decoded tokens by the API. However the stream ends (done, error, client gone), the
`finally` releases the core's accounting exactly once and queues the request's record.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncGenerator

from opentelemetry import trace
from opentelemetry.trace import SpanKind, Status, StatusCode

from opscale.model import RequestOutcome
from opscale.openai.schema import ParsedRequest, TokenChunk
from opscale.runtime.clock import Clock
from opscale.runtime.live import telemetry
from opscale.runtime.live.host import CoreHost
from opscale.services.actions import Action, Dispatch, Reject
from opscale.services.events import DispatchFailed, RequestArrived, RequestFinished
from opscale.services.router import RouterCore

from opscale_services.router.api import RouteRejected
from opscale_services.router.records import RecordBatcher
from opscale_services.router.upstream import SseBytes, SseSink, UpstreamClient, UpstreamError

log = logging.getLogger(__name__)

Decision = Dispatch | Reject


class LiveRouterBackend:
    def __init__(self, core: RouterCore, clock: Clock, upstream: UpstreamClient, records: RecordBatcher,
                 region: str, tracer_provider: trace.TracerProvider | None = None) -> None:
        self.tracer = telemetry.tracer(tracer_provider, "opscale.router")
        self.core = core
        self.clock = clock
        self.upstream = upstream
        self.records = records
        self.region = region
        self.host: CoreHost | None = None
        self._waiting: dict[str, asyncio.Future[Decision]] = {}

    # -- the host's action hook: decisions for waiting requests ------------------------------

    async def on_action(self, action: Action) -> bool:
        if isinstance(action, Dispatch | Reject):
            future = self._waiting.get(action.request.request_id)
            if future is not None and not future.done():
                future.set_result(action)
            return True
        return False

    # -- RouterBackend -------------------------------------------------------------------------

    def models(self) -> list[str]:
        return self.core.models()

    async def generate(self, req: ParsedRequest, trace_headers: dict[str, str]
                       ) -> AsyncGenerator[TokenChunk | SseBytes, SseSink | None]:
        assert self.host is not None, "LiveRouterBackend.host must be set before serving"
        request = req.as_request(self.clock.now_s(), self.region)
        # Not the "current" span: an async generator may resume in another context, so the span is
        # passed explicitly (into the upstream headers) and ended in `finally`.
        span = self.tracer.start_span("router.request", context=telemetry.extract_http_headers(trace_headers),
                                      kind=SpanKind.SERVER, attributes={
                                          "opscale.request_id": request.request_id, "opscale.model": request.model,
                                          "opscale.tier": request.tier, "opscale.region": request.region})
        headers = {**telemetry.inject_http_headers(context=trace.set_span_in_context(span)),
                   "x-request-id": request.request_id}
        try:
            decision = await self._decide(RequestArrived(request), request.request_id)
        except BaseException:
            span.end()
            raise
        attempt = 1
        produced, first_token_s, status, instance_id, served_region = 0, None, "failed", "", ""
        dispatched = False
        try:
            while True:
                if isinstance(decision, Reject):
                    status = "rejected"
                    raise RouteRejected(decision.status, decision.message, decision.retry_after_s)
                dispatched, instance_id, served_region = True, decision.instance_id, decision.region
                span.set_attribute("opscale.instance_id", instance_id)
                try:
                    if req.stream:
                        # the API may send a sink back for the events that follow (splicing): relayed as is
                        stream = self.upstream.stream_sse(decision.endpoint, _sse_body(req), headers)
                        try:
                            sink: SseSink | None = None
                            while True:
                                try:
                                    block = await stream.asend(sink)
                                except StopAsyncIteration:
                                    break
                                if first_token_s is None and block.chunks:
                                    first_token_s = self.clock.now_s()
                                produced += block.chunks
                                if block.completion_tokens is not None:
                                    produced = block.completion_tokens  # the engine's own count is exact
                                sink = yield block
                        finally:
                            await stream.aclose()  # the connection's fate is settled now, not at garbage collection
                    else:
                        async for chunk in self.upstream.stream_completion(decision.endpoint, req.upstream_body(),
                                                                           headers):
                            if chunk.is_token:
                                produced += 1
                                if first_token_s is None:
                                    first_token_s = self.clock.now_s()
                            yield chunk
                    status = "ok"
                    return
                except UpstreamError as exc:
                    if not (exc.before_first_token and exc.retryable):
                        raise
                    log.info("request %s: %s failed before its first token (%s); re-routing", request.request_id,
                             instance_id, exc)
                    decision = await self._decide(DispatchFailed(request, instance_id, str(exc), attempt),
                                                  request.request_id)
                    attempt += 1
        except (asyncio.CancelledError, GeneratorExit):
            status = "cancelled"
            raise
        finally:
            now = self.clock.now_s()
            outcome = RequestOutcome(request.request_id, request.model, request.tier, request.region, served_region,
                                     instance_id, request.arrival_s, first_token_s,
                                     now if status == "ok" else None, request.prompt_tokens, produced, status)
            if dispatched:
                self.core.handle(RequestFinished(outcome), now)  # releases the core's accounting once
            self.records.add(outcome)
            span.set_attribute("opscale.status", status)
            span.set_attribute("opscale.output_tokens", produced)
            if status in ("failed", "rejected"):
                span.set_status(Status(StatusCode.ERROR, status))
            span.end()

    async def _decide(self, event: RequestArrived | DispatchFailed, request_id: str) -> Decision:
        """Hand `event` to the core and wait for this request's decision (now, or when it is released
        from the hold queue; the core itself bounds the wait with its pending timeout)."""
        assert self.host is not None
        future: asyncio.Future[Decision] = asyncio.get_running_loop().create_future()
        self._waiting[request_id] = future
        try:
            await self.host.handle(event)
            return await future
        finally:
            self._waiting.pop(request_id, None)


def _sse_body(req: ParsedRequest) -> dict[str, object]:
    """The engine request of a forwarded stream: the client's usage option goes with it, since the
    engine's events reach the client unchanged."""
    body = req.upstream_body()
    if req.include_usage:
        body["stream_options"] = {"include_usage": True}
    return body

"""The live router's back end: the router core's decisions turned into proxied token streams.

A request enters the core; the decision (Dispatch or Reject) may come back at once or later, when a
held request finds an instance, so each waiting request has a future that the action handler resolves.
A dispatched request streams from its instance; if the instance fails before the first token, the core
hears DispatchFailed and routes it again. A streaming request gets the engine's own server-sent events,
forwarded as bytes (the engine is asked for usage when the client is); a non-streaming one is assembled
from decoded tokens by the API (the engine is always asked for usage). The upstream request carries the
request's id, tier, origin region and prompt-token estimate (routed_headers.py), so the engine serves
the request the router routed. However the stream ends (done, error, client gone), the `finally`
releases the core's accounting exactly once and queues the request's record, whose token counts are
the engine's own when it reported them.

A disaggregated model's decision is a pair (`Dispatch.decode_instance_id`), served in two steps as vLLM's
disaggregated proxy serves one (opscale.openai.kv_transfer): the prefill instance runs the prefill and
answers where its KV is; the core hears PrefillHandedOff, as in the simulator, so the request then counts
against the decode instance only; the decode instance pulls the KV and streams the tokens, so the
transfer is part of the TTFT. Either step failing before the first token is a DispatchFailed for the
instance that failed, and the core pairs the request again; the record names both instances.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
from collections.abc import AsyncGenerator, Callable, Mapping

from opentelemetry import trace
from opentelemetry.trace import SpanKind, Status, StatusCode

from opscale.model import RequestOutcome
from opscale.openai.kv_transfer import decode_body, prefill_body
from opscale.openai.prompt_tokens import PromptTokenizer, prompt_prefix_hashes
from opscale.openai.routed_headers import routed_headers
from opscale.openai.schema import ApiError, ParsedRequest, TokenChunk
from opscale.openai.stream import EngineUsage
from opscale.runtime.clock import Clock
from opscale.runtime.live import telemetry
from opscale.runtime.live.host import CoreHost
from opscale.runtime.live.openai_http import ran_to_end
from opscale.services.actions import Action, Dispatch, Reject
from opscale.services.events import DispatchFailed, PrefillHandedOff, RequestArrived, RequestFinished
from opscale.services.router import RouterCore

from opscale_services.router.api import RouteRejected
from opscale_services.router.metrics import RouterMetrics
from opscale_services.router.records import RecordBatcher
from opscale_services.router.upstream import SseBytes, SseSink, UpstreamClient, UpstreamError

log = logging.getLogger(__name__)

Decision = Dispatch | Reject
# Prompts estimated at this many tokens or more are tokenized off the event loop: a long prompt takes
# milliseconds (a 32,000-character prompt, 12 ms with a BPE tokenizer on a 2-core Xeon), in Rust that
# releases the GIL, while the loop relays other requests' streams; shorter ones are not worth a thread hop.
_TOKENIZE_IN_THREAD_TOKENS = 2048


class LiveRouterBackend:
    def __init__(self, core: RouterCore, clock: Clock, upstream: UpstreamClient, records: RecordBatcher,
                 region: str, tracer_provider: trace.TracerProvider | None = None, prefix_block_tokens: int = 0,
                 tokenizers: Mapping[str, PromptTokenizer] | None = None,
                 on_finished: Callable[[RequestOutcome], None] | None = None,
                 metrics: RouterMetrics | None = None, spans: bool = True) -> None:
        self.tracer = telemetry.tracer(tracer_provider, "opscale.router")
        # False where the router's spans go nowhere (tracing exporter "none"): no span is made per request
        # (a tenth of the router's CPU per request), and the client's trace headers go upstream as they
        # came, so its trace still continues in the engine
        self.spans = spans
        # > 0: each prompt's prefix blocks of this many tokens are hashed for the routing policy (the
        # engines' EngineConfig.prefix_block_tokens, so the router names blocks as the engines cache them)
        self.prefix_block_tokens = prefix_block_tokens
        # per model: its tokenizer, so its prompts' blocks are named by token ids as the node-agents rename
        # vLLM's; a model without one is hashed as text
        self.tokenizers = dict(tokenizers or {})
        self.core = core
        self.clock = clock
        self.upstream = upstream
        self.records = records
        self.region = region
        # told every request's outcome as it is recorded (the tenant gate settles token charges with it)
        self.on_finished = on_finished
        self.host: CoreHost | None = None
        self.metrics = metrics  # each finished request's TTFT, TBT and E2E
        self._waiting: dict[str, asyncio.Future[Decision]] = {}

    def _prefix(self, req: ParsedRequest) -> tuple[tuple[int, ...], int | None]:
        tokenizer = self.tokenizers.get(req.model)
        hashes, prompt_tokens = prompt_prefix_hashes(req.body, self.prefix_block_tokens, tokenizer)
        if tokenizer is not None and prompt_tokens is None and self.prefix_block_tokens > 0:
            log.debug("request %s: not tokenized (its chat template refused it), its text is hashed", req.request_id)
        return hashes, prompt_tokens

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
                       ) -> AsyncGenerator[TokenChunk | EngineUsage | SseBytes, SseSink | None]:
        assert self.host is not None, "LiveRouterBackend.host must be set before serving"
        if req.model in self.tokenizers and req.prompt_tokens >= _TOKENIZE_IN_THREAD_TOKENS:
            hashes, prompt_tokens = await asyncio.to_thread(self._prefix, req)
        else:
            hashes, prompt_tokens = self._prefix(req)
        request = req.as_request(self.clock.now_s(), self.region, hashes)
        if prompt_tokens is not None:
            request = dataclasses.replace(request, prompt_tokens=prompt_tokens)
        # Not the "current" span: an async generator may resume in another context, so the span is
        # passed explicitly (into the upstream headers) and ended in `finally`.
        span: trace.Span
        if self.spans:
            span = self.tracer.start_span("router.request", context=telemetry.extract_http_headers(trace_headers),
                                          kind=SpanKind.SERVER, attributes={
                                              "opscale.request_id": request.request_id, "opscale.model": request.model,
                                              "opscale.tier": request.tier, "opscale.region": request.region,
                                              "opscale.tenant": request.tenant})
            headers = {**telemetry.inject_http_headers(context=trace.set_span_in_context(span)),
                       **routed_headers(request)}
        else:
            span = trace.INVALID_SPAN  # its methods do nothing
            # passed on as they came, but only printable ASCII (what W3C trace context allows; anything
            # else would not encode into the engine request, and the propagator would drop it too)
            headers = {**{name: value for name, value in trace_headers.items() if value.isascii() and value.isprintable()},
                       **routed_headers(request)}
        try:
            decision = await self._decide(RequestArrived(request), request.request_id)
        except BaseException:
            span.end()
            raise
        attempt = 1
        produced, first_token_s, status, instance_id, served_region = 0, None, "failed", "", ""
        prefill_id = ""
        usage: EngineUsage | None = None
        dispatched = False
        try:
            while True:
                if isinstance(decision, Reject):
                    status = "rejected"
                    raise RouteRejected(decision.status, decision.message, decision.retry_after_s)
                dispatched, instance_id, served_region = True, decision.instance_id, decision.region
                endpoint, body, prefill_id = decision.endpoint, _engine_body(req), ""
                if self.spans:
                    span.set_attribute("opscale.instance_id", instance_id)
                try:
                    if decision.decode_instance_id:
                        # A disaggregated pair: the prefill instance's answer says where the KV is, the
                        # decode instance pulls it and streams (opscale.openai.kv_transfer).
                        prefill_id = instance_id
                        params = await self.upstream.prefill(endpoint, prefill_body(body), headers, req.kind)
                        await self.host.handle(PrefillHandedOff(request.request_id, prefill_id,
                                                                decision.decode_instance_id, self.clock.now_s()))
                        instance_id, endpoint = decision.decode_instance_id, decision.decode_endpoint
                        body = decode_body(body, params)
                        span.set_attributes({"opscale.prefill_instance_id": prefill_id,
                                             "opscale.instance_id": instance_id})
                    if req.stream:
                        # the API may send a sink back for the events that follow (splicing): relayed as is
                        stream = self.upstream.stream_sse(endpoint, body, headers, req.kind)
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
                                usage = block.usage or usage
                                sink = yield block
                        finally:
                            if not ran_to_end(stream):
                                await stream.aclose()  # the connection's fate is settled now, not at garbage collection
                    else:
                        async for chunk in self.upstream.stream_completion(endpoint, body, headers, req.kind):
                            if isinstance(chunk, EngineUsage):
                                usage = chunk
                            elif chunk.is_token:
                                produced += 1
                                if first_token_s is None:
                                    first_token_s = self.clock.now_s()
                            yield chunk
                    status = "ok"
                    return
                except UpstreamError as exc:
                    if not (exc.before_first_token and exc.retryable):
                        raise
                    # the instance whose step failed (a pair's prefill or decode) is the one not to try again
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
            # the engine's own counts are exact; the router's are an estimate (prompt) and a chunk count
            prompt_tokens = request.prompt_tokens
            if usage is not None:
                prompt_tokens = usage.prompt_tokens if usage.prompt_tokens is not None else prompt_tokens
                produced = usage.completion_tokens if usage.completion_tokens is not None else produced
            outcome = RequestOutcome(request.request_id, request.model, request.tier, request.region, served_region,
                                     instance_id, request.arrival_s, first_token_s,
                                     now if status == "ok" else None, prompt_tokens, produced, status, prefill_id,
                                     request.tenant)
            if dispatched:
                self.core.handle(RequestFinished(outcome), now)  # releases the core's accounting once
            self.records.add(outcome)
            if self.on_finished is not None:
                self.on_finished(outcome)
            if self.metrics is not None:
                self.metrics.finished(outcome)
            if self.spans:  # else INVALID_SPAN, whose calls do nothing
                span.set_attribute("opscale.status", status)
                span.set_attribute("opscale.output_tokens", produced)
                if status in ("failed", "rejected"):
                    span.set_status(Status(StatusCode.ERROR, status))
                span.end()

    def check(self, req: ParsedRequest) -> ApiError | None:
        """The refusal of a request naming a model or tier the router does not know (404, 400), before
        it becomes state anywhere (held, counted against a key, recorded, windowed): random names must
        not make keys. None when both are known."""
        if not self.core.serves(req.model):
            served = ", ".join(self.core.models()) or "none"
            return RouteRejected(404, f"The model '{req.model}' does not exist; served models: {served}").to_api_error()
        if req.tier not in self.core.tiers:
            return RouteRejected(400, f"opscale_tier: unknown tier {req.tier!r}; known tiers: "
                                 f"{', '.join(sorted(self.core.tiers))}", code="invalid_value",
                                 param="opscale_tier").to_api_error()
        return None

    async def _decide(self, event: RequestArrived | DispatchFailed, request_id: str) -> Decision:
        """Hand `event` to the core and wait for this request's decision (now, or when it is released
        from the hold queue; the core itself bounds the wait with its pending timeout).

        This request's own decision is taken from the core's actions here, the rest go to the host as
        `host.handle` would send them (other requests' decisions to their futures through `on_action`): a
        decision made at once, the common case, is then returned without a future or a task switch."""
        assert self.host is not None
        mine: Decision | None = None
        rest: list[Action] = []
        for action in self.core.handle(event, self.clock.now_s()):
            if isinstance(action, Dispatch | Reject) and action.request.request_id == request_id:
                mine = action
            else:
                rest.append(action)
        if mine is not None:
            if rest:
                await self.host.perform(rest)
            return mine
        # held: the decision comes with a later event (a release from the hold queue, the pending timeout).
        # The future is in place before anything here can yield to the loop, so none is missed.
        loop = self.upstream.loop or asyncio.get_running_loop()  # the client's: no getpid() a request
        future: asyncio.Future[Decision] = loop.create_future()
        self._waiting[request_id] = future
        try:
            if rest:
                await self.host.perform(rest)
            return await future
        finally:
            self._waiting.pop(request_id, None)


def _engine_body(req: ParsedRequest) -> dict[str, object]:
    """The engine request. A forwarded stream asks for usage only when its client did, since the
    engine's events reach the client unchanged; an answer the router assembles always asks, so its
    usage (and the record) hold the engine's counts rather than the router's estimate."""
    body = req.upstream_body()
    if req.include_usage or not req.stream:
        body["stream_options"] = {"include_usage": True}
    return body

"""The node-agent's `openai` engine backend: OpenAI-compatible servers (vLLM, SGLang) as its engines.

Role: bind each instance the planner places on this host to one configured server of the same model,
health-check the servers, proxy the router's requests to them and report their load. The servers run
on their own (started by systemd, a container, a person); the agent neither starts nor stops them, it
only decides which instance id they serve under and whether they take new work.

The proxy forwards bytes: the request body as received and the server's event stream as it arrives,
with no parsing per token, so it adds little to a real engine's latency; the answer's `usage` is the
server's own count (vLLM's, in its last streamed chunk when `stream_options.include_usage` asks for
it). It checks the router's routed headers (routed_headers.py) as the simulated engine's server does,
and passes the request id on. It counts the requests in flight per instance (the count a drain waits
on, and the load reported when the server has no metrics) and closes the server's response when the
router goes away, which is how vLLM learns to abort the request. vLLM's (or SGLang's) Prometheus
metrics, when readable, add KV-cache use, the queue and token rates to the heartbeat, each rate the
change of a counter between two reads:
- `tokens_per_s`: generated tokens (`generation_tokens_total`);
- `decode_tps`: generated tokens less first tokens (the TTFT histogram's count: one per request whose
  prefill sampled its first token), so tokens of decode steps only; all generated tokens when the
  server has no TTFT histogram;
- `prefill_tps`: prompt tokens (`prompt_tokens_total`, prefix-cache hits included);
- `prefill_missed_tps`: prompt tokens less prefix-cache hits (vLLM v1's `prefix_cache_hits_total`,
  in tokens); the prompt rate itself when the server does not count hits.
`sm_activity` is reported as 0: neither server exports the FLOPs it does, and GPU counters (DCGM's
SM activity) are not read here. `busy_frac` is 1 while the server runs a request, 0 otherwise.

Disaggregated serving: each server says the role it was started in (`role` in its settings: unified,
prefill or decode); an instance binds only to a server of its own model and role, so the instance the
heartbeat reports in the prefill or decode pool is fronted by a server started for that. The operator
starts those servers in P/D mode with their own KV connector (vLLM with NixlConnector, say); the router
drives vLLM's two-step `kv_transfer_params` protocol through this proxy (opscale.openai.kv_transfer), whose
bodies and answers pass here unchanged, and the servers move the KV between themselves. opscale moves no
KV for a real engine and prices no transfer: the TTFT it records is the servers' own.

KV events: a server that names a `kv_events_endpoint` (vLLM's --kv-events-config publisher) is read
from the moment an instance binds to it (vllm_kv_sub.py); its events, renamed into opscale's block
hashes of `kv_block_tokens` tokens (engine.prefix_block_tokens, which must be vLLM's --block-size), go to
the routers as that instance's, batched each tick (kv_forward.py).

It must not decide anything: which instances exist and when they drain is the node-agent core's.
"""

from __future__ import annotations

import asyncio
import logging
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import aiohttp
import zmq
from aiohttp import web
from prometheus_client.parser import text_string_to_metric_families

from opscale.engine.outputs import EngineReport
from opscale.model import InstanceSpec
from opscale.openai.routed_headers import REQUEST_ID_HEADER, parse_routed_headers
from opscale.openai.schema import ApiError, error_for_status
from opscale.runtime.clock import Clock
from opscale.runtime.live.openai_http import error_response, openai_errors_middleware
from opscale.runtime.live.redact import redact_url
from opscale.runtime.live.settings import OpenAIEngineSettings

from opscale_services.node_agent.kv_forward import KvEventsOf
from opscale_services.node_agent.vllm_kv_sub import VllmKvSubscriber

__all__ = ["OpenAIEngines", "ServerMetrics", "ServerRates", "build_openai_proxy_app", "parse_server_metrics",
           "server_rates"]

log = logging.getLogger(__name__)

_MAX_BODY_BYTES = 1 << 20
_MAX_ERROR_BYTES = 64 * 1024
_NOT_ACCEPTING_RETRY_AFTER_S = 1.0
# Headers passed on to the server: content type, the request id and trace context.
_FORWARDED_HEADERS = ("content-type", REQUEST_ID_HEADER, "traceparent", "tracestate", "baggage")


@dataclass(frozen=True, slots=True)
class ServerMetrics:
    """What a server's Prometheus metrics say about its load; None where it does not say."""

    kv_used_frac: float | None = None
    running: int | None = None
    waiting: int | None = None
    generated_tokens_total: float | None = None
    first_tokens_total: float | None = None
    prompt_tokens_total: float | None = None
    prefix_cache_hit_tokens_total: float | None = None


@dataclass(frozen=True, slots=True)
class ServerRates:
    """Token rates from two reads of a server's counters (see the module docstring)."""

    tokens_per_s: float = 0.0
    decode_tps: float = 0.0
    prefill_tps: float = 0.0
    prefill_missed_tps: float = 0.0


# vLLM v0 and v1, then SGLang, names for the same facts; the first present wins.
_KV_NAMES = ("vllm:kv_cache_usage_perc", "vllm:gpu_cache_usage_perc", "sglang:token_usage")
_RUNNING_NAMES = ("vllm:num_requests_running", "sglang:num_running_reqs")
_WAITING_NAMES = ("vllm:num_requests_waiting", "sglang:num_queue_reqs")
_GENERATED_NAMES = ("vllm:generation_tokens_total", "sglang:generation_tokens_total")
_FIRST_TOKEN_NAMES = ("vllm:time_to_first_token_seconds_count", "sglang:time_to_first_token_seconds_count")
_PROMPT_NAMES = ("vllm:prompt_tokens_total", "sglang:prompt_tokens_total")
_PREFIX_HIT_NAMES = ("vllm:prefix_cache_hits_total",)


def parse_server_metrics(text: str) -> ServerMetrics:
    """Read the load facts from a Prometheus text exposition, summing over label sets (one server may
    report per model or per engine). Non-finite values count as absent."""
    sums: dict[str, float] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if math.isfinite(sample.value):
                sums[sample.name] = sums.get(sample.name, 0.0) + sample.value

    def first(names: tuple[str, ...]) -> float | None:
        return next((sums[n] for n in names if n in sums), None)

    kv = first(_KV_NAMES)
    running, waiting = first(_RUNNING_NAMES), first(_WAITING_NAMES)
    return ServerMetrics(kv_used_frac=None if kv is None else min(1.0, max(0.0, kv)),
                         running=None if running is None else int(running),
                         waiting=None if waiting is None else int(waiting),
                         generated_tokens_total=first(_GENERATED_NAMES), first_tokens_total=first(_FIRST_TOKEN_NAMES),
                         prompt_tokens_total=first(_PROMPT_NAMES), prefix_cache_hit_tokens_total=first(_PREFIX_HIT_NAMES))


def server_rates(before: ServerMetrics, after: ServerMetrics, elapsed_s: float) -> ServerRates | None:
    """The token rates between two reads `elapsed_s` apart; None when they give none (no time between
    them, or a counter that went down: the server restarted). A rate whose counter is absent is 0.

    Example: 1000 then 1600 generated tokens, 10 then 16 first tokens, 2 s apart: tokens_per_s 300.0,
    decode_tps 297.0.
    """
    if not elapsed_s > 0:
        return None
    counters = ("generated_tokens_total", "first_tokens_total", "prompt_tokens_total", "prefix_cache_hit_tokens_total")
    rates: dict[str, float | None] = {}
    for name in counters:
        old, new = getattr(before, name), getattr(after, name)
        if old is not None and new is not None and new < old:
            return None
        rates[name] = None if old is None or new is None else (new - old) / elapsed_s
    generated, first, prompt, hits = (rates[name] for name in counters)
    generated = generated or 0.0
    prompt = prompt or 0.0
    return ServerRates(tokens_per_s=generated, decode_tps=max(0.0, generated - (first or 0.0)), prefill_tps=prompt,
                       prefill_missed_tps=max(0.0, prompt - (hits or 0.0)))


@dataclass(slots=True)
class _Bound:
    """One instance bound to one server."""

    spec: InstanceSpec
    server: OpenAIEngineSettings
    healthy: bool = False
    in_flight: int = 0
    metrics: ServerMetrics = field(default_factory=ServerMetrics)
    metrics_at_s: float | None = None  # when `metrics` were read
    rates: ServerRates = field(default_factory=ServerRates)
    responses: set[aiohttp.ClientResponse] = field(default_factory=set)
    kv_events: VllmKvSubscriber | None = None  # the server's KV event publisher, when it names one


def _base(url: str) -> str:
    """The server's root, without a trailing /v1: health and metrics live there."""
    base = url.rstrip("/")
    return base[: -len("/v1")] if base.endswith("/v1") else base


class OpenAIEngines:
    """The agent shell's start/drain/stop/reports for OpenAI-compatible servers, and the proxy's state.

    Use `await start_session()` before serving and `await close()` at exit.
    """

    def __init__(self, servers: Sequence[OpenAIEngineSettings], clock: Clock, is_accepting: Callable[[str], bool], *,
                 connect_timeout_s: float = 3.0, health_timeout_s: float = 2.0, read_timeout_s: float = 300.0,
                 max_connections: int = 1024, kv_block_tokens: int = 16) -> None:
        self.servers = list(servers)
        self.kv_block_tokens = kv_block_tokens
        self.clock = clock
        self.is_accepting = is_accepting
        self._connect_timeout_s = connect_timeout_s
        self._health_timeout_s = health_timeout_s
        self._read_timeout_s = read_timeout_s
        self._max_connections = max_connections
        self._bound: dict[str, _Bound] = {}
        self._session: aiohttp.ClientSession | None = None

    async def start_session(self) -> None:
        if self._session is None:
            connector = aiohttp.TCPConnector(limit=self._max_connections, limit_per_host=0, keepalive_timeout=30.0)
            # No total timeout: a stream lasts as long as the server sends; silence is bounded by sock_read.
            timeout = aiohttp.ClientTimeout(total=None, sock_connect=self._connect_timeout_s,
                                            sock_read=self._read_timeout_s)
            self._session = aiohttp.ClientSession(connector=connector, timeout=timeout, auto_decompress=False)

    async def close(self) -> None:
        for instance_id in list(self._bound):
            await self.stop(instance_id)
        session, self._session = self._session, None
        if session is not None:
            await session.close()

    # -- lifecycle (driven by the node-agent core's actions) -----------------------------------

    def start(self, spec: InstanceSpec) -> None:
        """Bind `spec` to a configured server of its model and role that serves no other instance."""
        if spec.instance_id in self._bound:
            return
        taken = {id(b.server) for b in self._bound.values()}
        server = next((s for s in self.servers if s.served_model_name == spec.model and s.role == spec.role
                       and id(s) not in taken), None)
        if server is None:
            served = sorted({f"{s.served_model_name} ({s.role})" for s in self.servers}) or ["none"]
            log.error("instance %s of %r (%s) placed on this agent, but no free OpenAI-compatible server serves that "
                      "model in that role (configured: %s); it stays unready", spec.instance_id, spec.model,
                      spec.role, ", ".join(served))
            return
        bound = self._bound[spec.instance_id] = _Bound(spec, server)
        if server.kv_events_endpoint:
            try:
                bound.kv_events = VllmKvSubscriber(server.kv_events_endpoint, self.kv_block_tokens,
                                                 server.kv_events_topic)
            except zmq.ZMQError as exc:  # an endpoint ZMQ cannot parse: the instance serves, without events
                log.error("instance %s: KV events of %s not read: %s", spec.instance_id,
                          server.kv_events_endpoint, exc)

    def drain(self, instance_id: str) -> None:
        """Nothing to tell the server: the core stops accepting and the proxy refuses new requests."""

    async def stop(self, instance_id: str) -> None:
        """Unbind; requests still in flight (a drain deadline passed) are cut, which aborts them."""
        bound = self._bound.pop(instance_id, None)
        if bound is not None:
            for response in list(bound.responses):
                response.close()
            if bound.kv_events is not None:
                await bound.kv_events.close()

    def healthy(self, instance_id: str) -> bool:
        bound = self._bound.get(instance_id)
        return bound is not None and bound.healthy

    def in_flight(self, instance_id: str) -> int:
        bound = self._bound.get(instance_id)
        return 0 if bound is None else bound.in_flight

    def take_kv_events(self) -> list[KvEventsOf]:
        """Each server's KV events since the last call, as its instance's (servers that name a
        kv_events_endpoint)."""
        out: list[KvEventsOf] = []
        for instance_id, b in self._bound.items():
            if b.kv_events is not None and (events := b.kv_events.take()):
                out.append((instance_id, b.spec.model, events))
        return out

    def kv_subscribers(self) -> dict[str, VllmKvSubscriber]:
        """The KV event subscriber of each bound instance whose server names one."""
        return {instance_id: b.kv_events for instance_id, b in self._bound.items() if b.kv_events is not None}

    def reports(self) -> list[EngineReport]:
        out: list[EngineReport] = []
        for instance_id, b in self._bound.items():
            m = b.metrics
            running = m.running if m.running is not None else b.in_flight
            waiting = m.waiting or 0
            rates = b.rates
            out.append(EngineReport(instance_id, queued=waiting, running=running, outstanding_tokens=0,
                                    kv_used_frac=m.kv_used_frac if m.kv_used_frac is not None else 0.0,
                                    tokens_per_s=rates.tokens_per_s, busy_frac=1.0 if running else 0.0,
                                    power_w=0.0, idle=b.in_flight == 0, sm_activity=0.0,
                                    decode_tps=rates.decode_tps, prefill_tps=rates.prefill_tps,
                                    prefill_missed_tps=rates.prefill_missed_tps))
        return out

    # -- health and metrics --------------------------------------------------------------------

    async def check(self) -> None:
        """Health-check every bound server and read its metrics, concurrently, each under a timeout."""
        await asyncio.gather(*(self._check_one(b) for b in list(self._bound.values())))

    async def _check_one(self, bound: _Bound) -> None:
        session = self._require_session()
        base = _base(bound.server.base_url)
        headers = self._auth(bound.server)
        timeout = aiohttp.ClientTimeout(total=self._health_timeout_s)
        healthy = False
        try:
            async with session.get(f"{base}/health", headers=headers, timeout=timeout) as resp:
                healthy = resp.status == 200
            if not healthy:  # servers without /health: a model list that names the model is as good
                async with session.get(f"{base}/v1/models", headers=headers, timeout=timeout) as resp:
                    healthy = resp.status == 200 and bound.server.served_model_name in await resp.text()
        except (aiohttp.ClientError, TimeoutError) as exc:
            log.debug("health check of %s failed: %s", redact_url(base), exc)
        if healthy != bound.healthy:
            log.info("server %s of instance %s is %s", redact_url(base), bound.spec.instance_id,
                     "healthy" if healthy else "unhealthy")
        bound.healthy = healthy
        if healthy and bound.server.metrics_path:
            await self._read_metrics(bound, f"{base}{bound.server.metrics_path}", headers, timeout)

    async def _read_metrics(self, bound: _Bound, url: str, headers: dict[str, str],
                            timeout: aiohttp.ClientTimeout) -> None:
        try:
            async with self._require_session().get(url, headers=headers, timeout=timeout) as resp:
                if resp.status != 200:
                    return
                metrics = parse_server_metrics(await resp.text())
        except (aiohttp.ClientError, TimeoutError, ValueError) as exc:
            log.debug("metrics of %s unreadable: %s", redact_url(url), exc)
            return
        now = self.clock.now_s()
        if bound.metrics_at_s is not None:
            rates = server_rates(bound.metrics, metrics, now - bound.metrics_at_s)
            if rates is not None:
                bound.rates = rates
        bound.metrics, bound.metrics_at_s = metrics, now

    # -- the proxy -----------------------------------------------------------------------------

    async def proxy(self, request: web.Request) -> web.StreamResponse:
        instance_id = request.match_info["instance_id"]
        bound = self._bound.get(instance_id)
        if bound is None:
            return error_response(error_for_status(
                404, f"No instance '{instance_id}' on this node", param="instance_id", code="instance_not_found"))
        if not (bound.healthy and self.is_accepting(instance_id)):
            why = "its server is not healthy" if not bound.healthy else "it is loading or draining"
            return error_response(error_for_status(
                503, f"Instance '{instance_id}' is not accepting requests: {why}", code="instance_not_accepting",
                retry_after_s=_NOT_ACCEPTING_RETRY_AFTER_S))
        if request.content_length is not None and request.content_length > _MAX_BODY_BYTES:
            return error_response(error_for_status(413, f"Request body over {_MAX_BODY_BYTES} bytes"))
        routed = parse_routed_headers(request.headers)
        if isinstance(routed, ApiError):
            return error_response(routed)
        body = await request.read()
        url = f"{_base(bound.server.base_url)}/v1/{request.match_info['endpoint']}"
        headers = {h: request.headers[h] for h in _FORWARDED_HEADERS if h in request.headers}
        headers.update(self._auth(bound.server))
        bound.in_flight += 1
        upstream: aiohttp.ClientResponse | None = None
        try:
            try:
                upstream = await self._require_session().post(url, data=body, headers=headers)
            except (aiohttp.ClientError, TimeoutError) as exc:
                bound.healthy = False  # until the next health check says otherwise
                return error_response(error_for_status(
                    503, f"Instance '{instance_id}': its server is unreachable ({type(exc).__name__})",
                    code="instance_not_accepting", retry_after_s=_NOT_ACCEPTING_RETRY_AFTER_S))
            bound.responses.add(upstream)
            if upstream.status != 200:
                raw = await upstream.content.read(_MAX_ERROR_BYTES)
                return web.Response(status=upstream.status, body=raw,
                                    content_type=upstream.content_type or "application/json")
            response = web.StreamResponse(headers={"Cache-Control": "no-cache"})
            response.content_type = upstream.content_type or "text/event-stream"
            if upstream.charset:
                response.charset = upstream.charset
            await response.prepare(request)
            try:
                async for data in upstream.content.iter_any():
                    await response.write(data)
            except (aiohttp.ClientPayloadError, aiohttp.ClientConnectionError, TimeoutError) as exc:
                # The server died mid-stream: cut the router's connection too, so it sees a broken
                # stream rather than a clean end, and counts what reached it.
                log.warning("server of instance %s broke request mid-stream: %s", instance_id, exc)
                if request.transport is not None:
                    request.transport.close()
                return response
            await response.write_eof()
            return response
        finally:
            bound.in_flight -= 1
            if upstream is not None:
                bound.responses.discard(upstream)
                upstream.close()  # a no-op after a full read; otherwise it aborts the server's request

    def _auth(self, server: OpenAIEngineSettings) -> dict[str, str]:
        return {"Authorization": f"Bearer {server.api_key}"} if server.api_key else {}

    def _require_session(self) -> aiohttp.ClientSession:
        if self._session is None:
            raise RuntimeError("OpenAIEngines used before start_session()")
        return self._session


def build_openai_proxy_app(engines: OpenAIEngines) -> web.Application:
    """The node-agent's engine server for the openai backend: the same paths as the simulated one."""
    app = web.Application(client_max_size=_MAX_BODY_BYTES, middlewares=[openai_errors_middleware])
    app.router.add_post("/instances/{instance_id}/v1/{endpoint:completions|chat/completions}", engines.proxy)
    return app

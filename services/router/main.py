"""The live router: the OpenAI-compatible HTTP API and the gRPC Route service in front of the router
core, which learns instances from heartbeats and plans on NATS. Records go out in batches. Wiring only:
the logic is opscale.services.router."""

from __future__ import annotations

import asyncio
import gc
import logging
from collections.abc import Callable
from datetime import datetime

from prometheus_client import CollectorRegistry

from opscale.openai.prompt_tokens import PromptTokenizer, TokenizerLoadError
from opscale.openai.schema import CHARS_PER_TOKEN
from opscale.routing.tenants import KeyTable
from opscale.runtime.live.bus import durable_name
from opscale.runtime.live.host import CoreHost
from opscale.runtime.live.settings import RouterSettings, SettingsError
from opscale.services import subjects
from opscale.services.router import RouterCore

from opscale_services.common import LiveProcess
from opscale_services.router.api import build_router_app, serve_router
from opscale_services.router.auth import TenantGate
from opscale_services.router.backend import LiveRouterBackend
from opscale_services.router.grpc_route import start_router_grpc
from opscale_services.router.kv_metrics import KvIndexCollector
from opscale_services.router.metrics import RouterMetrics
from opscale_services.router.records import RecordBatcher
from opscale_services.router.upstream import UpstreamClient, UpstreamConfig
from opscale_services.router.workers import as_worker, pin_to_core

log = logging.getLogger(__name__)


def install_fast_loop() -> str:
    """Make uvloop the event loop policy (a default dependency; absent only where it does not build, such
    as Windows): the proxy hot path is event-loop bound. Returns the loop in use, for logs and benchmarks."""
    try:
        import uvloop  # type: ignore[import-not-found,unused-ignore]
    except ImportError:
        return "asyncio"
    asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())
    return "uvloop"


# Young objects made between two collections of the youngest generation (CPython's default is 700).
# A request makes hundreds and frees nearly all of them by reference counting; at 700 a collection ran
# every request or two and walked the objects of every request in flight each time, about a twentieth of
# the router's CPU. Collections some 30 times rarer walk them 30 times less often; reference cycles are
# still collected, a little later, and the garbage waiting for them is a few MB at most.
_YOUNG_COLLECTION_THRESHOLD = 20_000


def freeze_startup_heap() -> None:
    """Move every object alive after start-up (modules, settings, the app) out of the collector's reach.
    They live as long as the process, yet each full collection walked them all again: a share of the
    router's CPU per request that bought nothing. Objects made later are collected as before, in rarer
    young collections (_YOUNG_COLLECTION_THRESHOLD)."""
    gc.collect()
    gc.freeze()
    _, middle, old = gc.get_threshold()
    gc.set_threshold(_YOUNG_COLLECTION_THRESHOLD, middle, old)


def load_tokenizers(settings: RouterSettings) -> dict[str, PromptTokenizer]:
    """Each configured model's tokenizer (settings.tokenizers); says at start-up how prompts are hashed."""
    tokenizers: dict[str, PromptTokenizer] = {}
    for model, t in settings.tokenizers.items():
        try:
            tokenizers[model] = PromptTokenizer.from_files(t.path, t.chat_template, now=datetime.now)
        except TokenizerLoadError as exc:
            raise SettingsError(f"router.tokenizers.{model}: {exc}") from None
    for model, tokenizer in tokenizers.items():
        log.info("prefix blocks of %s: token ids (tokenizer %s%s), as vLLM's KV events are renamed", model,
                 settings.tokenizers[model].path, "" if tokenizer.template else "; no chat template: chats hashed as text")
    log.info("prefix blocks of %s: prompt text, %d characters a token (the simulated engines' naming; vLLM's blocks "
             "match only prompts tokenized: give the model a tokenizer in router.tokenizers)",
             "every other model" if tokenizers else "every model", CHARS_PER_TOKEN)
    return tokenizers


async def run(settings: RouterSettings, stop: asyncio.Event | None = None,
              on_start: Callable[[LiveProcess], None] | None = None) -> None:
    settings = as_worker(settings)
    settings.grpc_tls.require("router")  # its Route port: mTLS, or plain text chosen by name
    if settings.worker_index >= 0:
        core_id = pin_to_core(settings.worker_index)
        log.info("router worker %d (%s) on core %s", settings.worker_index, settings.core.router_id, core_id)
    async with LiveProcess("router", settings) as p:
        core = RouterCore(settings.core, tiers=settings.tier_specs())
        upstream = UpstreamClient(UpstreamConfig(connect_timeout_s=settings.upstream_connect_timeout_s,
                                                 idle_timeout_s=settings.upstream_read_timeout_s,
                                                 first_token_timeout_s=settings.upstream_first_token_timeout_s))
        await upstream.start()
        p.on_exit(upstream.close)
        records = RecordBatcher(p.bus, p.registry, batch_max=settings.records_batch_max)
        p.on_exit(records.flush)  # runs before the bus closes: registered after it
        # Prompts are hashed into prefix blocks when the engines cache prefixes (the policy may route on them)
        engine = settings.engine
        gate = tenant_gate(settings, p.clock.now_s, p.registry)
        metrics = RouterMetrics(p.registry)
        backend = LiveRouterBackend(core, p.clock, upstream, records, settings.core.region, p.tracer_provider,
                                    engine.prefix_block_tokens if engine.enable_prefix_caching else 0,
                                    load_tokenizers(settings) if engine.enable_prefix_caching else {},
                                    on_finished=gate.settle if gate is not None else None, metrics=metrics,
                                    spans=settings.tracing_exporter != "none")
        if settings.tokenizers and not engine.enable_prefix_caching:
            log.warning("router.tokenizers are not loaded: engine.enable_prefix_caching is off, so no prompt's "
                        "blocks are hashed")
        host = CoreHost(core, p.bus, p.store, p.clock, on_action=backend.on_action)
        p.core = core
        backend.host = host

        ns = settings.namespace or "default"
        rid = settings.core.router_id
        log.info("router %s: own consumers of heartbeats and plans (every replica sees the whole fleet)", rid)
        for subject, name in ((subjects.HEARTBEATS_ALL, "heartbeats"), (subjects.PLANS_ALL, "plans")):
            # one consumer per replica, each with every event; the server removes a gone replica's
            # consumers after an hour (a restarted pod keeps its name and resumes them)
            sub = await p.bus.subscribe(subject, durable_name("router", rid, name, ns), host.deliver,
                                        deliver="last_per_subject", inactive_threshold_s=3600.0)
            p.on_exit(sub.stop)
        if core.follows_kv_events():
            # Every engine's KV events, in order (one consumer, so an instance's batches keep their seq
            # order); a new router reads what the stream still holds (minutes) and follows from there.
            sub = await p.bus.subscribe(subjects.KV_EVENTS_ALL, durable_name("router", rid, "kvevents", ns),
                                        host.deliver, deliver="all", max_pending=2000, max_deliveries=1,
                                        inactive_threshold_s=3600.0)
            p.on_exit(sub.stop)
            p.registry.register(KvIndexCollector(core))

        # The drain at shutdown is bounded by stop_timeout_s: streams still running then are cancelled;
        # workers of one host share the port (SO_REUSEPORT), and the kernel spreads connections over them
        app = build_router_app(backend, gate=gate, metrics=metrics)
        server = await serve_router(app, settings.http_limits, settings.http_host, settings.http_port,
                                    shutdown_timeout_s=settings.stop_timeout_s,
                                    reuse_port=settings.worker_index >= 0 or None, access_log=settings.access_log)
        p.on_exit(server.close)
        grpc_server, _ = await start_router_grpc(core, p.clock.now_s, settings.core.region, settings.http_host,
                                                 settings.grpc_port, settings.grpc_tls)
        p.on_exit(lambda: grpc_server.stop(2.0))

        async def drain() -> None:
            # Registered last, so the shutdown starts here: every port is released at once (a
            # replacement on this host binds while this one drains), then the streams in flight finish
            # or are cancelled at the deadline, API and gRPC alike.
            await server.stop_accepting()
            await p.close_ops_port()
            await asyncio.gather(server.close(), grpc_server.stop(settings.stop_timeout_s))

        p.on_exit(drain)

        p.supervisor.every("tick", settings.tick_s, host.tick, timeout_s=max(5.0, settings.tick_s))
        p.supervisor.every("records", settings.records_flush_s, records.flush,
                           timeout_s=max(10.0, settings.records_flush_s))
        if on_start is not None:
            on_start(p)
        freeze_startup_heap()
        await p.run(stop)


def tenant_gate(settings: RouterSettings, now_s: Callable[[], float],
                registry: CollectorRegistry | None) -> TenantGate | None:
    """The API-key gate the settings ask for, or None (said loudly: anyone who reaches the API may use it)."""
    if not settings.auth.active:
        log.warning("API keys are OFF: anyone who reaches %s:%d may use the API (set router.auth to require keys)",
                    settings.http_host, settings.http_port)
        return None
    table = KeyTable(settings.auth.key_specs(), now_s())
    log.info("API keys are on: %d key(s) (%s)", len(table), ", ".join(table.key_ids()))
    return TenantGate(table, now_s, registry)

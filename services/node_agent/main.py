"""The live node-agent of one GPU host: the node-agent core converges the host's engines towards the
planner's newest epoch (gRPC Apply/Drain/Status), publishes heartbeats on NATS, and serves its engines'
OpenAI-compatible endpoints. The engines are the simulated engine paced in real time (engine_backend
`sim`) or OpenAI-compatible servers running on the host, such as vLLM (`openai`). A spot preemption
notice reaches it at POST /ops/spot-notice on its ops port (`{"notice_s": N}`, from whatever watches the
cloud's notices): it drains every instance within the notice. With `stop_drain_s` set (the local VM
actuator sets it: a host given back is going away), SIGTERM drains the same way, for at most that long,
before the engines stop and the agent exits; without it the engines stop at once and a restarted agent
takes them back. Wiring only: the logic is opscale.services.node_agent."""

from __future__ import annotations

import asyncio
import dataclasses
import logging
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from aiohttp import web

from opscale.engine import SimEngine
from opscale.model import InstanceSpec, InstanceState, InstanceStatus, OperatorReplicas
from opscale.perf import default_catalog, latency_model_for, load_profiles
from opscale.perf.loading import HostWeightCache, choose_load
from opscale.perf.operator_replicas import replica_attach_s
from opscale.runtime.live.grpc_glue import start_node_agent_server
from opscale.runtime.live.host import CoreHost
from opscale.runtime.live.http_tracing import tracing_middleware
from opscale.runtime.live.settings import NodeAgentSettings
from opscale.runtime.live.store import RedisStore, StoreError
from opscale.services.actions import (
    Action,
    DrainEngine,
    Publish,
    SetOperatorReplicas,
    StartEngine,
    StopEngine,
)
from opscale.services.events import AgentHeartbeat, ApplyCommand, DrainCommand
from opscale.services.node_agent import NodeAgentCore

from opscale_services.common import LiveProcess
from opscale_services.node_agent.engine_http import build_engine_app, make_runner
from opscale_services.node_agent.engines import RealtimeEngines
from opscale_services.node_agent.kv_forward import KvForwarder
from opscale_services.node_agent.openai_engines import OpenAIEngines, build_openai_proxy_app
from opscale_services.node_agent.vllm_kv_metrics import VllmKvCollector

log = logging.getLogger(__name__)


APPLIED_TTL_S = 7 * 86_400.0
"""How long an agent's applied command is kept in Redis: a host back within a week takes its engines back."""


class _Control:
    """The NodeAgent gRPC service's implementation: commands go through the core, actions are performed,
    and each command applied is kept in Redis, so that the agent restarted on this host takes its engines
    back (and keeps refusing the commands of planners fenced off before)."""

    def __init__(self, core: NodeAgentCore, host: CoreHost, store: RedisStore) -> None:
        self.core, self.host, self.store = core, host, store

    async def apply(self, command: ApplyCommand) -> tuple[bool, int, str, Sequence[InstanceStatus]]:
        now = self.host.clock.now_s()
        result, actions = self.core.apply(command, now)
        await self.host.perform(actions)
        if result.accepted and actions:  # applied now (a repeat changed nothing and is stored already)
            try:
                await self.store.put_applied(command, APPLIED_TTL_S)
            except StoreError as exc:
                # the plan stands; a restart before the next Apply is stored would wait for the planner
                log.warning("agent %s: epoch %d applied but not kept in Redis: %s", command.agent_id,
                            command.epoch, exc)
        return result.accepted, result.applied_epoch, result.reason, self.core.heartbeat(now).instances

    async def restore(self) -> None:
        """Take back what this agent last applied: the openai backend binds its servers (which ran on)
        to the same instances again, the simulated one starts them again; with the same epoch and
        fencing token, so the planner sees the agent converged and stale commands stay refused."""
        stored = await self.store.applied(self.core.config.agent_id)
        if stored is None:
            return
        result, actions = self.core.apply(stored, self.host.clock.now_s())
        await self.host.perform(actions)
        log.info("agent %s: took back epoch %d (fencing token %d) with %d instance(s): %s", stored.agent_id,
                 stored.epoch, stored.fencing_token, len(stored.instances), result.reason)

    async def drain(self, command: DrainCommand) -> tuple[bool, str]:
        accepted, reason, actions = self.core.drain(command, self.host.clock.now_s())
        await self.host.perform(actions)
        return accepted, reason

    async def status(self) -> AgentHeartbeat:
        return self.core.heartbeat(self.host.clock.now_s())


async def run(settings: NodeAgentSettings, stop: asyncio.Event | None = None,
              on_start: Callable[[LiveProcess], None] | None = None) -> None:
    catalog = default_catalog()
    catalog.sku(settings.sku)  # an unknown SKU fails here, naming the known ones
    # A live engine streams every token as it is made: one decode step per event, tokens always reported
    # (a scenario written for the simulator may turn them off to save time there).
    engine_config = settings.engine.model_copy(update={"max_run_steps": 1, "emit_tokens": True})

    profiles = load_profiles(settings.profiles_dir) if settings.profiles_dir else None

    def make_engine(spec: InstanceSpec) -> SimEngine:
        model, sku = catalog.model(spec.model), catalog.sku(spec.sku)
        latency = latency_model_for(model, sku, spec.tp, profiles=profiles)
        return SimEngine(spec.instance_id, model, sku, spec.tp, latency, engine_config, role=spec.role)

    openai_backend = settings.engine_backend == "openai"

    # The simulated engines model where weights come from as the simulator does: host memory keeps them
    # after an instance stops, and a plan may stage them there ahead of a scale-out. An openai server
    # manages its own weights, so that backend neither reports nor stages any.
    weights = None if openai_backend else HostWeightCache(settings.weight_cache_gb)

    def load_time(spec: InstanceSpec) -> float:
        if weights is None:
            return 0.0  # the server runs already; its health decides when it is ready
        model = catalog.model(spec.model)
        in_memory = weights.has(model.name)
        weights.loaded(model)
        choice = choose_load(model, catalog.sku(spec.sku), spec.tp, in_host_memory=in_memory, peer_available=False)
        return choice.load_s * settings.load_time_scale

    def operator_attach_s(spec: InstanceSpec, replica: OperatorReplicas) -> float:
        return replica_attach_s(catalog.model(spec.model), replica) * settings.load_time_scale

    def stage_weights(model_name: str) -> bool:
        assert weights is not None
        return weights.stage(catalog.model(model_name), asyncio.get_running_loop().call_later,
                             time_scale=settings.load_time_scale)

    settings.grpc_tls.require("node-agent")  # before connecting anything: fail fast, naming the fields
    async with LiveProcess("node_agent", settings) as p:
        # The core is built first with the configured ports; once the servers are bound (port 0 picks a
        # free one) its address and endpoint base are set from the real ports, before any heartbeat.
        # The simulated engines run operator replicas (attached in place, after their operators' weights
        # load); an openai server (vLLM, SGLang) cannot split operators: the core ignores them and says so.
        core = NodeAgentCore(settings.core_config(), load_time,
                             tuple if weights is None else (lambda: weights.models),
                             None if weights is None else stage_weights,
                             None if openai_backend else operator_attach_s)

        async def on_action(action: Action) -> bool:
            match action:
                case StartEngine(spec=spec):
                    engines.start(spec)
                case DrainEngine(instance_id=instance_id):
                    engines.drain(instance_id)
                case SetOperatorReplicas(instance_id=instance_id, serving=serving) if not openai_backend:
                    assert isinstance(engines, RealtimeEngines)
                    engines.set_operator_replicas(instance_id, serving)
                case StopEngine(instance_id=instance_id):
                    await engines.stop(instance_id)
                case Publish(subject=subject, event=AgentHeartbeat() as hb) if openai_backend:
                    # An instance whose server fails its health check is reported loading, not ready,
                    # so the router sends it nothing until the server is back.
                    instances = tuple(
                        dataclasses.replace(st, state=InstanceState.LOADING)
                        if st.state == InstanceState.READY and not openai_engines.healthy(st.instance_id) else st
                        for st in hb.instances)
                    await p.bus.publish(subject, dataclasses.replace(hb, instances=instances))
                case _:
                    return False
            return True

        engines: RealtimeEngines | OpenAIEngines
        if openai_backend:
            openai_engines = OpenAIEngines(settings.openai_engines, p.clock, is_accepting=core.is_accepting,
                                           kv_block_tokens=settings.engine.prefix_block_tokens)
            await openai_engines.start_session()
            p.registry.register(VllmKvCollector(openai_engines.kv_subscribers))
            engines = openai_engines
            app = build_openai_proxy_app(openai_engines)
            p.supervisor.every("engine-health", settings.engine_health_interval_s, openai_engines.check,
                               timeout_s=max(5.0, settings.engine_health_interval_s))
        else:
            engines = RealtimeEngines(p.clock, make_engine, settings.placement(), is_accepting=core.is_accepting,
                                      transfer=settings.transfer)
            app = build_engine_app(engines, prefix_block_tokens=engine_config.prefix_block_tokens
                                   if engine_config.enable_prefix_caching else 0)
        p.on_exit(engines.close)
        host = CoreHost(core, p.bus, p.store, p.clock, on_action=on_action)

        app.middlewares.append(tracing_middleware(p.tracer_provider, "opscale.node_agent.engines"))
        runner = make_runner(app)
        await runner.setup()
        p.on_exit(runner.cleanup)
        await web.TCPSite(runner, settings.grpc_host, settings.http_port).start()
        http_port = next((a[1] for a in runner.addresses if isinstance(a, tuple)), settings.http_port)
        control = _Control(core, host, p.store)
        server, grpc_port = await start_node_agent_server(control, settings.grpc_host,
                                                          settings.grpc_port, tls=settings.grpc_tls,
                                                          tracer_provider=p.tracer_provider)
        p.on_exit(lambda: server.stop(2.0))
        advertised_http_port = settings.advertise_http_port or http_port
        core.config = settings.core_config(grpc_port).model_copy(
            update={"endpoint_base": f"http://{settings.advertise_host or _host()}:{advertised_http_port}"})
        # Before the first heartbeat: an Apply that came first is ordered against it by (token, epoch)
        await control.restore()

        async def spot_notice(body: Mapping[str, Any]) -> tuple[int, Mapping[str, Any]]:
            """POST /ops/spot-notice {"notice_s": N}: the cloud will take this host in N seconds (a spot
            preemption notice, relayed by whatever watches the cloud's metadata). The core drains every
            instance by then and says so in its heartbeats; the planner places replacements elsewhere."""
            notice_s = body.get("notice_s")
            if isinstance(notice_s, bool) or not isinstance(notice_s, int | float) or not 0 <= notice_s < 86_400:
                raise ValueError(f"notice_s must be a number of seconds in [0, 86400), got {notice_s!r}")
            now = p.clock.now_s()
            await host.perform(core.reclaim(now + float(notice_s), now))
            return 202, {"agent_id": settings.agent_id, "terminating_in_s": float(notice_s),
                         "draining": core.draining()}

        p.ops_actions["spot-notice"] = spot_notice

        # The engines' KV events (engine.kv_events for the simulated engines; a server's
        # kv_events_endpoint for the openai backend), batched per instance each tick
        kv = KvForwarder(settings.region, settings.agent_id, p.bus.publish, settings.kv_events_batch_max,
                         seq_base=int(p.clock.now_s() * 1e6))

        async def tick() -> None:
            now = p.clock.now_s()
            for report in engines.reports():
                core.handle(report, now)
            await host.tick()
            await kv.forward(engines.take_kv_events(), now)

        p.supervisor.every("tick", settings.tick_s, tick, timeout_s=max(5.0, settings.tick_s))

        async def drain_on_stop() -> None:
            """Stopping (the loops have ended): drain as a spot notice does, ticking here, until no instance
            serves or `stop_drain_s` has passed; the heartbeats tell the planner and the routers meanwhile.
            After the reclaim only draining instances serve (`NodeAgentCore.draining`): none loads or is
            ready again, as nothing starts on a host being reclaimed."""
            start = p.clock.now_s()
            deadline = start + settings.stop_drain_s
            try:
                await asyncio.wait_for(host.perform(core.reclaim(deadline, start)), settings.request_timeout_s)
                while core.draining() and p.clock.now_s() < deadline:
                    await asyncio.sleep(settings.tick_s)
                    await asyncio.wait_for(tick(), max(5.0, settings.tick_s))
            except Exception as exc:  # noqa: BLE001 - the engines stop next whatever happened here
                log.warning("%s: drain on stop cut short: %s", settings.agent_id, exc or type(exc).__name__)
                return
            log.info("%s: drained in %.1f s; stopping", settings.agent_id, p.clock.now_s() - start)
        if settings.stop_drain_s > 0:
            p.on_exit(drain_on_stop)  # runs first at exit: the engines, servers and bus are still up
        if on_start is not None:
            on_start(p)
        await p.run(stop)


def _host() -> str:
    import socket

    return socket.gethostname() or "localhost"

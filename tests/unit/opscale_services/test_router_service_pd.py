"""A disaggregated request through the live router and the node-agent's engine server, on loopback: the
router core pairs a prefill and a decode instance, the router runs the prefill step on the prefill
instance's simulated engine and streams the decode step from the decode instance's, which prices the KV
transfer from the prefill's location (opscale.openai.kv_transfer). And its failures: a decode instance
that cannot be reached has the request paired again; when no pair is left the client gets an OpenAI
error body, and nothing stays charged in the core. The bus is an in-memory recorder: no NATS, so `unit`
tests even though they open sockets."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager
from dataclasses import dataclass
from typing import Any

import aiohttp
import pytest
from _router_service_loopback import LiveRouter, live_router, serve, sse

from opscale.engine import EngineConfig, SimEngine
from opscale.model import InstanceSpec, InstanceState, InstanceStatus, Role
from opscale.openai.kv_transfer import KV_TRANSFER_PARAMS
from opscale.perf import default_catalog, latency_model_for
from opscale.perf.transfer import Placement, TransferParams
from opscale.runtime.clock import WallClock
from opscale.services.events import PrefillHandedOff
from opscale.services.router import RouterConfig, RouterCore

from opscale_services.node_agent.engine_http import build_engine_app
from opscale_services.node_agent.engines import RealtimeEngines

pytestmark = pytest.mark.unit

MODEL = "Llama-3-8B"
BODY = {"model": MODEL, "prompt": [1] * 64, "max_tokens": 4, "stream": True}
UNREACHABLE = "http://127.0.0.1:1/instances/gone"  # nothing listens on port 1: connection refused


class Host:
    """One node-agent's engines (simulated, real time) behind its engine server."""

    def __init__(self, agent_id: str, s0: str) -> None:
        catalog = default_catalog()
        model, sku = catalog.model(MODEL), catalog.sku("H100-80GB")
        config = EngineConfig(max_run_steps=1, emit_tokens=True)

        def factory(spec: InstanceSpec) -> SimEngine:
            return SimEngine(spec.instance_id, model, sku, spec.tp, latency_model_for(model, sku, spec.tp), config,
                             role=spec.role)

        self.engines = RealtimeEngines(WallClock(), factory, Placement("local", s0, agent_id, "pod-1", "big-1"),
                                       lambda _: True, TransferParams())
        self.app = build_engine_app(self.engines)


@dataclass
class PdRouter(LiveRouter):
    handed_off: list[PrefillHandedOff]  # what the core heard between the two steps


@asynccontextmanager
async def pd_router(prefills: dict[str, str | None], decodes: dict[str, str | None],
                    config: RouterConfig | None = None) -> AsyncIterator[PdRouter]:
    """The live router in front of prefill and decode instances (id -> endpoint; None: a simulated engine
    of that role on a host of its own)."""
    async with AsyncExitStack() as stack:
        statuses = []
        for role, instances in ((Role.PREFILL, prefills), (Role.DECODE, decodes)):
            for instance_id, endpoint in instances.items():
                if endpoint is None:
                    host = Host(f"host-{instance_id}", "leaf-a" if role is Role.PREFILL else "leaf-b")
                    host.engines.start(InstanceSpec(instance_id, MODEL, "H100-80GB", 1, role))
                    stack.push_async_callback(host.engines.close)
                    endpoint = f"{await stack.enter_async_context(serve(host.app))}/instances/{instance_id}"
                statuses.append(InstanceStatus(instance_id, MODEL, "H100-80GB", 1, role, InstanceState.READY,
                                               endpoint=endpoint))
        core = RouterCore(config or RouterConfig(models=[MODEL]))
        handed_off: list[PrefillHandedOff] = []
        handle = core.handle

        def spy(event: Any, now_s: float) -> Any:
            if isinstance(event, PrefillHandedOff):
                handed_off.append(event)
            return handle(event, now_s)

        core.handle = spy  # type: ignore[method-assign]
        live = await stack.enter_async_context(live_router(core, statuses))
        yield PdRouter(live.url, live.core, live.host, live.bus, live.records, handed_off)


async def test_a_pair_prefills_on_one_instance_and_streams_from_the_other() -> None:
    async with pd_router({"p-1": None}, {"d-1": None}) as r, aiohttp.ClientSession() as http:
        async with http.post(f"{r.url}/v1/completions", json=BODY) as resp:
            assert resp.status == 200
            events = sse(await resp.read())
        assert "".join(e["choices"][0]["text"] for e in events[:-1]) == " tok1 tok2 tok3 tok4"
        assert events[-1] == "[DONE]"
        # the core heard the hand-off, so the request counted against the decode instance only, then nothing
        assert [(h.prefill_instance_id, h.decode_instance_id) for h in r.handed_off] == [("p-1", "d-1")]
        assert r.core.in_flight() == 0
        await r.records.flush()
        [record] = r.bus.records()
        assert (record.status, record.prefill_instance_id, record.instance_id) == ("ok", "p-1", "d-1")


async def test_an_unreachable_decode_instance_has_the_request_paired_again() -> None:
    async with pd_router({"p-1": None}, {"d-a-gone": UNREACHABLE, "d-b-ok": None}) as r, \
            aiohttp.ClientSession() as http:
        for _ in range(2):  # whichever decode instance the pairing picks first, the request ends on d-b-ok
            async with http.post(f"{r.url}/v1/completions", json=BODY) as resp:
                assert resp.status == 200
                assert sse(await resp.read())[-1] == "[DONE]"
        assert r.core.in_flight() == 0
        await r.records.flush()
        assert {(x.status, x.prefill_instance_id, x.instance_id) for x in r.bus.records()} == {("ok", "p-1", "d-b-ok")}


async def test_no_decode_instance_left_is_an_openai_error_and_nothing_stays_charged() -> None:
    config = RouterConfig(models=[MODEL], max_attempts=2)
    async with pd_router({"p-1": None}, {"d-a": UNREACHABLE, "d-b": UNREACHABLE}, config) as r, \
            aiohttp.ClientSession() as http:
        async with http.post(f"{r.url}/v1/completions", json=BODY) as resp:
            assert resp.status == 502
            error = (await resp.json())["error"]
            assert set(error) == {"message", "type", "param", "code"} and "failed on 2 instances" in error["message"]
        assert len(r.handed_off) == 2  # each try prefilled, then failed on its decode instance
        assert r.core.in_flight() == 0
        await r.records.flush()
        [record] = r.bus.records()
        assert record.status == "rejected" and record.first_token_s is None


async def test_a_prefill_instance_gone_from_its_host_is_a_503_once_no_pair_is_left() -> None:
    # the endpoint answers, but the node-agent there no longer runs the instance (404): the router drops it
    # until a heartbeat says otherwise, holds the request, and refuses it when the hold times out
    empty = Host("host-x", "leaf-a")
    async with serve(empty.app) as base, \
            pd_router({"p-gone": f"{base}/instances/p-gone"}, {"d-1": None},
                      RouterConfig(models=[MODEL], pending_timeout_s=0.2)) as r, \
            aiohttp.ClientSession() as http:
        async def tick() -> None:  # the live router's supervisor ticks its core: held requests expire
            while True:
                await asyncio.sleep(0.05)  # noqa: TID251 - the tick period, shortened
                await r.host.tick()

        ticker = asyncio.create_task(tick())
        try:
            async with http.post(f"{r.url}/v1/completions", json=BODY) as resp:
                assert resp.status == 503
                error = (await resp.json())["error"]
                assert error["code"] == "no_capacity" and MODEL in error["message"]
        finally:
            ticker.cancel()
        assert r.handed_off == [] and r.core.in_flight() == 0


async def test_the_engine_servers_refuse_what_their_role_does_not_serve() -> None:
    prefill, decode = Host("h-p", "leaf-a"), Host("h-d", "leaf-b")
    prefill.engines.start(InstanceSpec("p-1", MODEL, "H100-80GB", 1, Role.PREFILL))
    decode.engines.start(InstanceSpec("d-1", MODEL, "H100-80GB", 1, Role.DECODE))
    try:
        async with serve(prefill.app) as p_url, serve(decode.app) as d_url, aiohttp.ClientSession() as http:
            whole = {**BODY, "stream": False}
            for url in (f"{p_url}/instances/p-1", f"{d_url}/instances/d-1"):
                async with http.post(f"{url}/v1/completions", json=whole) as resp:
                    assert resp.status == 400 and (await resp.json())["error"]["code"] == "wrong_role"
            bad = {**whole, KV_TRANSFER_PARAMS: {"do_remote_prefill": True, "remote_engine_id": "p-1"}}
            async with http.post(f"{d_url}/instances/d-1/v1/completions", json=bad) as resp:
                error = (await resp.json())["error"]
                assert resp.status == 400 and error["param"] == f"{KV_TRANSFER_PARAMS}.remote_host", error
    finally:
        await prefill.engines.close()
        await decode.engines.close()

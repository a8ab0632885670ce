"""A draining router frees its ports at once and its drain is bounded by `stop_timeout_s` (issue 16, item
6): the live router process (real NATS and Redis) is stopped while a request is in flight; its API and
ops ports can be bound by a replacement while that request is still open, and the router ends at the
drain's bound rather than when the request would have."""

from __future__ import annotations

import asyncio
import socket

import aiohttp
import pytest
from _stack import start_service

from opscale.runtime.live.local_servers import free_port
from opscale.runtime.live.settings import RouterSettings, load_settings

from opscale_services.router import main as router

pytestmark = pytest.mark.integration

GUARD_S = 30.0  # hang guard only


def bindable(port: int) -> bool:
    with socket.socket() as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as aiohttp's servers bind
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
        return True


async def test_a_draining_router_frees_its_ports_while_a_request_is_in_flight_and_stops_at_its_bound(
        nats_url: str, redis_url: str, namespace: str, bus_factory: object) -> None:
    # bus_factory: deletes the namespace's streams at the end
    http_port, ops_port = free_port(), free_port()
    # no instance of model m: a request is held (up to pending_timeout_s, far beyond the drain's bound)
    settings = load_settings(RouterSettings, nats_url=nats_url, redis_url=redis_url, namespace=namespace,
                             ops_host="127.0.0.1", ops_port=ops_port, http_host="127.0.0.1", http_port=http_port,
                             grpc_port=free_port(), stop_timeout_s=1.0, grpc_tls={"insecure": True},
                             core={"models": ["m"], "pending_timeout_s": 600.0})
    stop = asyncio.Event()
    task, process = await start_service(router.run, settings, stop, name="router", timeout_s=GUARD_S)
    try:
        assert not bindable(http_port) and not bindable(ops_port)
        async with aiohttp.ClientSession() as http:
            held = asyncio.create_task(http.post(f"http://127.0.0.1:{http_port}/v1/completions",
                                                 json={"model": "m", "prompt": "x"}))
            while not process.ready:
                await asyncio.sleep(0.01)  # noqa: TID251 - polling a live server's state
            await asyncio.sleep(0.2)  # noqa: TID251 - the request reaches the router and is held
            assert not held.done()
            stop.set()
            for _ in range(int(GUARD_S / 0.02)):
                if bindable(http_port) and bindable(ops_port):
                    break
                await asyncio.sleep(0.02)  # noqa: TID251 - polling the ports
            assert bindable(http_port) and bindable(ops_port)
            assert not held.done()  # the ports were free while the request was still in flight
            await asyncio.wait_for(task, GUARD_S)  # the drain ended at its bound, the request did not finish
            with pytest.raises(aiohttp.ClientError):
                await asyncio.wait_for(held, GUARD_S)
    finally:
        stop.set()
        await asyncio.wait_for(asyncio.gather(task, return_exceptions=True), GUARD_S)

"""No secret in a log line, /metrics or an error body (issue 16's security acceptance), across the
connect and failure paths of a router configured as a secured deployment runs it: NATS over TLS with the
router's user and password, Redis with an ACL user, API keys, and mTLS on its gRPC port. The secrets are
the NATS and Redis passwords, the API key and the private key files' contents; the test collects every
log record (caplog at DEBUG), the ops server's /metrics and the bodies of refused API requests, and
greps them all."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from _secured import (
    NATS_PASSWORDS,
    REDIS_ACL_PASSWORD,
    REDIS_ACL_USER,
    REDIS_PASSWORD,
    start_secured_nats,
    start_secured_redis,
)
from _stack import start_service
from _tls import dev_pki, tls_dict

from opscale.runtime.live.local_servers import LocalServer, free_port
from opscale.runtime.live.settings import RouterSettings, SettingsError, load_settings

from opscale_services.common import LiveProcess

pytestmark = [pytest.mark.integration, pytest.mark.security]

API_KEY = "sk-opscale-hygiene-7Hq2Zp"


def _secrets() -> list[str]:
    pki = dev_pki()
    keys = [line for path in [pki.ca_key, *(k for _, k in pki.certs.values())]
            for line in path.read_text().splitlines() if "PRIVATE KEY" not in line and len(line) > 16]
    return [*NATS_PASSWORDS.values(), REDIS_PASSWORD, REDIS_ACL_PASSWORD, API_KEY, *keys]


def _assert_clean(where: str, text: str) -> None:
    leaked = [s for s in _secrets() if s in text]
    assert not leaked, f"{where} contains {len(leaked)} of the secrets"


@pytest.fixture(scope="module")
def servers(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[LocalServer, LocalServer]]:
    nats_server = start_secured_nats(dev_pki(), tmp_path_factory.mktemp("nats"))
    try:
        redis_server = start_secured_redis()
        try:
            yield nats_server, redis_server
        finally:
            redis_server.stop()
    finally:
        nats_server.stop()


def _router_settings(nats_url: str, redis_url: str, *, nats_password: str = NATS_PASSWORDS["router"],
                     redis_password: str = REDIS_ACL_PASSWORD) -> RouterSettings:
    pki = dev_pki()
    return load_settings(
        RouterSettings, nats_url=nats_url, redis_url=redis_url, namespace="hygiene", ops_host="127.0.0.1",
        ops_port=0, http_host="127.0.0.1", http_port=free_port(), grpc_port=free_port(), stop_timeout_s=1.0,
        request_timeout_s=2.0,
        nats_auth={"user": "router", "password": nats_password, "tls_ca_file": str(pki.ca_cert)},
        redis_auth={"username": REDIS_ACL_USER, "password": redis_password},
        grpc_tls=tls_dict("router"), auth={"keys": [{"id": "tenant-a", "secret": API_KEY}]},
        core={"models": ["m"], "pending_timeout_s": 1.0})


@pytest.fixture
async def router(servers: tuple[LocalServer, LocalServer]) -> AsyncIterator[tuple[RouterSettings, LiveProcess]]:
    from opscale_services.router import main as router_main

    settings = _router_settings(servers[0].url, servers[1].url)
    stop = asyncio.Event()
    task, process = await start_service(router_main.run, settings, stop, name="router")
    try:
        yield settings, process
    finally:
        stop.set()
        await asyncio.wait_for(task, 30)


async def test_metrics_logs_and_error_bodies_hold_no_secret(router: tuple[RouterSettings, LiveProcess],
                                                           caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    settings, process = router
    api = f"http://127.0.0.1:{settings.http_port}"
    bodies: list[str] = []
    async with aiohttp.ClientSession() as http:
        async def post(headers: dict[str, str], body: Any) -> int:
            async with http.post(f"{api}/v1/completions", headers=headers, json=body) as resp:
                bodies.append(await resp.text())
                return resp.status

        assert await post({}, {"model": "m", "prompt": "x"}) == 401  # no key
        assert await post({"Authorization": f"Bearer {API_KEY}x"}, {"model": "m", "prompt": "x"}) == 401
        assert await post({"Authorization": f"Bearer {API_KEY[:-2]}"}, {"model": "m", "prompt": "x"}) == 401
        bad = await post({"Authorization": f"Bearer {API_KEY}"}, {"model": 7, "prompt": ["x"] * 3})
        assert bad == 400
        unknown = await post({"Authorization": f"Bearer {API_KEY}"}, {"model": "nope", "prompt": "x"})
        assert unknown in (400, 404)
        async with http.get(f"http://127.0.0.1:{process.ops_port}/metrics") as resp:
            metrics = await resp.text()
    assert "tenant-a" in metrics or "opscale" in metrics  # a real exposition, not an empty page
    _assert_clean("/metrics", metrics)
    for body in bodies:
        _assert_clean(f"error body {body[:80]!r}", body)
    _assert_clean("the log", caplog.text)


async def test_failed_connections_hold_no_secret(servers: tuple[LocalServer, LocalServer],
                                                 caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    nats_server, redis_server = servers
    failures: list[str] = []
    # a wrong NATS password, then a wrong Redis password: each start fails, naming the server only
    for settings in (_router_settings(nats_server.url, redis_server.url, nats_password="wrong-nats-Pw-77"),
                     _router_settings(nats_server.url, redis_server.url, redis_password="wrong-redis-Pw-77")):
        with pytest.raises(Exception) as err:  # noqa: B017, PT011 - BusError or StoreError, both name the server
            async with LiveProcess("router", settings):
                pass
        failures.append(f"{err.value!r} {err.value}")
    # a URL with a password in it, refused by a settings check, is not echoed either
    with pytest.raises(SettingsError) as bad:
        load_settings(RouterSettings, nats_url=f"http://router:{NATS_PASSWORDS['router']}@nats:4222")
    failures.append(str(bad.value))
    with pytest.raises(SettingsError) as bad_auth:
        load_settings(RouterSettings, nats_auth={"user": "router", "password": NATS_PASSWORDS["router"],
                                                 "token": REDIS_PASSWORD})
    failures.append(str(bad_auth.value))
    for text in [*failures, caplog.text]:
        _assert_clean("a failure", text)
        assert "wrong-nats-Pw-77" not in text and "wrong-redis-Pw-77" not in text


def test_secrets_in_settings_are_masked(tmp_path: Path) -> None:
    settings = _router_settings("nats://127.0.0.1:1", "redis://127.0.0.1:1/0")
    _assert_clean("the settings' repr", repr(settings) + settings.model_dump_json())

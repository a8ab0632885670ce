"""NATS as deployed (deploy/nats.conf with deploy/nats-auth.conf): a real nats-server started by the
test with the shipped TLS block and per-service users and subject permissions, certificates from the
development CA. A client without credentials cannot connect (so cannot subscribe), one without TLS
neither; the router's user cannot publish a plan while the planner's can; no password reaches a log
line or an error."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Iterator
from pathlib import Path

import nats
import nats.errors
import pytest
from _secured import NATS_PASSWORDS, start_secured_nats

from opscale.model import Plan
from opscale.runtime.live.bus import BusError, NatsBus
from opscale.runtime.live.credentials import nats_connect_options
from opscale.runtime.live.local_servers import LocalServer
from opscale.runtime.live.pki import IssuedFiles, init_dev_pki
from opscale.runtime.live.settings import NatsAuthSettings
from opscale.services import subjects
from opscale.services.events import PlanPublished

pytestmark = [pytest.mark.integration, pytest.mark.security]

PASSWORDS = NATS_PASSWORDS


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> IssuedFiles:
    return init_dev_pki(tmp_path_factory.mktemp("pki"))


@pytest.fixture
def secured_nats(pki: IssuedFiles, tmp_path: Path) -> Iterator[LocalServer]:
    """deploy/nats.conf as shipped, with the container's paths and ports replaced by this run's (one
    server per test: the shipped JetStream caps hold one stack's streams)."""
    server = start_secured_nats(pki, tmp_path / "nats")
    try:
        yield server
    finally:
        server.stop()


def _auth(pki: IssuedFiles, user: str | None) -> NatsAuthSettings:
    creds = {"user": user, "password": PASSWORDS[user]} if user else {}
    return NatsAuthSettings(tls_ca_file=pki.ca_cert, **creds)  # type: ignore[arg-type]


async def _bus(url: str, pki: IssuedFiles, user: str | None, namespace: str = "sec") -> NatsBus:
    bus = NatsBus(namespace, request_timeout_s=1.0)
    await bus.connect(url, f"test-{user}", connect_timeout_s=3.0, options=nats_connect_options(_auth(pki, user)))
    return bus


async def test_a_client_without_credentials_cannot_connect_or_subscribe(
        secured_nats: LocalServer, pki: IssuedFiles, caplog: pytest.LogCaptureFixture) -> None:
    with pytest.raises(BusError, match="cannot connect to NATS"):
        await _bus(secured_nats.url, pki, None)
    # the same with nats-py directly: no connection, so no subscription
    with pytest.raises((nats.errors.Error, OSError, asyncio.TimeoutError)):
        nc = await nats.connect(secured_nats.url, tls=nats_connect_options(_auth(pki, None))["tls"],
                                allow_reconnect=False, connect_timeout=2, max_reconnect_attempts=0)
        await nc.subscribe(subjects.PLANS_ALL)
    # a wrong password is refused as well, and never shown
    wrong = NatsAuthSettings(tls_ca_file=pki.ca_cert, user="router", password="not-the-password")  # type: ignore[arg-type]
    bus = NatsBus("sec")
    with pytest.raises(BusError) as err:
        await bus.connect(secured_nats.url, "wrong", connect_timeout_s=3.0, options=nats_connect_options(wrong))
    assert "not-the-password" not in str(err.value) and "not-the-password" not in caplog.text


async def test_plain_text_is_refused_even_with_credentials(secured_nats: LocalServer, pki: IssuedFiles) -> None:
    plain = NatsAuthSettings(user="planner", password=PASSWORDS["planner"])  # type: ignore[arg-type]
    with pytest.raises(BusError):
        await NatsBus("sec").connect(secured_nats.url, "plain", connect_timeout_s=3.0,
                                     options=nats_connect_options(plain))


@pytest.mark.parametrize("namespace", ["", "sec"])
async def test_the_router_cannot_publish_plans_and_the_planner_can(
        secured_nats: LocalServer, pki: IssuedFiles, namespace: str, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO)
    planner = await _bus(secured_nats.url, pki, "planner", namespace)
    router = await _bus(secured_nats.url, pki, "router", namespace)
    received: list[PlanPublished] = []
    got = asyncio.Event()

    async def on_plan(delivery: object) -> None:
        received.append(delivery.event)  # type: ignore[attr-defined]
        got.set()

    try:
        sub = await router.subscribe(subjects.PLANS_ALL, f"router-plans-{namespace or 'root'}", on_plan)
        forged = PlanPublished(Plan(epoch=2 ** 63, created_s=0.0))
        with pytest.raises(BusError):
            await router.publish(subjects.plans(), forged)
        await planner.publish(subjects.plans(), PlanPublished(Plan(epoch=7, created_s=1.0)))
        await asyncio.wait_for(got.wait(), 10.0)
        assert [p.plan.epoch for p in received] == [7]  # the forged plan never reached the stream
        # nor can the router erase the plans: purging or deleting a stream is denied to every service
        plans_stream = router.stream_name("plans")
        with pytest.raises((nats.errors.Error, asyncio.TimeoutError)):
            await router._js().purge_stream(plans_stream)
        with pytest.raises((nats.errors.Error, asyncio.TimeoutError)):
            await router._js().delete_stream(plans_stream)
        assert (await planner._js().stream_info(plans_stream)).state.messages == 1
        # the router still publishes what it owns
        await router.publish(subjects.router_load("eu"), _router_load())
        await sub.stop()
    finally:
        await planner.close()  # the server, and its streams, are this test's own
        await router.close()
    assert "permissions violation for publish" in caplog.text.lower() and PASSWORDS["router"] not in caplog.text


def _router_load() -> object:
    from opscale.services.events import RouterLoad

    return RouterLoad("r0", "eu", 1.0, {}, 1.0, {}, {}, {})

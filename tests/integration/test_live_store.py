"""RedisStore against a real Redis-protocol server: JSON values, windows, the epoch-monotonic plan,
leader leases, timeouts and namespace isolation."""

from __future__ import annotations

import asyncio
import random

import pytest
import redis.asyncio as aioredis

from opscale.model import InstanceSpec, Plan, Role
from opscale.runtime.live.store import RedisStore, StoreError
from opscale.services.events import PoolUtilisation, WindowStats

pytestmark = pytest.mark.integration


def window(model: str, requests: int) -> WindowStats:
    return WindowStats(model=model, region="eu", tier="chat", window_s=60.0, end_s=600.0, requests=requests,
                       completed=requests, arrival_rps=requests / 60, prompt_tokens_per_s=100.0,
                       output_tokens_per_s=20.0, ttft_p50_s=0.2, ttft_p99_s=0.9, tbt_p50_s=0.02, tbt_p99_s=0.05,
                       e2e_p50_s=3.0, e2e_p99_s=9.0, slo_attainment=None)


def plan(epoch: int) -> Plan:
    return Plan(epoch=epoch, created_s=float(epoch), reason=f"epoch {epoch}",
                assignments={"agent-1": (InstanceSpec(f"i{epoch}", "llama", "H100-80GB", 4),)},
                agent_regions={"agent-1": "eu"}, vm_counts={("eu", "H100-80GB", "spot"): 2})


async def test_json_round_trip_ttl_and_delete(store: RedisStore, redis_url: str) -> None:
    value = {"replicas": {"llama/eu": 3}, "weights": [0.25, 0.75], "note": "ünïcode", "none": None}
    await store.set_json("router/state", value)
    assert await store.get_json("router/state") == value
    assert await store.get_json("missing") is None
    await store.set_json("short", 1, ttl_s=30.0)
    raw = aioredis.from_url(redis_url)
    try:
        ttl_ms = await raw.pttl(store.key("short"))
    finally:
        await raw.aclose()
    assert 0 < ttl_ms <= 30_000
    assert await store.delete("router/state") is True
    assert await store.get_json("router/state") is None


async def test_json_refuses_what_is_not_strict_json(store: RedisStore) -> None:
    with pytest.raises(StoreError, match="not JSON-able"):
        await store.set_json("bad", {"x": float("nan")})
    with pytest.raises(StoreError, match="not JSON-able"):
        await store.set_json("bad", {"x": object()})
    with pytest.raises(StoreError, match="ttl_s must be a finite number > 0, got -1"):
        await store.set_json("bad", 1, ttl_s=-1)


async def test_windows_round_trip_and_listing(store: RedisStore) -> None:
    await store.put_window("eu/llama/chat/60", window("llama", 60), ttl_s=60.0)
    await store.put_window("eu/mistral/chat/60", window("mistral", 6), ttl_s=60.0)
    await store.put_window("us/llama/chat/60", window("llama", 1), ttl_s=60.0)
    assert await store.get_window("eu/llama/chat/60") == window("llama", 60)
    assert await store.get_window("eu/none") is None
    eu = await store.windows("eu/*")
    assert eu == {"eu/llama/chat/60": window("llama", 60), "eu/mistral/chat/60": window("mistral", 6)}
    assert len(await store.windows()) == 3


async def test_pool_utilisation_windows_round_trip_apart_from_the_request_windows(store: RedisStore) -> None:
    util = PoolUtilisation(model="llama", region="eu", role=Role.DECODE, window_s=60.0, end_s=600.0, instances=3.0,
                           gpu_util=0.97, sm_activity=0.12, decode_tps=5400.0, prefill_tps=0.0, prefill_missed_tps=0.0)
    await store.put_pool_utilisation("60:llama:eu:decode", util, ttl_s=60.0)
    await store.put_window("60:llama:eu:chat", window("llama", 60), ttl_s=60.0)
    assert await store.get_pool_utilisation("60:llama:eu:decode") == util
    assert await store.pool_utilisations() == {"60:llama:eu:decode": util}
    assert list(await store.windows()) == ["60:llama:eu:chat"]
    with pytest.raises(StoreError, match="expected PoolUtilisation, got WindowStats"):
        await store.put_pool_utilisation("60:llama:eu:chat", window("llama", 1), ttl_s=60.0)  # type: ignore[arg-type]


async def test_plan_epoch_never_goes_backwards(store: RedisStore) -> None:
    assert await store.load_plan() is None and await store.plan_epoch() is None
    assert (await store.save_plan(plan(5))).saved
    refused = await store.save_plan(plan(3))
    assert (refused.saved, refused.stored_epoch) == (False, 5)
    assert await store.load_plan() == plan(5)
    assert (await store.save_plan(plan(5))).saved  # a retried save of the same epoch is fine
    assert (await store.save_plan(plan(7))).stored_epoch == 7
    assert (await store.load_plan()).epoch == 7


async def test_plan_epochs_beyond_double_precision_order_exactly(store: RedisStore) -> None:
    big = 2**60
    assert (await store.save_plan(plan(big + 1))).saved
    # big and big + 1 are the same double; the Lua comparison must not treat them as equal.
    assert not (await store.save_plan(plan(big))).saved
    assert await store.plan_epoch() == big + 1


async def test_concurrent_saves_keep_the_newest(store: RedisStore) -> None:
    epochs = list(range(1, 41))
    random.Random(7).shuffle(epochs)
    await asyncio.gather(*(store.save_plan(plan(e)) for e in epochs))
    assert (await store.load_plan()) == plan(40)


async def test_lease_only_the_holder_renews_or_releases(store: RedisStore) -> None:
    assert await store.acquire_lease("planner", "a", ttl_s=10.0)
    assert await store.acquire_lease("planner", "a", ttl_s=10.0)  # re-acquiring extends, still ours
    assert not await store.acquire_lease("planner", "b", ttl_s=10.0)
    assert not await store.renew_lease("planner", "b", ttl_s=10.0)
    assert not await store.release_lease("planner", "b")
    assert await store.lease_holder("planner") == "a"
    assert await store.renew_lease("planner", "a", ttl_s=10.0)
    assert await store.release_lease("planner", "a")
    assert await store.lease_holder("planner") is None
    assert not await store.renew_lease("planner", "a", ttl_s=10.0)  # a released lease cannot be renewed
    assert await store.acquire_lease("planner", "b", ttl_s=10.0)


async def test_each_acquisition_makes_a_newer_fencing_token(store: RedisStore) -> None:
    first = await store.acquire_lease("planner", "a", ttl_s=10.0)
    assert first >= 1
    assert await store.renew_lease("planner", "a", ttl_s=10.0)
    assert await store.acquire_lease("planner", "b", ttl_s=10.0) == 0  # held by a: no token for b
    assert await store.release_lease("planner", "a")
    second = await store.acquire_lease("planner", "b", ttl_s=10.0)
    assert second > first  # b's commands outrank a's
    third = await store.acquire_lease("planner", "b", ttl_s=10.0)  # b restarted under the same name
    assert third > second
    assert await store.lease_holder("planner") == "b"


async def test_a_new_generation_exceeds_the_token_the_agents_follow_even_after_redis_lost_it(
        store: RedisStore) -> None:
    assert await store.acquire_lease("planner", "a", ttl_s=10.0) == 1
    await store.delete_namespace()  # Redis restarted without persistence: the counter is gone
    assert await store.acquire_lease("planner", "b", ttl_s=10.0, above=41) == 42  # agents follow 41
    assert await store.release_lease("planner", "b")
    assert await store.acquire_lease("planner", "a", ttl_s=10.0, above=3) == 43  # counted on from there
    with pytest.raises(StoreError, match="above must be"):
        await store.acquire_lease("planner", "c", ttl_s=10.0, above=2**60)


async def test_a_lapsed_lease_goes_to_the_standby(store: RedisStore) -> None:
    assert await store.acquire_lease("planner", "active", ttl_s=0.05)

    async def until_lapsed() -> None:
        while await store.lease_holder("planner") is not None:
            await asyncio.sleep(0.01)  # noqa: TID251 - waiting for Redis to expire a real key
    await asyncio.wait_for(until_lapsed(), 5.0)
    assert not await store.renew_lease("planner", "active", ttl_s=10.0)
    assert await store.acquire_lease("planner", "standby", ttl_s=10.0)


async def test_namespaces_are_isolated_and_cleared(store: RedisStore, redis_url: str) -> None:
    other = RedisStore(redis_url, "zz" + store.namespace)
    try:
        await other.set_json("k", "other")
        await store.set_json("k", "mine")
        assert await other.get_json("k") == "other"
        assert await other.delete_namespace() == 1
        assert await other.get_json("k") is None
        assert await store.get_json("k") == "mine"
    finally:
        await other.close()
    with pytest.raises(StoreError, match="refused for the default namespace"):
        await RedisStore(redis_url).delete_namespace()


async def test_unreachable_redis_fails_within_the_timeout() -> None:
    dead = RedisStore("redis://127.0.0.1:9/0", "tdead", timeout_s=0.3)
    try:
        with pytest.raises(StoreError, match=r"redis (PING|GET)"):
            await dead.ping()
        with pytest.raises(StoreError, match="'tdead:opscale:k'"):
            await dead.get_json("k")
    finally:
        await dead.close()


async def test_an_agents_applied_command_round_trips(store: RedisStore) -> None:
    from opscale.model import InstanceSpec
    from opscale.services.events import ApplyCommand

    assert await store.applied("agent-1") is None
    command = ApplyCommand("agent-1", 7, "apply-7-agent-1", (InstanceSpec("m-eu-00001", "m", "H100-80GB", 1),),
                           ("m",), fencing_token=3)
    await store.put_applied(command, ttl_s=60.0)
    assert await store.applied("agent-1") == command
    assert await store.applied("agent-2") is None

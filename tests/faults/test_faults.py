"""The fault suite (issue 16 item 4): a live stack of separate processes on its own NATS and Redis, load
replayed through the router with the load generator, and one fault in the middle of it. Every request is
counted: completed, failed with a clear error (by class), or lost, and none may be lost. Each case
reports the time its path took to recover (`Figures.recovery_what` says what was timed).

The default run keeps one short case of each kind (a few seconds of load each); the `slow` cases are the
same faults, longer, at a higher rate. `bench/faults.py` runs them all and prints the README's table.
"""

from __future__ import annotations

import asyncio
import signal
import time
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import pytest
import redis.asyncio as aioredis
from _harness import FaultStack, Figures, first_success_after, replay_with_fault, tally, write_trace
from _proxy import FaultProxy

from opscale.reporting.latency_report import read_latency_csv
from opscale.runtime.live.settings import PlannerSettings
from opscale.runtime.live.store import RedisStore

pytestmark = [pytest.mark.integration, pytest.mark.faults]

# The default run's short cases shorten the planner's lease (TTL 3 s, renewed each second) and, for a
# killed agent, the time after which the planner counts it lost, so that they take seconds; the slow
# cases keep the shipped settings (lease TTL 15 s renewed every 5 s, agent timeout 15 s) and measure
# what a deployment gets.
SHORT_LEASE = {"OPSCALE_PLANNER_LEASE_TTL_S": "3", "OPSCALE_PLANNER_LEASE_RENEW_S": "1"}


@pytest.fixture
async def make_stack(tmp_path: Path, namespace: str) -> AsyncIterator[object]:
    made: list[FaultStack] = []

    async def make(prepare: object = None, **kwargs: object) -> FaultStack:
        stack = FaultStack(tmp_path / f"stack{len(made)}", namespace, **kwargs)  # type: ignore[arg-type]
        made.append(stack)
        if prepare is not None:
            await prepare(stack)  # type: ignore[operator]
        stack.start()
        await stack.serving(agents=kwargs.get("hosts", 2))  # type: ignore[arg-type]
        return stack

    yield make
    for stack in made:
        stack.close()


def _check(figures: Figures) -> None:
    print(figures)  # noqa: T201 - shown with -s; the figures also go to $OPSCALE_FAULTS_OUT
    assert figures.lost == 0, figures
    assert figures.completed > 0 and figures.sent == figures.completed + sum(figures.failed.values()), figures


# -- a node-agent killed with SIGKILL mid-stream -----------------------------------------------------


async def _agent_kill(make_stack: object, tmp_path: Path, case: str, rps: float, requests: int,
                      agent_timeout_s: float | None = None) -> Figures:
    # Three hosts, two replicas: the killed host's instance has a free host to be re-placed on.
    env = {} if agent_timeout_s is None else {"OPSCALE_PLANNER_CORE__AGENT_TIMEOUT_S": str(agent_timeout_s)}
    stack: FaultStack = await make_stack(hosts=3, env=env)  # type: ignore[operator]
    ready = await stack.ready_instances([1, 2, 3])
    victim = next(i for i, n in ready.items() if n)
    survivors = [i for i in ready if i != victim]
    trace = write_trace(tmp_path / "trace.csv", rps, requests, output_median=48)
    replaced: list[float] = []

    async def fault() -> None:
        stack.agent(victim).signal(signal.SIGKILL)
        killed = time.monotonic()

        async def two_ready() -> bool:
            return sum((await stack.ready_instances(survivors)).values()) >= 2
        await stack.until(two_ready, 60, "the killed host's instance re-placed")
        replaced.append(time.monotonic() - killed)

    result, at = await replay_with_fault(stack, trace, tmp_path / "out", requests / rps / 3, fault)
    # the router logs each request it re-routes after a failure before the first token
    rerouted = stack.services["router#1"].log_count("before its first token")
    timeout = "shipped 15 s" if agent_timeout_s is None else f"{agent_timeout_s:g} s"
    figures = tally(result, case, f"node-agent SIGKILL mid-stream (planner agent_timeout_s {timeout})", replaced[0],
                    "fault to the fleet re-placed (2 instances READY on the surviving hosts)",
                    first_success_after_fault_s=first_success_after(result, at), rps=rps,
                    rerouted_before_first_token=rerouted)
    _check(figures)
    return figures


async def test_node_agent_killed_mid_stream_loses_no_request(make_stack: object, tmp_path: Path) -> None:
    figures = await _agent_kill(make_stack, tmp_path, "agent_sigkill", rps=20, requests=80, agent_timeout_s=3.0)
    # streams the dead host had started end with an SSE error event, never silently
    assert set(figures.failed) <= {"stream_error"}, figures


@pytest.mark.slow
async def test_node_agent_killed_under_heavier_load_loses_no_request(make_stack: object, tmp_path: Path) -> None:
    figures = await _agent_kill(make_stack, tmp_path, "agent_sigkill_long", rps=24, requests=600)
    assert set(figures.failed) <= {"stream_error"}, figures


# -- NATS and Redis killed and restarted -------------------------------------------------------------


async def _server_restart(make_stack: object, tmp_path: Path, case: str, which: str, down_s: float,
                          rps: float, requests: int, env: dict[str, str]) -> Figures:
    stack: FaultStack = await make_stack(env=env)  # type: ignore[operator]
    trace = write_trace(tmp_path / "trace.csv", rps, requests)
    restarted: list[float] = []
    recovered: list[float] = []

    async def fault() -> None:
        killed = time.monotonic()
        getattr(stack, f"kill_{which}")()
        await asyncio.sleep(down_s)  # noqa: TID251 - the server stays down this long
        await asyncio.to_thread(getattr(stack, f"restart_{which}"))
        restarted.append(time.monotonic() - killed)
        # recovered: the agents' heartbeats go through NATS again, the planner holds its lease in Redis,
        # and a request completes
        await stack.until(stack.heartbeat_heard, 30, f"a heartbeat through NATS after the {which} restart")
        await stack.until(_planner_leads(stack), 30, f"the planner leading again after the {which} restart")
        await stack.until(stack.completes, 30, f"a request completing after the {which} restart")
        recovered.append(time.monotonic() - killed)

    result, _ = await replay_with_fault(stack, trace, tmp_path / "out", 1.5, fault)
    lease = "short lease" if env else "shipped lease"
    figures = tally(result, case, f"{'NATS' if which == 'nats' else 'Redis'} SIGKILL, restarted after {down_s:g} s "
                    f"({lease})",
                    recovered[0], "fault to a heartbeat through NATS, the planner holding its lease and a "
                    "request completing, after the restart", restart_after_s=round(restarted[0], 2), rps=rps)
    _check(figures)
    return figures


def _planner_leads(stack: FaultStack, holder: str | None = None):  # noqa: ANN202
    async def probe() -> bool:
        return (await _lease_holder(stack)) == holder if holder else await _lease_holder(stack) is not None
    return probe


async def _lease_holder(stack: FaultStack) -> str | None:
    key = RedisStore(stack.redis.url, stack.namespace).key("lease:planner")
    client = aioredis.from_url(stack.redis.url)
    try:
        value = await client.get(key)
    except Exception:  # noqa: BLE001 - Redis down: nobody is known to lead
        return None
    finally:
        await client.aclose()
    return value.decode() if value else None


@pytest.mark.parametrize("which", ["nats", "redis"])
async def test_server_killed_and_restarted_loses_no_request(make_stack: object, tmp_path: Path, which: str) -> None:
    figures = await _server_restart(make_stack, tmp_path, f"{which}_restart", which, down_s=2.0, rps=20,
                                    requests=100, env=SHORT_LEASE)
    assert figures.failed == {}, figures  # the data path needs neither server


@pytest.mark.slow
@pytest.mark.parametrize("which", ["nats", "redis"])
async def test_server_down_longer_loses_no_request(make_stack: object, tmp_path: Path, which: str) -> None:
    figures = await _server_restart(make_stack, tmp_path, f"{which}_restart_long", which, down_s=10.0, rps=24,
                                    requests=600, env={})
    assert figures.failed == {}, figures


# -- the planner leader killed -------------------------------------------------------------------------


async def _planner_kill(make_stack: object, tmp_path: Path, case: str, rps: float, requests: int,
                        env: dict[str, str]) -> Figures:
    stack: FaultStack = await make_stack(planners=2, env=env)  # type: ignore[operator]
    await stack.until(_planner_leads(stack), 30, "a planner holding the lease")
    leader = await _lease_holder(stack)
    assert leader in ("planner-1", "planner-2")
    standby = "planner-2" if leader == "planner-1" else "planner-1"
    trace = write_trace(tmp_path / "trace.csv", rps, requests)
    took: list[float] = []

    async def fault() -> None:
        stack.services[f"planner#{leader[-1]}"].signal(signal.SIGKILL)
        took.append(await stack.until(_planner_leads(stack, standby), 60, f"{standby} taking the lease"))

    result, _ = await replay_with_fault(stack, trace, tmp_path / "out", 1.0, fault)
    ttl = PlannerSettings.model_fields["lease_ttl_s"].default
    ttl = float(stack.services["planner#1"].env.get("OPSCALE_PLANNER_LEASE_TTL_S", ttl))
    figures = tally(result, case, "planner leader SIGKILL (standby running)", took[0],
                    f"fault to the standby holding the lease (lease TTL {ttl:g} s)", rps=rps, lease_ttl_s=ttl)
    _check(figures)
    assert figures.failed == {}, figures
    return figures


async def test_planner_leader_killed_standby_takes_the_lease(make_stack: object, tmp_path: Path) -> None:
    await _planner_kill(make_stack, tmp_path, "planner_leader_kill", rps=20, requests=120, env=SHORT_LEASE)


@pytest.mark.slow
async def test_planner_leader_killed_with_the_shipped_lease(make_stack: object, tmp_path: Path) -> None:
    await _planner_kill(make_stack, tmp_path, "planner_leader_kill_long", rps=24, requests=720, env={})


# -- a router restarted with SIGTERM -------------------------------------------------------------------


async def _router_restart(make_stack: object, tmp_path: Path, case: str, rps: float, requests: int) -> Figures:
    stack: FaultStack = await make_stack()  # type: ignore[operator]
    router = stack.services["router#1"]
    trace = write_trace(tmp_path / "trace.csv", rps, requests, output_median=48)
    back: list[float] = []
    exit_codes: list[int] = []

    async def fault() -> None:
        stopped = time.monotonic()
        router.signal(signal.SIGTERM)
        # the draining router frees its ports at once, so its replacement starts beside it
        await stack.until(lambda: _port_free(stack.base), 10, "the draining router freeing its API port")
        router_old = router.proc
        router.proc = None
        router.start()
        await stack.until(stack.completes, 30, "the new router serving")
        back.append(time.monotonic() - stopped)
        assert router_old is not None
        exit_codes.append(await asyncio.to_thread(router_old.wait, 30))

    result, at = await replay_with_fault(stack, trace, tmp_path / "out", requests / rps / 3, fault)
    rows = list(read_latency_csv(result.requests_path))
    in_flight = [r for r in rows if r["sent_s"] and float(r["sent_s"]) < at
                 and (not r["finish_s"] or float(r["finish_s"]) > at)]
    figures = tally(result, case, "router SIGTERM, replacement started", back[0],
                    "SIGTERM to the replacement router completing a request", rps=rps,
                    old_router_exit=exit_codes[0], in_flight_at_sigterm=len(in_flight),
                    in_flight_finished=sum(r["status"] == "ok" for r in in_flight))
    _check(figures)
    assert exit_codes == [0]
    # a stream in flight at the SIGTERM finishes; what arrived while no router listened is refused
    assert set(figures.failed) <= {"connect_error"}, figures
    assert figures.notes["in_flight_at_sigterm"] == figures.notes["in_flight_finished"] > 0, figures
    return figures


async def _port_free(port: int) -> bool:
    try:
        _, writer = await asyncio.open_connection("127.0.0.1", port)
    except OSError:
        return True
    writer.close()
    return False


async def test_router_sigterm_finishes_streams_in_flight(make_stack: object, tmp_path: Path) -> None:
    await _router_restart(make_stack, tmp_path, "router_sigterm", rps=20, requests=80)


@pytest.mark.slow
async def test_router_sigterm_under_heavier_load(make_stack: object, tmp_path: Path) -> None:
    await _router_restart(make_stack, tmp_path, "router_sigterm_long", rps=24, requests=600)


# -- a delay or partition between the router and an engine ---------------------------------------------


async def _network(make_stack: object, tmp_path: Path, case: str, mode: str, hold_s: float, rps: float,
                   requests: int, first_token_timeout_s: float | None = None) -> tuple[Figures, FaultStack, Path]:
    """The proxy holds the path to agent 2's engines for `hold_s` (see _proxy for what a partition does to
    open connections). The load generator waits up to 60 s for an answer. A request sent into the
    partition waits for its first token until the router's `upstream_first_token_timeout_s` (120 s
    shipped) or the heal, whichever comes first, and then goes to the other instance."""
    proxy = FaultProxy(target_port=0)
    listen = await proxy.start()

    async def aim(stack: FaultStack) -> None:
        proxy.target_port = stack.agent_http_port(2)

    env = {} if first_token_timeout_s is None else {
        "OPSCALE_ROUTER_UPSTREAM_FIRST_TOKEN_TIMEOUT_S": str(first_token_timeout_s)}
    try:
        stack: FaultStack = await make_stack(  # type: ignore[operator]
            prepare=aim, env=env, agent_env={1: {"OPSCALE_NODE_AGENT_ADVERTISE_HTTP_PORT": str(listen)}})
        trace = write_trace(tmp_path / "trace.csv", rps, requests)
        healed: list[float] = []

        async def fault() -> None:
            start = time.monotonic()
            if mode == "partition":
                proxy.partition()
            else:
                proxy.delay_s = 0.2
            await asyncio.sleep(hold_s)  # noqa: TID251 - the fault lasts this long
            proxy.heal()
            proxy.delay_s = 0.0
            healed.append(time.monotonic() - start)

        result, at = await replay_with_fault(stack, trace, tmp_path / "out", 1.0, fault)
    finally:
        await proxy.close()
    ok_after = first_success_after(result, at + healed[0])
    rows = list(read_latency_csv(result.requests_path))
    ttfts = sorted(float(r["ttft_s"]) for r in rows if r["ttft_s"])
    timeout_note = "shipped 120 s" if first_token_timeout_s is None else f"{first_token_timeout_s:g} s"
    figures = tally(result, case, f"router-engine {mode} for {hold_s:g} s (TCP proxy; first-token timeout "
                    f"{timeout_note})", None if ok_after is None else healed[0] + ok_after,
                    "fault start to the first request sent after the heal completing", rps=rps,
                    first_success_after_fault_s=first_success_after(result, at),
                    rerouted_before_first_token=stack.services["router#1"].log_count("before its first token"),
                    ttft_max_s=round(ttfts[-1], 2), fault_at_s=round(at, 2), healed_at_s=round(at + healed[0], 2))
    _check(figures)
    return figures, stack, result.requests_path


async def test_network_delay_between_router_and_engine(make_stack: object, tmp_path: Path) -> None:
    figures, _, _ = await _network(make_stack, tmp_path, "net_delay", "delay", 3.0, rps=20, requests=100)
    assert figures.failed == {}, figures


async def test_partition_waits_no_longer_than_the_first_token_timeout(make_stack: object, tmp_path: Path) -> None:
    """Found by this suite: a request sent into a router-engine partition waited for the heal, or 120 s,
    with no setting to shorten it. `upstream_first_token_timeout_s` bounds it: here 1 s, and a 5 s
    partition, so the requests it caught are re-routed and complete while it still holds."""
    figures, stack, requests_path = await _network(make_stack, tmp_path, "net_partition", "partition", 5.0,
                                                   rps=20, requests=140, first_token_timeout_s=1.0)
    assert set(figures.failed) <= {"stream_error"}, figures  # only streams the partition cut mid-way
    assert stack.services["router#1"].log_count("before its first token (timeout") >= 1, figures
    # no request waited for the heal: each one sent in the partition's first 3 s had its first token
    # before the partition healed, the ones it caught from the other instance
    fault_at, healed_at = figures.notes["fault_at_s"], figures.notes["healed_at_s"]
    during = [r for r in read_latency_csv(requests_path)
              if r["status"] == "ok" and fault_at <= float(r["sent_s"]) < healed_at - 2.0]
    assert during and all(float(r["sent_s"]) + float(r["ttft_s"]) < healed_at for r in during), during


@pytest.mark.slow
async def test_longer_network_partition_between_router_and_engine(make_stack: object, tmp_path: Path) -> None:
    await _network(make_stack, tmp_path, "net_partition_long", "partition", 20.0, rps=24, requests=960)


# -- a spot notice ---------------------------------------------------------------------------------------


async def _spot(make_stack: object, tmp_path: Path, case: str, notice_s: float, rps: float,
                requests: int) -> Figures:
    stack: FaultStack = await make_stack(hosts=3)  # type: ignore[operator]
    ready = await stack.ready_instances([1, 2, 3])
    victim = next(i for i, n in ready.items() if n)
    survivors = [i for i in ready if i != victim]
    trace = write_trace(tmp_path / "trace.csv", rps, requests)
    replaced: list[float] = []

    async def fault() -> None:
        noticed = time.monotonic()
        async with aiohttp.ClientSession() as session, \
                session.post(f"{stack.agent_ops(victim)}/ops/spot-notice", json={"notice_s": notice_s}) as resp:
            assert resp.status == 202, await resp.text()

        async def two_ready() -> bool:
            return sum((await stack.ready_instances(survivors)).values()) >= 2
        replaced.append(await stack.until(two_ready, 60, "the reclaimed host's instance re-placed"))
        await asyncio.sleep(max(0.0, notice_s - (time.monotonic() - noticed)))  # noqa: TID251 - the notice runs out
        stack.agent(victim).signal(signal.SIGKILL)  # the cloud takes the host

    result, _ = await replay_with_fault(stack, trace, tmp_path / "out", 1.0, fault)
    figures = tally(result, case, f"spot notice ({notice_s:g} s), then the host SIGKILLed", replaced[0],
                    "notice to the fleet re-placed (2 instances READY on the other hosts)", rps=rps,
                    notice_s=notice_s)
    _check(figures)
    assert figures.failed == {}, figures  # drained within the notice: nothing cut
    return figures


async def test_spot_notice_drains_and_replaces_before_the_host_goes(make_stack: object, tmp_path: Path) -> None:
    await _spot(make_stack, tmp_path, "spot_notice", notice_s=3.0, rps=20, requests=100)


@pytest.mark.slow
async def test_spot_notice_of_thirty_seconds(make_stack: object, tmp_path: Path) -> None:
    await _spot(make_stack, tmp_path, "spot_notice_long", notice_s=30.0, rps=24, requests=960)

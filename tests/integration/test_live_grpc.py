"""The NodeAgent gRPC glue over a real grpc.aio server and channel: apply/drain/status round trips,
bad requests, failing agents, deadlines and retries while the agent is unavailable, all over mTLS with
the development PKI; and the security cases: no client certificate, one from another CA, or one naming
an identity other than the planner is refused before the agent sees the call, and a client refuses an
agent whose certificate it cannot verify."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator

import grpc
import pytest
from _tls import grpc_tls

from opscale.model import InstanceSpec, InstanceState, InstanceStatus, Role
from opscale.runtime.live.grpc_glue import AgentCallError, NodeAgentClient, start_node_agent_server
from opscale.runtime.live.grpc_security import channel_credentials
from opscale.runtime.live.local_servers import free_port
from opscale.runtime.live.pki import init_dev_pki
from opscale.runtime.live.settings import GrpcTlsSettings, SettingsError
from opscale.services.events import AgentHeartbeat, ApplyCommand, DrainCommand
from opscale.v1 import control_pb2, control_pb2_grpc, events_pb2

pytestmark = pytest.mark.integration

AGENT_TLS = grpc_tls("node-agent")
PLANNER_TLS = grpc_tls("planner")


class TinyAgent:
    """Just enough agent for the glue: applies the newest epoch, drains what it runs."""

    def __init__(self) -> None:
        self.applied_epoch = 0
        self.running: dict[str, InstanceSpec] = {}
        self.draining: set[str] = set()
        self.block_status = asyncio.Event()
        self.status_blocks = False
        self.drain_raises = False

    def _statuses(self) -> tuple[InstanceStatus, ...]:
        return tuple(InstanceStatus(s.instance_id, s.model, s.sku, s.tp, s.role,
                                    InstanceState.DRAINING if s.instance_id in self.draining else InstanceState.LOADING,
                                    endpoint=f"http://agent/{s.instance_id}", queued=1, kv_used_frac=0.5)
                     for s in self.running.values())

    async def apply(self, command: ApplyCommand) -> tuple[bool, int, str, tuple[InstanceStatus, ...]]:
        if command.epoch < self.applied_epoch:
            return False, self.applied_epoch, f"epoch {command.epoch} is older than {self.applied_epoch}", \
                self._statuses()
        self.applied_epoch = command.epoch
        self.running = {s.instance_id: s for s in command.instances}
        return True, command.epoch, "", self._statuses()

    async def drain(self, command: DrainCommand) -> tuple[bool, str]:
        if self.drain_raises:
            raise RuntimeError("engine process vanished")
        if command.instance_id not in self.running:
            return False, f"no instance {command.instance_id!r}"
        self.draining.add(command.instance_id)
        return True, ""

    async def status(self) -> AgentHeartbeat:
        if self.status_blocks:
            await self.block_status.wait()
        return AgentHeartbeat("agent-1", "eu", "H100-80GB", 8, "127.0.0.1:0", self.applied_epoch, 1234.5,
                              self._statuses())


@pytest.fixture
async def agent() -> AsyncIterator[tuple[TinyAgent, str]]:
    impl = TinyAgent()
    server, port = await start_node_agent_server(impl, "127.0.0.1", 0, tls=AGENT_TLS)
    try:
        yield impl, f"127.0.0.1:{port}"
    finally:
        await server.stop(0)


SPECS = (InstanceSpec("llama-0", "llama", "H100-80GB", 2), InstanceSpec("llama-1", "llama", "H100-80GB", 4, Role.DECODE))


async def test_apply_drain_status_round_trip(agent: tuple[TinyAgent, str]) -> None:
    impl, address = agent
    async with NodeAgentClient(address, timeout_s=5.0, tls=PLANNER_TLS) as client:
        result = await client.apply(ApplyCommand("agent-1", 7, "cmd-7", SPECS))
        assert (result.accepted, result.applied_epoch, result.reason) == (True, 7, "")
        assert [s.instance_id for s in result.statuses] == ["llama-0", "llama-1"]
        assert result.statuses[1].role is Role.DECODE and result.statuses[1].kv_used_frac == 0.5

        stale = await client.apply(ApplyCommand("agent-1", 6, "cmd-6", ()))
        assert (stale.accepted, stale.applied_epoch) == (False, 7)
        assert "older" in stale.reason

        drained = await client.drain(DrainCommand("agent-1", "llama-1", "drain-1", deadline_s=30.0))
        assert drained == (True, "")
        assert (await client.drain(DrainCommand("agent-1", "nope", "drain-2"))).accepted is False

        heartbeat = await client.status()
    assert heartbeat.epoch == 7 and heartbeat.agent_id == "agent-1"
    assert {s.instance_id: s.state for s in heartbeat.instances} == {
        "llama-0": InstanceState.LOADING, "llama-1": InstanceState.DRAINING}
    assert impl.running.keys() == {"llama-0", "llama-1"}


async def test_malformed_request_is_invalid_argument_naming_the_field(agent: tuple[TinyAgent, str]) -> None:
    _, address = agent
    async with grpc.aio.secure_channel(address, channel_credentials(PLANNER_TLS, "test")) as channel:
        stub = control_pb2_grpc.NodeAgentStub(channel)
        bad = control_pb2.ApplyRequest(epoch=1, command_id="c", agent_id="agent-1",
                                       instances=[events_pb2.InstanceSpec(instance_id="x", model="m", sku="s", tp=3)])
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await stub.Apply(bad, timeout=5.0)
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "tp must be 1, 2, 4 or 8, got 3" in (err.value.details() or "")


async def test_failing_agent_is_internal_with_the_reason(agent: tuple[TinyAgent, str]) -> None:
    impl, address = agent
    impl.drain_raises = True
    async with NodeAgentClient(address, timeout_s=5.0, tls=PLANNER_TLS) as client:
        with pytest.raises(AgentCallError) as err:
            await client.drain(DrainCommand("agent-1", "llama-0", "d"))
        assert err.value.code == "INTERNAL" and "engine process vanished" in err.value.details
        # The server keeps serving after a failed call.
        assert (await client.status()).agent_id == "agent-1"


async def test_every_call_has_a_deadline(agent: tuple[TinyAgent, str]) -> None:
    impl, address = agent
    impl.status_blocks = True
    async with NodeAgentClient(address, timeout_s=0.1, tls=PLANNER_TLS) as client:
        with pytest.raises(AgentCallError, match="DEADLINE_EXCEEDED"):
            await client.status()
    impl.block_status.set()


async def test_unavailable_agent_is_retried_until_it_comes_up(caplog: pytest.LogCaptureFixture) -> None:
    port = free_port()
    impl = TinyAgent()
    client = NodeAgentClient(f"127.0.0.1:{port}", timeout_s=2.0, tls=PLANNER_TLS, attempts=50, backoff_base_s=0.02,
                             backoff_max_s=0.05)
    caplog.set_level(logging.INFO, logger="opscale.runtime.live.grpc_glue")
    call = asyncio.create_task(client.status())

    async def first_retry_logged() -> None:
        while not any("unavailable (attempt 1" in r.getMessage() for r in caplog.records):
            await asyncio.sleep(0.005)  # noqa: TID251 - observing a real connection attempt
    await asyncio.wait_for(first_retry_logged(), 5.0)
    server, _ = await start_node_agent_server(impl, "127.0.0.1", port, tls=AGENT_TLS)
    try:
        heartbeat = await asyncio.wait_for(call, 10.0)
        assert heartbeat.agent_id == "agent-1"
    finally:
        await client.close()
        await server.stop(0)


async def test_unavailable_agent_gives_up_after_the_attempts() -> None:
    async with NodeAgentClient(f"127.0.0.1:{free_port()}", timeout_s=1.0, tls=PLANNER_TLS, attempts=2, backoff_base_s=0.01) as client:
        with pytest.raises(AgentCallError) as err:
            await client.status()
    assert err.value.code == "UNAVAILABLE" and err.value.method == "Status"


# -- security: only the planner's certificate may command an agent --------------------------------------

FORGED = ApplyCommand("agent-1", 2 ** 64 - 1, "forged", ())


async def _apply_over(channel: grpc.aio.Channel) -> grpc.StatusCode:
    stub = control_pb2_grpc.NodeAgentStub(channel)
    from opscale.runtime.live import codec

    with pytest.raises(grpc.aio.AioRpcError) as err:
        await stub.Apply(codec.to_message(FORGED), timeout=5.0, wait_for_ready=False)
    return err.value.code()


@pytest.mark.security
async def test_apply_without_a_client_certificate_is_refused(agent: tuple[TinyAgent, str]) -> None:
    impl, address = agent
    impl.applied_epoch, impl.running = 3, {s.instance_id: s for s in SPECS}
    async with grpc.aio.insecure_channel(address) as plain:  # the attack: plain text, no identity
        assert await _apply_over(plain) == grpc.StatusCode.UNAVAILABLE
    ca_only = grpc.ssl_channel_credentials(root_certificates=PLANNER_TLS.ca_file.read_bytes())  # type: ignore[union-attr]
    async with grpc.aio.secure_channel(address, ca_only) as no_cert:  # TLS, but no client certificate
        assert await _apply_over(no_cert) == grpc.StatusCode.UNAVAILABLE
    assert impl.applied_epoch == 3 and impl.running.keys() == {"llama-0", "llama-1"}  # nothing reached it


@pytest.mark.security
async def test_a_certificate_from_another_ca_is_refused(agent: tuple[TinyAgent, str], tmp_path) -> None:
    impl, address = agent
    other = init_dev_pki(tmp_path / "other")  # a "planner" certificate, but not signed by the stack's CA
    cert, key = other.certs["planner"]
    impostor = GrpcTlsSettings(ca_file=PLANNER_TLS.ca_file, cert_file=cert, key_file=key)
    async with NodeAgentClient(address, timeout_s=2.0, tls=impostor, attempts=1) as client:
        with pytest.raises(AgentCallError) as err:
            await client.apply(FORGED)
    assert err.value.code == "UNAVAILABLE" and impl.applied_epoch == 0


@pytest.mark.security
async def test_a_valid_certificate_of_another_identity_is_permission_denied(agent: tuple[TinyAgent, str]) -> None:
    impl, address = agent
    async with NodeAgentClient(address, timeout_s=2.0, tls=grpc_tls("router")) as client:
        with pytest.raises(AgentCallError) as err:
            await client.apply(FORGED)
    assert err.value.code == "PERMISSION_DENIED" and "router" in err.value.details and "planner" in err.value.details
    assert impl.applied_epoch == 0


@pytest.mark.security
async def test_allowed_clients_widen_the_callers(tmp_path) -> None:
    impl = TinyAgent()
    tls = grpc_tls("node-agent", allowed_clients=["planner", "planner-standby"])
    server, port = await start_node_agent_server(impl, "127.0.0.1", 0, tls=tls)
    try:
        async with NodeAgentClient(f"127.0.0.1:{port}", timeout_s=2.0, tls=PLANNER_TLS) as client:
            assert (await client.apply(ApplyCommand("agent-1", 1, "c1", SPECS))).accepted
        async with NodeAgentClient(f"127.0.0.1:{port}", timeout_s=2.0, tls=grpc_tls("aggregator")) as client:
            with pytest.raises(AgentCallError, match="PERMISSION_DENIED"):
                await client.status()
    finally:
        await server.stop(0)


@pytest.mark.security
async def test_the_client_refuses_an_agent_it_cannot_verify(tmp_path) -> None:
    other = init_dev_pki(tmp_path / "other")
    cert, key = other.certs["node-agent"]
    rogue_tls = GrpcTlsSettings(ca_file=other.ca_cert, cert_file=cert, key_file=key, allowed_clients=[])
    server, port = await start_node_agent_server(TinyAgent(), "127.0.0.1", 0, tls=rogue_tls)
    try:
        async with NodeAgentClient(f"127.0.0.1:{port}", timeout_s=2.0, tls=PLANNER_TLS, attempts=1) as client:
            with pytest.raises(AgentCallError, match="UNAVAILABLE"):
                await client.status()
    finally:
        await server.stop(0)


@pytest.mark.security
async def test_plain_text_must_be_chosen_by_name() -> None:
    with pytest.raises(SettingsError, match="grpc_tls.ca_file, grpc_tls.cert_file, grpc_tls.key_file not set"):
        await start_node_agent_server(TinyAgent(), "127.0.0.1", 0, tls=GrpcTlsSettings())
    with pytest.raises(SettingsError, match="insecure"):
        NodeAgentClient("127.0.0.1:1", tls=GrpcTlsSettings())
    plain = GrpcTlsSettings(insecure=True)
    impl = TinyAgent()
    server, port = await start_node_agent_server(impl, "127.0.0.1", 0, tls=plain)
    try:
        async with NodeAgentClient(f"127.0.0.1:{port}", timeout_s=2.0, tls=plain) as client:
            assert (await client.apply(ApplyCommand("agent-1", 1, "c1", SPECS))).accepted
    finally:
        await server.stop(0)


@pytest.mark.security
async def test_the_routers_route_port_takes_the_same_mtls() -> None:
    from opscale.services.router import RouterConfig, RouterCore

    from opscale_services.router.grpc_route import start_router_grpc

    async def route(server_tls: GrpcTlsSettings, client: GrpcTlsSettings | None) -> grpc.StatusCode:
        server, port = await start_router_grpc(RouterCore(RouterConfig()), lambda: 0.0, "eu", "127.0.0.1", 0,
                                               server_tls)
        try:
            creds = channel_credentials(client, "test") if client is not None else None
            channel = (grpc.aio.secure_channel(f"127.0.0.1:{port}", creds) if creds is not None
                       else grpc.aio.insecure_channel(f"127.0.0.1:{port}"))
            async with channel:
                with pytest.raises(grpc.aio.AioRpcError) as err:
                    await control_pb2_grpc.RouterStub(channel).Route(control_pb2.RouteRequest(model="m"), timeout=5.0)
            return err.value.code()
        finally:
            await server.stop(0)

    router_tls = grpc_tls("router")
    # any certificate from the CA gets an answer (NOT_FOUND: nobody serves m); none gets no connection
    assert await route(router_tls, grpc_tls("aggregator")) == grpc.StatusCode.NOT_FOUND
    assert await route(router_tls, None) == grpc.StatusCode.UNAVAILABLE
    narrowed = grpc_tls("router", allowed_clients=["gateway"])
    assert await route(narrowed, grpc_tls("aggregator")) == grpc.StatusCode.PERMISSION_DENIED

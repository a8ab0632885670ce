"""gRPC glue for the node-agent's control surface (opscale.v1.NodeAgent).

Server side: `NodeAgentServicer` adapts any object with async `apply`, `drain` and `status` methods that
take and return the event dataclasses (the node-agent's logic lives elsewhere); it validates requests
through the codec (bad input -> INVALID_ARGUMENT naming the field), turns a failing implementation into
INTERNAL with the reason, and continues the caller's trace from the call metadata.

Client side: `NodeAgentClient` puts a deadline on every call, retries with exponential backoff while the
agent is UNAVAILABLE (commands are idempotent by (epoch, command_id), so a retry is safe), carries the
trace context in metadata and raises `AgentCallError` naming the agent, method and status code.

Both ends take `GrpcTlsSettings`: mTLS (the server requires a client certificate from the CA and admits
only the allowed identities, `planner` by default; the client verifies the agent's certificate), or
plain text when the settings say `insecure`, which must be chosen by name.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Sequence
from typing import Any, NamedTuple, Protocol, TypeVar

import grpc
import grpc.aio
from opentelemetry import trace
from opentelemetry.trace import SpanKind

from opscale.model import InstanceStatus
from opscale.runtime.live import codec, telemetry
from opscale.runtime.live.grpc_security import channel_credentials, require_peer, server_credentials
from opscale.runtime.live.settings import GrpcTlsSettings
from opscale.services.events import AgentHeartbeat, ApplyCommand, DrainCommand
from opscale.v1 import control_pb2, control_pb2_grpc

__all__ = [
    "AgentCallError",
    "ApplyResult",
    "DrainResult",
    "NodeAgentClient",
    "NodeAgentImpl",
    "NodeAgentServicer",
    "DEFAULT_AGENT_CALLERS",
    "start_node_agent_server",
]

log = logging.getLogger(__name__)

T = TypeVar("T")

# Who may call a node-agent unless its settings say otherwise: the planner's certificate identity.
DEFAULT_AGENT_CALLERS = ("planner",)


class ApplyResult(NamedTuple):
    """The agent's answer to an ApplyCommand. A tuple, so an implementation may return a plain one."""

    accepted: bool
    applied_epoch: int
    reason: str
    statuses: tuple[InstanceStatus, ...]


class DrainResult(NamedTuple):
    accepted: bool
    reason: str


class NodeAgentImpl(Protocol):
    """What the node-agent service provides; the servicer calls it for each RPC."""

    async def apply(self, command: ApplyCommand) -> tuple[bool, int, str, Sequence[InstanceStatus]]: ...

    async def drain(self, command: DrainCommand) -> tuple[bool, str]: ...

    async def status(self) -> AgentHeartbeat: ...


class AgentCallError(RuntimeError):
    """A call to a node-agent failed after its retries."""

    def __init__(self, address: str, method: str, code: str, details: str) -> None:
        super().__init__(f"node-agent {address} {method}: {code}: {details}")
        self.address = address
        self.method = method
        self.code = code
        self.details = details


class _BadRequest(ValueError):
    """A request that does not decode: the caller's fault (INVALID_ARGUMENT), unlike a failing agent."""


def _request(type_name: str, message: Any) -> Any:
    try:
        return codec.from_message(type_name, message)
    except codec.CodecError as exc:
        raise _BadRequest(str(exc)) from None


def _status_messages(statuses: Sequence[InstanceStatus]) -> list[Any]:
    return [codec.to_message(s) for s in statuses]


class NodeAgentServicer(control_pb2_grpc.NodeAgentServicer):
    """opscale.v1.NodeAgent served by an `NodeAgentImpl`."""

    def __init__(self, impl: NodeAgentImpl, tracer_provider: trace.TracerProvider | None = None,
                 allowed_callers: Sequence[str] | None = None) -> None:
        self._impl = impl
        self._allowed = frozenset(allowed_callers) if allowed_callers is not None else None
        self._tracer = telemetry.tracer(tracer_provider, "opscale.node_agent.grpc")

    async def _serve(self, method: str, context: grpc.aio.ServicerContext,
                     handle: Callable[[], Awaitable[T]]) -> T:
        parent = telemetry.extract_grpc_metadata(context.invocation_metadata())
        with self._tracer.start_as_current_span(
                f"opscale.v1.NodeAgent/{method}", context=parent, kind=SpanKind.SERVER,
                attributes={"rpc.system": "grpc", "rpc.service": "opscale.v1.NodeAgent",
                            "rpc.method": method}) as span:
            await require_peer(context, self._allowed)
            try:
                return await handle()
            except _BadRequest as exc:
                span.set_status(trace.Status(trace.StatusCode.ERROR, str(exc)))
                await context.abort(grpc.StatusCode.INVALID_ARGUMENT, str(exc))
            except Exception as exc:  # noqa: BLE001 - any agent failure becomes a status for the caller
                log.exception("node-agent %s failed", method)
                span.record_exception(exc)
                span.set_status(trace.Status(trace.StatusCode.ERROR, str(exc)))
                await context.abort(grpc.StatusCode.INTERNAL, f"{method} failed: {exc!r}")
        raise AssertionError("unreachable: context.abort raises")  # pragma: no cover

    async def Apply(self, request: control_pb2.ApplyRequest,  # noqa: N802 - gRPC method name
                    context: grpc.aio.ServicerContext) -> control_pb2.ApplyResponse:
        async def handle() -> control_pb2.ApplyResponse:
            command: ApplyCommand = _request("ApplyCommand", request)
            accepted, applied_epoch, reason, statuses = await self._impl.apply(command)
            return control_pb2.ApplyResponse(accepted=bool(accepted), applied_epoch=applied_epoch,
                                             reason=reason, instances=_status_messages(statuses))

        return await self._serve("Apply", context, handle)

    async def Drain(self, request: control_pb2.DrainRequest,  # noqa: N802 - gRPC method name
                    context: grpc.aio.ServicerContext) -> control_pb2.DrainResponse:
        async def handle() -> control_pb2.DrainResponse:
            command: DrainCommand = _request("DrainCommand", request)
            accepted, reason = await self._impl.drain(command)
            return control_pb2.DrainResponse(accepted=bool(accepted), reason=reason)

        return await self._serve("Drain", context, handle)

    async def Status(self, request: control_pb2.StatusRequest,  # noqa: N802 - gRPC method name
                     context: grpc.aio.ServicerContext) -> Any:
        async def handle() -> Any:
            return codec.to_message(await self._impl.status())

        return await self._serve("Status", context, handle)


def _address(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host and not host.startswith("[") else f"{host}:{port}"


async def start_node_agent_server(impl: NodeAgentImpl, host: str, port: int, *, tls: GrpcTlsSettings,
                                  tracer_provider: trace.TracerProvider | None = None) -> tuple[grpc.aio.Server, int]:
    """Serve opscale.v1.NodeAgent on host:port (port 0 picks a free one) with `tls` (mTLS, or plain text
    when it says insecure). Returns the started server and the bound port; stop it with
    `await server.stop(grace_s)`. SettingsError when mTLS is neither configured nor waived."""
    credentials = server_credentials(tls, "node-agent gRPC server")
    allowed = None if credentials is None else (tls.allowed_clients if tls.allowed_clients is not None
                                                 else DEFAULT_AGENT_CALLERS)
    server = grpc.aio.server()
    control_pb2_grpc.add_NodeAgentServicer_to_server(NodeAgentServicer(impl, tracer_provider, allowed), server)
    try:
        bound = (server.add_insecure_port(_address(host, port)) if credentials is None
                 else server.add_secure_port(_address(host, port), credentials))
    except RuntimeError as exc:
        raise OSError(f"node-agent gRPC server cannot bind {_address(host, port)}: {exc}") from None
    if bound == 0:
        raise OSError(f"node-agent gRPC server cannot bind {_address(host, port)}")
    await server.start()
    return server, bound


class NodeAgentClient:
    """Calls one node-agent. Use as `async with NodeAgentClient(addr, 5.0) as agent: ...` or close()."""

    def __init__(self, address: str, timeout_s: float = 5.0, *, tls: GrpcTlsSettings, attempts: int = 4,
                 backoff_base_s: float = 0.1, backoff_max_s: float = 2.0,
                 tracer_provider: trace.TracerProvider | None = None) -> None:
        if not timeout_s > 0:
            raise ValueError(f"NodeAgentClient: timeout_s must be > 0, got {timeout_s!r}")
        if attempts < 1:
            raise ValueError(f"NodeAgentClient: attempts must be >= 1, got {attempts}")
        self.address = address
        self._timeout_s = timeout_s
        self._attempts = attempts
        self._backoff_base_s = backoff_base_s
        self._backoff_max_s = backoff_max_s
        self._tracer = telemetry.tracer(tracer_provider, "opscale.node_agent.client")
        # gRPC's own reconnect backoff (default: start at 1 s) would make every retry below fail fast
        # until it elapses; align it with ours so a restarted agent is reached as soon as it listens.
        backoff_ms = max(1, int(backoff_base_s * 1000)), max(1, int(backoff_max_s * 1000))
        options: list[tuple[str, Any]] = [
            ("grpc.initial_reconnect_backoff_ms", backoff_ms[0]),
            ("grpc.min_reconnect_backoff_ms", backoff_ms[0]),
            ("grpc.max_reconnect_backoff_ms", max(backoff_ms)),
        ]
        credentials = channel_credentials(tls, "node-agent client")
        if credentials is None:
            self._channel = grpc.aio.insecure_channel(address, options=options)
        else:
            if tls.server_name:  # agents reached by IP or pod name present the shared service name
                options.append(("grpc.ssl_target_name_override", tls.server_name))
            self._channel = grpc.aio.secure_channel(address, credentials, options=options)
        self._stub = control_pb2_grpc.NodeAgentStub(self._channel)

    async def __aenter__(self) -> NodeAgentClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def close(self) -> None:
        await self._channel.close()

    async def _call(self, method: str, rpc: Callable[..., Awaitable[Any]], request: Any) -> Any:
        with self._tracer.start_as_current_span(
                f"opscale.v1.NodeAgent/{method}", kind=SpanKind.CLIENT,
                attributes={"rpc.system": "grpc", "rpc.service": "opscale.v1.NodeAgent", "rpc.method": method,
                            "server.address": self.address}) as span:
            metadata = telemetry.inject_grpc_metadata()
            for attempt in range(1, self._attempts + 1):
                try:
                    return await rpc(request, timeout=self._timeout_s, metadata=metadata)
                except grpc.aio.AioRpcError as exc:
                    code = exc.code()
                    if code == grpc.StatusCode.UNAVAILABLE and attempt < self._attempts:
                        delay_s = min(self._backoff_max_s, self._backoff_base_s * 2 ** (attempt - 1))
                        log.info("node-agent %s %s unavailable (attempt %d of %d); retrying in %.2fs",
                                 self.address, method, attempt, self._attempts, delay_s)
                        await asyncio.sleep(delay_s)
                        continue
                    span.set_status(trace.Status(trace.StatusCode.ERROR, code.name))
                    raise AgentCallError(self.address, method, code.name, exc.details() or "") from None
        raise AssertionError("unreachable: the last attempt returns or raises")  # pragma: no cover

    def _decode(self, method: str, type_name: str, message: Any) -> Any:
        try:
            return codec.from_message(type_name, message)
        except codec.CodecError as exc:
            raise AgentCallError(self.address, method, "INVALID_RESPONSE", str(exc)) from None

    async def apply(self, command: ApplyCommand) -> ApplyResult:
        request = codec.to_message(command)
        resp: control_pb2.ApplyResponse = await self._call("Apply", self._stub.Apply, request)
        statuses = tuple(self._decode("Apply", "InstanceStatus", s) for s in resp.instances)
        return ApplyResult(resp.accepted, resp.applied_epoch, resp.reason, statuses)

    async def drain(self, command: DrainCommand) -> DrainResult:
        request = codec.to_message(command)
        resp: control_pb2.DrainResponse = await self._call("Drain", self._stub.Drain, request)
        return DrainResult(resp.accepted, resp.reason)

    async def status(self) -> AgentHeartbeat:
        resp = await self._call("Status", self._stub.Status, control_pb2.StatusRequest())
        heartbeat: AgentHeartbeat = self._decode("Status", "AgentHeartbeat", resp)
        return heartbeat

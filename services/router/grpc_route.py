"""The gRPC Router service: the routing decision alone, for gateways that proxy themselves.

A Route call neither holds nor charges the request (the caller's traffic is not the router's to
account); it answers NOT_FOUND for a model nobody serves and UNAVAILABLE when no instance is ready.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable

import grpc

from opscale.model import Request
from opscale.runtime.live.grpc_security import require_peer, server_credentials
from opscale.runtime.live.settings import GrpcTlsSettings
from opscale.services.router import RouterCore
from opscale.v1 import control_pb2, control_pb2_grpc


class RouterServicer(control_pb2_grpc.RouterServicer):
    def __init__(self, core: RouterCore, now_s: Callable[[], float], default_region: str,
                 allowed_callers: frozenset[str] | None = None) -> None:
        self.core = core
        self.allowed_callers = allowed_callers
        self.now_s = now_s
        self.default_region = default_region

    async def Route(self, request: control_pb2.RouteRequest,  # noqa: N802 - gRPC method name
                    context: grpc.aio.ServicerContext) -> control_pb2.RouteResponse:
        await require_peer(context, self.allowed_callers)
        if not self.core.serves(request.model):
            await context.abort(grpc.StatusCode.NOT_FOUND, f"model {request.model!r} is not served here")
        try:
            req = Request(f"route-{uuid.uuid4().hex}", request.model, request.tier or "interactive",
                          request.region or self.default_region, self.now_s(), max(1, request.prompt_tokens),
                          max(1, request.max_tokens))
        except ValueError as exc:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, str(exc))
        decision = self.core.peek(req)
        if decision is None:
            await context.abort(grpc.StatusCode.UNAVAILABLE, f"no ready instance of {request.model!r}")
        return control_pb2.RouteResponse(instance_id=decision.instance_id, region=decision.region,
                                         endpoint=decision.endpoint, reason=decision.reason)


async def start_router_grpc(core: RouterCore, now_s: Callable[[], float], region: str, host: str,
                            port: int, tls: GrpcTlsSettings) -> tuple[grpc.aio.Server, int]:
    """Serve Route with `tls`: mTLS (a client certificate from the CA; `allowed_clients` narrows who),
    or plain text when the settings say insecure."""
    credentials = server_credentials(tls, "router gRPC server")
    allowed = frozenset(tls.allowed_clients) if credentials is not None and tls.allowed_clients is not None else None
    server = grpc.aio.server()
    control_pb2_grpc.add_RouterServicer_to_server(RouterServicer(core, now_s, region, allowed), server)
    address = f"{host}:{port}"
    bound = (server.add_insecure_port(address) if credentials is None
             else server.add_secure_port(address, credentials))
    if bound == 0:
        raise OSError(f"router gRPC server cannot bind {host}:{port}")
    await server.start()
    return server, bound

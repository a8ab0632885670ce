"""The operations endpoints every live service exposes: /healthz, /readyz and Prometheus /metrics, and
the service's own operator actions at POST /ops/{name} (the node-agent's spot notice).

`make_ops_app` builds an aiohttp application (a service with its own HTTP server can mount it as a
sub-app); `start_ops_server` serves it on its own port. Health comes from the supervisor
(`Supervisor.health`: 200 when every loop has beaten within its deadline, else 503 naming the stuck
ones); readiness is the service's own judgement (connected, state rebuilt); metrics come from the
service's own CollectorRegistry, never the process-wide default, so services sharing a process do not
mix their series.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import Any

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest

__all__ = ["OpsAction", "OpsServer", "make_ops_app", "start_ops_server"]

log = logging.getLogger(__name__)

HealthFn = Callable[[], Mapping[str, Any]]
ReadyFn = Callable[[], bool]
# An operator action: the JSON body in, (HTTP status, JSON answer) out. Bad input raises ValueError,
# answered 400 with its message.
OpsAction = Callable[[Mapping[str, Any]], Awaitable[tuple[int, Mapping[str, Any]]]]


def _json(body: Mapping[str, Any], status: int) -> web.Response:
    return web.Response(status=status, text=json.dumps(body, default=str), content_type="application/json")


def make_ops_app(health: HealthFn, ready: ReadyFn, registry: CollectorRegistry,
                 actions: Mapping[str, OpsAction] | None = None) -> web.Application:
    """An aiohttp app with GET /healthz, /readyz and /metrics, and POST /ops/{name} for each of `actions`
    (looked up per request: a service registers its actions once its state exists, after the server has
    started).

    `health()` returns a mapping with a boolean "ok" (the rest is passed through as JSON); a health or
    readiness callable that raises is reported as 503 with the error, since a broken check must not
    look healthy.
    """

    async def healthz(_: web.Request) -> web.Response:
        try:
            report = dict(health())
        except Exception as exc:  # noqa: BLE001 - reported to the prober, not raised
            log.exception("health check failed")
            return _json({"ok": False, "error": f"health check raised {exc!r}"}, 503)
        return _json(report, 200 if report.get("ok") is True else 503)

    async def readyz(_: web.Request) -> web.Response:
        try:
            is_ready = bool(ready())
        except Exception as exc:  # noqa: BLE001 - reported to the prober, not raised
            log.exception("readiness check failed")
            return _json({"ready": False, "error": f"readiness check raised {exc!r}"}, 503)
        return _json({"ready": is_ready}, 200 if is_ready else 503)

    async def metrics(_: web.Request) -> web.Response:
        return web.Response(body=generate_latest(registry), headers={"Content-Type": CONTENT_TYPE_LATEST})

    async def action(request: web.Request) -> web.Response:
        name = request.match_info["name"]
        handler = (actions or {}).get(name)
        if handler is None:
            return _json({"error": f"no ops action {name!r}; known: {sorted(actions or {})}"}, 404)
        try:
            body = await request.json() if request.can_read_body else {}
        except ValueError:
            return _json({"error": "the body is not JSON"}, 400)
        if not isinstance(body, dict):
            return _json({"error": "the body must be a JSON object"}, 400)
        try:
            status, answer = await handler(body)
        except ValueError as exc:
            return _json({"error": str(exc)}, 400)
        return _json(answer, status)

    app = web.Application()
    app.router.add_post("/ops/{name}", action)
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/readyz", readyz)
    app.router.add_get("/metrics", metrics)
    return app


@dataclass(frozen=True, slots=True)
class OpsServer:
    """A started ops server; `port` is the bound port (useful when 0 was asked for)."""

    host: str
    port: int
    runner: web.AppRunner

    @property
    def url(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}"

    async def stop(self) -> None:
        await self.runner.cleanup()


async def start_ops_server(host: str, port: int, health: HealthFn, ready: ReadyFn,
                           registry: CollectorRegistry, *, shutdown_timeout_s: float = 5.0,
                           actions: Mapping[str, OpsAction] | None = None) -> OpsServer:
    """Serve the ops app on host:port (0: a free port) until `stop()`."""
    runner = web.AppRunner(make_ops_app(health, ready, registry, actions), access_log=None,
                           shutdown_timeout=shutdown_timeout_s)
    await runner.setup()
    site = web.TCPSite(runner, host, port)
    try:
        await site.start()
    except OSError:
        await runner.cleanup()
        raise
    bound = port
    for address in runner.addresses:
        if isinstance(address, tuple) and len(address) >= 2:
            bound = int(address[1])
            break
    return OpsServer(host=host, port=bound, runner=runner)

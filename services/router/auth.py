"""API keys at the router's door: the aiohttp middleware that names the tenant of each request, and the
admission and settling of its limits (opscale.routing.tenants decides; this only wires it to HTTP).

- The key comes as `Authorization: Bearer <key>` (OpenAI's SDK), or `api-key` (Azure OpenAI's
  clients) or `x-api-key`. A missing or unknown key gets 401 with OpenAI's body (`invalid_request_error`,
  code `invalid_api_key`) and `WWW-Authenticate: Bearer`, before the body is read. `/health` stays open
  (load balancers probe it without a key).
- After the body is parsed, `admit` refuses a model the key may not use with OpenAI's 404
  `model_not_found` (OpenAI answers a model a key cannot use as it answers one that does not exist), and a
  request over the key's request or token rate with 429 (`rate_limit_exceeded`, type `requests` or
  `tokens` as OpenAI's own bodies have it) and `Retry-After`, the seconds until the bucket has room. A
  prompt larger than the key's whole token burst gets 429 without Retry-After: waiting will not help.
- `settle` hears every finished request (LiveRouterBackend's `on_finished`): its output tokens are
  charged to the key's token bucket, and its usage counted in the Prometheus metrics by key id.

No secret is ever logged, counted or echoed: the tenant is named by its key id, a wrong key by nothing.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable, Mapping

from aiohttp import web
from prometheus_client import CollectorRegistry, Counter

from opscale.model import RequestOutcome
from opscale.openai.schema import ApiError, ParsedRequest
from opscale.routing.tenants import KeyTable, Tenant
from opscale.runtime.live.openai_http import error_response

__all__ = ["OPEN_PATHS", "TENANT_KEY", "TenantGate", "presented_key"]

log = logging.getLogger(__name__)

TENANT_KEY = web.RequestKey("opscale_tenant", Tenant)
"""Where the middleware leaves the request's `Tenant` (request[TENANT_KEY])."""
OPEN_PATHS = frozenset({"/health"})
_BEARER = "bearer "

_MISSING = ApiError(401, "You didn't provide an API key. You need to provide your API key in an Authorization "
                    "header using Bearer auth (i.e. Authorization: Bearer YOUR_KEY).",
                    "invalid_request_error", None, "invalid_api_key")
_WRONG = ApiError(401, "Incorrect API key provided. Ask the operator of this router for a valid key.",
                  "invalid_request_error", None, "invalid_api_key")
_CHALLENGE = {"WWW-Authenticate": "Bearer"}


def presented_key(headers: Mapping[str, str]) -> str | None:
    """The key a request carries: `Authorization: Bearer <key>`, else `api-key`, else `x-api-key`."""
    authorization = headers.get("Authorization")
    if authorization is not None:
        if authorization[:len(_BEARER)].lower() == _BEARER:
            return authorization[len(_BEARER):].strip() or None
        return None
    return headers.get("api-key") or headers.get("x-api-key") or None


class TenantGate:
    """The router's tenants (a KeyTable) at HTTP: `middleware` authenticates, `admit` checks the limits
    of a parsed request, `settle` accounts for a finished one. `now_s` is the router's clock."""

    def __init__(self, table: KeyTable, now_s: Callable[[], float], registry: CollectorRegistry | None = None) -> None:
        self.table = table
        self._now_s = now_s
        self._auth_failures = Counter("opscale_router_auth_failures", "API requests refused for a missing or "
                                      "unknown key", ["reason"], registry=registry)
        self._refused = Counter("opscale_router_tenant_refused", "Requests of a tenant refused at the door: a "
                                "model its key may not use, or over its request or token rate",
                                ["tenant", "limit"], registry=registry)
        self._requests = Counter("opscale_router_tenant_requests", "Requests of a tenant that ended, by status",
                                 ["tenant", "status"], registry=registry)
        self._tokens = Counter("opscale_router_tenant_tokens", "Tokens of a tenant's ended requests (prompt, "
                               "output)", ["tenant", "kind"], registry=registry)
        for reason in ("missing", "invalid"):
            self._auth_failures.labels(reason)
        for key_id in table.key_ids():  # every tenant's series exists from the start, at zero
            self._tokens.labels(key_id, "prompt")
            self._tokens.labels(key_id, "output")

    @web.middleware
    async def middleware(self, request: web.Request,
                         handler: Callable[[web.Request], Awaitable[web.StreamResponse]]) -> web.StreamResponse:
        if request.path in OPEN_PATHS:
            return await handler(request)
        presented = presented_key(request.headers)
        if presented is None:
            self._auth_failures.labels("missing").inc()
            return error_response(_MISSING, _CHALLENGE)
        tenant = self.table.authenticate(presented)
        if tenant is None:
            self._auth_failures.labels("invalid").inc()
            log.debug("refused a request to %s from %s: unknown API key", request.path, request.remote)
            return error_response(_WRONG, _CHALLENGE)
        request[TENANT_KEY] = tenant
        return await handler(request)

    def admit(self, tenant: Tenant, req: ParsedRequest) -> ApiError | None:
        """None when `req` may go to the router core (its request and prompt tokens are then counted
        against the key), else the answer to send instead."""
        refusal = tenant.admit(req.model, req.prompt_tokens, self._now_s())
        if refusal is None:
            return None
        self._refused.labels(tenant.key_id, refusal.limit).inc()
        if refusal.limit == "model":
            return ApiError(404, refusal.message, "invalid_request_error", "model", "model_not_found")
        return ApiError(429, refusal.message, refusal.limit, None, "rate_limit_exceeded", refusal.retry_after_s)

    def settle(self, outcome: RequestOutcome) -> None:
        """Account for a finished request of a tenant (requests without one are not the gate's)."""
        tenant = self.table.tenant(outcome.tenant) if outcome.tenant else None
        if tenant is None:
            return
        # "rejected": refused by the router core (no capacity) before it ran: its prompt charge comes back
        tenant.settle(outcome.prompt_tokens, outcome.output_tokens, outcome.status != "rejected", self._now_s())
        self._requests.labels(tenant.key_id, outcome.status).inc()
        if outcome.status != "rejected":
            self._tokens.labels(tenant.key_id, "prompt").inc(outcome.prompt_tokens)
            self._tokens.labels(tenant.key_id, "output").inc(outcome.output_tokens)

    @staticmethod
    def visible_models(request: web.Request, models: list[str]) -> list[str]:
        """The models `GET /v1/models` lists to this request's key: those it may use."""
        tenant = request.get(TENANT_KEY)
        return models if tenant is None else [m for m in models if tenant.may_use(m)]

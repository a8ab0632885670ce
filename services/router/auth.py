"""API keys at the router's door: naming the tenant of each request (`authenticate`, which the API calls
first), and the admission and settling of its limits (opscale.routing.tenants decides; this only wires it
to HTTP).

- The key comes as `Authorization: Bearer <key>` (OpenAI's SDK), or `api-key` (Azure OpenAI's
  clients) or `x-api-key`. A missing or unknown key gets 401 with OpenAI's body (`invalid_request_error`,
  code `invalid_api_key`) and `WWW-Authenticate: Bearer`, before the body is parsed. `/health` stays
  open (load balancers probe it without a key).
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
from collections import Counter
from collections.abc import Callable, Iterator, Mapping

from prometheus_client import CollectorRegistry
from prometheus_client.core import CounterMetricFamily
from prometheus_client.registry import Collector

from opscale.model import RequestOutcome
from opscale.openai.schema import ApiError, ParsedRequest
from opscale.routing.tenants import KeyTable, Tenant

__all__ = ["CHALLENGE", "OPEN_PATHS", "TenantGate", "TenantUsage", "presented_key"]

log = logging.getLogger(__name__)

OPEN_PATHS = frozenset({"/health"})
_BEARER = "bearer "

_MISSING = ApiError(401, "You didn't provide an API key. You need to provide your API key in an Authorization "
                    "header using Bearer auth (i.e. Authorization: Bearer YOUR_KEY).",
                    "invalid_request_error", None, "invalid_api_key")
_WRONG = ApiError(401, "Incorrect API key provided. Ask the operator of this router for a valid key.",
                  "invalid_request_error", None, "invalid_api_key")
CHALLENGE = {"WWW-Authenticate": "Bearer"}
"""The header of a 401 answer."""


def presented_key(headers: Mapping[str, str]) -> str | None:
    """The key a request carries: `Authorization: Bearer <key>`, else `api-key`, else `x-api-key`.
    `headers` has lower-case names (or is a case-insensitive mapping)."""
    authorization = headers.get("authorization")
    if authorization is not None:
        if authorization[:len(_BEARER)].lower() == _BEARER:
            return authorization[len(_BEARER):].strip() or None
        return None
    return headers.get("api-key") or headers.get("x-api-key") or None


_CHARGES_KEPT = 100_000  # admitted requests awaiting their outcome, at most (the oldest are forgotten)


class TenantGate:
    """The router's tenants (a KeyTable) at HTTP: `middleware` authenticates, `admit` checks the limits
    of a parsed request, `settle` accounts for a finished one. `now_s` is the router's clock."""

    def __init__(self, table: KeyTable, now_s: Callable[[], float], registry: CollectorRegistry | None = None) -> None:
        self.table = table
        self._now_s = now_s
        self.usage = TenantUsage(table.key_ids())
        # request id -> the prompt tokens admission charged (an estimate; the record may carry the
        # tokenizer's exact count): what a request that never ran gets back
        self._charged: dict[str, int] = {}
        if registry is not None:
            registry.register(self.usage)

    def authenticate(self, headers: Mapping[str, str]) -> Tenant | ApiError:
        """The tenant of the key a request carries (`headers` as `presented_key` reads them), or the 401 to
        answer (with CHALLENGE), counted by reason. A wrong key is never logged or echoed."""
        presented = presented_key(headers)
        if presented is None:
            self.usage.auth_failures["missing"] += 1
            return _MISSING
        tenant = self.table.authenticate(presented)
        if tenant is None:
            self.usage.auth_failures["invalid"] += 1
            return _WRONG
        return tenant

    def admit(self, tenant: Tenant, req: ParsedRequest) -> ApiError | None:
        """None when `req` may go to the router core (its request and prompt tokens are then counted
        against the key), else the answer to send instead."""
        refusal = tenant.admit(req.model, req.prompt_tokens, self._now_s())
        if refusal is None:
            if len(self._charged) >= _CHARGES_KEPT:  # a request cancelled before its outcome never settles
                del self._charged[next(iter(self._charged))]
            self._charged[req.request_id] = req.prompt_tokens
            return None
        self.usage.refused[tenant.key_id, refusal.limit] += 1
        if refusal.limit == "model":
            return ApiError(404, refusal.message, "invalid_request_error", "model", "model_not_found")
        return ApiError(429, refusal.message, refusal.limit, None, "rate_limit_exceeded", refusal.retry_after_s)

    def settle(self, outcome: RequestOutcome) -> None:
        """Account for a finished request of a tenant (requests without one are not the gate's)."""
        tenant = self.table.tenant(outcome.tenant) if outcome.tenant else None
        if tenant is None:
            return
        charged = self._charged.pop(outcome.request_id, outcome.prompt_tokens)
        # "rejected": refused by the router core (no capacity) before it ran: its prompt charge comes back
        ran = outcome.status != "rejected"
        tenant.settle(charged, outcome.output_tokens, ran, self._now_s())
        self.usage.count(outcome, ran)

    @staticmethod
    def visible_models(tenant: Tenant | None, models: list[str]) -> list[str]:
        """The models `GET /v1/models` lists to a key: those it may use."""
        return models if tenant is None else [m for m in models if tenant.may_use(m)]


class TenantUsage(Collector):
    """What each tenant used and was refused, as plain counts read at each scrape (a Prometheus counter's
    lock and label lookup per request would cost more than the gate's own work):
    `opscale_router_tenant_requests_total{tenant,status}` (ended requests: ok, failed, cancelled,
    rejected), `opscale_router_tenant_tokens_total{tenant,kind}` (prompt and output tokens of requests
    that ran), `opscale_router_tenant_refused_total{tenant,limit}` (model, requests, tokens) and
    `opscale_router_auth_failures_total{reason}` (missing, invalid). Tenants are the configured key ids,
    a bounded set; a secret or a wrong key never becomes a label."""

    def __init__(self, key_ids: list[str]) -> None:
        self.auth_failures: Counter[str] = Counter({"missing": 0, "invalid": 0})
        self.refused: Counter[tuple[str, str]] = Counter()
        self.requests: Counter[tuple[str, str]] = Counter()
        # every tenant's token series exists from the start, at zero
        self.prompt_tokens: dict[str, int] = dict.fromkeys(key_ids, 0)
        self.output_tokens: dict[str, int] = dict.fromkeys(key_ids, 0)

    def count(self, outcome: RequestOutcome, ran: bool) -> None:
        self.requests[outcome.tenant, outcome.status] += 1
        if ran:
            self.prompt_tokens[outcome.tenant] += outcome.prompt_tokens
            self.output_tokens[outcome.tenant] += outcome.output_tokens

    def collect(self) -> Iterator[CounterMetricFamily]:
        failures = CounterMetricFamily("opscale_router_auth_failures", "API requests refused for a missing or "
                                       "unknown key", labels=["reason"])
        for reason, n in sorted(self.auth_failures.items()):
            failures.add_metric([reason], float(n))
        refused = CounterMetricFamily("opscale_router_tenant_refused", "Requests of a tenant refused at the door: "
                                      "a model its key may not use, or over its request or token rate",
                                      labels=["tenant", "limit"])
        for (tenant, limit), n in sorted(self.refused.items()):
            refused.add_metric([tenant, limit], float(n))
        requests = CounterMetricFamily("opscale_router_tenant_requests", "Requests of a tenant that ended, by "
                                       "status", labels=["tenant", "status"])
        for (tenant, status), n in sorted(self.requests.items()):
            requests.add_metric([tenant, status], float(n))
        tokens = CounterMetricFamily("opscale_router_tenant_tokens", "Tokens of a tenant's requests that ran",
                                     labels=["tenant", "kind"])
        for kind, counts in (("prompt", self.prompt_tokens), ("output", self.output_tokens)):
            for tenant, n in sorted(counts.items()):
                tokens.add_metric([tenant, kind], float(n))
        yield from (failures, refused, requests, tokens)

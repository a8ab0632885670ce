"""Tenants and their API keys: who may call the router, which models they may use, and at what rate.

Role: the pure half of the router's authentication. `ApiKeySpec` is one key as configured (a file or an
environment variable, see opscale.runtime.live.settings.AuthSettings); `KeyTable` finds the tenant of a
presented key; `Tenant.admit` decides whether one request may start, `Tenant.settle` charges what it
cost once it has ended. It reads no clock (callers pass `now_s`), does no I/O and knows nothing of HTTP:
the router service turns a `Refusal` into OpenAI's error body.

Only a SHA-256 digest of each secret is kept: a secret given in plain text is hashed while the
configuration is validated and never stored. API keys are long random strings, so a fast unsalted hash
is enough (as GitHub and LiteLLM store tokens); lookup is a dict of digests, so the time a lookup
takes does not depend on how much of a stored secret a guess matches.

Limits are OpenAI's: requests per minute and tokens per minute, each a token bucket (routing.token_bucket)
holding by default one minute of allowance. The token bucket is charged the prompt-token estimate when
a request is admitted and its output tokens when it ends (the output is known only then; the bucket may
go into debt, which later requests wait out). A request refused downstream (no capacity) is refunded
its prompt charge.

Example: requests_per_min 60 (burst 60): 60 requests at once are admitted, the 61st is refused with
retry_after_s 1.0; a second later one more is admitted.
"""

from __future__ import annotations

import hashlib
import math
import re
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, SecretStr, field_validator, model_validator

from opscale.routing.token_bucket import TokenBucket

__all__ = ["ApiKeySpec", "KeyTable", "Refusal", "Tenant", "secret_digest"]

# Key ids become metric labels and request-record fields: letters, digits, '-', '_' and '.'.
_KEY_ID_RE = re.compile(r"^[A-Za-z0-9_.-]{1,64}$")
_SHA256_HEX_RE = re.compile(r"^[0-9a-f]{64}$")
_TIER_RE = re.compile(r"^[A-Za-z0-9_-]{1,64}$")


def secret_digest(secret: str) -> bytes:
    """The digest a key is held and looked up by: SHA-256 of its UTF-8 bytes."""
    return hashlib.sha256(secret.encode("utf-8")).digest()


class ApiKeySpec(BaseModel):
    """One API key as configured. Give `secret` (hashed at once, never kept) or `secret_sha256` (the hex
    SHA-256 of the secret, so the plain key need not be in the file at all: `printf %s KEY | sha256sum`)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    id: str = Field(..., description="The key's public name: the tenant in request records and metric "
                    "labels (never the secret)")
    secret: SecretStr | None = Field(None, description="The key itself; hashed while settings are read and "
                                     "dropped", exclude=True)
    secret_sha256: str | None = Field(None, description="Hex SHA-256 of the key, instead of `secret`")
    models: list[str] = Field(default_factory=list, description="Models the key may use; empty: every model")
    requests_per_min: float | None = Field(None, gt=0, allow_inf_nan=False,
                                           description="Request-rate limit; none: unlimited")
    tokens_per_min: float | None = Field(None, gt=0, allow_inf_nan=False,
                                         description="Token-rate limit (prompt plus output tokens); none: unlimited")
    request_burst: float | None = Field(None, ge=1, allow_inf_nan=False,
                                        description="Requests admitted at once from idle; default requests_per_min")
    token_burst: float | None = Field(None, ge=1, allow_inf_nan=False,
                                      description="Tokens admitted at once from idle; default tokens_per_min")
    default_tier: str | None = Field(None, description="Tier of this key's requests that name none")

    @model_validator(mode="before")
    @classmethod
    def _hash_the_secret(cls, data: Any) -> Any:
        # The plain secret is replaced by its digest before the model holds it.
        if isinstance(data, dict) and data.get("secret") is not None:
            if data.get("secret_sha256") is not None:
                raise ValueError("give either secret or secret_sha256, not both")
            secret = data["secret"]
            if isinstance(secret, SecretStr):
                secret = secret.get_secret_value()
            if not isinstance(secret, str) or len(secret) < 8:
                raise ValueError("secret must be a string of at least 8 characters")
            data = {**data, "secret": None, "secret_sha256": secret_digest(secret).hex()}
        return data

    @field_validator("id")
    @classmethod
    def _id(cls, value: str) -> str:
        if not _KEY_ID_RE.match(value):
            raise ValueError(f"must be 1-64 letters, digits, '-', '_' or '.', got {value[:80]!r}")
        return value

    @field_validator("secret_sha256")
    @classmethod
    def _hex_digest(cls, value: str | None) -> str | None:
        if value is not None:
            value = value.strip().lower()
            if not _SHA256_HEX_RE.match(value):
                raise ValueError("must be 64 hexadecimal digits (the SHA-256 of the key)")
        return value

    @field_validator("default_tier")
    @classmethod
    def _tier(cls, value: str | None) -> str | None:
        if value is not None and not _TIER_RE.match(value):
            raise ValueError(f"must be a tier name (letters, digits, '-', '_'), got {value[:80]!r}")
        return value

    @model_validator(mode="after")
    def _complete(self) -> ApiKeySpec:
        if self.secret_sha256 is None:
            raise ValueError(f"key {self.id!r}: give secret or secret_sha256")
        for burst, rate in (("request_burst", "requests_per_min"), ("token_burst", "tokens_per_min")):
            if getattr(self, burst) is not None and getattr(self, rate) is None:
                raise ValueError(f"key {self.id!r}: {burst} needs {rate}")
        return self

    def digest(self) -> bytes:
        assert self.secret_sha256 is not None  # _complete
        return bytes.fromhex(self.secret_sha256)


@dataclass(frozen=True, slots=True)
class Refusal:
    """Why a tenant's request may not start: `limit` is "model" (the key may not use it: OpenAI answers
    404 model_not_found, so a key learns nothing of models it cannot use), "requests" or "tokens" (over
    the rate; `retry_after_s` until the bucket has room, inf when the request is larger than the burst)."""

    limit: Literal["model", "requests", "tokens"]
    message: str
    retry_after_s: float | None = None


class Tenant:
    """One key's identity, permissions and running rate accounts."""

    __slots__ = ("default_tier", "key_id", "models", "requests", "tokens")

    def __init__(self, spec: ApiKeySpec, now_s: float = 0.0) -> None:
        self.key_id = spec.id
        self.models: frozenset[str] | None = frozenset(spec.models) if spec.models else None
        self.default_tier = spec.default_tier
        self.requests = _bucket(spec.requests_per_min, spec.request_burst, now_s)
        self.tokens = _bucket(spec.tokens_per_min, spec.token_burst, now_s)

    def may_use(self, model: str) -> bool:
        return self.models is None or model in self.models

    def admit(self, model: str, prompt_tokens: int, now_s: float) -> Refusal | None:
        """None when the request may start (its request and prompt tokens are then taken from the
        buckets), else why not. Both limits are checked before either is taken, so a request refused
        for tokens does not spend a request."""
        if not self.may_use(model):
            return Refusal("model", f"The model '{model}' does not exist or you do not have access to it.")
        wait_requests = self.requests.wait_s(1, now_s) if self.requests is not None else 0.0
        wait_tokens = self.tokens.wait_s(prompt_tokens, now_s) if self.tokens is not None else 0.0
        if wait_tokens == math.inf:
            assert self.tokens is not None
            return Refusal("tokens", f"Request too large for key {self.key_id} on tokens per min (TPM): "
                           f"Limit {self.tokens.burst:g}, Requested {prompt_tokens}. The input must be "
                           f"reduced in order to run successfully.", math.inf)
        if wait_requests > 0 or wait_tokens > 0:
            limit: Literal["requests", "tokens"] = "requests" if wait_requests >= wait_tokens else "tokens"
            bucket = self.requests if limit == "requests" else self.tokens
            assert bucket is not None
            wait = max(wait_requests, wait_tokens)
            unit = "requests per min (RPM)" if limit == "requests" else "tokens per min (TPM)"
            asked = 1 if limit == "requests" else prompt_tokens
            return Refusal(limit, f"Rate limit reached for key {self.key_id} on {unit}: Limit "
                           f"{bucket.rate_per_s * 60:g}, Requested {asked}. Please try again in "
                           f"{math.ceil(wait)}s.", wait)
        # both waits were 0: take what the request costs
        if self.requests is not None:
            self.requests.charge(1, now_s)
        if self.tokens is not None:
            self.tokens.charge(prompt_tokens, now_s)
        return None

    def settle(self, prompt_tokens_charged: int, output_tokens: int, ran: bool, now_s: float) -> None:
        """Charge an ended request's output tokens; a request that never ran (`ran` False: refused
        downstream) gets its prompt charge back instead."""
        if self.tokens is None:
            return
        if ran:
            self.tokens.charge(max(0, output_tokens), now_s)
        else:
            self.tokens.refund(max(0, prompt_tokens_charged), now_s)


def _bucket(per_min: float | None, burst: float | None, now_s: float) -> TokenBucket | None:
    if per_min is None:
        return None
    return TokenBucket(per_min / 60.0, burst if burst is not None else max(1.0, per_min), now_s)


class KeyTable:
    """The tenants by the digest of their key, and by key id (for settling a finished request)."""

    __slots__ = ("_by_digest", "_by_id")

    def __init__(self, specs: Iterable[ApiKeySpec], now_s: float = 0.0) -> None:
        self._by_digest: dict[bytes, Tenant] = {}
        self._by_id: dict[str, Tenant] = {}
        for spec in specs:
            if spec.id in self._by_id:
                raise ValueError(f"key id {spec.id!r} is configured twice")
            digest = spec.digest()
            if digest in self._by_digest:
                raise ValueError(f"keys {self._by_digest[digest].key_id!r} and {spec.id!r} have the same secret")
            tenant = Tenant(spec, now_s)
            self._by_digest[digest] = tenant
            self._by_id[spec.id] = tenant

    def __len__(self) -> int:
        return len(self._by_id)

    def authenticate(self, presented: str) -> Tenant | None:
        """The tenant whose key is `presented`, or None."""
        return self._by_digest.get(secret_digest(presented))

    def tenant(self, key_id: str) -> Tenant | None:
        return self._by_id.get(key_id)

    def key_ids(self) -> list[str]:
        return sorted(self._by_id)

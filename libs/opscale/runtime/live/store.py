"""Shared state in Redis: JSON values, aggregated windows (of requests, and of pool utilisation), the
current plan and leader leases.

The plan is stored as protobuf bytes (the codec) next to its epoch in one hash, and saving is a Lua
script that refuses an epoch older than the stored one, so a planner that lost its lease and wakes up
late cannot overwrite a newer plan. Leases (`SET NX PX`) let one planner act at a time; only the holder
may renew or release one, checked and changed atomically in Lua. Each acquisition increments the lease's
generation: the fencing token the holder puts in its commands, so that a node-agent refuses those of a
holder that has since lost the lease.

Every call runs under a timeout and raises `StoreError` naming the operation and key when Redis does not
answer. A `namespace` prefixes every key (`<namespace>:opscale:...`) so tests can share a server.
"""

from __future__ import annotations

import asyncio
import json
import re
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import Any, TypeVar

import redis.asyncio as aioredis
import redis.exceptions

from opscale.model import Plan
from opscale.runtime.live import codec
from opscale.runtime.live.redact import redact_url
from opscale.services.events import ApplyCommand, PoolUtilisation, WindowStats

__all__ = ["MAX_LEASE_FLOOR", "PlanSave", "RedisStore", "StoreError"]

T = TypeVar("T")

_NAMESPACE_RE = re.compile(r"^[a-z0-9][a-z0-9_-]{0,31}$")

# Epochs are uint64 and Lua numbers are doubles; compare the decimal strings (no leading zeros) so
# epochs above 2**53 still order exactly.
_SAVE_PLAN = """
local function older(a, b)
  if #a ~= #b then return #a < #b end
  return a < b
end
local cur = redis.call('HGET', KEYS[1], 'epoch')
if cur and older(ARGV[1], cur) then
  return {0, cur}
end
redis.call('HSET', KEYS[1], 'epoch', ARGV[1], 'plan', ARGV[2])
return {1, ARGV[1]}
"""

# Each acquisition (a holder that was not acting takes or retakes the lease) increments the lease's
# generation, which never expires: the fencing token that orders the holders' commands.
# ARGV[3] is a floor the new generation must exceed: the newest token the agents report, so that a Redis
# that lost the counter (restarted without persistence) never hands out a token the agents would refuse.
_ACQUIRE = """
local cur = redis.call('GET', KEYS[1])
if cur and cur ~= ARGV[1] then return 0 end
redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
local gen = redis.call('INCR', KEYS[2])
local floor = tonumber(ARGV[3])
if floor and gen <= floor then
  gen = floor + 1
  redis.call('SET', KEYS[2], string.format('%d', gen))
end
return gen
"""
MAX_LEASE_FLOOR = 2**53 - 1
"""The highest `acquire_lease(above=...)`: the lease's counter is a Lua number (a double), exact up to here."""

_RENEW = """
if redis.call('GET', KEYS[1]) == ARGV[1] then
  redis.call('PEXPIRE', KEYS[1], ARGV[2])
  return 1
end
return 0
"""

_RELEASE = """
if redis.call('GET', KEYS[1]) == ARGV[1] then
  redis.call('DEL', KEYS[1])
  return 1
end
return 0
"""


class StoreError(RuntimeError):
    """Redis did not answer in time, refused a call, or held a value that does not decode."""


@dataclass(frozen=True, slots=True)
class PlanSave:
    """The outcome of `save_plan`: whether it was written and the epoch now stored."""

    saved: bool
    stored_epoch: int


class RedisStore:
    """Async access to opscale's Redis state. See the module docstring."""

    def __init__(self, url: str, namespace: str = "", *, timeout_s: float = 2.0,
                 options: Mapping[str, Any] | None = None) -> None:
        """`options`: redis-py connection arguments for credentials and TLS
        (opscale.runtime.live.credentials.redis_connect_options)."""
        if namespace and not _NAMESPACE_RE.match(namespace):
            raise ValueError(f"store namespace must match {_NAMESPACE_RE.pattern}, got {namespace!r}")
        if not timeout_s > 0:
            raise ValueError(f"store timeout_s must be > 0, got {timeout_s!r}")
        self.namespace = namespace
        self.url = url
        self._timeout_s = timeout_s
        self._prefix = f"{namespace}:opscale:" if namespace else "opscale:"
        self._redis = aioredis.from_url(url, socket_timeout=timeout_s, socket_connect_timeout=timeout_s,
                                        decode_responses=False, **dict(options or {}))
        self._save_plan = self._redis.register_script(_SAVE_PLAN)
        self._acquire = self._redis.register_script(_ACQUIRE)
        self._renew = self._redis.register_script(_RENEW)
        self._release = self._redis.register_script(_RELEASE)

    # -- plumbing -----------------------------------------------------------------------------------

    def key(self, name: str) -> str:
        """The full Redis key for a store-relative name."""
        return self._prefix + name

    async def _call(self, op: str, key: str, fn: Callable[[], Awaitable[T]]) -> T:
        try:
            async with asyncio.timeout(self._timeout_s):
                return await fn()
        except TimeoutError:
            raise StoreError(f"redis {op} {key!r}: no answer within {self._timeout_s}s from {redact_url(self.url)}") from None
        except redis.exceptions.RedisError as exc:
            raise StoreError(f"redis {op} {key!r} at {redact_url(self.url)}: {exc}") from None

    async def ping(self) -> None:
        """Raise StoreError unless Redis answers; services call it at start-up and from /readyz."""
        await self._call("PING", "", self._redis.ping)

    async def close(self) -> None:
        await self._redis.aclose()

    async def delete_namespace(self) -> int:
        """Delete every key of this namespace (tests and teardown); refused for the default namespace.
        Returns how many keys were deleted."""
        if not self.namespace:
            raise StoreError("delete_namespace is refused for the default namespace")

        async def run() -> int:
            keys = [k async for k in self._redis.scan_iter(match=self._prefix + "*", count=500)]
            for i in range(0, len(keys), 500):
                await self._redis.unlink(*keys[i:i + 500])
            return len(keys)

        return await self._call("SCAN+UNLINK", self._prefix + "*", run)

    # -- JSON values --------------------------------------------------------------------------------------

    async def set_json(self, key: str, value: Any, ttl_s: float | None = None) -> None:
        """Store a JSON-able value (strict JSON: NaN and infinities are refused), optionally expiring."""
        full = self.key(key)
        try:
            payload = json.dumps(value, allow_nan=False, separators=(",", ":"))
        except (TypeError, ValueError) as exc:
            raise StoreError(f"set_json {full!r}: value is not JSON-able: {exc}") from None
        px = _ttl_ms(ttl_s, "set_json") if ttl_s is not None else None
        await self._call("SET", full, lambda: self._redis.set(full, payload, px=px))

    async def get_json(self, key: str) -> Any | None:
        """The value stored by set_json, or None when absent (or expired)."""
        full = self.key(key)
        raw = await self._call("GET", full, lambda: self._redis.get(full))
        if raw is None:
            return None
        try:
            return json.loads(raw)
        except ValueError as exc:
            raise StoreError(f"get_json {full!r}: stored value is not JSON: {exc}") from None

    async def delete(self, key: str) -> bool:
        full = self.key(key)
        return bool(await self._call("DEL", full, lambda: self._redis.delete(full)))

    # -- windows -----------------------------------------------------------------------------------------

    async def put_window(self, key: str, value: WindowStats, ttl_s: float) -> None:
        """Store one aggregated window (protobuf) for `ttl_s` seconds; a newer put replaces it."""
        await self._put_event("window:", "put_window", key, value, ttl_s)

    async def get_window(self, key: str) -> WindowStats | None:
        window: WindowStats | None = await self._get_event("window:", WindowStats, key)
        return window

    async def windows(self, pattern: str = "*") -> dict[str, WindowStats]:
        """Every stored window whose key matches the glob `pattern`, by key (without the prefix)."""
        return await self._events("window:", WindowStats, pattern)

    async def put_pool_utilisation(self, key: str, value: PoolUtilisation, ttl_s: float) -> None:
        """Store one pool-utilisation window (protobuf) for `ttl_s` seconds; a newer put replaces it."""
        await self._put_event("poolutil:", "put_pool_utilisation", key, value, ttl_s)

    async def get_pool_utilisation(self, key: str) -> PoolUtilisation | None:
        window: PoolUtilisation | None = await self._get_event("poolutil:", PoolUtilisation, key)
        return window

    async def pool_utilisations(self, pattern: str = "*") -> dict[str, PoolUtilisation]:
        """Every stored pool-utilisation window whose key matches the glob `pattern`, by key (without the
        prefix)."""
        return await self._events("poolutil:", PoolUtilisation, pattern)

    async def _put_event(self, prefix: str, op: str, key: str, value: Any, ttl_s: float) -> None:
        if not isinstance(value, _STORED_EVENTS[prefix]):
            raise StoreError(f"{op} {key!r}: expected {_STORED_EVENTS[prefix].__name__}, got {type(value).__name__}")
        _, payload = codec.encode(value)
        full = self.key(prefix + key)
        px = _ttl_ms(ttl_s, op)
        await self._call("SET", full, lambda: self._redis.set(full, payload, px=px))

    async def _get_event(self, prefix: str, cls: type[T], key: str) -> T | None:
        full = self.key(prefix + key)
        raw = await self._call("GET", full, lambda: self._redis.get(full))
        return None if raw is None else _decode_event(cls, full, raw)

    async def _events(self, prefix: str, cls: type[T], pattern: str) -> dict[str, T]:
        match = self.key(prefix + pattern)
        strip = len(self.key(prefix))

        async def run() -> dict[str, T]:
            keys = [k async for k in self._redis.scan_iter(match=match, count=500)]
            out: dict[str, T] = {}
            for i in range(0, len(keys), 500):
                chunk = keys[i:i + 500]
                for k, raw in zip(chunk, await self._redis.mget(chunk), strict=True):
                    if raw is not None:  # expired between SCAN and MGET
                        name = k.decode()
                        out[name[strip:]] = _decode_event(cls, name, raw)
            return out

        return await self._call("SCAN+MGET", match, run)

    # -- the plan ----------------------------------------------------------------------------------------

    async def save_plan(self, plan: Plan) -> PlanSave:
        """Store `plan` unless a plan with a newer epoch is already stored (atomic). Saving the same epoch
        again overwrites it, so a planner may retry a save it is unsure of."""
        if not isinstance(plan, Plan):
            raise StoreError(f"save_plan: expected Plan, got {type(plan).__name__}")
        _, payload = codec.encode(plan)
        full = self.key("plan")
        result = await self._call("EVALSHA save_plan", full,
                                  lambda: self._save_plan(keys=[full], args=[str(plan.epoch), payload]))
        saved, stored = result
        return PlanSave(saved=bool(int(saved)), stored_epoch=int(stored))

    async def load_plan(self) -> Plan | None:
        full = self.key("plan")
        raw = await self._call("HGET", full, lambda: self._redis.hget(full, "plan"))
        if raw is None:
            return None
        try:
            plan: Plan = codec.decode("Plan", raw)
        except codec.CodecError as exc:
            raise StoreError(f"load_plan {full!r}: {exc}") from None
        return plan

    async def plan_epoch(self) -> int | None:
        """The stored plan's epoch without decoding the plan; None when no plan is stored."""
        full = self.key("plan")
        raw = await self._call("HGET", full, lambda: self._redis.hget(full, "epoch"))
        return None if raw is None else int(raw)

    # -- node-agents -------------------------------------------------------------------------------------

    async def put_applied(self, command: ApplyCommand, ttl_s: float) -> None:
        """The newest command `command.agent_id` applied (its instances, epoch and fencing token), kept
        `ttl_s` seconds: the agent restarted on its host takes its engines back from it."""
        await self._put_event("applied:", "put_applied", command.agent_id, command, ttl_s)

    async def applied(self, agent_id: str) -> ApplyCommand | None:
        """What `put_applied` stored for `agent_id`, or None."""
        return await self._get_event("applied:", ApplyCommand, agent_id)

    # -- leases ------------------------------------------------------------------------------------------

    async def acquire_lease(self, name: str, holder: str, ttl_s: float, above: int = 0) -> int:
        """Take lease `name` for `ttl_s` seconds if it is free (or `holder`'s already, extended): the
        lease's new generation, a fencing token greater than every earlier holder's and than `above`
        (the newest token the caller has seen in use); 0 when another holds it. Call it when starting to
        act, not to renew: each call makes a new generation."""
        full, ms = self.key("lease:" + name), _ttl_ms(ttl_s, "acquire_lease")
        _check_holder(holder)
        if not 0 <= above <= MAX_LEASE_FLOOR:
            raise StoreError(f"acquire_lease: above must be in [0, {MAX_LEASE_FLOOR}], got {above!r}")
        generation = self.key("lease-generation:" + name)
        return int(await self._call("EVALSHA acquire_lease", full,
                                    lambda: self._acquire(keys=[full, generation], args=[holder, ms, above])))

    async def renew_lease(self, name: str, holder: str, ttl_s: float) -> bool:
        """Extend the lease to `ttl_s` from now; False (and nothing changed) unless `holder` holds it."""
        full, ms = self.key("lease:" + name), _ttl_ms(ttl_s, "renew_lease")
        _check_holder(holder)
        return bool(await self._call("EVALSHA renew_lease", full,
                                     lambda: self._renew(keys=[full], args=[holder, ms])))

    async def release_lease(self, name: str, holder: str) -> bool:
        """Give the lease up; False (and nothing changed) unless `holder` holds it."""
        full = self.key("lease:" + name)
        _check_holder(holder)
        return bool(await self._call("EVALSHA release_lease", full,
                                     lambda: self._release(keys=[full], args=[holder])))

    async def lease_holder(self, name: str) -> str | None:
        full = self.key("lease:" + name)
        raw = await self._call("GET", full, lambda: self._redis.get(full))
        return None if raw is None else raw.decode()


def _ttl_ms(ttl_s: float, op: str) -> int:
    if isinstance(ttl_s, bool) or not isinstance(ttl_s, int | float) or not ttl_s > 0 or ttl_s == float("inf"):
        raise StoreError(f"{op}: ttl_s must be a finite number > 0, got {ttl_s!r}")
    return max(1, round(ttl_s * 1000))


def _check_holder(holder: str) -> None:
    if not isinstance(holder, str) or not holder:
        raise StoreError(f"lease holder must be a non-empty string, got {holder!r}")


# The events stored as protobuf, by key prefix: the aggregator's two kinds of window, and each node-agent's
# newest applied command.
_STORED_EVENTS: dict[str, type] = {"window:": WindowStats, "poolutil:": PoolUtilisation, "applied:": ApplyCommand}


def _decode_event(cls: type[T], key: str, raw: bytes) -> T:
    try:
        value: T = codec.decode(cls.__name__, raw)
    except codec.CodecError as exc:
        raise StoreError(f"{cls.__name__} {key!r}: {exc}") from None
    return value

"""A token bucket on an injected clock: the rate limiter of one tenant's requests or tokens.

The bucket holds up to `burst` units and refills at `rate_per_s`. `try_take` takes `amount` when the
bucket holds that much and otherwise says how long until it will; `charge` takes unconditionally and
may leave the bucket in debt (a cost known only afterwards, such as a request's output tokens), which
later takers wait out. `refund` gives back what was taken for work that never ran. It reads no clock:
every call passes `now_s`, so the simulator and tests drive it in virtual time.

Whatever the calls, the total taken and charged over any span [t0, t1] never exceeds
rate_per_s * (t1 - t0) + burst plus what was refunded (tests/unit/routing/test_token_bucket.py).

Example: rate 1/s, burst 2, empty at t=0 after two takes -> try_take(1, 0.5) answers 0.5 (seconds to
wait); try_take(1, 1.0) takes it.

It is mutable, unlike the decision core's values: it is one tenant's running account, touched on every
request, and a new object per request would cost more than the decision it serves.
"""

from __future__ import annotations

import math

__all__ = ["TokenBucket"]


class TokenBucket:
    __slots__ = ("_level", "_updated_s", "burst", "rate_per_s")

    def __init__(self, rate_per_s: float, burst: float, now_s: float = 0.0) -> None:
        if not (rate_per_s > 0 and math.isfinite(rate_per_s)):
            raise ValueError(f"rate_per_s must be a positive number, got {rate_per_s!r}")
        if not (burst >= 1 and math.isfinite(burst)):
            raise ValueError(f"burst must be a number >= 1, got {burst!r}")
        self.rate_per_s = rate_per_s
        self.burst = burst
        self._level = burst  # a new bucket starts full
        self._updated_s = now_s

    def level(self, now_s: float) -> float:
        """Units available at `now_s` (negative while in debt)."""
        self._refill(now_s)
        return self._level

    def wait_s(self, amount: float, now_s: float) -> float:
        """Seconds from `now_s` until `amount` can be taken (0.0: now; inf: never, more than the burst)."""
        if amount > self.burst:
            return math.inf
        self._refill(now_s)
        missing = amount - self._level
        return 0.0 if missing <= 0 else missing / self.rate_per_s

    def try_take(self, amount: float, now_s: float) -> float:
        """Take `amount` if the bucket holds it and answer 0.0; otherwise take nothing and answer the
        seconds to wait (inf when `amount` exceeds the burst: it never fits)."""
        wait = self.wait_s(amount, now_s)
        if wait == 0.0:
            self._level -= amount
        return wait

    def charge(self, amount: float, now_s: float) -> None:
        """Take `amount` now whatever the level: a cost learnt after the fact. Debt is repaid by the refill."""
        if amount < 0:
            raise ValueError(f"amount must be >= 0, got {amount!r}")
        self._refill(now_s)
        self._level -= amount

    def refund(self, amount: float, now_s: float) -> None:
        """Give back `amount` taken for work that did not run; the bucket never holds more than its burst."""
        if amount < 0:
            raise ValueError(f"amount must be >= 0, got {amount!r}")
        self._refill(now_s)
        self._level = min(self.burst, self._level + amount)

    def _refill(self, now_s: float) -> None:
        # A clock that steps back (a caller's stale `now_s`) refills nothing rather than draining the bucket.
        elapsed = now_s - self._updated_s
        if elapsed > 0:
            self._level = min(self.burst, self._level + elapsed * self.rate_per_s)
            self._updated_s = now_s

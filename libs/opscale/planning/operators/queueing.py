"""The M/M/R queue of one operator stage: Erlang-B and Erlang-C, the waiting time and its tail.

A stage of R replicas, each serving batches at rate mu (customers per second), fed by Poisson arrivals
at rate lam, has offered load a = lam / mu. Erlang-C, the probability that an arrival waits, is
computed from the Erlang-B recursion

    B(0) = 1,   B(k) = a B(k-1) / (k + a B(k-1)),   C = R B(R) / (R - a (1 - B(R)))

which never forms a^R or R! (the textbook closed form overflows a float near R = 170 and loses
precision well before). The wait is exponential given that it happens:

    P(W > t) = C exp(-(R mu - lam) t),   E[W] = C / (R mu - lam),

so its q-quantile is max(0, ln(C / (1 - q))) / (R mu - lam). A stage at utilisation a / R >= 1 never
drains: its wait is infinite.

Pure arithmetic: no I/O, no clock.
"""

from __future__ import annotations

import math
from dataclasses import dataclass


def erlang_b(servers: int, load: float) -> float:
    """Blocking probability of M/M/R/R with `servers` servers and offered load `load` (Erlangs)."""
    _check(servers, load)
    b = 1.0
    for k in range(1, servers + 1):
        b = load * b / (k + load * b)
    return b


def erlang_c(servers: int, load: float) -> float:
    """Probability that an arrival waits in M/M/R; 1 when load >= servers (the queue grows forever)."""
    _check(servers, load)
    if load >= servers:
        return 1.0
    if load == 0:
        return 0.0
    b = erlang_b(servers, load)
    return servers * b / (servers - load * (1.0 - b))


@dataclass(frozen=True, slots=True)
class StageQueue:
    """Waiting at one stage: the probability of waiting, the mean wait and a quantile of it (seconds);
    `utilisation` = lam / (R mu). Infinite waits when utilisation >= 1."""

    utilisation: float
    p_wait: float
    mean_wait_s: float
    quantile_wait_s: float


def mmr_wait(servers: int, arrival_rate: float, service_rate: float, quantile: float = 0.99) -> StageQueue:
    """The M/M/R wait of `servers` replicas each serving `service_rate` customers/s, `arrival_rate`
    customers/s arriving; `quantile` in (0, 1) picks the reported quantile of the wait."""
    if not (service_rate > 0 and math.isfinite(service_rate)):
        raise ValueError(f"service_rate must be a finite positive number, got {service_rate!r}")
    if not (arrival_rate >= 0 and math.isfinite(arrival_rate)):
        raise ValueError(f"arrival_rate must be a finite number >= 0, got {arrival_rate!r}")
    if not 0 < quantile < 1:
        raise ValueError(f"quantile must be in (0, 1), got {quantile!r}")
    load = arrival_rate / service_rate
    _check(servers, load)
    utilisation = load / servers
    if load >= servers:
        return StageQueue(utilisation, 1.0, math.inf, math.inf)
    c = erlang_c(servers, load)
    drain = servers * service_rate - arrival_rate
    return StageQueue(utilisation, c, c / drain, wait_quantile_s(c, drain, quantile))


def wait_quantile_s(p_wait: float, drain_rate: float, quantile: float) -> float:
    """The `quantile` of an M/M/R wait with Erlang-C `p_wait` and drain rate R mu - lam."""
    tail = 1.0 - quantile
    return 0.0 if p_wait <= tail else math.log(p_wait / tail) / drain_rate


def _check(servers: int, load: float) -> None:
    if isinstance(servers, bool) or not isinstance(servers, int) or servers < 1:
        raise ValueError(f"servers must be a positive integer, got {servers!r}")
    if not (load >= 0 and math.isfinite(load)):
        raise ValueError(f"load must be a finite number >= 0, got {load!r}")

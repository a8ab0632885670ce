"""SLO-aware routing: send a request where its predicted time to first token is least, and say so when
even that instance cannot meet the request's tier TTFT objective.

Predicted TTFT on candidate c = (prefill tokens queued ahead on c + the request's prompt tokens) /
c's prefill throughput. The queue ahead is the router's `outstanding_prefill_tokens` (an upper bound:
see Candidate); the throughput comes from a `TtftPredictor`, by default the performance model's
roofline for (model, SKU, tensor-parallel degree).

Example: 6 000 tokens queued on an instance that prefills 20 000 tokens/s, a 2 000-token prompt ->
predicted TTFT (6 000 + 2 000) / 20 000 = 0.4 s.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from operator import attrgetter
from typing import TYPE_CHECKING, Protocol

from opscale.model import Request, TierSpec
from opscale.model.tiers import DEFAULT_TIERS
from opscale.routing.base import Candidate, LoadIndex
from opscale.routing.policies import KeyedLoadIndex

if TYPE_CHECKING:
    from opscale.perf.catalog import Catalog

_prefill_queue = attrgetter("outstanding_prefill_tokens")


class TtftPredictor(Protocol):
    def prefill_tokens_per_s(self, candidate: Candidate) -> float:
        """How many prompt tokens per second `candidate` prefills (> 0)."""
        ...


@dataclass(frozen=True, slots=True)
class FixedPrefillThroughput:
    """Every candidate prefills `tokens_per_s`, or what `per_candidate` says when it is given."""

    tokens_per_s: float = 20_000.0
    per_candidate: Callable[[Candidate], float] | None = None

    def __post_init__(self) -> None:
        if not (self.tokens_per_s > 0 and math.isfinite(self.tokens_per_s)):
            raise ValueError(f"prefill tokens_per_s must be a positive number, got {self.tokens_per_s!r}")

    def prefill_tokens_per_s(self, candidate: Candidate) -> float:
        return self.per_candidate(candidate) if self.per_candidate is not None else self.tokens_per_s


@dataclass(slots=True)
class PerfPrefillThroughput:
    """Prefill throughput from the performance model: `reference_tokens` / the roofline's time to prefill
    one prompt of that length, per (model, SKU, tp), computed once each. A model or SKU the catalogue
    does not know takes `fallback_tokens_per_s` when given, else is an error naming it."""

    catalog: Catalog | None = None
    reference_tokens: int = 2048
    fallback_tokens_per_s: float | None = None
    _cache: dict[tuple[str, str, int], float] = field(default_factory=dict, repr=False)

    def prefill_tokens_per_s(self, candidate: Candidate) -> float:
        key = (candidate.model, candidate.sku, candidate.tp)
        rate = self._cache.get(key)
        if rate is None:
            rate = self._cache[key] = self._rate(*key)
        return rate

    def _rate(self, model_name: str, sku_name: str, tp: int) -> float:
        from opscale.perf.catalog import default_catalog
        from opscale.perf.latency import RooflineLatencyModel

        if self.catalog is None:
            self.catalog = default_catalog()
        try:
            model, sku = self.catalog.model(model_name), self.catalog.sku(sku_name)
        except ValueError:
            if self.fallback_tokens_per_s is None:
                raise
            return self.fallback_tokens_per_s
        return self.reference_tokens / RooflineLatencyModel(model, sku, max(1, tp)).prefill_s(self.reference_tokens)


class SloAwareIndex:
    """Candidates grouped by prefill throughput (one group per SKU and tp, so a handful), each group with
    a load index over its prefill queues: the best of a group is its shortest queue, and the best
    overall is the best of the few group bests."""

    __slots__ = ("groups", "_where")

    def __init__(self, candidates: list[Candidate], predictor: TtftPredictor) -> None:
        members: dict[float, list[int]] = {}
        for i, c in enumerate(candidates):
            rate = predictor.prefill_tokens_per_s(c)
            if not (rate > 0 and math.isfinite(rate)):
                raise ValueError(f"slo_aware: prefill throughput of {c.instance_id} must be positive, got {rate!r}")
            members.setdefault(rate, []).append(i)
        # (tokens per second, positions in the pool, load index over those candidates' prefill queues)
        self.groups: list[tuple[float, list[int], KeyedLoadIndex]] = [
            (rate, pos, KeyedLoadIndex([candidates[i] for i in pos], _prefill_queue)) for rate, pos in members.items()]
        where = {i: (index, local) for _, pos, index in self.groups for local, i in enumerate(pos)}
        self._where = [where[i] for i in range(len(candidates))]  # pool position -> (its group, its place)

    def update(self, i: int) -> None:
        index, local = self._where[i]
        index.update(local)


@dataclass(slots=True)
class SloAware:
    """See the module docstring. `tiers` gives each tier's TTFT objective; a tier it does not list has
    none, so its requests are never marked."""

    predictor: TtftPredictor = field(default_factory=lambda: PerfPrefillThroughput(fallback_tokens_per_s=20_000.0))
    tiers: Mapping[str, TierSpec] = field(default_factory=lambda: dict(DEFAULT_TIERS))
    name: str = "slo_aware"
    # The request and predicted TTFT of the last indexed choice, so that `note` on the same request
    # need not predict again (the router calls it right after choosing).
    _last: tuple[Request | None, float] = field(default=(None, 0.0), repr=False)

    def predicted_ttft_s(self, request: Request, candidate: Candidate) -> float:
        rate = self.predictor.prefill_tokens_per_s(candidate)
        return (candidate.outstanding_prefill_tokens + request.prompt_tokens) / rate

    def choose(self, request: Request, candidates: list[Candidate]) -> Candidate:
        return min(candidates, key=lambda c: self.predicted_ttft_s(request, c))

    def build_index(self, candidates: list[Candidate], loads: LoadIndex | None = None) -> SloAwareIndex:
        return SloAwareIndex(candidates, self.predictor)

    def choose_indexed(self, request: Request, candidates: list[Candidate], index: SloAwareIndex) -> int:
        prompt = request.prompt_tokens
        best, best_s = -1, math.inf
        for rate, pos, loads in index.groups:
            local = loads.first_min()
            ttft_s = (loads[local] + prompt) / rate
            if ttft_s < best_s:
                best, best_s = pos[local], ttft_s
        self._last = (request, best_s)
        return best

    def note(self, request: Request, chosen: Candidate) -> str | None:
        """A mark for a request that will likely miss its tier's TTFT objective even where it goes
        (the router adds it to the dispatch reason), or None when it should meet it."""
        tier = self.tiers.get(request.tier)
        if tier is None:
            return None
        last_request, ttft_s = self._last
        if last_request is not request:
            ttft_s = self.predicted_ttft_s(request, chosen)
        if ttft_s <= tier.ttft_slo_s:
            return None
        return f"ttft at risk: predicted {ttft_s:.3f} s > {tier.name} SLO {tier.ttft_slo_s:.3f} s"

"""Prefill/decode pairing: choose the (prefill, decode) pair of instances that serve one request of a
disaggregated deployment.

Prefill goes to the instance with the fewest outstanding prefill tokens. Decode goes to the instance
with the least KV-cache usage (in steps of `kv_step`, then fewest outstanding tokens, as least_kv
ranks), preferring the prefill instance's own topology domain because the KV cache moves from one to the
other: a decode instance on the same agent (host / rack) as the prefill, else one in the same region,
is taken when its KV usage is within `domain_slack_kv` of the best decode instance anywhere.

Example: prefill on agent a1; decode candidates d1 (a1, 40 % KV), d2 (a2, 35 %); with a slack of 10 %
the pair is (prefill, d1): 5 % more KV is cheaper than moving the cache between hosts.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from operator import attrgetter

from opscale.model import Request, Role
from opscale.routing.base import Candidate, LoadIndex
from opscale.routing.policies import KV_LOAD_BITS, KeyedLoadIndex, LeastKvUsage

_prefill_queue = attrgetter("outstanding_prefill_tokens")
_NEVER = 1 << 62  # the prefill key of a decode-only instance: chosen only if nothing else is there


def _prefill_key(c: Candidate) -> int:
    return _NEVER if c.role is Role.DECODE else c.outstanding_prefill_tokens


class PdPairIndex:
    """Load indexes over one pool's prefill and decode candidates, with the decode candidates grouped
    by region and by (region, agent) so that the domain preference costs a handful of reads.
    `update_prefill(i)` / `update_decode(i)` after a candidate of either list changed."""

    __slots__ = ("prefill", "decode", "prefill_loads", "decode_loads", "_by_region", "_region_of", "_by_agent",
                 "single_region")

    def __init__(self, prefill: list[Candidate], decode: list[Candidate], rank: LeastKvUsage) -> None:
        if not prefill or not decode:
            raise ValueError("pd_pairing needs at least one prefill and one decode candidate")
        self.prefill = prefill
        self.decode = decode
        self.prefill_loads = KeyedLoadIndex(prefill, _prefill_key)
        self.decode_loads = rank.build_index(decode)
        regions: dict[str, list[int]] = {}
        self._by_agent: dict[tuple[str, str], list[int]] = {}
        for i, d in enumerate(decode):
            regions.setdefault(d.region, []).append(i)
            self._by_agent.setdefault((d.region, d.agent_id), []).append(i)
        # With one region (the usual pool) the region's best is the best anywhere: no second index.
        self.single_region = len(regions) == 1
        # region -> (positions in `decode`, load index over those candidates)
        self._by_region = ({} if self.single_region else
                           {r: (pos, rank.build_index([decode[i] for i in pos])) for r, pos in regions.items()})
        where = {i: (index, local) for pos, index in self._by_region.values() for local, i in enumerate(pos)}
        self._region_of = [where.get(i) for i in range(len(decode))]  # decode position -> (region index, place)

    def update_prefill(self, i: int) -> None:
        self.prefill_loads.update(i)

    def update_decode(self, i: int) -> None:
        self.decode_loads.update(i)
        if not self.single_region:
            index, local = self._region_of[i]  # type: ignore[misc]
            index.update(local)

    def best_in_region(self, region: str) -> int | None:
        entry = self._by_region.get(region)
        if entry is None:
            return None
        pos, index = entry
        return pos[index.first_min()]

    def on_agent(self, region: str, agent_id: str) -> list[int]:
        return self._by_agent.get((region, agent_id), [])


@dataclass(slots=True)
class PdPairing:
    """See the module docstring. As a plain routing policy (`choose`) it picks the prefill side."""

    kv_step: float = 0.05
    domain_slack_kv: float = 0.10
    name: str = "pd_pairing"
    _decode_rank: LeastKvUsage = field(init=False, repr=False)
    _slack_steps: int = field(init=False, repr=False)

    def __post_init__(self) -> None:
        self._decode_rank = LeastKvUsage(self.kv_step)  # validates kv_step
        if not (0.0 <= self.domain_slack_kv <= 1.0 and math.isfinite(self.domain_slack_kv)):
            raise ValueError(f"pd_pairing: domain_slack_kv must be in [0, 1], got {self.domain_slack_kv!r}")
        self._slack_steps = round(self.domain_slack_kv / self.kv_step)

    # -- the pair -----------------------------------------------------------------------------

    def choose_pair(self, request: Request, prefill: list[Candidate],
                    decode: list[Candidate]) -> tuple[Candidate, Candidate]:
        """The (prefill, decode) pair for `request`, by scanning both lists (see `choose_pair_indexed`
        for the router's path). Both lists must be non-empty."""
        if not prefill or not decode:
            raise ValueError("pd_pairing needs at least one prefill and one decode candidate")
        p = min(prefill, key=_prefill_key)
        rank = self._decode_rank.rank
        best = min(decode, key=rank)
        same_region = [d for d in decode if d.region == p.region]
        same_agent = [d for d in same_region if d.agent_id == p.agent_id]
        for domain in (same_agent, same_region):
            if domain:
                near = min(domain, key=rank)
                if self._close_enough(rank(near), rank(best)):
                    return p, near
        return p, best

    def build_pair_index(self, prefill: list[Candidate], decode: list[Candidate]) -> PdPairIndex:
        return PdPairIndex(prefill, decode, self._decode_rank)

    def choose_pair_indexed(self, request: Request, index: PdPairIndex) -> tuple[int, int]:
        """The same choice as `choose_pair`, as positions in the index's (prefill, decode) lists."""
        p_pos = index.prefill_loads.first_min()
        p = index.prefill[p_pos]
        loads = index.decode_loads
        best = loads.first_min()
        best_key = loads[best]
        # keys are (KV step << KV_LOAD_BITS | outstanding tokens); "close enough" compares KV steps only
        within = (best_key >> KV_LOAD_BITS) + self._slack_steps
        same_agent = index.on_agent(p.region, p.agent_id)
        if same_agent:
            near = min(same_agent, key=loads.__getitem__)  # a host's few instances
            if loads[near] >> KV_LOAD_BITS <= within:
                return p_pos, near
        if index.single_region:
            return p_pos, best  # the region's best is the best (or the prefill's region has no decode)
        near_region = index.best_in_region(p.region)
        if near_region is not None and loads[near_region] >> KV_LOAD_BITS <= within:
            return p_pos, near_region
        return p_pos, best

    def _close_enough(self, key: int, best_key: int) -> bool:
        # keys are (KV step << KV_LOAD_BITS | outstanding tokens): compare the KV steps only
        return (key >> KV_LOAD_BITS) <= (best_key >> KV_LOAD_BITS) + self._slack_steps

    # -- the prefill side as a plain routing policy ------------------------------------------

    def choose(self, request: Request, candidates: list[Candidate]) -> Candidate:
        return min(candidates, key=_prefill_key)

    def build_index(self, candidates: list[Candidate], loads: LoadIndex | None = None) -> KeyedLoadIndex:
        return KeyedLoadIndex(candidates, _prefill_key)

    def choose_indexed(self, request: Request, candidates: list[Candidate], index: KeyedLoadIndex) -> int:
        return index.first_min()

"""Prefill/decode pairing: choose the (prefill, decode) pair of instances that serve one request of a
disaggregated deployment.

Prefill goes to the instance with the fewest outstanding prefill tokens. Decode goes to the instance
with the least KV-cache usage (in steps of `kv_step`, then fewest outstanding tokens, as least_kv
ranks; the usage is `Candidate.kv_estimate()`, which counts the KV of the requests the router has paired
there and not seen finish, because between two heartbeats one emptied instance would take a whole
burst), preferring the decode instances nearest the prefill instance in the network because the KV
cache moves from one to the other (opscale.perf.transfer prices it by the tier the two hosts share):
the tightest domain of the prefill that has a decode instance within `domain_slack_kv` of the best
decode instance anywhere wins, in the order same host (agent), same S0 (leaf), same S1 (mini-pod), same
S2 (big-pod), same region. Switch names are taken as unique within a region; candidates that name none
("") share one switch at each tier, so a fleet without switch names pairs by host, then region.

Example: prefill on agent a1 under leaf l1; decode candidates d1 (a2, l1, 40 % KV), d2 (a3, l2, 35 %);
with a slack of 10 % the pair is (prefill, d1): 5 % more KV is cheaper than moving the cache across leaves.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field

from opscale.model import Request, Role
from opscale.routing.base import Candidate, LoadIndex
from opscale.routing.policies import KV_LOAD_BITS, KeyedLoadIndex, LeastKvUsage

_NEVER = 1 << 62  # the prefill key of a decode-only instance: chosen only if nothing else is there


def _prefill_key(c: Candidate) -> int:
    return _NEVER if c.role is Role.DECODE else c.outstanding_prefill_tokens


def _domains(c: Candidate) -> tuple[tuple[str, ...], ...]:
    """The domains of `c` above its host, nearest first: its S0, S1 and S2 (each within its region), and
    its region."""
    return (("s0", c.region, c.s0), ("s1", c.region, c.s1), ("s2", c.region, c.s2), ("region", c.region))


# One domain's decode candidates: their positions in the pool's decode list and a load index over them
# (their keys copied from the pool's index, not recomputed).
_Domain = tuple[list[int], LoadIndex]


class PdPairIndex:
    """Load indexes over one pool's prefill and decode candidates, with the decode candidates grouped by
    agent and by each network domain (S0, S1, S2, region) so that the nearness preference costs a handful
    of reads. A domain holding every decode candidate needs no index of its own (its best is the pool's
    best), and domains with the same members share one: a fleet without switch names costs no more than
    grouping by region. `update_prefill(i)` / `update_decode(i)` after a candidate of either list changed."""

    __slots__ = ("prefill", "decode", "prefill_loads", "decode_loads", "_by_agent", "_member_of", "_chains")

    def __init__(self, prefill: list[Candidate], decode: list[Candidate], rank: LeastKvUsage) -> None:
        if not prefill or not decode:
            raise ValueError("pd_pairing needs at least one prefill and one decode candidate")
        self.prefill = prefill
        self.decode = decode
        self.prefill_loads = KeyedLoadIndex(prefill, _prefill_key)
        self.decode_loads = rank.build_index(decode)
        self._by_agent: dict[tuple[str, str], list[int]] = {}
        members: dict[tuple[str, ...], list[int]] = {}
        for i, d in enumerate(decode):
            self._by_agent.setdefault((d.region, d.agent_id), []).append(i)
            for domain in _domains(d):
                members.setdefault(domain, []).append(i)
        shared: dict[tuple[int, ...], _Domain] = {}
        indexed: dict[tuple[str, ...], _Domain] = {}
        for domain, pos in members.items():
            if len(pos) < len(decode):
                entry = shared.get(tuple(pos))
                if entry is None:
                    entry = shared[tuple(pos)] = (pos, LoadIndex([self.decode_loads[i] for i in pos]))
                indexed[domain] = entry
        # decode position -> (domain index's `set`, its place there) for every distinct domain index it is
        # in: an update copies the pool index's new key into each (the bound method saves a lookup; these
        # updates are most of a decision's cost)
        self._member_of: list[list[tuple[Callable[[int, int], None], int]]] = [[] for _ in decode]
        for pos, index in shared.values():
            for local, i in enumerate(pos):
                self._member_of[i].append((index.set, local))
        # prefill position -> the distinct decode domains around it, nearest first, up to the first that
        # holds every decode candidate (from there on the pool's best is the domain's best)
        chains: dict[tuple[tuple[str, ...], ...], tuple[_Domain, ...]] = {}
        self._chains: list[tuple[_Domain, ...]] = []
        for p in prefill:
            where = _domains(p)
            chain = chains.get(where)
            if chain is None:
                found: list[_Domain] = []
                for domain in where:
                    entry = indexed.get(domain)
                    if entry is None:
                        if domain in members:  # every decode candidate is in it
                            break
                        continue  # no decode candidate in this domain
                    if not found or found[-1] is not entry:
                        found.append(entry)
                chain = chains[where] = tuple(found)
            self._chains.append(chain)

    def update_prefill(self, i: int) -> None:
        self.prefill_loads.update(i)

    def update_decode(self, i: int) -> None:
        loads = self.decode_loads
        loads.update(i)
        members = self._member_of[i]
        if members:
            key = loads[i]
            for set_load, local in members:
                set_load(local, key)

    def domains_of(self, prefill_pos: int) -> tuple[_Domain, ...]:
        """The decode domains around prefill `prefill_pos`, nearest first (see __init__)."""
        return self._chains[prefill_pos]

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
        self._decode_rank = LeastKvUsage(self.kv_step, estimate_in_flight=True)  # validates kv_step
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
        same_agent = [d for d in decode if d.region == p.region and d.agent_id == p.agent_id]
        nearness = [same_agent, *([d for d in decode if dom in _domains(d)] for dom in _domains(p))]
        for domain in nearness:
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
        for pos, domain in index.domains_of(p_pos):  # nearest first; none: the pool's best is the nearest
            near = pos[domain.first_min()]
            if loads[near] >> KV_LOAD_BITS <= within:
                return p_pos, near
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

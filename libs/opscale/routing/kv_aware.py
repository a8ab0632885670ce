"""KV-cache-aware routing: send a request where the least work stands between it and its first token.

Cost of instance i (the shape of Dynamo's KV router cost):

    cost_i = prefill_i + load_i
    prefill_i = max(prompt - cached_i x block_tokens, 1)      prompt tokens still to compute there
    load_i = load_weight x (outstanding prefill tokens_i + decode_weight x outstanding output tokens_i)

`cached_i` is the number of the request's leading prefix blocks instance i holds, from the router's
global prefix index (opscale.routing.prefix_index), fed by the engines' KV events and by the router's
own dispatches (llm-d's approximate tracking; all there is for an instance that sends no events).
Load stays within a bound as prefix_affinity's does: an instance already running ceil(c x (m + 1) / n)
requests (m in flight over n instances, c = `load_factor`) is passed over, so a popular prefix cannot
pile everything onto one instance. The cost already weighs load, so the bound is only a guard against
hot spots, and its default c = 4 is looser than prefix_affinity's 1.25: with a few requests in flight
per instance, 1.25 allows one or two each and sends a follow-up turn away from its cache whenever its
holder runs another request (bench/prefix_reuse.py on the Mooncake heads, 16 H100s: 68% and 41% of the
bound at 1.25, 83% and 89% at 4, TTFT p99 no worse).

Why load_weight defaults to 0.25, not 1: the router's outstanding prefill tokens count each prompt until
its request finishes (it learns of completions, not of prefill ends), several times the prefill queue
really ahead of a newcomer; and a prompt token served from a cache is compute the whole fleet saves, not
only this request's wait. At weight 1 the holder of a long cached conversation looks busier than it is
and the turn goes elsewhere, copying the prefix into a second cache. Same bench: 83% / 89% of the bound
at 1, 94% / 92% at 0.25 (8 instances: 66% / 68% against 80% / 78%), TTFT p99 no worse; at 0 load is
ignored, requests pile up and both fall.

A decision does not scan the pool: the least-loaded instance comes from an index of `load_i` (the cost of
an instance holding nothing of the prompt is prompt + load_i, least there), and only instances holding
some of the prompt are costed one by one, deepest match first; a shallower group whose whole saving
cannot beat the best cost so far is skipped. Ties go to the lowest position in the pool, so a choice
does not depend on set order.

Example (load_weight 1): prompt 4096 tokens (8 blocks); instance A holds 6 of them and has 3000
outstanding prefill tokens, B holds none and has none: A costs 1024 + 3000 = 4024, B 4096 + 0: A wins.
With decode_weight 2 and 1000 output tokens outstanding on A as well, A costs 6024 and B wins.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

from opscale.model import Request
from opscale.model.kv_events import KvEventBatch
from opscale.routing.base import Candidate
from opscale.routing.policies import KeyedLoadIndex
from opscale.routing.prefix_index import PrefixIndex


class KvAwareIndex:
    """One pool's positions by instance id, in-flight counts (and their total) and a load index of load_i."""

    __slots__ = ("candidates", "position", "in_flight", "total_in_flight", "loads")

    def __init__(self, candidates: list[Candidate], load_key: KeyedLoadIndex) -> None:
        self.candidates = candidates
        self.position = {c.instance_id: i for i, c in enumerate(candidates)}
        self.in_flight = [c.in_flight for c in candidates]
        self.total_in_flight = sum(self.in_flight)
        self.loads = load_key

    def update(self, i: int) -> None:
        now = self.candidates[i].in_flight
        self.total_in_flight += now - self.in_flight[i]
        self.in_flight[i] = now
        self.loads.update(i)


@dataclass(slots=True)
class KvAware:
    """See the module docstring. `block_tokens`: tokens per prefix block (the engines' prefix_block_tokens,
    Mooncake's 512); `max_blocks` and `max_blocks_per_instance` bound the prefix index; `track_routed`:
    count a dispatched request's blocks as held by its instance until events say otherwise."""

    decode_weight: float = 1.0
    load_weight: float = 0.25
    load_factor: float = 4.0
    block_tokens: int = 512
    max_blocks: int = 1_000_000
    max_blocks_per_instance: int = 200_000
    track_routed: bool = True
    name: str = "kv_aware"
    index: PrefixIndex = field(init=False, repr=False)

    def __post_init__(self) -> None:
        if not (self.decode_weight >= 0 and math.isfinite(self.decode_weight)):
            raise ValueError(f"kv_aware: decode_weight must be a number >= 0, got {self.decode_weight!r}")
        if not (self.load_weight >= 0 and math.isfinite(self.load_weight)):
            raise ValueError(f"kv_aware: load_weight must be a number >= 0, got {self.load_weight!r}")
        if not (self.load_factor > 1.0 and math.isfinite(self.load_factor)):
            raise ValueError(f"kv_aware: load_factor must be a number above 1, got {self.load_factor!r}")
        if self.block_tokens < 1:
            raise ValueError(f"kv_aware: block_tokens must be >= 1, got {self.block_tokens!r}")
        self.index = PrefixIndex(self.max_blocks, self.max_blocks_per_instance)

    def load(self, c: Candidate) -> int:
        """load_i: outstanding prefill tokens plus decode_weight x outstanding output tokens."""
        prefill = c.outstanding_prefill_tokens
        return int(self.load_weight * (prefill + self.decode_weight * max(0, c.outstanding_tokens - prefill)))

    # -- the router's hooks (opscale.routing.hooks.KvRoutingPolicy) ------------------------------

    def observe_kv(self, batch: KvEventBatch, known: bool) -> None:
        self.index.apply(batch, known)

    def routed(self, request: Request, chosen: Candidate) -> None:
        if self.track_routed and request.prefix_hashes:
            # Only the full blocks: a partial last block is never cached.
            self.index.note_routed(chosen.model, chosen.instance_id,
                                   request.prefix_hashes[:request.prompt_tokens // self.block_tokens])

    def forget_instance(self, instance_id: str) -> None:
        self.index.forget(instance_id)

    # -- the indexed path (the router's) ------------------------------------------------------

    def build_index(self, candidates: list[Candidate], loads: object = None) -> KvAwareIndex:
        return KvAwareIndex(candidates, KeyedLoadIndex(candidates, self.load))

    def choose_indexed(self, request: Request, candidates: list[Candidate], index: KvAwareIndex) -> int:
        in_flight = index.in_flight
        bound = math.ceil(self.load_factor * (index.total_in_flight + 1) / len(candidates))
        loads = index.loads
        best = loads.first_min()
        least = loads[best]
        prompt = request.prompt_tokens
        if in_flight[best] >= bound:  # the least loaded is over the bound (rare): the least below it
            best = min((i for i in range(len(candidates)) if in_flight[i] < bound), key=loads.__getitem__,
                       default=best)
        best_cost = prompt + loads[best]
        hashes = request.prefix_hashes
        if not hashes:
            return best
        bt = self.block_tokens
        position = index.position
        groups = self.index.match(candidates[0].model, hashes[:prompt // bt])
        for depth, members in reversed(groups):  # deepest first
            prefill = prompt - depth * bt
            if prefill < 1:
                prefill = 1
            if prefill + least > best_cost:
                break  # no instance of this or a shallower group can beat it
            for instance_id in members:
                i = position.get(instance_id)
                if i is None or in_flight[i] >= bound:
                    continue
                cost = prefill + loads[i]
                if cost < best_cost or (cost == best_cost and i < best):
                    best, best_cost = i, cost
        return best

    # -- the plain path -----------------------------------------------------------------------

    def choose(self, request: Request, candidates: list[Candidate]) -> Candidate:
        prompt = request.prompt_tokens
        bt = self.block_tokens
        cached = (self.index.matched_blocks(candidates[0].model, request.prefix_hashes[:prompt // bt])
                  if request.prefix_hashes else {})
        total = sum(c.in_flight for c in candidates)
        bound = math.ceil(self.load_factor * (total + 1) / len(candidates))
        under = [c for c in candidates if c.in_flight < bound] or candidates

        def cost(c: Candidate) -> int:
            return max(prompt - cached.get(c.instance_id, 0) * bt, 1) + self.load(c)

        return min(under, key=cost)

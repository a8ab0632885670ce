"""One request inside the simulated engine (a sequence, in vLLM's words): its token counts, where it
stands in the scheduler and which KV it holds.

Mutable on purpose: this is the hot path's bookkeeping, changed in place by the engine's layers
(opscale.engine.kv, .decode_run, .scheduler, .sim) and by nothing else.
"""

from __future__ import annotations

from opscale.model import Request


class Seq:
    """One request inside the engine.

    While decoding, `computed` and `generated` are not stored but derived from the engine's global
    decode-step counter D: computed = base + D, generated = gbase + D (see opscale.engine.decode_run).

    KV: a running sequence holding x tokens owns ceil(x / block_size) - shared blocks; the `shared`
    ones belong to the prefix-cache entries in `pinned`, counted once however many sequences use them.
    """

    __slots__ = ("req", "rid", "prompt", "output", "target", "computed", "generated", "first_token_s",
                 "admit_no", "decoding", "base", "gbase", "stint", "hashes", "pinned", "shared", "reg",
                 "xfer_s", "kv_at_s")

    def __init__(self, req: Request, hashes: tuple[int, ...]) -> None:
        self.req = req
        self.rid = req.request_id
        self.prompt = req.prompt_tokens
        self.output = req.output_tokens
        self.target = req.prompt_tokens  # tokens to prefill: prompt + tokens generated before preemption
        self.computed = 0  # tokens in the KV cache (while not decoding)
        self.generated = 0  # output tokens so far (while not decoding)
        self.first_token_s: float | None = None
        self.admit_no = -1  # admission order among running sequences; -1 while waiting
        self.decoding = False
        self.base = 0
        self.gbase = 0
        self.stint = 0  # bumped when leaving the decode set: invalidates its heap entry
        self.hashes = hashes  # prefix hashes of its full prompt blocks; () when caching is off
        self.pinned: list[int] | None = None  # prefix-cache entries it uses, in prompt order
        self.shared = 0  # KV blocks of those entries
        self.reg = 0  # prompt blocks [0, reg) are pinned or were offered to the cache
        self.xfer_s: float | None = None  # decode role: KV transfer time, until the KV has landed
        self.kv_at_s = 0.0  # when the KV lands (set at admission)

"""The floating-point work of an engine iteration: what SM activity (compute used over peak) is made of.

An iteration's FLOPs depend on the model and the batch alone, not on the GPU or on how the iteration
is priced (roofline, measured profiles, operator split), so every latency model shares this count. It
counts the FLOPs the roofline (opscale.perf.latency.RooflineLatencyModel) prices, operator by operator:
- the weight-bearing GEMMs (QKV/O projections and the MLP, or the k active experts of a mixture):
  2 FLOPs per parameter per new token;
- the LM head: 2 x vocab x hidden per token that produces logits (each decode token, and the last
  token of the prefill, as the roofline counts them);
- attention: 4 x heads x head_dim per (query, key) pair per layer (QK^T and the weighted sum of V); a
  decode token attends to its whole context, a prefill token to its causal prefix.
Norms, activations, rotary embedding and residual adds move memory and do next to no arithmetic: they
are left out, as are embeddings and communication.

A decode iteration of `batch` sequences whose contexts total S tokens does
`decode_per_seq * batch + per_pair * S` FLOPs: linear in S, like its time, so a closed-form run of k
decode steps (opscale.engine.decode_run) sums it in closed form too.

Example: Llama-3-8B (32 layers, hidden 4096, 8 KV heads of 128, intermediate 14336, vocab 128256):
per new token 2 x (32 x (2 x 4096^2 + 2 x 4096 x 1024) + 32 x 3 x 4096 x 14336) = 1.40e10 FLOPs, the
LM head 1.05e9 per logit, attention 4 x 32 x 128 x 32 = 524 288 per pair.

Pure arithmetic: no I/O, no clock.
"""

from __future__ import annotations

from dataclasses import dataclass

from opscale.model import ModelSpec


@dataclass(frozen=True, slots=True)
class ModelFlops:
    """FLOPs of one model's iterations, summed over all its GPUs (tensor parallelism splits the work,
    it does not change it)."""

    per_token: float  # GEMMs of every layer, per new token
    per_logit: float  # LM head, per token that produces logits
    per_pair: float  # attention, per (query, key) pair, all layers

    @classmethod
    def of(cls, model: ModelSpec) -> ModelFlops:
        attn_params = model.attn_params_per_layer * model.layers
        # the k routed experts of a mixture and its always-on shared expert (Qwen2-MoE), or the dense MLP
        mlp_active_params = model.active_mlp_params_per_layer * model.layers
        return cls(per_token=2.0 * (attn_params + mlp_active_params),
                   per_logit=2.0 * model.vocab * model.hidden,
                   per_pair=4.0 * model.heads * model.head_dim * model.layers)

    def of_work(self, new_tokens: float, logit_tokens: float, attn_pairs: float) -> float:
        """The FLOPs of `new_tokens` tokens through the GEMMs, `logit_tokens` through the LM head and
        `attn_pairs` (query, key) pairs of attention: the one formula every count below applies."""
        return self.per_token * new_tokens + self.per_logit * logit_tokens + self.per_pair * attn_pairs

    @property
    def decode_per_seq(self) -> float:
        """A decode token's FLOPs outside attention: its GEMMs and its logits."""
        return self.per_token + self.per_logit

    def decode_step(self, batch: int, ctx_tokens: int) -> float:
        """A decode iteration of `batch` sequences whose KV contexts total `ctx_tokens` tokens."""
        return self.of_work(batch, batch, ctx_tokens)

    def iteration(self, prefill_tokens: int, decode_batch: int, decode_ctx_tokens: int,
                  prefill_attn_pairs: int) -> float:
        """A mixed (chunked-prefill) iteration, in the terms of `LatencyModel.iteration_cost`:
        `prefill_tokens` new prompt tokens whose attention spans `prefill_attn_pairs` (query, key)
        pairs, plus a decode token for each of `decode_batch` sequences over `decode_ctx_tokens`."""
        if not prefill_tokens:
            return self.decode_step(decode_batch, decode_ctx_tokens)
        return self.of_work(prefill_tokens + decode_batch, decode_batch + 1, prefill_attn_pairs + decode_ctx_tokens)

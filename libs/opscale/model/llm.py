"""Model architectures, as the performance model needs them."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class ModelSpec:
    """A transformer's shape. Parameter and KV sizes are derived, never stored twice."""

    name: str
    layers: int
    hidden: int
    heads: int
    kv_heads: int
    intermediate: int
    vocab: int
    experts: int = 0  # 0: dense
    experts_per_token: int = 0
    bytes_per_param: int = 2
    max_context: int = 8192
    # A mixture's always-on shared expert (Qwen2-MoE's shared_expert_intermediate_size): a gated MLP of
    # this width that every token runs beside its routed experts; 0: none.
    shared_expert_intermediate: int = 0

    def __post_init__(self) -> None:
        for label in ("layers", "hidden", "heads", "kv_heads", "intermediate", "vocab"):
            if getattr(self, label) <= 0:
                raise ValueError(f"model {self.name!r}: {label} must be positive, got {getattr(self, label)!r}")
        if self.shared_expert_intermediate < 0:
            raise ValueError(f"model {self.name!r}: shared_expert_intermediate must be >= 0, "
                             f"got {self.shared_expert_intermediate!r}")
        if self.heads % self.kv_heads:
            raise ValueError(f"model {self.name!r}: heads ({self.heads}) must be a multiple of kv_heads")

    @property
    def head_dim(self) -> int:
        return self.hidden // self.heads

    @property
    def mlp_params_per_layer(self) -> int:
        # gated MLP: up, gate and down projections
        per_expert = 3 * self.hidden * self.intermediate
        return per_expert * max(1, self.experts) + self.shared_expert_params_per_layer

    @property
    def active_mlp_params_per_layer(self) -> int:
        routed = 3 * self.hidden * self.intermediate * max(1, self.experts_per_token if self.experts else 1)
        return routed + self.shared_expert_params_per_layer

    @property
    def shared_expert_params_per_layer(self) -> int:
        return 3 * self.hidden * self.shared_expert_intermediate

    @property
    def attn_params_per_layer(self) -> int:
        kv = 2 * self.hidden * self.kv_heads * self.head_dim
        return 2 * self.hidden * self.hidden + kv

    @property
    def params(self) -> int:
        per_layer = self.attn_params_per_layer + self.mlp_params_per_layer
        return self.layers * per_layer + 2 * self.vocab * self.hidden

    @property
    def active_params(self) -> int:
        per_layer = self.attn_params_per_layer + self.active_mlp_params_per_layer
        return self.layers * per_layer + 2 * self.vocab * self.hidden

    @property
    def weight_bytes(self) -> int:
        return self.params * self.bytes_per_param

    @property
    def kv_bytes_per_token(self) -> int:
        return 2 * self.layers * self.kv_heads * self.head_dim * self.bytes_per_param

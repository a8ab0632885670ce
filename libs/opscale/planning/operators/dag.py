"""The operator DAG of a model in one phase: every kernel of the forward pass, and the activation bytes
on every edge between them.

Nodes are the kernels P1 characterises (embedding, norms, QKV projection, rotary embedding, attention,
output projection, residual adds, the MLP's gate/up and down projections and its activation, or a
mixture's router, routed experts and shared expert, the final norm and the LM head), one set per
layer. Prefill and decode have the same graph except attention (quadratic over the prompt vs linear
over the KV cache). Each node belongs to one `Operator` family of `opscale.perf.operators`: the unit
the perf model prices (`RooflineOperatorModel.ops_cost`) and the engine places apart. The family
assignment is the roofline's: input norm and rotary go with the projections, the post-attention norm,
residual adds and gated activation with the MLP, the embedding and final norm with the LM head. So a
node has no cost of its own: its family has, and a planner stage is a set of families.

Edges carry bytes per token (`Edge.nbytes(tokens)` for a batch): hidden states are hidden x
bytes_per_param; q, k and v leave the QKV projection together; gate and up leave as 2 x intermediate
per active expert; a mixture dispatches each token's hidden state to its k experts and gets k outputs
back, and the router sends k (int32 index, weight) pairs. Residual edges carry the layer input to each
add. An edge between nodes of different families becomes a transfer when the families run apart.

Pure arithmetic: no I/O, no clock.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from enum import StrEnum
from functools import cached_property

from opscale.model import ModelSpec
from opscale.perf.operator_profiles import Phase
from opscale.perf.operators import Operator

_INDEX_BYTES = 4  # a routed expert's int32 index


class NodeKind(StrEnum):
    EMBEDDING = "embedding"
    INPUT_NORM = "input_norm"
    QKV_PROJ = "qkv_proj"
    ROTARY = "rotary"
    ATTENTION_PREFILL = "attention_prefill"
    ATTENTION_DECODE = "attention_decode"
    O_PROJ = "o_proj"
    ATTN_RESIDUAL_ADD = "attn_residual_add"
    POST_ATTN_NORM = "post_attn_norm"
    GATE_UP_PROJ = "gate_up_proj"
    ACTIVATION = "activation"
    DOWN_PROJ = "down_proj"
    ROUTER = "router"
    EXPERTS = "experts"
    SHARED_EXPERT = "shared_expert"
    MLP_RESIDUAL_ADD = "mlp_residual_add"
    FINAL_NORM = "final_norm"
    LM_HEAD = "lm_head"


# The family that prices and places each kernel (see the module docstring).
NODE_OPERATOR: dict[NodeKind, Operator] = {
    NodeKind.EMBEDDING: Operator.LM_HEAD,
    NodeKind.INPUT_NORM: Operator.ATTN_PROJ,
    NodeKind.QKV_PROJ: Operator.ATTN_PROJ,
    NodeKind.ROTARY: Operator.ATTN_PROJ,
    NodeKind.ATTENTION_PREFILL: Operator.ATTENTION,
    NodeKind.ATTENTION_DECODE: Operator.ATTENTION,
    NodeKind.O_PROJ: Operator.ATTN_PROJ,
    NodeKind.ATTN_RESIDUAL_ADD: Operator.MLP,
    NodeKind.POST_ATTN_NORM: Operator.MLP,
    NodeKind.GATE_UP_PROJ: Operator.MLP,
    NodeKind.ACTIVATION: Operator.MLP,
    NodeKind.DOWN_PROJ: Operator.MLP,
    NodeKind.ROUTER: Operator.MLP,
    NodeKind.EXPERTS: Operator.MLP,
    NodeKind.SHARED_EXPERT: Operator.MLP,
    NodeKind.MLP_RESIDUAL_ADD: Operator.MLP,
    NodeKind.FINAL_NORM: Operator.LM_HEAD,
    NodeKind.LM_HEAD: Operator.LM_HEAD,
}


@dataclass(frozen=True, slots=True)
class OperatorNode:
    """One kernel: `layer` is None for the embedding, final norm and LM head."""

    name: str
    kind: NodeKind
    layer: int | None
    weight_bytes: int

    @property
    def operator(self) -> Operator:
        return NODE_OPERATOR[self.kind]


@dataclass(frozen=True, slots=True)
class Edge:
    """Activations from node `src` to node `dst` (names), `bytes_per_token` for each token of the batch."""

    src: str
    dst: str
    bytes_per_token: int

    def nbytes(self, tokens: int) -> int:
        if tokens < 0:
            raise ValueError(f"tokens must be >= 0, got {tokens!r}")
        return tokens * self.bytes_per_token


@dataclass(frozen=True, slots=True)
class Crossings:
    """The edges leaving a set of families for the others: how many per forward pass and their bytes
    per token in total."""

    edges: int
    bytes_per_token: int


@dataclass(frozen=True)
class OperatorDag:
    model: ModelSpec
    phase: Phase
    nodes: tuple[OperatorNode, ...]
    edges: tuple[Edge, ...]

    @cached_property
    def _by_name(self) -> dict[str, OperatorNode]:
        return {n.name: n for n in self.nodes}

    def node(self, name: str) -> OperatorNode:
        try:
            return self._by_name[name]
        except KeyError:
            raise ValueError(f"model {self.model.name!r} has no operator node {name!r}") from None

    def weight_bytes(self, operator: Operator) -> int:
        """Weights of every node of one family."""
        return sum(n.weight_bytes for n in self.nodes if n.operator is operator)

    def crossings(self, stage: Iterable[Operator]) -> Crossings:
        """Edges from a node of a family in `stage` to a node of a family outside it."""
        inside = frozenset(stage)
        return self.crossings_between(inside, frozenset(Operator) - inside)

    def crossings_between(self, source: Iterable[Operator], dest: Iterable[Operator]) -> Crossings:
        """Edges from a node of a family in `source` to a node of a family in `dest` (disjoint sets)."""
        src, dst = frozenset(source), frozenset(dest)
        count = total = 0
        by_name = self._by_name
        for e in self.edges:
            if by_name[e.src].operator in src and by_name[e.dst].operator in dst:
                count += 1
                total += e.bytes_per_token
        return Crossings(count, total)


def build_dag(model: ModelSpec, phase: Phase | str) -> OperatorDag:
    """The forward-pass DAG of `model` in `phase` (see the module docstring)."""
    try:
        phase = Phase(phase)
    except ValueError:
        raise ValueError(f"phase must be one of {[p.value for p in Phase]}, got {phase!r}") from None
    bpp, hidden = model.bytes_per_param, model.hidden
    kv_dim = model.kv_heads * model.head_dim
    act = hidden * bpp  # a hidden state, per token
    moe = model.experts > 0
    k = model.experts_per_token if moe else 1
    nodes: list[OperatorNode] = []
    edges: list[Edge] = []

    def add(name: str, kind: NodeKind, layer: int | None, weights: int = 0) -> str:
        nodes.append(OperatorNode(name, kind, layer, weights))
        return name

    def link(src: str, dst: str, nbytes: int) -> None:
        edges.append(Edge(src, dst, nbytes))

    attention_kind = NodeKind.ATTENTION_PREFILL if phase is Phase.PREFILL else NodeKind.ATTENTION_DECODE
    prev = add("embedding", NodeKind.EMBEDDING, None, model.vocab * hidden * bpp)
    for i in range(model.layers):
        p = f"L{i}."
        norm = add(p + "input_norm", NodeKind.INPUT_NORM, i, hidden * bpp)
        link(prev, norm, act)
        qkv = add(p + "qkv_proj", NodeKind.QKV_PROJ, i, hidden * (hidden + 2 * kv_dim) * bpp)
        link(norm, qkv, act)
        rope = add(p + "rotary", NodeKind.ROTARY, i)
        link(qkv, rope, (hidden + 2 * kv_dim) * bpp)
        attn = add(p + attention_kind.value, attention_kind, i)
        link(rope, attn, (hidden + 2 * kv_dim) * bpp)
        o = add(p + "o_proj", NodeKind.O_PROJ, i, hidden * hidden * bpp)
        link(attn, o, act)
        res1 = add(p + "attn_residual_add", NodeKind.ATTN_RESIDUAL_ADD, i)
        link(o, res1, act)
        link(prev, res1, act)  # the residual stream
        norm2 = add(p + "post_attn_norm", NodeKind.POST_ATTN_NORM, i, hidden * bpp)
        link(res1, norm2, act)
        res2 = add(p + "mlp_residual_add", NodeKind.MLP_RESIDUAL_ADD, i)
        link(res1, res2, act)
        if moe:
            router = add(p + "router", NodeKind.ROUTER, i, hidden * model.experts * bpp)
            link(norm2, router, act)
            experts = add(p + "experts", NodeKind.EXPERTS, i, 3 * hidden * model.intermediate * model.experts * bpp)
            link(norm2, experts, k * act)  # dispatch: one copy per routed expert
            link(router, experts, k * (_INDEX_BYTES + bpp))
            link(experts, res2, k * act)  # combine
            if model.shared_expert_intermediate:
                shared = add(p + "shared_expert", NodeKind.SHARED_EXPERT, i, model.shared_expert_params_per_layer * bpp)
                link(norm2, shared, act)
                link(shared, res2, act)
        else:
            gate_up = add(p + "gate_up_proj", NodeKind.GATE_UP_PROJ, i, 2 * hidden * model.intermediate * bpp)
            link(norm2, gate_up, act)
            act_node = add(p + "activation", NodeKind.ACTIVATION, i)
            link(gate_up, act_node, 2 * model.intermediate * bpp)
            down = add(p + "down_proj", NodeKind.DOWN_PROJ, i, hidden * model.intermediate * bpp)
            link(act_node, down, model.intermediate * bpp)
            link(down, res2, act)
        prev = res2
    final = add("final_norm", NodeKind.FINAL_NORM, None, hidden * bpp)
    link(prev, final, act)
    head = add("lm_head", NodeKind.LM_HEAD, None, model.vocab * hidden * bpp)
    link(final, head, act)
    return OperatorDag(model, phase, tuple(nodes), tuple(edges))

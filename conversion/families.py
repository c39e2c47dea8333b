"""Key maps between Hugging Face (Llama, InternLM2) and megatron-core GPT weights, one declarative map per family.

Each family is a list of :class:`Rule`: a megatron-core tensor name (a ``GPTModel.state_dict()`` name with the
local layer spec; ``{i}`` is the layer) and the HF tensor names it is made of. Tensors that megatron-core fuses
(``linear_qkv``, ``linear_fc1``) name a pair of small functions (``pack``: HF -> mcore, ``unpack``: mcore -> HF)
whose docstrings draw the layout. The reverse direction is derived from the same rules, never written twice.

RoPE needs no permutation: transformers' Llama/InternLM2 and megatron-core (``rotary_interleaved=False``) both
rotate the two halves of each head (``rotate_half``); ``tests/test_convert_llama.py`` proves it on logits.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass

import torch

from megatron_mmed.common.errors import UserError
from megatron_mmed.models.internlm2 import ModelPreset

Tensor = torch.Tensor


# --- fused tensors -------------------------------------------------------------------------------------------


def qkv_from_separate(q: Tensor, k: Tensor, v: Tensor, arch: ModelPreset) -> Tensor:
    """Llama ``q_proj, k_proj, v_proj`` -> megatron-core ``linear_qkv``, interleaved per query group.

    ``q`` is ``[heads * d, hidden]``, ``k``/``v`` are ``[kv_heads * d, hidden]``. megatron-core's rows are::

        group 0: q(head 0) .. q(head p-1) | k(group 0) | v(group 0)      (p = heads / kv_heads)
        group 1: q(head p) .. q(head 2p-1)| k(group 1) | v(group 1)
        ...

    i.e. ``[kv_heads, p + 2, d, hidden]`` flattened; a plain ``cat([q, k, v])`` is wrong for GQA.
    """
    g, p, d, h = arch.num_query_groups, arch.q_per_kv, arch.head_dim, q.shape[-1]
    packed = torch.cat([q.reshape(g, p * d, h), k.reshape(g, d, h), v.reshape(g, d, h)], dim=1)
    return packed.reshape(g * (p + 2) * d, h)


def qkv_to_separate(qkv: Tensor, arch: ModelPreset) -> tuple[Tensor, Tensor, Tensor]:
    """megatron-core ``linear_qkv`` ``[kv_heads, p + 2, d, hidden]`` -> Llama ``(q_proj, k_proj, v_proj)``."""
    g, p, d = arch.num_query_groups, arch.q_per_kv, arch.head_dim
    grouped = qkv.reshape(g, (p + 2) * d, qkv.shape[-1])
    q, k, v = torch.split(grouped, [p * d, d, d], dim=1)
    h = qkv.shape[-1]
    return (
        q.reshape(g * p * d, h).contiguous(),
        k.reshape(g * d, h).contiguous(),
        v.reshape(g * d, h).contiguous(),
    )


def qkv_from_wqkv(wqkv: Tensor, arch: ModelPreset) -> Tensor:
    """InternLM2 ``attention.wqkv`` -> megatron-core ``linear_qkv``: the same layout, checked and copied.

    InternLM2 packs ``[kv_heads, p + 2, d, hidden]`` (per KV group: its p query heads, one key, one value),
    which is exactly megatron-core's per-query-group interleaving (``get_query_key_value_tensors``).
    """
    expected = (arch.qkv_rows, arch.hidden_size)
    if tuple(wqkv.shape) != expected:
        raise UserError(f"attention.wqkv: shape {tuple(wqkv.shape)} does not match the config ({expected})")
    return wqkv


def qkv_to_wqkv(qkv: Tensor, arch: ModelPreset) -> tuple[Tensor]:
    """megatron-core ``linear_qkv`` -> InternLM2 ``attention.wqkv`` (identical ``[kv_heads, p + 2, d, hidden]``)."""
    return (qkv,)


def fc1_from_gate_up(gate: Tensor, up: Tensor, arch: ModelPreset) -> Tensor:
    """``gate`` (Llama ``gate_proj`` / InternLM2 ``w1``) and ``up`` (``up_proj`` / ``w3``) -> ``linear_fc1``.

    megatron-core's SwiGLU computes ``silu(x @ W[:ffn].T) * (x @ W[ffn:].T)``, so ``W = [gate; up]``::

        rows 0 .. ffn-1      gate
        rows ffn .. 2ffn-1   up
    """
    return torch.cat([gate, up], dim=0)


def fc1_to_gate_up(fc1: Tensor, arch: ModelPreset) -> tuple[Tensor, Tensor]:
    """``linear_fc1`` ``[gate; up]`` -> ``(gate, up)``."""
    gate, up = torch.split(fc1, [arch.ffn_hidden_size, arch.ffn_hidden_size], dim=0)
    return gate.contiguous(), up.contiguous()


class RowBlocks(tuple):
    """HF tensors whose row-wise concatenation is one megatron-core tensor (``linear_fc1`` = ``[gate; up]``),
    handed over unconcatenated: torch_dist stores SwiGLU's two halves as tensors of their own, so a writer
    can save each block as it is instead of concatenating them and copying the halves back out."""


# --- declarative maps ----------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Rule:
    """One megatron-core tensor and the HF tensors it is made of (one name: copied as is)."""

    mcore: str
    hf: tuple[str, ...]
    pack: Callable[..., Tensor] | None = None  # (*hf_tensors, arch) -> mcore tensor
    unpack: Callable[..., tuple[Tensor, ...]] | None = None  # (mcore tensor, arch) -> hf tensors
    row_blocks: bool = False  # pack is torch.cat(hf_tensors, dim=0): the parts may go out as RowBlocks

    @property
    def per_layer(self) -> bool:
        return "{i}" in self.mcore


@dataclass(frozen=True)
class Family:
    """A HF model family (`--layout`): its rules plus the ``config.json`` identity it writes."""

    name: str
    rules: tuple[Rule, ...]
    architectures: tuple[str, ...]
    model_type: str

    def hf_names(self, num_layers: int) -> list[str]:
        """Every HF tensor name of a model with ``num_layers`` layers, in file order."""
        return [n for rule in self.rules for n in expand(rule, num_layers)[1]]

    def hf_to_rule(self, num_layers: int) -> dict[str, tuple[Rule, int | None]]:
        """Reverse map derived from the rules: HF name -> (rule, layer)."""
        out: dict[str, tuple[Rule, int | None]] = {}
        for rule in self.rules:
            for i in range(num_layers) if rule.per_layer else [None]:
                for n in rule.hf:
                    out[n.format(i=i)] = (rule, i)
        return out


def expand(rule: Rule, num_layers: int) -> tuple[list[str], list[str]]:
    """(mcore names, HF names) of ``rule`` for every layer."""
    layers = range(num_layers) if rule.per_layer else [None]
    return [rule.mcore.format(i=i) for i in layers], [n.format(i=i) for i in layers for n in rule.hf]


_L = "decoder.layers.{i}."

LLAMA = Family(
    name="llama",
    architectures=("LlamaForCausalLM",),
    model_type="llama",
    rules=(
        Rule("embedding.word_embeddings.weight", ("model.embed_tokens.weight",)),
        Rule(_L + "input_layernorm.weight", ("model.layers.{i}.input_layernorm.weight",)),
        Rule(
            _L + "self_attention.linear_qkv.weight",
            tuple(f"model.layers.{{i}}.self_attn.{x}_proj.weight" for x in "qkv"),
            qkv_from_separate,
            qkv_to_separate,
        ),
        Rule(_L + "self_attention.linear_proj.weight", ("model.layers.{i}.self_attn.o_proj.weight",)),
        Rule(_L + "pre_mlp_layernorm.weight", ("model.layers.{i}.post_attention_layernorm.weight",)),
        Rule(
            _L + "mlp.linear_fc1.weight",
            ("model.layers.{i}.mlp.gate_proj.weight", "model.layers.{i}.mlp.up_proj.weight"),
            fc1_from_gate_up,
            fc1_to_gate_up,
            row_blocks=True,
        ),
        Rule(_L + "mlp.linear_fc2.weight", ("model.layers.{i}.mlp.down_proj.weight",)),
        Rule("decoder.final_layernorm.weight", ("model.norm.weight",)),
        Rule("output_layer.weight", ("lm_head.weight",)),
    ),
)

INTERNLM2 = Family(
    name="internlm2",
    architectures=("InternLM2ForCausalLM",),
    model_type="internlm2",
    rules=(
        Rule("embedding.word_embeddings.weight", ("model.tok_embeddings.weight",)),
        Rule(_L + "input_layernorm.weight", ("model.layers.{i}.attention_norm.weight",)),
        Rule(
            _L + "self_attention.linear_qkv.weight",
            ("model.layers.{i}.attention.wqkv.weight",),
            qkv_from_wqkv,
            qkv_to_wqkv,
        ),
        Rule(_L + "self_attention.linear_proj.weight", ("model.layers.{i}.attention.wo.weight",)),
        Rule(_L + "pre_mlp_layernorm.weight", ("model.layers.{i}.ffn_norm.weight",)),
        Rule(
            _L + "mlp.linear_fc1.weight",
            ("model.layers.{i}.feed_forward.w1.weight", "model.layers.{i}.feed_forward.w3.weight"),
            fc1_from_gate_up,
            fc1_to_gate_up,
            row_blocks=True,
        ),
        Rule(_L + "mlp.linear_fc2.weight", ("model.layers.{i}.feed_forward.w2.weight",)),
        Rule("decoder.final_layernorm.weight", ("model.norm.weight",)),
        Rule("output_layer.weight", ("output.weight",)),
    ),
)

FAMILIES: dict[str, Family] = {f.name: f for f in (LLAMA, INTERNLM2)}

#: megatron-core local-spec module names -> the names its ``sharded_state_dict`` (and the Transformer Engine
#: spec, where the norms are fused into the following linear) uses in a torch_dist checkpoint.
LOCAL_TO_CHECKPOINT: dict[str, str] = {
    "input_layernorm.weight": "self_attention.linear_qkv.layer_norm_weight",
    "pre_mlp_layernorm.weight": "mlp.linear_fc1.layer_norm_weight",
}


def checkpoint_key(mcore_name: str) -> tuple[str, int | None]:
    """``decoder.layers.3.input_layernorm.weight`` -> (``decoder.layers.self_attention.linear_qkv.layer_norm_weight``, 3)."""
    if not mcore_name.startswith("decoder.layers."):
        return mcore_name, None
    rest = mcore_name[len("decoder.layers.") :]
    layer, _, sub = rest.partition(".")
    return "decoder.layers." + LOCAL_TO_CHECKPOINT.get(sub, sub), int(layer)


def hf_shapes(family: Family, arch: ModelPreset) -> dict[str, tuple[int, ...]]:
    """The shape every HF tensor of ``family`` must have for ``arch`` (the config/weight consistency check)."""
    h, d, ffn = arch.hidden_size, arch.head_dim, arch.ffn_hidden_size
    by_suffix = {
        "embed_tokens.weight": (arch.vocab_size, h),
        "tok_embeddings.weight": (arch.vocab_size, h),
        "lm_head.weight": (arch.vocab_size, h),
        "output.weight": (arch.vocab_size, h),
        "q_proj.weight": (arch.num_attention_heads * d, h),
        "k_proj.weight": (arch.num_query_groups * d, h),
        "v_proj.weight": (arch.num_query_groups * d, h),
        "wqkv.weight": (arch.qkv_rows, h),
        "o_proj.weight": (h, arch.num_attention_heads * d),
        "wo.weight": (h, arch.num_attention_heads * d),
        "gate_proj.weight": (ffn, h),
        "up_proj.weight": (ffn, h),
        "w1.weight": (ffn, h),
        "w3.weight": (ffn, h),
        "down_proj.weight": (h, ffn),
        "w2.weight": (h, ffn),
    }
    out = {}
    for name in family.hf_names(arch.num_layers):
        module = name.split(".")[-2]
        out[name] = (h,) if module.endswith("norm") else by_suffix[f"{module}.weight"]
    return out


# --- streaming in layer order ----------------------------------------------------------------------------------


def _rules_in_layer_order(family: Family, num_layers: int) -> Iterator[tuple[Rule, int | None]]:
    """Embedding first, then every rule of layer 0, layer 1, ..., then the final norm and the output layer."""
    head = [r for r in family.rules if not r.per_layer and r.mcore.startswith("embedding.")]
    tail = [r for r in family.rules if not r.per_layer and not r.mcore.startswith("embedding.")]
    for r in head:
        yield r, None
    for i in range(num_layers):
        for r in family.rules:
            if r.per_layer:
                yield r, i
    for r in tail:
        yield r, None


def hf_to_mcore_tensors(
    family: Family, arch: ModelPreset, get: Callable[[str], Tensor], row_blocks: bool = False
) -> Iterator[tuple[str, Tensor | RowBlocks]]:
    """(megatron-core name, tensor) pairs built from HF tensors fetched one rule at a time by ``get``; with
    ``row_blocks`` a row-concatenating rule yields its parts as :class:`RowBlocks` instead."""
    for rule, i in _rules_in_layer_order(family, arch.num_layers):
        parts = [get(n.format(i=i)) for n in rule.hf]
        if row_blocks and rule.row_blocks:
            yield rule.mcore.format(i=i), RowBlocks(parts)
        else:
            yield rule.mcore.format(i=i), rule.pack(*parts, arch) if rule.pack else parts[0]


def mcore_to_hf_tensors(
    family: Family, arch: ModelPreset, get: Callable[[str], Tensor]
) -> Iterator[tuple[str, Tensor]]:
    """(HF name, tensor) pairs of ``family`` built from megatron-core tensors fetched one at a time by ``get``."""
    for rule, i in _rules_in_layer_order(family, arch.num_layers):
        t = get(rule.mcore.format(i=i))
        parts = rule.unpack(t, arch) if rule.unpack else (t,)
        for n, p in zip(rule.hf, parts, strict=True):
            yield n.format(i=i), p


def hf_names_in_order(family: Family, arch: ModelPreset) -> list[str]:
    """HF tensor names in the order :func:`mcore_to_hf_tensors` produces them (the shard plan's order)."""
    return [n.format(i=i) for rule, i in _rules_in_layer_order(family, arch.num_layers) for n in rule.hf]


def mcore_names_in_order(family: Family, arch: ModelPreset) -> list[str]:
    """megatron-core tensor names in the order :func:`mcore_to_hf_tensors` asks for them."""
    return [rule.mcore.format(i=i) for rule, i in _rules_in_layer_order(family, arch.num_layers)]


def mcore_getter(family: Family, arch: ModelPreset, get: Callable[[str], Tensor]) -> Callable[[str], Tensor]:
    """``mcore name -> tensor`` computed on demand from HF tensors (no dict of the whole model is built)."""
    index = {rule.mcore.format(i=i): (rule, i) for rule, i in _rules_in_layer_order(family, arch.num_layers)}

    def fetch(name: str) -> Tensor:
        rule, i = index[name]
        parts = [get(n.format(i=i)) for n in rule.hf]
        return rule.pack(*parts, arch) if rule.pack else parts[0]

    return fetch

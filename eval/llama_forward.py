"""The forward of a Llama-family transformers model (Llama, Mistral, Qwen2: RMSNorm, rotary embeddings, grouped
key heads, a SiLU-gated MLP) written out over the model's own weights, with ``PrefixKV`` attention: what batched
CPU generation runs instead of ``model(...)`` where the backend's probe finds it gives the model's own logits.

Why: on a CPU, a decode step of a small model is mostly per-call overhead (transformers' module calls, output
capture, mask building: outside attention, a 48-row step of the tests' 2-layer model takes ~0.95 ms through
transformers' forward and ~0.55 ms here), and a prompt pass's last layer is
needed only at each row's last position: its keys and values at every position (decode reads them), its
attention, output projection and MLP at that one. Every operation is the one transformers runs, in the same
order and dtypes (same logits bit for bit outside attention); the model itself is never changed.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from eval.prefix_kv import PrefixKV

FAMILIES = ("llama", "mistral", "qwen2")  # same decoder layer; other families keep transformers' forward
_LAYER = {"self_attn", "mlp", "input_layernorm", "post_attention_layernorm"}
_ATTN = {"q_proj", "k_proj", "v_proj", "o_proj"}
_MLP = {"gate_proj", "up_proj", "down_proj", "act_fn"}
_SILU = ("SiLU", "SiLUActivation")  # torch's and transformers' (both F.silu)


@dataclass(frozen=True)
class _Layer:
    attn_norm: torch.nn.Module
    q: torch.nn.Linear
    k: torch.nn.Linear
    v: torch.nn.Linear
    o: torch.nn.Linear
    mlp_norm: torch.nn.Module
    gate: torch.nn.Linear
    up: torch.nn.Linear
    down: torch.nn.Linear
    heads: int
    kv_heads: int
    head_dim: int
    scale: float


def _rms(norm, x):
    """transformers' Llama RMSNorm, operation for operation."""
    dtype = x.dtype
    x = x.to(torch.float32)
    x = x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + norm.variance_epsilon)
    return norm.weight * x.to(dtype)


def _rotate_half(x):
    half = x.shape[-1] // 2
    return torch.cat((-x[..., half:], x[..., :half]), dim=-1)


def _linear(layer: torch.nn.Linear, x):
    return F.linear(x, layer.weight, layer.bias)


class LlamaForward:
    """``model``'s forward with ``PrefixKV`` attention; ``LlamaForward.of(model)`` is ``None`` for a model whose
    modules are not the Llama layout (the backend's probe then checks the logits)."""

    def __init__(self, model):
        base = model.model
        self.embed, self.rotary, self.norm = base.embed_tokens, base.rotary_emb, base.norm
        self.head = model.lm_head
        self.layers = []
        for layer in base.layers:
            att, mlp = layer.self_attn, layer.mlp
            self.layers.append(
                _Layer(
                    attn_norm=layer.input_layernorm,
                    q=att.q_proj,
                    k=att.k_proj,
                    v=att.v_proj,
                    o=att.o_proj,
                    mlp_norm=layer.post_attention_layernorm,
                    gate=mlp.gate_proj,
                    up=mlp.up_proj,
                    down=mlp.down_proj,
                    heads=att.q_proj.out_features // att.head_dim,
                    kv_heads=att.k_proj.out_features // att.head_dim,
                    head_dim=att.head_dim,
                    scale=att.scaling,
                )
            )

    @classmethod
    def of(cls, model) -> LlamaForward | None:
        cfg = model.config
        if getattr(cfg, "model_type", None) not in FAMILIES or getattr(cfg, "hidden_act", None) != "silu":
            return None
        base = getattr(model, "model", None)
        if not all(hasattr(base, a) for a in ("embed_tokens", "rotary_emb", "norm", "layers")):
            return None
        if not isinstance(getattr(model, "lm_head", None), torch.nn.Linear):
            return None
        for layer in base.layers:
            names = (
                {n for n, _ in layer.named_children()},
                {n for n, _ in layer.self_attn.named_children()},
                {n for n, _ in layer.mlp.named_children()},
            )
            if names != (_LAYER, _ATTN, _MLP) or type(layer.mlp.act_fn).__name__ not in _SILU:
                return None
            if not all(hasattr(layer.self_attn, a) for a in ("head_dim", "scaling")):
                return None
        return cls(model)

    def __call__(self, ids, positions, kv: PrefixKV, last):
        """Logits at each row's position ``last`` of ``ids`` (rows, positions) at ``positions``; ``None`` for the
        prefix pass (run for the keys and values ``kv`` keeps)."""
        n, length = ids.shape
        x = self.embed(ids)
        cos, sin = (t.unsqueeze(1).expand(n, -1, -1, -1) for t in self.rotary(x, positions))
        end = len(self.layers) - 1
        for i, lay in enumerate(self.layers):
            h = _rms(lay.attn_norm, x)
            k = _linear(lay.k, h).view(n, length, lay.kv_heads, lay.head_dim).transpose(1, 2)
            v = _linear(lay.v, h).view(n, length, lay.kv_heads, lay.head_dim).transpose(1, 2)
            k = (k * cos) + (_rotate_half(k) * sin)
            if i == end and kv.mode == "prefix":  # nothing reads the prefix pass's output, only its keys
                kv.keep(i, k, v)
                return None
            if i == end and kv.at_last_only:  # only each row's last position goes on
                at = torch.arange(n, device=x.device)
                x, h, c, s = x[at, last], h[at, last], cos[at, 0, last, None], sin[at, 0, last, None]
                q = _linear(lay.q, h).view(n, lay.heads, lay.head_dim)
                out = kv.at_last(i, (q * c) + (_rotate_half(q) * s), k, v, lay.scale).reshape(n, -1)
            else:
                q = _linear(lay.q, h).view(n, length, lay.heads, lay.head_dim).transpose(1, 2)
                q = (q * cos) + (_rotate_half(q) * sin)
                out = kv.attention(i, q, k, v, lay.scale).reshape(n, length, -1)
            x = x + _linear(lay.o, out)
            h = _rms(lay.mlp_norm, x)
            x = x + _linear(lay.down, F.silu(_linear(lay.gate, h)) * _linear(lay.up, h))
        x = _rms(self.norm, x)
        if x.dim() == 3:
            x = x[torch.arange(n, device=x.device), last]
        return _linear(self.head, x)

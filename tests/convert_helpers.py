"""Tiny random HF checkpoints for the conversion tests (Llama with GQA, and the same weights as InternLM2)."""

from __future__ import annotations

import contextlib
import json
import os
from collections.abc import Iterator
from pathlib import Path

import torch

TINY = dict(
    vocab_size=300,
    hidden_size=64,
    intermediate_size=96,
    num_hidden_layers=2,
    num_attention_heads=8,
    num_key_value_heads=2,
    max_position_embeddings=256,
    rope_theta=1_000_000.0,
    rms_norm_eps=1e-5,
    tie_word_embeddings=False,
    bos_token_id=1,
    eos_token_id=2,
)


def tiny_llama(seed: int = 0, **overrides):
    """A random ``LlamaForCausalLM`` (GQA 8:2) with weights large enough for logits to differ per token."""
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    model = LlamaForCausalLM(LlamaConfig(**{**TINY, **overrides}))
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "norm" in name:
                p.uniform_(0.5, 1.5)
            else:
                p.normal_(0.0, 0.15)
    return model.eval()


def save_llama(model, path: Path, dtype: torch.dtype = torch.float32) -> Path:
    model.to(dtype).save_pretrained(path)
    model.to(torch.float32)
    return path


def to_internlm2_state(sd: dict[str, torch.Tensor], cfg: dict) -> dict[str, torch.Tensor]:
    """Llama weights in InternLM2's layout, written from the published description (independent of conversion/).

    ``wqkv`` is ``[num_kv_heads, q_per_kv + 2, head_dim, hidden]``: for each KV group its query heads, then one
    key and one value head.
    """
    h, nh, nkv = cfg["hidden_size"], cfg["num_attention_heads"], cfg["num_key_value_heads"]
    d, p = h // nh, nh // nkv
    out = {
        "model.tok_embeddings.weight": sd["model.embed_tokens.weight"],
        "model.norm.weight": sd["model.norm.weight"],
        "output.weight": sd["lm_head.weight"],
    }
    for i in range(cfg["num_hidden_layers"]):
        a, b = f"model.layers.{i}.", f"model.layers.{i}."
        q = sd[a + "self_attn.q_proj.weight"].reshape(nkv, p, d, h)
        k = sd[a + "self_attn.k_proj.weight"].reshape(nkv, 1, d, h)
        v = sd[a + "self_attn.v_proj.weight"].reshape(nkv, 1, d, h)
        out[b + "attention.wqkv.weight"] = torch.cat([q, k, v], dim=1).reshape(-1, h).contiguous()
        out[b + "attention.wo.weight"] = sd[a + "self_attn.o_proj.weight"]
        out[b + "feed_forward.w1.weight"] = sd[a + "mlp.gate_proj.weight"]
        out[b + "feed_forward.w3.weight"] = sd[a + "mlp.up_proj.weight"]
        out[b + "feed_forward.w2.weight"] = sd[a + "mlp.down_proj.weight"]
        out[b + "attention_norm.weight"] = sd[a + "input_layernorm.weight"]
        out[b + "ffn_norm.weight"] = sd[a + "post_attention_layernorm.weight"]
    return {k: v.contiguous() for k, v in out.items()}


def save_internlm2(model, path: Path, rope_scaling: dict | None = None) -> Path:
    """The tiny Llama's weights as an InternLM2 folder (config shaped like the official repos')."""
    from safetensors.torch import save_file

    path.mkdir(parents=True)
    cfg = {**TINY, "vocab_size": model.config.vocab_size}
    sd = {k: v.detach().clone() for k, v in model.state_dict().items()}
    save_file(to_internlm2_state(sd, cfg), str(path / "model.safetensors"), metadata={"format": "pt"})
    config = {
        "architectures": ["InternLM2ForCausalLM"],
        "model_type": "internlm2",
        "auto_map": {"AutoConfig": "configuration_internlm2.InternLM2Config"},
        "bias": False,
        "hidden_act": "silu",
        "rope_scaling": rope_scaling,
        "torch_dtype": "float32",
        **cfg,
    }
    (path / "config.json").write_text(json.dumps(config))
    return path


def read_tensors(path: Path) -> dict[str, torch.Tensor]:
    """Every tensor of a HF safetensors folder (sharded or not)."""
    from safetensors.torch import load_file

    return {k: v for f in sorted(path.glob("*.safetensors")) for k, v in load_file(str(f)).items()}


def read_tensors_of(shard: Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    return load_file(str(shard))


_forks: list[list[int]] = []  # the open count_forks() lists; the at-fork hook appends to each


def _note_fork() -> None:
    for forks in _forks:
        forks.append(os.getpid())


os.register_at_fork(before=_note_fork)


@contextlib.contextmanager
def count_forks() -> Iterator[list[int]]:
    """A list that gets one entry per ``fork()`` this process makes inside the block (multiprocessing's fork
    context included)."""
    forks: list[int] = []
    _forks.append(forks)
    try:
        yield forks
    finally:
        _forks.remove(forks)

"""HF ``config.json`` <-> :class:`~megatron_mmed.models.internlm2.ModelPreset`, the one architecture type.

Only the Llama/InternLM2 architecture is accepted (RMSNorm, SwiGLU, RoPE, GQA, no biases, untied embeddings);
anything else is refused with the reason, never converted into a different model.
"""

from __future__ import annotations

import json
from typing import Any

from megatron_mmed.common.errors import UserError
from megatron_mmed.models.internlm2 import ModelPreset

_TOKEN_KEYS = ("bos_token_id", "eos_token_id", "pad_token_id")


def _need(cfg: dict[str, Any], key: str, where: str) -> Any:
    if key not in cfg or cfg[key] is None:
        raise UserError(f"{where}: config.json has no {key!r}")
    return cfg[key]


def arch_from_hf_config(cfg: dict[str, Any], where: str = "config.json", name: str = "hf") -> ModelPreset:
    """Read a Llama or InternLM2 ``config.json``; refuse features megatron-mmed's GPT model does not have."""
    if cfg.get("tie_word_embeddings", False):
        raise UserError(f"{where}: tie_word_embeddings=true is not supported (InternLM2 keeps them untied)")
    for key in ("attention_bias", "mlp_bias", "bias"):
        if cfg.get(key):
            raise UserError(
                f"{where}: {key}=true is not supported (the InternLM2 architecture has no biases)"
            )
    act = cfg.get("hidden_act", "silu")
    if act != "silu":
        raise UserError(f"{where}: hidden_act={act!r} is not supported (SwiGLU with silu only)")
    hidden = int(_need(cfg, "hidden_size", where))
    heads = int(_need(cfg, "num_attention_heads", where))
    head_dim = cfg.get("head_dim")
    if head_dim is not None and heads and int(head_dim) * heads != hidden:
        raise UserError(
            f"{where}: head_dim {head_dim} x {heads} heads != hidden_size {hidden} (not supported)"
        )
    rope_params = cfg.get("rope_parameters") or {}
    theta = float(cfg.get("rope_theta", rope_params.get("rope_theta", 10000.0)))
    if theta != int(theta):
        raise UserError(f"{where}: rope_theta {theta} is not an integer (megatron-mmed presets store an int)")
    scaling = cfg.get("rope_scaling")
    if scaling is None and rope_params.get("rope_type", "default") != "default":
        scaling = {k: v for k, v in rope_params.items() if k != "rope_theta"}
    arch = ModelPreset(
        name=name,
        hidden_size=hidden,
        num_layers=int(_need(cfg, "num_hidden_layers", where)),
        num_attention_heads=heads,
        num_query_groups=int(cfg.get("num_key_value_heads") or heads),
        ffn_hidden_size=int(_need(cfg, "intermediate_size", where)),
        source=where,
        vocab_size=int(_need(cfg, "vocab_size", where)),
        max_position_embeddings=int(cfg.get("max_position_embeddings", 2048)),
        rotary_base=int(theta),
        norm_epsilon=float(cfg.get("rms_norm_eps", 1e-6)),
        rope_scaling=dict(scaling) if scaling else None,
        token_ids={k: cfg[k] for k in _TOKEN_KEYS if cfg.get(k) is not None},
    )
    check_arch(arch)
    return arch


def check_arch(arch: ModelPreset) -> None:
    """Refuse sizes no GPT model can have (zero or negative sizes, heads that do not divide)."""
    for key, label in (
        ("hidden_size", "hidden_size"),
        ("num_layers", "num_hidden_layers"),
        ("num_attention_heads", "num_attention_heads"),
        ("num_query_groups", "num_key_value_heads"),
        ("ffn_hidden_size", "intermediate_size"),
        ("vocab_size", "vocab_size"),
    ):
        if getattr(arch, key) < 1:
            raise UserError(f"{label} must be >= 1, got {getattr(arch, key)}")
    if arch.num_attention_heads % arch.num_query_groups:
        raise UserError(
            f"num_attention_heads ({arch.num_attention_heads}) is not divisible by num_key_value_heads "
            f"({arch.num_query_groups})"
        )
    if arch.hidden_size % arch.num_attention_heads:
        raise UserError(
            f"hidden_size ({arch.hidden_size}) is not divisible by num_attention_heads ({arch.num_attention_heads})"
        )


_DTYPE_NAMES = {"fp32": "float32", "bf16": "bfloat16", "fp16": "float16"}
#: the scalings InternLM2's own ``configuration_internlm2.py`` accepts (as ``{"type": ..., "factor": ...}``).
INTERNLM2_ROPE_TYPES = ("linear", "dynamic")


def rope_scaling_for(family_name: str, scaling: dict[str, Any] | None) -> dict[str, Any] | None:
    """``rope_scaling`` in the keys ``family_name``'s code reads, as a new dict (the input is never changed).

    Llama (transformers): ``rope_type`` plus the other fields. InternLM2's code checks for exactly ``type``
    (linear or dynamic) and a float ``factor`` >= 1; any other scaling is refused, shown as written.
    """
    if not scaling:
        return None
    kind = scaling.get("rope_type", scaling.get("type"))
    if kind == "default":
        return None
    rest = {k: v for k, v in scaling.items() if k not in ("type", "rope_type")}
    if family_name == "llama":
        return {"rope_type": kind, **rest} if kind is not None else dict(rest)
    factor = rest.get("factor")
    if (
        kind not in INTERNLM2_ROPE_TYPES
        or set(rest) != {"factor"}
        or isinstance(factor, bool)
        or not isinstance(factor, int | float)
        or factor < 1
    ):
        raise UserError(
            f"rope_scaling {json.dumps(scaling)} cannot be expressed in the InternLM2 layout (its code reads "
            'exactly {"type": "linear" or "dynamic", "factor": float >= 1}); export with --layout llama'
        )
    return {"type": kind, "factor": float(factor)}


def hf_config(family_name: str, arch: ModelPreset, dtype: str) -> dict[str, Any]:
    """The ``config.json`` of ``arch`` in the Llama or InternLM2 family (rope_scaling in that family's keys)."""
    common = {
        "hidden_act": "silu",
        "hidden_size": arch.hidden_size,
        "initializer_range": 0.02,
        "intermediate_size": arch.ffn_hidden_size,
        "max_position_embeddings": arch.max_position_embeddings,
        "num_attention_heads": arch.num_attention_heads,
        "num_hidden_layers": arch.num_layers,
        "num_key_value_heads": arch.num_query_groups,
        "rms_norm_eps": arch.norm_epsilon,
        "rope_scaling": rope_scaling_for(family_name, arch.rope_scaling),
        "rope_theta": arch.rotary_base,
        "tie_word_embeddings": False,
        "torch_dtype": _DTYPE_NAMES[dtype],
        "use_cache": True,
        "vocab_size": arch.vocab_size,
        **arch.token_ids,
    }
    if family_name == "llama":
        return {
            "architectures": ["LlamaForCausalLM"],
            "model_type": "llama",
            "attention_bias": False,
            "attention_dropout": 0.0,
            "head_dim": arch.head_dim,
            "mlp_bias": False,
            **common,
        }
    # InternLM2: the official repos' config.json shape; the modeling code comes from the hub (trust_remote_code).
    return {
        "architectures": ["InternLM2ForCausalLM"],
        "model_type": "internlm2",
        "auto_map": {
            "AutoConfig": "configuration_internlm2.InternLM2Config",
            "AutoModel": "modeling_internlm2.InternLM2ForCausalLM",
            "AutoModelForCausalLM": "modeling_internlm2.InternLM2ForCausalLM",
        },
        "attn_implementation": "eager",
        "bias": False,
        **common,
    }


def llama_config_for(arch: ModelPreset, dtype: str = "fp32") -> dict[str, Any]:
    """The Llama ``config.json`` that is numerically the same model (how the InternLM2 family is validated)."""
    return hf_config("llama", arch, dtype)

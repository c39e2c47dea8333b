"""The architecture a conversion needs, read from a HF ``config.json`` or a megatron-mmed preset.

Only the Llama/InternLM2 architecture is accepted (RMSNorm, SwiGLU, RoPE, GQA, no biases, untied embeddings);
anything else is refused with the reason, never converted into a different model.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from typing import Any

from megatron_mmed.common.errors import UserError
from megatron_mmed.models.internlm2 import ModelPreset


@dataclass(frozen=True)
class Arch:
    """Sizes and numerics of one Llama-architecture model (what both checkpoints must agree on)."""

    hidden_size: int
    num_layers: int
    num_heads: int
    num_kv_heads: int
    ffn_hidden_size: int
    vocab_size: int
    max_position_embeddings: int
    rope_theta: float
    norm_eps: float
    rope_scaling: dict[str, Any] | None = None
    token_ids: dict[str, Any] = field(default_factory=dict)  # bos/eos/pad ids carried to the HF config

    def __post_init__(self) -> None:
        for name in (
            "hidden_size",
            "num_layers",
            "num_heads",
            "num_kv_heads",
            "ffn_hidden_size",
            "vocab_size",
        ):
            if getattr(self, name) < 1:
                raise UserError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.num_heads % self.num_kv_heads:
            raise UserError(
                f"num_attention_heads ({self.num_heads}) is not divisible by num_key_value_heads ({self.num_kv_heads})"
            )
        if self.hidden_size % self.num_heads:
            raise UserError(
                f"hidden_size ({self.hidden_size}) is not divisible by num_attention_heads ({self.num_heads})"
            )

    @property
    def head_dim(self) -> int:
        return self.hidden_size // self.num_heads

    @property
    def q_per_kv(self) -> int:
        return self.num_heads // self.num_kv_heads

    @property
    def qkv_rows(self) -> int:
        return (self.num_heads + 2 * self.num_kv_heads) * self.head_dim

    def num_params(self) -> int:
        h, f = self.hidden_size, self.ffn_hidden_size
        layer = h * self.qkv_rows + h * h + 3 * h * f + 2 * h
        return self.num_layers * layer + 2 * self.vocab_size * h + h

    def check_shape(self, name: str, tensor, expected: tuple[int, ...]) -> None:
        if tuple(tensor.shape) != tuple(expected):
            raise UserError(
                f"{name}: shape {tuple(tensor.shape)} does not match the config ({tuple(expected)})"
            )

    # --- megatron-mmed presets ------------------------------------------------------------------------------

    def to_preset(self, name: str, source: str) -> ModelPreset:
        """The ``ModelPreset`` that ``build_gpt_model`` needs for this architecture."""
        if float(self.rope_theta) != int(self.rope_theta):
            raise UserError(
                f"rope_theta {self.rope_theta} is not an integer (megatron-mmed presets store an int)"
            )
        return ModelPreset(
            name=name,
            hidden_size=self.hidden_size,
            num_layers=self.num_layers,
            num_attention_heads=self.num_heads,
            num_query_groups=self.num_kv_heads,
            ffn_hidden_size=self.ffn_hidden_size,
            source=source,
            vocab_size=self.vocab_size,
            max_position_embeddings=self.max_position_embeddings,
            rotary_base=int(self.rope_theta),
            norm_epsilon=self.norm_eps,
        )

    @classmethod
    def from_preset(cls, preset: ModelPreset, **extra: Any) -> Arch:
        return cls(
            hidden_size=preset.hidden_size,
            num_layers=preset.num_layers,
            num_heads=preset.num_attention_heads,
            num_kv_heads=preset.num_query_groups,
            ffn_hidden_size=preset.ffn_hidden_size,
            vocab_size=preset.vocab_size,
            max_position_embeddings=preset.max_position_embeddings,
            rope_theta=float(preset.rotary_base),
            norm_eps=preset.norm_epsilon,
            **extra,
        )

    def mismatches(self, preset: ModelPreset) -> list[str]:
        """Fields where ``preset`` differs from this architecture (empty when they describe the same model).

        The vocabulary is not compared: a run may set ``model.vocab_size`` for its tokenizer.
        """
        other = Arch.from_preset(preset)
        keys = ("hidden_size", "num_layers", "num_heads", "num_kv_heads", "ffn_hidden_size")
        keys += ("rope_theta", "norm_eps")
        return [
            f"{k}: {getattr(self, k)} vs {getattr(other, k)}"
            for k in keys
            if getattr(self, k) != getattr(other, k)
        ]

    def replace(self, **changes: Any) -> Arch:
        return dataclasses.replace(self, **changes)


_TOKEN_KEYS = ("bos_token_id", "eos_token_id", "pad_token_id")


def _need(cfg: dict[str, Any], key: str, where: str) -> Any:
    if key not in cfg or cfg[key] is None:
        raise UserError(f"{where}: config.json has no {key!r}")
    return cfg[key]


def arch_from_hf_config(cfg: dict[str, Any], where: str = "config.json") -> Arch:
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
    theta = cfg.get("rope_theta", rope_params.get("rope_theta", 10000.0))
    scaling = cfg.get("rope_scaling")
    if scaling is None and rope_params.get("rope_type", "default") != "default":
        scaling = {k: v for k, v in rope_params.items() if k != "rope_theta"}
    return Arch(
        hidden_size=hidden,
        num_layers=int(_need(cfg, "num_hidden_layers", where)),
        num_heads=heads,
        num_kv_heads=int(cfg.get("num_key_value_heads") or heads),
        ffn_hidden_size=int(_need(cfg, "intermediate_size", where)),
        vocab_size=int(_need(cfg, "vocab_size", where)),
        max_position_embeddings=int(cfg.get("max_position_embeddings", 2048)),
        rope_theta=float(theta),
        norm_eps=float(cfg.get("rms_norm_eps", 1e-6)),
        rope_scaling=dict(scaling) if scaling else None,
        token_ids={k: cfg[k] for k in _TOKEN_KEYS if cfg.get(k) is not None},
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


def hf_config(family_name: str, arch: Arch, dtype: str) -> dict[str, Any]:
    """The ``config.json`` of ``arch`` in the Llama or InternLM2 layout (rope_scaling in that family's keys)."""
    theta: float | int = int(arch.rope_theta) if float(arch.rope_theta).is_integer() else arch.rope_theta
    common = {
        "hidden_act": "silu",
        "hidden_size": arch.hidden_size,
        "initializer_range": 0.02,
        "intermediate_size": arch.ffn_hidden_size,
        "max_position_embeddings": arch.max_position_embeddings,
        "num_attention_heads": arch.num_heads,
        "num_hidden_layers": arch.num_layers,
        "num_key_value_heads": arch.num_kv_heads,
        "rms_norm_eps": arch.norm_eps,
        "rope_scaling": rope_scaling_for(family_name, arch.rope_scaling),
        "rope_theta": theta,
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


def llama_config_for(arch: Arch, dtype: str = "fp32") -> dict[str, Any]:
    """The Llama ``config.json`` that is numerically the same model (how InternLM2 layouts are validated)."""
    return hf_config("llama", arch, dtype)

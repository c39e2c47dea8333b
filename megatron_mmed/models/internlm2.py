"""InternLM2 presets: the architecture numbers copied from each published HF ``config.json``.

All InternLM2 sizes share one architecture: RMSNorm (eps 1e-5), SwiGLU MLP, no biases, RoPE with base
1,000,000, grouped-query attention, untied input/output embeddings, vocab 92,544, 32,768 positions.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

from megatron_mmed.common.config import ConfigError


@dataclass(frozen=True)
class ModelPreset:
    """Architecture of one model (what a HF ``config.json`` fixes, in megatron-core terms): the one type that
    presets, converted models (``conversion/arch.py`` maps HF configs to and from it) and training share."""

    name: str
    hidden_size: int
    num_layers: int
    num_attention_heads: int
    num_query_groups: int  # KV heads
    ffn_hidden_size: int
    source: str  # the config this preset copies
    vocab_size: int = 92544
    max_position_embeddings: int = 32768
    rotary_base: int = 1_000_000
    norm_epsilon: float = 1e-5
    init_method_std: float = 0.02
    #: carried as the source config.json wrote it (megatron-core trains without it) and written back on export
    rope_scaling: dict[str, Any] | None = None
    token_ids: dict[str, Any] = field(default_factory=dict)  # bos/eos/pad ids of the source config.json

    @property
    def head_dim(self) -> int:
        return self.hidden_size // self.num_attention_heads

    @property
    def q_per_kv(self) -> int:
        """Query heads per KV head (query group)."""
        return self.num_attention_heads // self.num_query_groups

    @property
    def qkv_rows(self) -> int:
        """Rows of the fused QKV weight: every query head plus one key and one value head per group."""
        return (self.num_attention_heads + 2 * self.num_query_groups) * self.head_dim


_HF = "https://huggingface.co/internlm/{}/blob/main/config.json"

#: name -> preset. Numbers: hidden_size, num_hidden_layers, num_attention_heads, num_key_value_heads,
#: intermediate_size, rms_norm_eps, rope_theta, vocab_size, max_position_embeddings of the cited config.
PRESETS: dict[str, ModelPreset] = {
    p.name: p
    for p in (
        ModelPreset("internlm2-1.8b", 2048, 24, 16, 8, 8192, source=_HF.format("internlm2-1_8b")),
        ModelPreset("internlm2-7b", 4096, 32, 32, 8, 14336, source=_HF.format("internlm2-7b")),
        ModelPreset("internlm2-20b", 6144, 48, 48, 8, 16384, source=_HF.format("internlm2-20b")),
        # CPU tests and the demo: the same architecture (GQA 4:2, SwiGLU, RMSNorm, RoPE 1e6), tiny width.
        ModelPreset(
            "tiny",
            64,
            2,
            4,
            2,
            176,
            source="megatron-mmed test preset (InternLM2 architecture, reduced width/depth)",
        ),
    )
}


def get_preset(name: str) -> ModelPreset:
    """The preset called ``name``; ``ConfigError`` listing the valid names otherwise."""
    try:
        return PRESETS[name]
    except KeyError:
        raise ConfigError(f"model.preset: unknown preset {name!r} (valid: {', '.join(PRESETS)})") from None


def padded_vocab_size(vocab_size: int, tp: int, divisible_by: int = 128) -> int:
    """Vocab padded up to a multiple of ``lcm(divisible_by, tp)`` so that TP splits it evenly.

    Megatron-LM pads to a multiple of ``divisible_by * tp``, which makes the embedding shape depend on TP
    (92,544 at TP=1 but 92,672 at TP=2) and a checkpoint unloadable at another TP. With the lcm the padded
    size is the same for every power-of-two TP up to ``divisible_by``, so checkpoints move between layouts.
    """
    multiple = math.lcm(divisible_by, tp)
    return ((vocab_size + multiple - 1) // multiple) * multiple

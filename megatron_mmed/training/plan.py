"""The dry-run plan: resolved config, parallelism, parameter count and FLOPs, with no torch import."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import yaml

from megatron_mmed.common.config import to_dict
from megatron_mmed.models.internlm2 import ModelPreset
from megatron_mmed.training.config import Parallelism, TrainConfig, resolve_parallelism
from megatron_mmed.training.flops import FlopsBreakdown, flops_per_token, parameter_count


@dataclass(frozen=True)
class Plan:
    """What a run will do, computed from the config alone."""

    parallelism: Parallelism
    arch: ModelPreset  # the preset with this run's depth/vocab
    parameters: int
    flops: FlopsBreakdown
    tokens_per_step: int

    def describe(self, cfg: TrainConfig) -> str:
        arch = self.arch
        f = self.flops
        lines = [
            "# resolved config",
            yaml.safe_dump(to_dict(cfg), sort_keys=False).rstrip(),
            "# plan",
            f"model: {arch.name} ({arch.source})",
            f"  layers={arch.num_layers} hidden={arch.hidden_size} heads={arch.num_attention_heads} "
            f"kv_heads={arch.num_query_groups} ffn={arch.ffn_hidden_size} vocab={arch.vocab_size} "
            f"(padded {self.parallelism.padded_vocab_size})",
            f"parallel: {self.parallelism.describe()}",
            f"parameters: {self.parameters:,} ({_human(self.parameters)})",
            f"flops/token (training, seq {cfg.model.seq_length}): {f.training:,} "
            f"= 3 x (qkv {f.qkv:,} + attention {f.attention:,} + out_proj {f.out_proj:,} "
            f"+ mlp {f.mlp:,} + logits {f.logits:,})",
            f"tokens/step: {self.tokens_per_step:,}; peak for MFU: {cfg.peak_tflops():g} TFLOP/s per GPU",
        ]
        return "\n".join(lines)


def make_plan(cfg: TrainConfig, world_size: int, vocab_size: int | None = None) -> Plan:
    """Lay ``cfg`` out on ``world_size`` ranks (``ConfigError`` if it does not fit) and count its cost."""
    parallelism = resolve_parallelism(cfg, world_size, vocab_size)
    arch = cfg.architecture()
    if vocab_size is not None:
        arch = dataclasses.replace(arch, vocab_size=vocab_size)
    return Plan(
        parallelism=parallelism,
        arch=arch,
        parameters=parameter_count(arch, parallelism.padded_vocab_size),
        flops=flops_per_token(arch, cfg.model.seq_length, parallelism.padded_vocab_size),
        tokens_per_step=cfg.train.global_batch_size * cfg.model.seq_length,
    )


def _human(n: int) -> str:
    return f"{n / 1e9:.2f} B" if n >= 1e9 else f"{n / 1e6:.2f} M"

"""The ``mmed finetune --dry-run`` plan: resolved config, data and step count (when given), layout, parameters."""

from __future__ import annotations

from pathlib import Path

import yaml

from megatron_mmed.common.config import to_dict
from megatron_mmed.finetune.config import FinetuneConfig, LoraConfig
from megatron_mmed.models.internlm2 import ModelPreset


def lora_parameter_count(arch: ModelPreset, lora: LoraConfig) -> int:
    """Trainable adapter parameters: per target part ``A`` [rank, in] and ``B`` [out, rank], every layer."""
    h, kv, ffn, r = arch.hidden_size, arch.num_query_groups * arch.head_dim, arch.ffn_hidden_size, lora.rank
    per_target = {
        "qkv": 3 * r * h + r * (h + 2 * kv),  # q, k, v: one A each over the hidden size
        "proj": r * h + h * r,
        "fc1": 2 * r * h + r * 2 * ffn,  # gate, up
        "fc2": r * ffn + h * r,
    }
    return arch.num_layers * sum(per_target[t] for t in lora.targets)


def describe_finetune(cfg: FinetuneConfig, world_size: int | None = None) -> str:
    """What a fine-tuning run will do, from the config (and the data, when ``data.train`` and ``data.tokenizer``
    are set: its summary and the exact step count)."""
    from megatron_mmed.training.config import world_size_from_env
    from megatron_mmed.training.plan import make_plan

    lines = ["# resolved config", yaml.safe_dump(to_dict(cfg), sort_keys=False).rstrip(), "# plan"]
    total, vocab = cfg.train.steps, cfg.model.vocab_size
    if cfg.data.train and cfg.data.tokenizer:
        from megatron_mmed.finetune.data import load_sft_data

        data = load_sft_data(cfg.data)
        total = cfg.train.total_steps(len(data.examples))
        vocab = vocab or data.vocab_size
        lines.append(f"data: {data.report.summary()}")
    else:
        lines.append("data: not read (set data.train and data.tokenizer to count examples and steps)")
    vocab = _init_vocab(cfg) or vocab
    world = world_size_from_env(cfg.train_config(total or 2), world_size)
    tc = cfg.train_config(total or 2, world)
    plan = make_plan(tc, world, vocab)
    arch = plan.arch
    t = cfg.train
    if total is None:
        lines.append(f"steps: {t.epochs} epoch(s) x ceil(examples / {t.global_batch_size})")
    else:
        how = f"{t.epochs} epoch(s) of {t.global_batch_size} examples a step" if t.epochs else "train.steps"
        lines.append(f"steps: {total} ({how}); warmup {tc.schedule.warmup_steps}, {tc.schedule.decay_style}")
    lines += [
        f"model: {arch.name} ({arch.source})",
        f"  layers={arch.num_layers} hidden={arch.hidden_size} heads={arch.num_attention_heads} "
        f"kv_heads={arch.num_query_groups} ffn={arch.ffn_hidden_size} vocab={arch.vocab_size} "
        f"(padded {plan.parallelism.padded_vocab_size})",
        f"parallel: TP={plan.parallelism.tp} PP={plan.parallelism.pp} DP={plan.parallelism.dp} on {world} rank(s); "
        f"rows of {cfg.model.seq_length} positions, {t.micro_batch_size} a micro-batch, "
        f"{'packed' if cfg.data.pack else 'one example a row'}",
        f"parameters: {plan.parameters:,}; trainable: "
        + (
            f"{lora_parameter_count(arch, cfg.lora):,} (LoRA rank {cfg.lora.rank} on {','.join(cfg.lora.targets)})"
            if cfg.peft == "lora"
            else "all"
        ),
    ]
    return "\n".join(lines)


def _init_vocab(cfg: FinetuneConfig) -> int | None:
    """The vocabulary of ``checkpoint.init_from`` (its ``model_config.yaml``), when it can be read."""
    if cfg.model.vocab_size or not cfg.checkpoint.init_from or not Path(cfg.checkpoint.init_from).is_dir():
        return None
    from megatron_mmed.models.weights import resolve_weights_dir
    from megatron_mmed.training.architecture import saved_model_of

    saved = saved_model_of(resolve_weights_dir(cfg.checkpoint.init_from))
    return saved.preset.vocab_size if saved is not None else None

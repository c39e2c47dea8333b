"""``mmed train``: InternLM2 (continued) pretraining on megatron-core; ``--dry-run`` prints the plan."""

from __future__ import annotations

import argparse

HELP = "train an InternLM2 preset on tokenized data (megatron-core; TP/PP/DP; CPU over gloo or GPUs)"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", required=True, help="training YAML (see configs/train/)")
    parser.add_argument("overrides", nargs="*", help="dot-list overrides, e.g. train.steps=40 parallel.tp=2")
    parser.add_argument(
        "--dry-run", action="store_true", help="print resolved config, layout, params and FLOPs, then exit"
    )
    parser.add_argument(
        "--world-size",
        type=int,
        default=None,
        help="ranks to plan for (default: WORLD_SIZE or parallel.world_size)",
    )


def run(args: argparse.Namespace) -> int:
    from megatron_mmed.common.config import load_config
    from megatron_mmed.training.config import TrainConfig, world_size_from_env
    from megatron_mmed.training.plan import make_plan

    cfg = load_config(TrainConfig, args.config, args.overrides)
    world_size = world_size_from_env(cfg, args.world_size)
    if args.dry_run:
        from pathlib import Path

        from megatron_mmed.training.data import blend_vocab_size

        vocab = cfg.model.vocab_size
        if vocab is None and cfg.data.blend and Path(cfg.data.blend).is_file():
            vocab = blend_vocab_size(cfg.data.blend)
        print(make_plan(cfg, world_size, vocab).describe(cfg))
        return 0
    from megatron_mmed.training.loop import train

    train(cfg)
    return 0

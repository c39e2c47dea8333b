"""``mmed train``: InternLM2 (continued) pretraining on megatron-core; ``--dry-run`` prints the plan."""

from __future__ import annotations

import argparse

HELP = "train an InternLM2 preset on tokenized data (megatron-core; TP/PP/DP; CPU over gloo or GPUs)"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from megatron_mmed.training.launch import ENV_KNOBS

    knobs = ", ".join(f"{'/'.join(names)}->{key}" for key, names in ENV_KNOBS.items())
    parser.add_argument("--config", required=True, help="training YAML (see configs/train/)")
    parser.add_argument("overrides", nargs="*", help="dot-list overrides, e.g. train.steps=40 parallel.tp=2")
    parser.add_argument(
        "--dry-run",
        action="store_true",
        help="print where each value comes from, the resolved config, layout, params and FLOPs, then exit",
    )
    parser.add_argument(
        "--world-size",
        type=int,
        default=None,
        help="ranks to plan for (default: WORLD_SIZE, parallel.world_size, or launch nodes x tasks per node)",
    )
    parser.add_argument(
        "--from-env",
        action="store_true",
        help="apply the launch knobs from the environment before the overrides, as launch/pretrain.sh does "
        f"(checkpoint.dir defaults to runs/<job name>): {knobs}",
    )
    parser.add_argument(
        "--launch-values",
        action="store_true",
        help="print the resolved job size, save dir and training arguments as key=value lines for "
        "launch/pretrain.sh, then exit",
    )


def run(args: argparse.Namespace) -> int:
    import os

    from megatron_mmed.training.config import world_size_from_env
    from megatron_mmed.training.launch import resolve
    from megatron_mmed.training.plan import make_plan

    resolved = resolve(args.config, args.overrides, os.environ if args.from_env else None)
    cfg = resolved.config
    if args.launch_values:
        print(resolved.shell_values())
        return 0
    world_size = world_size_from_env(cfg, args.world_size)
    if args.dry_run:
        from pathlib import Path

        from megatron_mmed.training.data import blend_vocab_size

        vocab = cfg.model.vocab_size
        if vocab is None and cfg.data.blend and Path(cfg.data.blend).is_file():
            vocab = blend_vocab_size(cfg.data.blend)
        print(resolved.describe_sources())
        print(make_plan(cfg, world_size, vocab).describe(cfg))
        return 0
    from megatron_mmed.training.loop import train

    train(cfg)
    return 0

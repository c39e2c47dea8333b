"""``mmed finetune``: MMedBench fine-tuning (full or LoRA) on megatron-core; ``--dry-run`` prints the plan."""

from __future__ import annotations

import argparse

HELP = (
    "fine-tune a converted or pretrained model on MMedBench Train, full or LoRA (megatron-core, same Trainer)"
)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from megatron_mmed.training.launch import FINETUNE_ENV_KNOBS

    knobs = ", ".join(f"{'/'.join(names)}->{key}" for key, names in FINETUNE_ENV_KNOBS.items())
    parser.add_argument("--config", required=True, help="fine-tuning YAML (see configs/finetune/)")
    parser.add_argument(
        "overrides",
        nargs="*",
        help="dot-list overrides, e.g. data.train=MMedBench/ checkpoint.init_from=INIT peft=lora lora.rank=8",
    )
    parser.add_argument(
        "--dry-run",
        action="store_true",
        help="print where each value comes from, the resolved config, the data (when given), steps and layout",
    )
    parser.add_argument(
        "--world-size", type=int, default=None, help="ranks to plan for (default: as mmed train)"
    )
    parser.add_argument(
        "--from-env",
        action="store_true",
        help=f"apply the launch knobs from the environment before the overrides, as the launch scripts do: {knobs}",
    )
    parser.add_argument(
        "--launch-values",
        action="store_true",
        help="print the resolved job size, save dir and arguments as key=value lines for launch/pretrain.sh",
    )


def run(args: argparse.Namespace) -> int:
    import os

    from megatron_mmed.training.launch import resolve

    resolved = resolve(args.config, args.overrides, os.environ if args.from_env else None, command="finetune")
    if args.launch_values:
        print(resolved.shell_values())
        return 0
    if args.dry_run:
        from megatron_mmed.finetune.plan import describe_finetune

        print(resolved.describe_sources())
        print(describe_finetune(resolved.config, args.world_size))
        return 0
    from megatron_mmed.finetune.run import finetune

    finetune(resolved.config)
    return 0

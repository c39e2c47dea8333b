"""``mmed dedup``: exact + MinHash near-duplicate removal within each language (prep layout in and out)."""

from __future__ import annotations

import argparse

from megatron_mmed.commands.stage_args import STAGE_INPUT, add_input_output, add_run_arguments

HELP = "exact + MinHash near-duplicate removal per language (IN/kept -> OUT/kept, OUT/rejected)"


def add_arguments(p: argparse.ArgumentParser) -> None:
    from preprocessing.dedup.config import SUBSTAGES

    add_input_output(p, STAGE_INPUT)
    p.add_argument("--threshold", type=float, help="estimated Jaccard for near duplicates (default 0.6)")
    p.add_argument(
        "--stage", choices=("all", *SUBSTAGES), default="all", help="run one stage (slurm arrays) or all"
    )
    add_run_arguments(p, "DedupConfig", "dedup", "num_perm=256", array=True)


def run(args: argparse.Namespace) -> int:
    from megatron_mmed.commands.stage_args import rank_world, stage_config
    from preprocessing.dedup import DedupConfig, run_dedup
    from preprocessing.dedup.report import summary

    cfg = stage_config(DedupConfig, "dedup", args, threshold=args.threshold)
    rank, world = rank_world(args)
    result = run_dedup(
        args.input,
        args.output,
        cfg,
        stage=args.stage,
        rank=rank,
        world_size=world,
        show_progress=not args.no_progress,
    )
    if result.report is not None:
        print(summary(result.report, result.seconds))
    else:
        state = "output complete" if result.complete else "other tasks still to run"
        print(f"dedup: stage {args.stage} done for rank {rank}/{world} ({state}); tasks run: {result.ran}")
    return 0

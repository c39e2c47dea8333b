"""``mmed dedup``: exact + MinHash near-duplicate removal within each language (prep layout in and out)."""

from __future__ import annotations

import argparse

HELP = "exact + MinHash near-duplicate removal per language (IN/kept -> OUT/kept, OUT/rejected)"

_STAGES = ("all", "signatures", "buckets", "clusters", "filter")


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--input", required=True, metavar="DIR", help="a prep/dedup output folder (DIR/kept/<lang>/)"
    )
    p.add_argument("--output", required=True, metavar="DIR", help="output folder (rerun to resume)")
    p.add_argument("--threshold", type=float, help="estimated Jaccard for near duplicates (default 0.6)")
    p.add_argument(
        "--workers", type=int, default=1, help="worker processes (output is the same for any number)"
    )
    p.add_argument("--stage", choices=_STAGES, default="all", help="run one stage (slurm arrays) or all")
    p.add_argument("--rank", type=int, help="this task's index (default: SLURM_ARRAY_TASK_ID, else 0)")
    p.add_argument("--world-size", type=int, help="number of tasks (default: SLURM_ARRAY_TASK_COUNT, else 1)")
    p.add_argument(
        "--config", metavar="YAML", help="a DedupConfig YAML, or a pipeline recipe (its dedup: section)"
    )
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.add_argument("overrides", nargs="*", metavar="key=value", help="config overrides, e.g. num_perm=256")


def run(args: argparse.Namespace) -> int:
    from megatron_mmed.common.config import load_config
    from megatron_mmed.common.slurm import array_rank_world
    from preprocessing.dedup import DedupConfig, run_dedup
    from preprocessing.dedup.report import summary

    overrides = list(args.overrides)
    if args.threshold is not None:
        overrides.append(f"threshold={args.threshold}")
    cfg = load_config(DedupConfig, args.config, overrides, section="dedup")
    rank, world = array_rank_world(args.rank, args.world_size)
    result = run_dedup(
        args.input,
        args.output,
        cfg,
        stage=args.stage,
        rank=rank,
        world_size=world,
        workers=args.workers,
        show_progress=not args.no_progress,
    )
    if result.report is not None:
        print(summary(result.report, result.seconds))
    else:
        state = "output complete" if result.complete else "other tasks still to run"
        print(f"dedup: stage {args.stage} done for rank {rank}/{world} ({state}); tasks run: {result.ran}")
    return 0

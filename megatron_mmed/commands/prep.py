"""``mmed prep``: raw multilingual text -> clean, language-labelled, medical-only documents."""

from __future__ import annotations

import argparse

HELP = "ingest, clean, language ID, medical and quality filters (raw text -> OUT/kept, OUT/rejected)"


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--input",
        nargs="+",
        required=True,
        metavar="PATH",
        help="files or folders (.jsonl[.gz|.zst], .parquet, .txt, .zip of .txt)",
    )
    p.add_argument("--output", required=True, metavar="DIR", help="output folder (rerun to resume)")
    p.add_argument("--preset", choices=["default", "mmedc"], help="medical filter preset (default: default)")
    p.add_argument("--keywords", metavar="FILE", help="keyword lists JSON for --preset mmedc")
    p.add_argument("--workers", type=int, help="worker processes (output is the same for any number)")
    p.add_argument(
        "--config", metavar="YAML", help="a PrepConfig YAML, or a pipeline recipe (its prep: section)"
    )
    p.add_argument("--rank", type=int, help="this task's index (default: SLURM_ARRAY_TASK_ID, else 0)")
    p.add_argument("--world-size", type=int, help="number of tasks (default: SLURM_ARRAY_TASK_COUNT, else 1)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.add_argument(
        "overrides",
        nargs="*",
        metavar="key=value",
        help="config overrides, e.g. 'quality.disabled=[min_length]' langid.min_confidence=0.7",
    )


def config_from_args(args: argparse.Namespace):
    from megatron_mmed.common.config import load_config
    from preprocessing.prep import PrepConfig

    overrides = list(args.overrides)
    if args.preset:
        overrides.append(f"medical.preset={args.preset}")
    if args.keywords:
        overrides.append(f"medical.keywords_file={args.keywords}")
    if args.workers is not None:
        overrides.append(f"workers={args.workers}")
    return load_config(PrepConfig, args.config, overrides, section="prep")


def run(args: argparse.Namespace) -> int:
    from megatron_mmed.common.progress import console
    from megatron_mmed.common.slurm import array_rank_world
    from preprocessing.prep import run_prep
    from preprocessing.prep_report import print_prep_summary

    cfg = config_from_args(args)
    rank, world = array_rank_world(args.rank, args.world_size)
    result = run_prep(
        args.input, args.output, cfg, show_progress=not args.no_progress, rank=rank, world_size=world
    )
    if result.report:
        print_prep_summary(result)
    else:
        console.print(
            f"mmed prep: task {rank}/{world} done; the report is written by the last task to finish"
        )
    return 0

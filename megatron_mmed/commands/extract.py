"""``mmed extract``: textbook PDFs (with OCR for scans), HTML pages and WARC crawls -> JSONL for ``mmed prep``."""

from __future__ import annotations

import argparse

HELP = "PDF books (text layer or OCR), HTML pages, WARC crawls -> OUT/docs/*.jsonl.zst for mmed prep"


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--input",
        nargs="+",
        required=True,
        metavar="PATH",
        help="files or folders (.pdf, .html/.htm, .warc/.warc.gz, .zip of these)",
    )
    p.add_argument("--output", required=True, metavar="DIR", help="output folder (rerun to resume)")
    p.add_argument("--workers", type=int, help="worker processes (output is the same for any number)")
    p.add_argument(
        "--ocr",
        choices=["auto", "always", "never"],
        help="OCR scanned pages (auto, the default), every page, or none",
    )
    p.add_argument(
        "--lang-hint", metavar="xx", help="language of the inputs (en zh ja fr ru es): picks the OCR pack"
    )
    p.add_argument(
        "--config", metavar="YAML", help="an ExtractConfig YAML, or a pipeline recipe (its extract: section)"
    )
    p.add_argument("--rank", type=int, help="this task's index (default: SLURM_ARRAY_TASK_ID, else 0)")
    p.add_argument("--world-size", type=int, help="number of tasks (default: SLURM_ARRAY_TASK_COUNT, else 1)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.add_argument(
        "overrides", nargs="*", metavar="key=value", help="config overrides, e.g. tesseract.dpi=200"
    )


def config_from_args(args: argparse.Namespace):
    from megatron_mmed.common.config import load_config
    from preprocessing.extract import ExtractConfig

    overrides = list(args.overrides)
    if args.workers is not None:
        overrides.append(f"workers={args.workers}")
    if args.ocr is not None:
        overrides.append(f"ocr={args.ocr}")
    if args.lang_hint is not None:
        overrides.append(f"lang_hint={args.lang_hint}")
    return load_config(ExtractConfig, args.config, overrides, section="extract")


def run(args: argparse.Namespace) -> int:
    from megatron_mmed.common.progress import console
    from megatron_mmed.common.slurm import array_rank_world
    from preprocessing.extract import run_extract
    from preprocessing.extract.report import print_extract_summary

    cfg = config_from_args(args)
    rank, world = array_rank_world(args.rank, args.world_size)
    result = run_extract(
        args.input, args.output, cfg, show_progress=not args.no_progress, rank=rank, world_size=world
    )
    if result.report:
        print_extract_summary(result)
    else:
        console.print(
            f"mmed extract: task {rank}/{world} done; the report is written by the last task to finish"
        )
    return 0

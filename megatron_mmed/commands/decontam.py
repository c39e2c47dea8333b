"""``mmed decontam``: remove training documents that contain MMedBench test items (n-gram overlap)."""

from __future__ import annotations

import argparse

from megatron_mmed.commands.stage_args import STAGE_INPUT, add_input_output, add_run_arguments

HELP = "drop documents that contain benchmark test questions (n-gram overlap; IN/kept -> OUT/kept)"


def add_arguments(p: argparse.ArgumentParser) -> None:
    add_input_output(p, STAGE_INPUT)
    p.add_argument(
        "--benchmark",
        required=True,
        metavar="QA_DIR",
        help="folder of MMedBench-schema <Language>.jsonl files (or MMedBench's QA_DIR/Test/)",
    )
    add_run_arguments(p, "DecontamConfig", "decontam", "char.n=25 min_fraction=0.3")


def run(args: argparse.Namespace) -> int:
    from megatron_mmed.commands.stage_args import stage_config
    from megatron_mmed.common.progress import console
    from preprocessing.decontam import DecontamConfig, run_decontam

    cfg = stage_config(DecontamConfig, "decontam", args)
    res = run_decontam(args.input, args.benchmark, args.output, cfg, show_progress=not args.no_progress)
    t = res.stats.to_dict()["totals"]
    removed = sum(res.contaminated_per_language.values())
    per_lang = ", ".join(f"{k} {v}" for k, v in res.contaminated_per_language.items() if v) or "none"
    console.print(
        f"[bold]mmed decontam[/]: {t['docs_in']:,} documents in, {t['docs_out']:,} kept, "
        f"{removed:,} contaminated ({per_lang}); {len(res.matched_items)} benchmark items found; "
        f"{res.files_skipped}/{res.files_total} files already done; {res.seconds:.1f} s\n"
        f"  output: {res.out_dir}  (report.md, rejected/ lists every removal with its matching items)"
    )
    return 0

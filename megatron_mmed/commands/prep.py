"""``mmed prep``: raw multilingual text -> clean, language-labelled, medical-only documents."""

from __future__ import annotations

import argparse

from megatron_mmed.commands.stage_args import add_input_output, add_run_arguments

HELP = "ingest, clean, language ID, medical and quality filters (raw text -> OUT/kept, OUT/rejected)"


def add_arguments(p: argparse.ArgumentParser) -> None:
    add_input_output(p, "files or folders (.jsonl[.gz|.zst], .parquet, .txt, .zip of .txt)", many=True)
    p.add_argument("--preset", choices=["default", "mmedc"], help="medical filter preset (default: default)")
    p.add_argument("--keywords", metavar="FILE", help="keyword lists JSON for --preset mmedc")
    add_run_arguments(
        p,
        "PrepConfig",
        "prep",
        "'quality.disabled=[min_length]' langid.min_confidence=0.7",
        array=True,
    )


def run(args: argparse.Namespace) -> int:
    from megatron_mmed.commands.stage_args import run_array_stage, stage_config
    from preprocessing.prep import PrepConfig, run_prep
    from preprocessing.prep_report import print_prep_summary

    flags = {"medical.preset": args.preset, "medical.keywords_file": args.keywords}
    cfg = stage_config(PrepConfig, "prep", args, **flags)
    return run_array_stage("prep", run_prep, print_prep_summary, args, cfg)

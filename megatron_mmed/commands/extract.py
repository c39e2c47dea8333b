"""``mmed extract``: textbook PDFs (with OCR for scans), HTML pages and WARC crawls -> JSONL for ``mmed prep``."""

from __future__ import annotations

import argparse

from megatron_mmed.commands.stage_args import add_input_output, add_run_arguments

HELP = "PDF books (text layer or OCR), HTML pages, WARC crawls -> OUT/docs/*.jsonl.zst for mmed prep"


def add_arguments(p: argparse.ArgumentParser) -> None:
    add_input_output(p, "files or folders (.pdf, .html/.htm, .warc/.warc.gz, .zip of these)", many=True)
    p.add_argument(
        "--ocr",
        choices=["auto", "always", "never"],
        help="OCR scanned pages (auto, the default), every page, or none",
    )
    p.add_argument(
        "--lang-hint", metavar="xx", help="language of the inputs (en zh ja fr ru es): picks the OCR pack"
    )
    add_run_arguments(p, "ExtractConfig", "extract", "tesseract.dpi=200", array=True)


def run(args: argparse.Namespace) -> int:
    from megatron_mmed.commands.stage_args import run_array_stage, stage_config
    from preprocessing.extract import ExtractConfig, run_extract
    from preprocessing.extract.report import print_extract_summary

    cfg = stage_config(ExtractConfig, "extract", args, ocr=args.ocr, lang_hint=args.lang_hint)
    return run_array_stage("extract", run_extract, print_extract_summary, args, cfg)

"""``mmed tokenize``: kept documents -> Megatron indexed datasets per language + ``blend.json``."""

from __future__ import annotations

import argparse

from megatron_mmed.commands.stage_args import STAGE_INPUT, add_input_output, add_run_arguments

HELP = "tokenize kept documents into OUT/<lang>_text_document.{bin,idx} and OUT/blend.json"


def add_arguments(p: argparse.ArgumentParser) -> None:
    add_input_output(p, STAGE_INPUT)
    p.add_argument(
        "--tokenizer",
        required=True,
        metavar="PATH",
        help="SentencePiece *.model or Hugging Face tokenizer.json (or a folder holding one)",
    )
    p.add_argument("--eod-id", type=int, help="end-of-document id (default: the tokenizer's EOS)")
    add_run_arguments(p, "TokenizeConfig", "tokenize", "blend.temperature=3 blend.weights.ru=2 add_bos=true")


def run(args: argparse.Namespace) -> int:
    from megatron_mmed.commands.stage_args import stage_config
    from megatron_mmed.common.progress import console
    from preprocessing.tokenization import TokenizeConfig, run_tokenize

    cfg = stage_config(TokenizeConfig, "tokenize", args, eod_id=args.eod_id)
    res = run_tokenize(args.input, args.tokenizer, args.output, cfg, show_progress=not args.no_progress)
    drops = res.stats.to_dict()["totals"]["drops"]
    console.print(
        f"[bold]mmed tokenize[/]: {sum(c['documents'] for c in res.counts.values()):,} documents, "
        f"{sum(c['tokens'] for c in res.counts.values()):,} tokens; rejected: "
        f"{', '.join(f'{r} {c}' for r, c in drops.items()) or 'none'}; "
        f"{res.files_skipped}/{res.files_total} files already done; {res.seconds:.1f} s"
    )
    for d in res.blend["datasets"]:
        console.print(
            f"  {d['lang']}: {d['documents']:>9,} docs {d['tokens']:>13,} tokens  weight {d['weight']:.4f}"
        )
    console.print(f"  output: {res.out_dir}  (blend.json, report.md)")
    return 0

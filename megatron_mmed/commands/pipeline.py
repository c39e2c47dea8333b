"""``mmed pipeline``: the whole preprocessing chain from one recipe (configs/prep/*.yaml)."""

from __future__ import annotations

import argparse

HELP = (
    "[extract ->] prep -> dedup -> decontam -> tokenize from one config (configs/prep/<name>.yaml), resumable"
)


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--config", required=True, metavar="YAML", help="a pipeline recipe, e.g. configs/prep/mmedc.yaml"
    )
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    p.add_argument(
        "overrides",
        nargs="*",
        metavar="key=value",
        help="config overrides, e.g. output=/data/mmedc 'inputs=[/raw/en,/raw/zh]' workers=16",
    )


def run(args: argparse.Namespace) -> int:
    from megatron_mmed.common.config import load_config
    from megatron_mmed.common.progress import console
    from preprocessing.pipeline import PipelineConfig, run_pipeline

    cfg = load_config(PipelineConfig, args.config, args.overrides)
    summary = run_pipeline(cfg, show_progress=not args.no_progress)
    for stage, info in summary["stages"].items():
        console.print(
            f"{stage:9s} docs {info.get('docs_in', 0):>9,} -> {info.get('docs_out', 0):>9,}  "
            f"({info['seconds']:.1f} s)  {summary['dirs'][stage]}"
        )
    return 0

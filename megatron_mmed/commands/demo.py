"""``mmed demo``: the whole pipeline on the embedded sample (what `make demo` runs)."""

from __future__ import annotations

import argparse

HELP = "run every stage on the embedded sample (examples/sample) on a CPU"


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--output", default="demo_out", metavar="DIR", help="where the demo writes (default demo_out)"
    )
    p.add_argument(
        "--sample", metavar="DIR", help="sample folder with raw/ and qa/ (default examples/sample)"
    )
    p.add_argument("--no-progress", action="store_true", help="no progress bars")


def run(args: argparse.Namespace) -> int:
    from megatron_mmed.demo import SAMPLE, run_demo

    run_demo(args.output, args.sample or SAMPLE, show_progress=not args.no_progress)
    return 0

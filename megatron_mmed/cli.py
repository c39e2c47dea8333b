"""The ``mmed`` console entry point: one subcommand per pipeline arrow, each a thin wrapper.

Every command module in ``megatron_mmed.commands`` exposes ``HELP``, ``add_arguments(parser)`` and
``run(args) -> int``; heavy imports (torch, megatron) happen inside ``run`` so ``mmed --help`` is fast.
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys
import warnings

from megatron_mmed.common.config import ConfigError
from megatron_mmed.common.errors import UserError

#: subcommand -> module (in pipeline order).
COMMANDS: dict[str, str] = {
    "extract": "megatron_mmed.commands.extract",
    "prep": "megatron_mmed.commands.prep",
    "dedup": "megatron_mmed.commands.dedup",
    "decontam": "megatron_mmed.commands.decontam",
    "tokenize": "megatron_mmed.commands.tokenize",
    "pipeline": "megatron_mmed.commands.pipeline",
    "train": "megatron_mmed.commands.train",
    "finetune": "megatron_mmed.commands.finetune",
    "convert": "megatron_mmed.commands.convert",
    "eval": "megatron_mmed.commands.eval",
    "demo": "megatron_mmed.commands.demo",
}


#: Third-party warnings with nothing for a user of this repo to act on: Apex is deliberately not a dependency
#: (README), megatron-core/torch deprecations inside their own code paths. MMED_ALL_WARNINGS=1 shows them.
QUIET_WARNINGS: tuple[str, ...] = (
    r"Apex is not installed",
    r"Transformer Engine and Apex are not installed",
    r"full scope is deprecated",
    r"torch\.distributed is disabled, unavailable or uninitialized",
    r"Please use DTensor instead",
    r"`load_state_dict` is deprecated",
)


def _quiet_known_warnings() -> None:
    if os.environ.get("MMED_ALL_WARNINGS") == "1":
        return
    for pattern in QUIET_WARNINGS:
        warnings.filterwarnings("ignore", message=pattern)


def build_parser(only: str | None = None) -> argparse.ArgumentParser:
    """The ``mmed`` parser; ``only``: just that subcommand, so e.g. ``mmed train`` imports no other stage's
    modules (training then runs where preprocessing-only packages are not installed, as on a bare GPU node)."""
    parser = argparse.ArgumentParser(
        prog="mmed",
        description="megatron-mmed: build multilingual medical LMs (MMedC -> MMedLM -> MMedBench)",
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True
    for name, modname in COMMANDS.items():
        if only is not None and name != only:
            continue
        try:
            mod = importlib.import_module(modname)
        except ModuleNotFoundError as e:
            if e.name == modname:  # command not built yet
                continue
            raise
        p = sub.add_parser(name, help=mod.HELP, description=mod.HELP)
        mod.add_arguments(p)
        p.set_defaults(_run=mod.run)
    return parser


def main(argv: list[str] | None = None) -> int:
    _quiet_known_warnings()
    argv = sys.argv[1:] if argv is None else argv
    parser = build_parser(argv[0] if argv and argv[0] in COMMANDS else None)
    args = parser.parse_args(argv)
    try:
        return int(args._run(args) or 0)
    except (UserError, ConfigError) as e:
        print(f"mmed {args.command}: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"mmed {args.command}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())

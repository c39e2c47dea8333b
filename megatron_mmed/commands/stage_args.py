"""The arguments every preprocessing stage command shares (extract, prep, dedup, decontam, tokenize), and how
they become the stage's config: one place, so the five commands cannot drift apart."""

from __future__ import annotations

import argparse
from collections.abc import Callable
from typing import Any, TypeVar

T = TypeVar("T")

STAGE_INPUT = "a prep/dedup/decontam output folder (DIR/kept/<lang>/)"


def add_input_output(p: argparse.ArgumentParser, input_help: str, many: bool = False) -> None:
    """``--input`` (one folder, or with ``many`` files and folders) and ``--output``."""
    metavar = "PATH" if many else "DIR"
    p.add_argument("--input", nargs="+" if many else None, required=True, metavar=metavar, help=input_help)
    p.add_argument("--output", required=True, metavar="DIR", help="output folder (rerun to resume)")


def add_run_arguments(
    p: argparse.ArgumentParser, config: str, section: str, example: str, array: bool = False
) -> None:
    """``--workers``, ``--config``, with ``array`` ``--rank/--world-size``, ``--no-progress`` and the dot-list
    overrides; ``config`` names the stage's config class, ``section`` its key in a pipeline recipe."""
    p.add_argument("--workers", type=int, help="worker processes (the output is the same for any number)")
    p.add_argument(
        "--config", metavar="YAML", help=f"a {config} YAML, or a pipeline recipe (its {section}: section)"
    )
    if array:
        p.add_argument("--rank", type=int, help="this task's index (default: SLURM_ARRAY_TASK_ID, else 0)")
        p.add_argument(
            "--world-size", type=int, help="number of tasks (default: SLURM_ARRAY_TASK_COUNT, else 1)"
        )
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.add_argument("overrides", nargs="*", metavar="key=value", help=f"config overrides, e.g. {example}")


def stage_config(cls: type[T], section: str, args: argparse.Namespace, **flags: Any) -> T:
    """The stage config from ``--config``, the dot-list overrides and the flags given (``flags``: config key
    -> flag value, None when not given; ``--workers`` included), which win over the overrides."""
    flags = {**flags, "workers": args.workers}
    overrides = list(args.overrides) + [f"{k}={v}" for k, v in flags.items() if v is not None]
    from megatron_mmed.common.config import load_config

    return load_config(cls, args.config, overrides, section=section)


def rank_world(args: argparse.Namespace) -> tuple[int, int]:
    """This array task's ``(rank, world_size)`` from ``--rank/--world-size`` or the slurm environment."""
    from megatron_mmed.common.slurm import array_rank_world

    return array_rank_world(args.rank, args.world_size)


def run_array_stage(
    command: str, run: Callable[..., Any], summary: Callable[[Any], None], args: argparse.Namespace, cfg: Any
) -> int:
    """Run a stage over raw inputs (prep, extract) as this array task: ``summary`` prints its result when
    this task wrote the report, else one line says the last task to finish will."""
    from megatron_mmed.common.progress import console

    rank, world = rank_world(args)
    result = run(
        args.input, args.output, cfg, show_progress=not args.no_progress, rank=rank, world_size=world
    )
    if result.report:
        summary(result)
    else:
        console.print(
            f"mmed {command}: task {rank}/{world} done; the report is written by the last task to finish"
        )
    return 0

"""The stage protocol: how every preprocessing stage (extract, prep, dedup and its sub-stages, decontam,
tokenize) opens its output folder, so that each one refuses, locks, resumes and records itself the same way.

1. An output folder equal to or inside an input folder is refused; the output is created (or a one-line error).
2. The folder lock is held for the whole run (shared by the ranks of a slurm array, see ``common/lock``).
3. ``same_run``: a folder made with other settings or from another input is refused (``StaleOutputError``
   naming what differs); only then is ``config.yaml`` saved, so a refused run leaves the folder as it was.
4. The stage runs this rank's unfinished tasks with ``common.tasks.resume_tasks``; whoever finds every task
   done writes the report.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Protocol

from megatron_mmed.common.config import save_config, to_dict
from megatron_mmed.common.io import (
    DoneMarkers,
    ensure_writable_dir,
    output_errors,
    refuse_output_inside,
)
from megatron_mmed.common.lock import folder_lock
from megatron_mmed.common.tasks import TaskRun, resume_tasks

#: fields of a stage config that never change its output, unless the config names its own
#: (``OUTPUT_NEUTRAL``, a class variable): a run may resume with other values of these
OUTPUT_NEUTRAL: frozenset[str] = frozenset({"workers"})


def fingerprint(cfg: Any, input: dict[str, Any], **data: Any) -> dict[str, Any]:
    """What a folder records of the run that made it: the settings that change the output, a digest of the
    input (``files_digest``) and any other data the stage reads (a benchmark, a tokenizer)."""
    neutral = getattr(cfg, "OUTPUT_NEUTRAL", OUTPUT_NEUTRAL)
    settings = {k: v for k, v in to_dict(cfg).items() if k not in neutral}
    return {"settings": settings, "input": input, **data}


def same_run(
    folder: str | Path, stage: str, cfg: Any, input: dict[str, Any], what: str = "", **data: Any
) -> None:
    """Refuse ``folder`` when another run of ``stage`` made it (the one "same run" check of every stage):
    the first run records its ``fingerprint``, a later one must match it (``StaleOutputError`` otherwise)."""
    DoneMarkers(folder, stage).check_same_run(fingerprint(cfg, input, **data), what or f"{stage} run")


@contextmanager
def open_stage(
    stage: str,
    out_dir: str | Path,
    cfg: Any,
    *,
    reads: Iterable[str | Path],
    input: dict[str, Any],
    rank: int = 0,
    world_size: int = 1,
    **data: Any,
) -> Iterator[Path]:
    """Steps 1-3 of the protocol for ``stage`` writing ``out_dir`` from the folders ``reads`` (whose digest is
    ``input``); yields the output folder, locked, with full-disk and permission errors as one-line errors."""
    refuse_output_inside(out_dir, reads)
    out = ensure_writable_dir(out_dir)
    with folder_lock(out, f"mmed {stage}", rank, world_size), output_errors(out):
        same_run(out, stage, cfg, input, **data)
        save_config(cfg, out / "config.yaml")
        yield out


class Shard(Protocol):
    """A shard of raw inputs (prep's and extract's): its id, and a description its marker must match."""

    shard_id: str

    def describe(self) -> Any: ...


class ShardRunner(Protocol):
    """What processes shards: built once per process from the stage's config."""

    def run_shard(self, shard: Any, out_dir: Path) -> dict[str, Any]: ...


_RUNNER: ShardRunner | None = None  # in a worker process: its own runner


def _init_shard_worker(make: Callable[[Any], ShardRunner], cfg: Any) -> None:
    global _RUNNER
    _RUNNER = make(cfg)


def _run_shard(task: tuple[Shard, str]) -> tuple[str, dict[str, Any]]:
    shard, out = task
    assert _RUNNER is not None
    return shard.shard_id, _RUNNER.run_shard(shard, Path(out))


def resume_shards(
    stage: str,
    shards: Sequence[Shard],
    out: Path,
    cfg: Any,
    local: ShardRunner,
    *,
    rank: int,
    world_size: int,
    show_progress: bool,
) -> TaskRun:
    """Step 4 for a stage over shards of raw inputs (prep, extract): this rank's shards whose marker does not
    describe the same shard run in ``local``, or in ``cfg.workers`` spawned processes that each build their
    own ``type(local)(cfg)``."""
    by_id = {s.shard_id: s for s in shards}
    return resume_tasks(
        stage,
        {sid: (s, str(out)) for sid, s in by_id.items()},
        _run_shard,
        DoneMarkers(out, stage),
        rank=rank,
        world_size=world_size,
        valid=lambda sid, marker: marker.get("shard") == by_id[sid].describe(),
        unit="shards",
        workers=cfg.workers,
        show_progress=show_progress,
        start_method="spawn",
        initializer=_init_shard_worker,
        initargs=(type(local), cfg),
        run_here=lambda task: (task[0].shard_id, local.run_shard(task[0], out)),
    )

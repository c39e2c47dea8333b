"""Run a stage's unfinished tasks, in this process or a worker pool, marking each one done as it finishes.

``resume_tasks`` is the part of the stage protocol (``preprocessing/stage.py``) that every stage and dedup
sub-stage shares: take this rank's share of the tasks, skip those with a valid marker, run the rest with
``run_tasks``, and read back what every rank has finished.
"""

from __future__ import annotations

import ctypes
import multiprocessing as mp
import multiprocessing.pool
import os
import signal
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, TypeVar

from megatron_mmed.common.io import DoneMarkers
from megatron_mmed.common.progress import progress_bar

T = TypeVar("T")
_PR_SET_PDEATHSIG = 1


def die_with_parent(parent: int) -> None:
    """In a worker process: be killed when ``parent`` (the stage that started it) dies, even by kill -9
    (Linux ``PR_SET_PDEATHSIG``), so that no orphaned worker still writes into the folder of the rerun."""
    try:
        ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)
    except (OSError, AttributeError):  # not Linux: orphans end when their task queue closes
        return
    if os.getppid() != parent:  # the parent died before prctl took effect
        os._exit(1)


def _init_worker(parent: int, initializer: Callable[..., None] | None, initargs: tuple) -> None:
    die_with_parent(parent)
    if initializer is not None:
        initializer(*initargs)


def _start_pool(
    workers: int, start_method: str, initializer: Callable[..., None] | None, initargs: tuple
) -> mp.pool.Pool:
    return mp.get_context(start_method).Pool(workers, _init_worker, (os.getpid(), initializer, initargs))


@contextmanager
def worker_pool(
    workers: int,
    start_method: str = "fork",
    initializer: Callable[..., None] | None = None,
    initargs: tuple = (),
) -> Iterator[mp.pool.Pool | None]:
    """A pool of ``workers`` processes that several ``run_tasks`` calls share (``pool=``), so that a stage of
    several sub-stages starts its workers once; None when ``workers <= 1``. Start it before any thread."""
    pool = _start_pool(workers, start_method, initializer, initargs) if workers > 1 else None
    try:
        yield pool
    finally:
        if pool is not None:
            pool.terminate()
            pool.join()


def run_tasks(
    name: str,
    pending: Sequence[T],
    run: Callable[[T], tuple[str, dict[str, Any]]],
    markers: DoneMarkers,
    results: dict[str, Any],
    *,
    total: int,
    unit: str,
    workers: int = 1,
    start_method: str = "fork",
    initializer: Callable[..., None] | None = None,
    initargs: tuple = (),
    run_here: Callable[[T], tuple[str, dict[str, Any]]] | None = None,
    show_progress: bool = True,
    pool: mp.pool.Pool | None = None,
) -> None:
    """Run every pending task; each returns ``(shard id, marker payload)``, stored in ``results`` and written
    as the shard's completion marker as soon as it finishes (so a kill -9 loses only the tasks in flight).

    With ``workers > 1`` and more than one task, ``run`` (a module-level function, so that it pickles) runs
    in a pool started before the progress bar's thread (forking a process with threads is unsafe); else
    ``run_here`` (default ``run``) runs in this process. ``pool``: a ``worker_pool`` to use instead of
    starting one. The bar counts ``total``, of which ``total - len(pending)`` were done before.
    """
    own = None
    if workers > 1 and len(pending) > 1 and pool is None:
        own = pool = _start_pool(min(workers, len(pending)), start_method, initializer, initargs)
    elif len(pending) <= 1:
        pool = None
    try:
        with progress_bar(name, total=total, unit=unit, enabled=show_progress) as bar:
            bar.advance(total - len(pending))
            done = map(run_here or run, pending) if pool is None else pool.imap_unordered(run, pending)
            for sid, res in done:
                results[sid] = res
                markers.mark(sid, res)
                bar.advance(1)
    finally:
        if own is not None:
            own.terminate()
            own.join()


@dataclass
class TaskRun:
    """What ``resume_tasks`` found and did."""

    results: dict[str, dict[str, Any]]  # task id -> marker payload, of every finished task (all ranks)
    total: int  # tasks of the stage
    mine: int  # tasks of this rank
    skipped: int  # of this rank's, finished by an earlier run

    @property
    def complete(self) -> bool:
        """Every task of the stage (every rank's) is finished."""
        return len(self.results) == self.total


def resume_tasks(
    name: str,
    tasks: Mapping[str, T],
    run: Callable[[T], tuple[str, dict[str, Any]]],
    markers: DoneMarkers,
    *,
    rank: int = 0,
    world_size: int = 1,
    valid: Callable[[str, dict[str, Any]], bool] | None = None,
    unit: str,
    workers: int = 1,
    show_progress: bool = True,
    log: Callable[[str], None] | None = None,
    **how: Any,
) -> TaskRun:
    """Run this rank's unfinished tasks of ``tasks`` (id -> task, in a fixed order: the ``k``-th belongs to
    rank ``k % world_size``) with ``run_tasks`` (``how``: its start_method/initializer/initargs/run_here/pool).

    A task is finished when it has a marker that ``valid(id, payload)`` accepts (default: any). When every
    task of the stage is finished, the result holds all their payloads (other ranks' included), so the rank
    that finds the stage complete can write its report. ``log`` gets one line saying what is left to run.
    """
    ids = list(tasks)
    mine = ids[rank::world_size]
    results: dict[str, dict[str, Any]] = {}
    pending = []
    for tid in mine:
        done = markers.read(tid) if markers.is_done(tid) else None
        if done is not None and (valid is None or valid(tid, done)):
            results[tid] = done
        else:
            pending.append(tasks[tid])
    if log is not None:
        log(f"{name}: {len(ids)} task(s), rank {rank}/{world_size}: {len(pending)} to run")
    run_tasks(
        name,
        pending,
        run,
        markers,
        results,
        total=len(mine),
        unit=unit,
        workers=workers,
        show_progress=show_progress,
        **how,
    )
    others = [tid for tid in ids if tid not in results]
    if others and all(markers.is_done(tid) for tid in others):  # every other rank is done too
        results.update((tid, markers.read(tid)) for tid in others)
    return TaskRun(results, len(ids), len(mine), len(mine) - len(pending))

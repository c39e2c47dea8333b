"""Run a stage's unfinished tasks, in this process or a worker pool, marking each one done as it finishes."""

from __future__ import annotations

import ctypes
import multiprocessing as mp
import os
import signal
from collections.abc import Callable, Sequence
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
) -> None:
    """Run every pending task; each returns ``(shard id, marker payload)``, stored in ``results`` and written
    as the shard's completion marker as soon as it finishes (so a kill -9 loses only the tasks in flight).

    With ``workers > 1`` and more than one task, ``run`` (a module-level function, so that it pickles) runs
    in a pool started before the progress bar's thread (forking a process with threads is unsafe); else
    ``run_here`` (default ``run``) runs in this process. The bar counts ``total``, of which
    ``total - len(pending)`` were done before.
    """
    pool = None
    if workers > 1 and len(pending) > 1:
        pool = mp.get_context(start_method).Pool(
            min(workers, len(pending)), _init_worker, (os.getpid(), initializer, initargs)
        )
    try:
        with progress_bar(name, total=total, unit=unit, enabled=show_progress) as bar:
            bar.advance(total - len(pending))
            done = map(run_here or run, pending) if pool is None else pool.imap_unordered(run, pending)
            for sid, res in done:
                results[sid] = res
                markers.mark(sid, res)
                bar.advance(1)
    finally:
        if pool is not None:
            pool.terminate()
            pool.join()

"""What can break a checkpoint write from outside: signals, a killed trainer, a full disk; and writing one
without helper processes.

megatron-core 0.16 writes a torch_dist checkpoint through helper processes; :func:`writer_processes_safe`
keeps a signal to the process group or a kill -9 from breaking or orphaning them, and
:func:`storage_failure` recognises a full (or read-only) disk in the exceptions those helpers send back,
so it can be reported in one line. :func:`in_process_save_strategy` writes the same files from threads of
this process instead (no forked copy of the weights).
"""

from __future__ import annotations

import contextlib
import errno
import os
import shutil
import signal
from collections.abc import Iterator
from pathlib import Path
from typing import Any

#: files (and writer threads) of an in-process torch_dist save: twice megatron-core's default of 2 (one
#: writer's fsync wait overlaps another's copy; hf-to-mcore's save of a 1.8B model took ~6.5 s instead of
#: ~8.9 s on 2 loaded cores, 4 runs each)
SAVE_THREADS = 4

_saving = False  # read by the at-fork hook in children forked while a save is in progress
_hook_installed = False


def _writer_child_after_fork() -> None:
    """In a process forked by a save (megatron-core's per-file writers): ignore the stop signals the parent
    handles (slurm sends them to the whole process group), and die with the parent (Linux
    ``PR_SET_PDEATHSIG``), so a kill -9 of the trainer leaves no writer holding its stdout."""
    if not _saving:
        return
    for sig in (signal.SIGTERM, signal.SIGUSR1):
        with contextlib.suppress(ValueError, OSError):
            signal.signal(sig, signal.SIG_IGN)
    with contextlib.suppress(OSError, AttributeError):
        import ctypes

        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
        if os.getppid() == 1:  # the parent died before prctl took effect
            os._exit(1)


@contextlib.contextmanager
def writer_processes_safe() -> Iterator[None]:
    """Around ``dist_checkpointing.save``: no helper process a signal or a kill can break or orphan.

    megatron-core 0.16's synchronous save collects its writers' results through a ``multiprocessing``
    Manager: a server process (started once, kept for the life of the job) that a SIGTERM to the process
    group kills, failing every later save with ``BrokenPipeError``, and that survives a kill -9 of the
    trainer holding its stdout. A synchronous save writes from this process, so an in-process queue does
    the same job (set as the module's queue once; megatron-core is pinned). Its forked per-file writers
    get the at-fork hook above.
    """
    import queue

    from megatron.core.dist_checkpointing.strategies import filesystem_async

    global _saving, _hook_installed
    if not isinstance(filesystem_async._results_queue, queue.Queue):
        filesystem_async._results_queue = queue.Queue()
    if not _hook_installed and hasattr(os, "register_at_fork"):
        os.register_at_fork(after_in_child=_writer_child_after_fork)
        _hook_installed = True
    _saving = True
    try:
        yield
    finally:
        _saving = False


#: errors that mean the storage, not the program, failed: reported in one line, never as a traceback.
_STORAGE_ERRNOS = {errno.ENOSPC, errno.EDQUOT, errno.EFBIG, errno.EROFS, errno.EIO, errno.EACCES, errno.EPERM}


def storage_failure(exc: BaseException, path: str | Path | None = None) -> str | None:
    """``"No space left on device"`` when ``exc`` is a storage failure, else None.

    megatron-core's writers fail in forked processes and their exceptions reach the trainer pickled inside
    torch's ``CheckpointException`` (the errno often only in the text, or lost: torch's zip writer reports a
    full disk as "unexpected pos"); so the exception chain, its per-rank failures and their text are
    searched, and when ``path`` is given a filesystem left (nearly) full by the failed write counts too.
    """
    seen: set[int] = set()
    stack: list[Any] = [exc]
    texts = []
    while stack:
        e = stack.pop()
        if isinstance(e, tuple):  # torch's WRAPPED_EXCEPTION: (exception, traceback)
            stack.extend(x for x in e if isinstance(x, BaseException))
            continue
        if not isinstance(e, BaseException) or id(e) in seen:
            continue
        seen.add(id(e))
        if isinstance(e, OSError) and e.errno in _STORAGE_ERRNOS:
            return os.strerror(e.errno)
        texts.append(str(e))
        failures = getattr(e, "failures", None)
        if isinstance(failures, dict):
            stack.extend(failures.values())
        stack.extend(x for x in (e.__cause__, e.__context__) if x is not None)
    for code in _STORAGE_ERRNOS:
        if any(f"[Errno {code}]" in t or os.strerror(code) in t for t in texts):
            return os.strerror(code)
    if path is not None:
        with contextlib.suppress(OSError):
            usage = shutil.disk_usage(path)
            if usage.free < max(16 * 1024**2, usage.total // 1000):
                return f"{os.strerror(errno.ENOSPC)} ({usage.free} bytes free on the filesystem of {path})"
    if type(exc).__name__ == "CheckpointException":  # raised on every rank; the details only on rank 0
        return f"the checkpoint write failed on another rank ({exc})"
    return None


def in_process_save_strategy(threads: int = SAVE_THREADS):
    """megatron-core's torch_dist save strategy with its per-file writers run as threads of this process.

    megatron-core 0.16's synchronous save forks ``thread_count`` writer processes (``FileSystemWriterAsync.
    write_preloaded_data_multiproc``); each inherits every page of the parent, so a process tree holding a
    whole model counts it once more per writer (hf-to-mcore: 2.1x one model copy, summed RSS). The files,
    ``.metadata`` and ``metadata.json`` written are the same (same planner, writer and finalisation): only
    who runs ``write_preloaded_data`` changes. Writes release the GIL, so the threads overlap like processes.
    """
    from megatron.core.dist_checkpointing.strategies.torch import TorchDistSaveShardedStrategy

    class InProcessTorchDistSave(TorchDistSaveShardedStrategy):
        """``save`` plans with megatron-core, then writes each file on a thread and finalises as it would."""

        def save(self, sharded_state_dict, checkpoint_dir) -> None:
            import torch

            request = self.async_save(sharded_state_dict, checkpoint_dir)
            if request.async_fn is not None:
                transform_list, use_msc = request.async_fn.args  # partial(write_preloaded_data_multiproc, ..)
                if use_msc:
                    raise NotImplementedError("in-process torch_dist save with multi-storage client")
                _rank, buckets, results_queue = request.async_fn_args
                if request.preload_fn is not None:
                    buckets = request.preload_fn()  # device tensors staged to host, as execute_sync does
                results_queue.put(_write_buckets_on_threads(transform_list, buckets))
            torch.distributed.barrier()
            for finalize in request.finalize_fns:  # gathers the write results, writes .metadata
                finalize()

    return InProcessTorchDistSave("torch_dist", 1, thread_count=threads)


def _write_buckets_on_threads(transform_list: list, buckets: list) -> dict | Exception:
    """Run megatron-core's per-file writer for each bucket on its own thread; returns ``{index: results}``
    or the first failure, as its forked writers hand them to ``retrieve_write_results``."""
    import queue
    import threading

    from megatron.core.dist_checkpointing.strategies.filesystem_async import FileSystemWriterAsync

    results: queue.Queue = queue.Queue()
    done: queue.Queue = queue.Queue()  # the writer takes one item off it when finished (its count_queue)
    threads = []
    for i, bucket in enumerate(buckets):
        done.put(i)
        threads.append(
            threading.Thread(
                target=FileSystemWriterAsync.write_preloaded_data,
                args=(transform_list, i, bucket, results, done, True),
                name=f"torch-dist-writer-{i}",
            )
        )
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    out: dict = {}
    while not results.empty():
        i, got = results.get_nowait()
        if isinstance(got, Exception):
            return got
        out[i] = got
    return out

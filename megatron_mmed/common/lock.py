"""Advisory locks on output folders, so that two runs never write into one folder at once.

A lock is an ``fcntl.flock`` on a small file. The kernel drops it when the process ends, kill -9 included,
so a crashed run never leaves a stale lock and a requeued slurm job simply takes it again; forked worker
processes close their copy at the fork, so a worker orphaned by a killed parent does not keep it either.
``folder_lock`` is the policy of the stages: a run owns its folder (``DIR/.lock``, exclusive), while the
ranks of one slurm array share it (``.lock`` shared) and each owns its rank (``DIR/.lock.rank<r>``).
"""

from __future__ import annotations

import errno
import fcntl
import json
import os
import socket
import sys
import time
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager, suppress
from pathlib import Path

from megatron_mmed.common.errors import UserError

LOCK_NAME = ".lock"
#: flock errors of file systems that do not support it (Lustre mounted without ``-o flock``, some FUSE)
_UNSUPPORTED = {errno.ENOLCK, errno.ENOSYS, errno.EOPNOTSUPP, errno.EINVAL}


class LockBusyError(UserError):
    """The lock is held by another run."""


_HELD: dict[int, FileLock] = {}  # descriptor -> lock, for closing in forked children


def _forget_in_child() -> None:
    """After a fork: the child closes its copies of the parent's locks (the parent keeps them)."""
    for fd, lock in list(_HELD.items()):
        lock._fd = None
        with suppress(OSError):
            os.close(fd)
    _HELD.clear()


os.register_at_fork(after_in_child=_forget_in_child)


class FileLock:
    """A non-blocking ``flock`` on ``path`` (created if missing; never deleted): exclusive, or shared with
    other shared holders. ``acquire`` raises ``LockBusyError`` naming the holder when it is taken."""

    def __init__(self, path: str | Path, *, shared: bool = False):
        self.path = Path(path)
        self.shared = shared
        self._fd: int | None = None

    @property
    def held(self) -> bool:
        return self._fd is not None

    def acquire(self, what: str = "a run") -> FileLock:
        """Take the lock for ``what`` (written into an exclusive lock's file for the next one to read)."""
        if self._fd is not None:
            return self
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, (fcntl.LOCK_SH if self.shared else fcntl.LOCK_EX) | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = _read_holder(fd)
            os.close(fd)
            raise LockBusyError(
                f"{self.path.parent} is in use by {holder or 'another run'} (lock {self.path}); "
                "wait for it to end, or use another output folder"
            ) from None
        except OSError as e:
            os.close(fd)
            if e.errno not in _UNSUPPORTED:
                raise
            print(
                f"warning: {self.path.parent}: file locks unsupported here ({e.strerror}); not locked",
                file=sys.stderr,
            )
            return self
        os.ftruncate(fd, 0)  # a shared holder clears what an earlier exclusive one wrote
        if not self.shared:
            info = {"what": what, "pid": os.getpid(), "host": socket.gethostname(), "since": time.ctime()}
            os.write(fd, json.dumps(info).encode())
        self._fd = fd
        _HELD[fd] = self
        return self

    def release(self) -> None:
        fd, self._fd = self._fd, None
        if fd is not None:
            _HELD.pop(fd, None)
            os.close(fd)  # closing the last descriptor of the open file drops the lock

    def __enter__(self) -> FileLock:
        return self.acquire()

    def __exit__(self, *exc: object) -> None:
        self.release()


def _read_holder(fd: int) -> str:
    try:
        info = json.loads(os.pread(fd, 4096, 0) or b"null")
        return f"{info['what']} (pid {info['pid']} on {info['host']}, since {info['since']})"
    except (OSError, ValueError, TypeError, KeyError):
        return ""


def lock_is_held(path: str | Path) -> bool:
    """Whether some process (this one included) holds a lock on ``path``; a missing file is not held."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except FileNotFoundError:
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return True
    except OSError as e:
        if e.errno in _UNSUPPORTED:
            return False
        raise
    finally:
        os.close(fd)  # (drops the probe's own lock, if it got one)
    return False


def rank_lock_path(folder: str | Path, rank: int) -> Path:
    return Path(folder) / f"{LOCK_NAME}.rank{rank}"


@contextmanager
def folder_lock(folder: str | Path, what: str, rank: int = 0, world_size: int = 1) -> Iterator[None]:
    """Hold ``folder``'s lock for ``what``: exclusively for a whole run; for one rank of a slurm array of
    ``world_size > 1``, the folder shared with its sibling ranks and the rank's own lock exclusively (two
    runs of one rank, or an array run beside a whole run, refuse to start)."""
    with ExitStack() as stack:
        if world_size > 1:
            stack.enter_context(FileLock(Path(folder) / LOCK_NAME, shared=True).acquire(what))
            lock = FileLock(rank_lock_path(folder, rank)).acquire(f"{what} rank {rank}/{world_size}")
            stack.enter_context(lock)
        else:
            stack.enter_context(FileLock(Path(folder) / LOCK_NAME).acquire(what))
        yield

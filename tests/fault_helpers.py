"""Real faults for the stage tests: a small file system that fills up (ENOSPC), a read-only subfolder.

A small disk is a tmpfs mounted over a folder (root only); a read-only folder is a read-only bind mount as
root (root ignores permission bits) and ``chmod 555`` otherwise. Tests skip when the machine does not allow
the mount, never fake the error.
"""

from __future__ import annotations

import os
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest


def _mount(*args: str) -> None:
    res = subprocess.run(["mount", *args], capture_output=True, text=True)
    if res.returncode != 0:
        pytest.skip(f"cannot mount here ({res.stderr.strip() or res.returncode}): needs root")


@contextmanager
def small_disk(path: Path, size: str) -> Iterator[Path]:
    """``path`` (created) as a tmpfs of ``size`` (e.g. ``"512k"``): writes past it fail with ENOSPC."""
    path.mkdir(parents=True, exist_ok=True)
    _mount("-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path))
    try:
        yield path
    finally:
        subprocess.run(["umount", "-l", str(path)], check=False)


def grow(path: Path, size: str) -> None:
    """Give the small disk at ``path`` more room (the user freed some space)."""
    subprocess.run(["mount", "-o", f"remount,size={size}", str(path)], check=True)


@contextmanager
def read_only(path: Path) -> Iterator[Path]:
    """``path`` (created) read-only for this machine's user: writes into it fail with EROFS or EACCES."""
    path.mkdir(parents=True, exist_ok=True)
    if os.geteuid() != 0:
        path.chmod(0o555)
        try:
            yield path
        finally:
            path.chmod(0o755)
        return
    _mount("--bind", "-o", "ro", str(path), str(path))
    try:
        yield path
    finally:
        subprocess.run(["umount", "-l", str(path)], check=False)

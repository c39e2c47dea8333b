"""The local slurm cluster as the launch tests drive it: one place for the knobs a test must not inherit, the
subprocess call, and "is this job still queued" (a failed `squeue` is never read as "the job is gone")."""

from __future__ import annotations

import contextlib
import fcntl
import os
import shutil
import subprocess
import time
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SLURM_DIR = Path(os.environ.get("MMED_SLURM_DIR", "/tmp/mmed-slurm"))
#: launch knobs read from the environment; cleared so that a developer's shell cannot leak into a test
KNOBS = ("NODES", "TASKS_PER_NODE", "DEVICE", "JOB_NAME", "TIME_LIMIT", "FP8", "DATA", "SAVE", "INIT_FROM")
KNOBS += ("WANDB_PROJECT", "CONFIG", "OVERRIDES", "SLURM_JOB_ID", "SLURM_NNODES", "WORLD_SIZE", "DRY_RUN")
KNOBS += ("STAGE", "PEFT", "TOKENIZER")


def run(cmd, env=None, timeout=120, cwd=REPO, **kw) -> subprocess.CompletedProcess:
    """`cmd` in the repo root with the launch knobs cleared from this process's environment, then `env` added."""
    base = {k: v for k, v in os.environ.items() if k not in KNOBS}
    return subprocess.run(
        cmd, cwd=cwd, env={**base, **(env or {})}, capture_output=True, text=True, timeout=timeout, **kw
    )


def queued(job: str, tries: int = 10) -> bool:
    """Whether slurm still lists `job` (pending, running or requeued). A loaded controller may time out: such a
    failed query is retried, never taken for an empty queue (that once ended a test while its job still ran)."""
    for _ in range(tries):
        try:
            res = run(["squeue", "-h", "-j", job], timeout=30)
        except subprocess.TimeoutExpired:
            continue
        if res.returncode == 0:
            return bool(res.stdout.strip())
        if "Invalid job id" in res.stderr:  # purged from slurmctld's memory (MinJobAge): gone
            return False
        time.sleep(2)
    raise AssertionError(f"squeue failed {tries} times for job {job}: is slurmctld still up?")


def wait_gone(job: str, timeout: float) -> None:
    """Wait until `job` has left the queue (finished, after any requeue); cancel it and fail after `timeout` s."""
    deadline = time.time() + timeout
    while time.time() < deadline:
        if not queued(job):
            return
        time.sleep(1)
    run(["scancel", job])
    pytest.fail(f"job {job} still queued after {timeout} s")


@contextlib.contextmanager
def cluster():
    """The local slurm for as long as the block runs. Test processes that run in parallel share it: each one
    registers under a lock, and the last to leave stops it, only if one of them started it (a cluster that was
    already up, e.g. a developer's, is left running). One process stopping it under another's job once failed CI."""
    users = SLURM_DIR.with_name(SLURM_DIR.name + ".users")
    users.mkdir(parents=True, exist_ok=True)
    me = users / str(os.getpid())
    with _locked(users):
        up = (SLURM_DIR / "slurmctld.pid").is_file() and shutil.which("sinfo") is not None
        if not (up and run(["sinfo", "-h"], timeout=20).returncode == 0):
            res = run(["bash", "launch/local-slurm/start.sh"], timeout=600)
            if res.returncode != 0:
                pytest.skip(f"local slurm could not start here: {res.stderr.strip()[-300:]}")
            (users / "started-by-tests").touch()
        me.touch()
    try:
        yield
    finally:
        with _locked(users):
            me.unlink(missing_ok=True)
            alive = [p for p in users.iterdir() if p.name.isdigit() and _alive(int(p.name))]
            if not alive and (users / "started-by-tests").exists():
                run(["bash", "launch/local-slurm/stop.sh"], timeout=60)
                (users / "started-by-tests").unlink()


@contextlib.contextmanager
def _locked(folder: Path):
    with open(folder / ".lock", "w") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        yield


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True

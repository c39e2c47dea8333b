"""Signals as a cluster sends them: to the whole process group (slurm's time-limit warning), and kill -9.

A real `mmed train` in its own session, so the signal reaches every process it started, as `scancel`
or slurm's `--signal` does. The run must save, exit 0 (requeue-able), keep `latest` intact and leave no
process behind.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

pytestmark = [pytest.mark.timeout(300), pytest.mark.slow]

ARGS = [
    "model.seq_length=32",
    "train.micro_batch_size=2",
    "train.global_batch_size=2",
    "train.steps=5000",
    "schedule.warmup_steps=0",
    "logging.log_interval=1",
    "logging.eval_iters=0",
]


@pytest.fixture(scope="module")
def tok(shared_data, tmp_path_factory):
    from megatron_mmed.testing.byte_data import write_byte_level_blend

    return write_byte_level_blend(shared_data / "corpus", tmp_path_factory.mktemp("tok"), ["en", "ru"], 20)


def _start(repo_root, tok, run, *extra) -> subprocess.Popen:
    cmd = [
        sys.executable, "-m", "megatron_mmed.cli", "train", "--config", str(repo_root / "configs/train/tiny_cpu.yaml"),
        f"data.blend={tok}", f"checkpoint.dir={run}", *ARGS, *extra,
    ]  # fmt: skip
    return subprocess.Popen(
        cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True
    )


def _wait_for_steps(proc, run: Path, n: int) -> None:
    deadline = time.time() + 200
    metrics = run / "metrics.jsonl"
    while time.time() < deadline:
        if proc.poll() is not None:
            pytest.fail(f"train exited early: {proc.communicate()[1][-3000:]}")
        if metrics.is_file() and len(metrics.read_text().splitlines()) >= n:
            return
        time.sleep(0.2)
    pytest.fail("no progress")


def _alive_in_group(pgid: int) -> list[int]:
    """Processes (not zombies) of process group ``pgid``."""
    alive = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[2]) == pgid and fields[0] != "Z":
            alive.append(int(stat.parent.name))
    return alive


def _wait_group_gone(pgid: int, timeout: float = 30) -> list[int]:
    deadline = time.time() + timeout
    while time.time() < deadline and _alive_in_group(pgid):
        time.sleep(0.2)
    return _alive_in_group(pgid)


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGUSR1], ids=["SIGTERM", "SIGUSR1"])
def test_signal_to_the_process_group_saves_and_exits_0(repo_root, tok, tmp_path, sig):
    from megatron_mmed.common.integrity import verify

    run = tmp_path / "run"
    proc = _start(repo_root, tok, run, "checkpoint.save_interval=2")
    pgid = proc.pid
    try:
        _wait_for_steps(proc, run, 5)  # checkpoints at 2 and 4 made the writer's helpers exist
        os.killpg(pgid, sig)
        stdout, stderr = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            os.killpg(pgid, signal.SIGKILL)
    assert proc.returncode == 0, stderr[-3000:]
    assert "stopped by signal" in stdout and "BrokenPipeError" not in stderr
    latest = run / (run / "latest").read_text().strip()
    assert verify(latest) == ([], True)
    last = json.loads((run / "metrics.jsonl").read_text().splitlines()[-1])["step"]
    assert latest.name == f"iter_{last:07d}"  # no step since the last save was lost
    assert _wait_group_gone(pgid) == []


def test_kill_9_leaves_no_process_holding_stdout(repo_root, tok, tmp_path):
    """kill -9 of the trainer mid-run (a save every step, so likely mid-save): every helper goes with it,
    so whoever reads its output (srun, a pipe) sees end-of-file, and `latest` still names a whole checkpoint."""
    from megatron_mmed.common.integrity import verify

    run = tmp_path / "run"
    proc = _start(repo_root, tok, run, "checkpoint.save_interval=1")
    pgid = proc.pid
    try:
        _wait_for_steps(proc, run, 4)
        os.kill(proc.pid, signal.SIGKILL)
        proc.communicate(timeout=60)  # returns only once no process holds the pipes
        assert _wait_group_gone(pgid) == []
    finally:
        if _alive_in_group(pgid):
            os.killpg(pgid, signal.SIGKILL)
    latest = run / (run / "latest").read_text().strip()
    assert verify(latest) == ([], True)

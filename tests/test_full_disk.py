"""A full disk during a checkpoint save or a conversion: a one-line error (exit 2), nothing partial left,
and `latest` still naming a whole checkpoint. The disk is a small tmpfs in a private mount namespace."""

from __future__ import annotations

import json
import shlex
import shutil
import subprocess
import sys

import pytest

pytestmark = [pytest.mark.timeout(300), pytest.mark.slow]


def _can_mount_tmpfs(tmp_path) -> bool:
    if not shutil.which("unshare"):
        return False
    probe = tmp_path / "probe"
    probe.mkdir()
    res = subprocess.run(
        ["unshare", "-rm", "sh", "-c", f"mount -t tmpfs -o size=1m tmpfs {shlex.quote(str(probe))}"],
        capture_output=True,
        timeout=30,
    )
    return res.returncode == 0


@pytest.fixture
def small_disk(tmp_path):
    """``run(mountpoint, size, shell_commands)``: the commands run with a tmpfs of ``size`` at ``mountpoint``."""
    if not _can_mount_tmpfs(tmp_path):
        pytest.skip("needs `unshare -rm` and tmpfs mounts (user namespaces) to fill a disk")

    def run(mountpoint, size: str, script: str) -> subprocess.CompletedProcess:
        mountpoint.mkdir(parents=True, exist_ok=True)
        full = f"mount -t tmpfs -o size={size} tmpfs {shlex.quote(str(mountpoint))} && {script}"
        return subprocess.run(
            ["unshare", "-rm", "sh", "-c", full], capture_output=True, text=True, timeout=280
        )

    return run


INSPECT = """
import json, sys
from pathlib import Path
from megatron_mmed.common.integrity import verify
run = Path(sys.argv[1])
latest = (run / "latest").read_text().strip() if (run / "latest").exists() else None
print("INSPECT " + json.dumps({"latest": latest, "entries": sorted(p.name for p in run.iterdir()),
      "intact": verify(run / latest) == ([], True) if latest else None}))
"""


def test_full_disk_during_a_checkpoint_save(repo_root, shared_data, tmp_path, small_disk):
    from megatron_mmed.testing.byte_data import write_byte_level_blend

    tok = write_byte_level_blend(shared_data / "corpus", tmp_path / "tok", ["en"], 20)
    run = tmp_path / "run"
    train = [
        sys.executable, "-m", "megatron_mmed.cli", "train", "--config", str(repo_root / "configs/train/tiny_cpu.yaml"),
        f"data.blend={tok}", f"checkpoint.dir={run}", f"data.cache_dir={tmp_path / 'cache'}",
        "model.seq_length=32", "train.micro_batch_size=2", "train.global_batch_size=2", "train.steps=6",
        "checkpoint.save_interval=2", "schedule.warmup_steps=0", "logging.eval_iters=0",
    ]  # fmt: skip
    inspect = [sys.executable, "-c", INSPECT, str(run)]
    # one checkpoint (~2.1 MB) fits in 3 MB, the second does not
    script = f"{shlex.join(train)}; echo rc=$?; {shlex.join(inspect)}"
    res = small_disk(run, "3m", script)
    assert "rc=2" in res.stdout, res.stdout[-2000:] + res.stderr[-4000:]
    assert "Traceback" not in res.stderr, res.stderr[-4000:]
    last = res.stderr.strip().splitlines()[-1]
    assert last.startswith("mmed train: error: ") and "No space left on device" in last, last
    assert "latest still points at iter_0000002" in last
    state = json.loads(res.stdout.split("INSPECT ", 1)[1])
    assert state["latest"] == "iter_0000002" and state["intact"]
    assert not [e for e in state["entries"] if e.endswith(".tmp")], state


def test_full_disk_during_a_conversion(tmp_path, small_disk):
    from convert_helpers import save_llama, tiny_llama

    hf = save_llama(tiny_llama(), tmp_path / "hf")
    disk = tmp_path / "disk"
    convert = [sys.executable, "-m", "megatron_mmed.cli", "convert", "hf-to-mcore", "--hf", str(hf)]
    script = (
        f"{shlex.join([*convert, '--out', str(disk / 'out')])}; echo rc=$?; ls -A {shlex.quote(str(disk))}"
    )
    res = small_disk(disk, "200k", script)
    assert "rc=2" in res.stdout, res.stdout[-2000:] + res.stderr[-4000:]
    assert "Traceback" not in res.stderr, res.stderr[-4000:]
    last = res.stderr.strip().splitlines()[-1]
    assert last.startswith("mmed convert: error: ") and "No space left on device" in last, last
    assert res.stdout.strip().splitlines()[-1] == "rc=2"  # `ls -A` printed nothing: no output, no temp dir

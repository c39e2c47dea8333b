"""Parallel CPU runs over gloo (torchrun, 2 processes): TP=2 == TP=1, TP=2 -> TP=1 resume, DP=2, PP=2, SIGTERM."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from megatron_mmed.common.config import load_config
from megatron_mmed.common.distributed import free_port
from megatron_mmed.training.config import TrainConfig

pytestmark = [pytest.mark.timeout(300), pytest.mark.slow]

# The byte-level vocab (257) pads to 384 at any TP, so every layout builds the very same model.
FAST = [
    "model.seq_length=64",
    "train.micro_batch_size=2",
    "train.global_batch_size=4",
    "train.steps=6",
    "schedule.warmup_steps=2",
    "logging.log_interval=1",
    "logging.eval_interval=6",
    "logging.eval_iters=1",
    "checkpoint.save_interval=3",
]
TORCHRUN = Path(sys.executable).parent / "torchrun"


@pytest.fixture(scope="module")
def tok(shared_data, tmp_path_factory):
    from megatron_mmed.testing.byte_data import write_byte_level_blend

    return write_byte_level_blend(shared_data / "corpus", tmp_path_factory.mktemp("tok"), ["en", "ja"], 40)


def _args(repo_root, tok, run, *extra):
    return [
        "train",
        "--config",
        str(repo_root / "configs/train/tiny_cpu.yaml"),
        f"data.blend={tok}",
        f"checkpoint.dir={run}",
    ] + [
        *FAST,
        *extra,
    ]


def _torchrun(repo_root, tok, run, *extra, nproc=2):
    cmd = [
        str(TORCHRUN),
        f"--nproc_per_node={nproc}",
        f"--master_port={free_port()}",
        "-m",
        "megatron_mmed.cli",
    ]
    out = subprocess.run(
        cmd + _args(repo_root, tok, run, *extra), capture_output=True, text=True, timeout=280
    )
    assert out.returncode == 0, out.stdout[-2000:] + out.stderr[-4000:]
    return out


def _losses(run) -> dict[int, float]:
    return {r["step"]: r["loss"] for r in map(json.loads, (run / "metrics.jsonl").read_text().splitlines())}


@pytest.fixture(scope="module")
def tp1(repo_root, tok, tmp_path_factory):
    """The reference: the same run in one process at TP=1."""
    from megatron_mmed.training.loop import train

    run = tmp_path_factory.mktemp("tp1") / "run"
    cfg = load_config(TrainConfig, repo_root / "configs/train/tiny_cpu.yaml", _args(repo_root, tok, run)[3:])
    train(cfg)
    return _losses(run)


def test_tp2_matches_tp1_and_its_checkpoint_resumes_at_tp1(repo_root, tok, tmp_path, tp1):
    from megatron_mmed.training.loop import train

    run = tmp_path / "run"
    _torchrun(repo_root, tok, run, "parallel.tp=2", "train.exit_at_step=3")
    assert (run / "latest").read_text().strip() == "iter_0000003"
    tp2 = _losses(run)
    assert [tp2[s] for s in (1, 2, 3)] == pytest.approx([tp1[s] for s in (1, 2, 3)], rel=1e-5)
    # continue the TP=2 checkpoint at TP=1 (model and optimizer resharded by dist_checkpointing)
    result = train(
        load_config(TrainConfig, repo_root / "configs/train/tiny_cpu.yaml", _args(repo_root, tok, run)[3:])
    )
    assert result.start_step == 3 and result.end_step == 6
    assert [result.losses[s] for s in (4, 5, 6)] == pytest.approx([tp1[s] for s in (4, 5, 6)], rel=1e-5)


def test_tp2_with_sequence_parallel_matches_tp1(repo_root, tok, tmp_path, tp1):
    run = tmp_path / "run"
    _torchrun(repo_root, tok, run, "parallel.tp=2", "parallel.sequence_parallel=true")
    sp = _losses(run)
    assert [sp[s] for s in range(1, 7)] == pytest.approx([tp1[s] for s in range(1, 7)], rel=1e-5)


def test_dp2_distributed_optimizer_matches_tp1_and_resumes_at_dp1(repo_root, tok, tmp_path, tp1):
    from megatron_mmed.training.loop import train

    run = tmp_path / "run"
    _torchrun(repo_root, tok, run, "parallel.use_distributed_optimizer=true", "train.exit_at_step=3")
    dp2 = _losses(run)
    assert [dp2[s] for s in (1, 2, 3)] == pytest.approx([tp1[s] for s in (1, 2, 3)], rel=1e-5)
    args = _args(repo_root, tok, run, "parallel.use_distributed_optimizer=true")[3:]
    result = train(load_config(TrainConfig, repo_root / "configs/train/tiny_cpu.yaml", args))
    assert result.start_step == 3
    assert [result.losses[s] for s in (4, 5, 6)] == pytest.approx([tp1[s] for s in (4, 5, 6)], rel=1e-5)


def test_pp2_trains_and_resumes_at_pp1(repo_root, tok, tmp_path):
    from megatron_mmed.training.loop import train

    run = tmp_path / "run"
    out = _torchrun(repo_root, tok, run, "parallel.pp=2", "train.exit_at_step=3")
    assert "val_loss_per_lang" not in out.stdout  # (eval only at step 6)
    pp2 = _losses(run)
    assert sorted(pp2) == [1, 2, 3] and all(0 < v < 10 for v in pp2.values())
    result = train(
        load_config(TrainConfig, repo_root / "configs/train/tiny_cpu.yaml", _args(repo_root, tok, run)[3:])
    )
    assert result.start_step == 3 and result.end_step == 6 and result.losses[6] < pp2[1]


def test_interleaved_pipeline_runs(repo_root, tok, tmp_path):
    run = tmp_path / "run"
    _torchrun(repo_root, tok, run, "parallel.pp=2", "parallel.vpp=2", "model.num_layers=4", "train.steps=3")
    losses = _losses(run)
    assert sorted(losses) == [1, 2, 3] and losses[3] < losses[1]


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGUSR1], ids=["SIGTERM", "SIGUSR1"])
def test_signal_mid_run_leaves_a_loadable_checkpoint(repo_root, tok, tmp_path, sig):
    from megatron_mmed.training.loop import train

    run = tmp_path / "run"
    many = ["train.steps=5000", "checkpoint.save_interval=4000", "logging.eval_interval=4000"]
    cmd = [sys.executable, "-m", "megatron_mmed.cli", *_args(repo_root, tok, run, *many)]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.time() + 200
        while time.time() < deadline and not (
            (run / "metrics.jsonl").is_file() and len((run / "metrics.jsonl").read_text().splitlines()) >= 3
        ):
            assert proc.poll() is None, proc.communicate()[1][-3000:]
            time.sleep(0.5)
        os.kill(proc.pid, sig)
        stdout, stderr = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 0, stderr[-3000:]
    assert "stopped by signal" in stdout
    stopped_at = int((run / "latest").read_text().strip().removeprefix("iter_"))
    assert 3 <= stopped_at < 5000
    result = train(
        load_config(
            TrainConfig,
            repo_root / "configs/train/tiny_cpu.yaml",
            _args(repo_root, tok, run, *many, f"train.exit_at_step={stopped_at + 1}")[3:],
        )
    )
    assert result.start_step == stopped_at and result.end_step == stopped_at + 1

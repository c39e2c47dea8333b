"""The training loop on CPU over gloo with real megatron-core: loss falls, metrics, checkpoints, resume."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from megatron_mmed.common.config import load_config
from megatron_mmed.common.errors import UserError
from megatron_mmed.training.config import TrainConfig
from megatron_mmed.training.metrics import plot_loss_curve

pytestmark = pytest.mark.timeout(300)

FAST = [
    "model.seq_length=64",
    "train.micro_batch_size=2",
    "train.global_batch_size=4",
    "logging.log_interval=1",
    "logging.eval_iters=1",
]


@pytest.fixture(scope="module")
def tok(shared_data, tmp_path_factory):
    from megatron_mmed.testing.byte_data import write_byte_level_blend

    return write_byte_level_blend(
        shared_data / "corpus", tmp_path_factory.mktemp("tok"), ["en", "zh", "fr"], 40
    )


def _cfg(repo_root, tok, run_dir, *extra: str) -> TrainConfig:
    return load_config(
        TrainConfig,
        repo_root / "configs/train/tiny_cpu.yaml",
        [f"data.blend={tok}", f"checkpoint.dir={run_dir}", *FAST, *extra],
    )


def _records(run_dir):
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


def test_loss_falls_and_metrics_have_every_field(repo_root, tok, tmp_path):
    from megatron_mmed.training.loop import train

    run = tmp_path / "run"
    result = train(
        _cfg(
            repo_root, tok, run, "train.steps=30", "logging.eval_interval=15", "checkpoint.save_interval=100"
        )
    )
    assert result.end_step == 30 and result.stopped_by is None
    first, last = (
        sum(result.losses[s] for s in (1, 2, 3)) / 3,
        sum(result.losses[s] for s in (28, 29, 30)) / 3,
    )
    assert last < first - 1.0, (first, last)  # byte-level text is learnable fast; random init is ~ln(257)
    recs = _records(run)
    assert [r["step"] for r in recs] == list(range(1, 31))
    for key in (
        "step",
        "loss",
        "lr",
        "grad_norm",
        "tokens_per_s",
        "tflops_per_gpu",
        "mfu",
        "consumed_tokens",
    ):
        assert all(r[key] is not None for r in recs), key
    assert recs[-1]["consumed_tokens"] == 30 * 4 * 64
    val = [r for r in recs if "val_loss_per_lang" in r]
    assert [r["step"] for r in val] == [15, 30]
    assert set(val[-1]["val_loss_per_lang"]) == {"en", "zh", "fr"}
    assert val[-1]["val_loss"] < val[0]["val_loss"]
    # the rate each step used: linear warmup from 0 over 5 steps, then cosine decay towards min_lr
    lrs = [r["lr"] for r in recs]
    assert lrs[0] == 0.0 and lrs[5] == pytest.approx(3.0e-3)
    assert all(a > b for a, b in zip(lrs[5:], lrs[6:])) and lrs[-1] > 3.0e-4
    # final checkpoint written, pointer last, config beside it
    assert (run / "latest").read_text().strip() == "iter_0000030"
    assert (run / "iter_0000030" / "metadata.json").is_file() and (run / "config.yaml").is_file()
    png = plot_loss_curve(run)
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


@pytest.mark.parametrize(
    "variant",
    [
        [],
        ["parallel.use_distributed_optimizer=true"],
        ["precision.dtype=bf16"],
        ["precision.dtype=bf16", "parallel.use_distributed_optimizer=true"],
    ],
    ids=["fp32", "distopt", "bf16", "bf16-distopt"],
)
def test_resume_reproduces_uninterrupted_losses_bit_for_bit(repo_root, tok, tmp_path, variant):
    from megatron_mmed.training.loop import train

    common = [
        "train.steps=10",
        "checkpoint.save_interval=5",
        "logging.eval_interval=100",
        "logging.eval_iters=0",
    ]
    common += variant
    full = train(_cfg(repo_root, tok, tmp_path / "full", *common))
    first = train(_cfg(repo_root, tok, tmp_path / "split", *common, "train.exit_at_step=5"))
    assert first.stopped_by == "exit_at_step" and first.end_step == 5
    assert (tmp_path / "split" / "latest").read_text().strip() == "iter_0000005"
    second = train(_cfg(repo_root, tok, tmp_path / "split", *common))
    assert second.start_step == 5 and second.end_step == 10
    assert {s: second.losses[s] for s in range(6, 11)} == {s: full.losses[s] for s in range(6, 11)}
    assert [r["loss"] for r in _records(tmp_path / "split")] == [
        r["loss"] for r in _records(tmp_path / "full")
    ]


def test_init_from_loads_weights_only(repo_root, tok, tmp_path):
    from megatron_mmed.training.loop import train

    common = [
        "logging.eval_interval=100",
        "logging.eval_iters=0",
        "checkpoint.save_interval=100",
        "schedule.warmup_steps=0",
    ]
    donor = train(_cfg(repo_root, tok, tmp_path / "donor", "train.steps=12", *common))
    fresh = train(_cfg(repo_root, tok, tmp_path / "fresh", "train.steps=3", *common))
    warm = train(
        _cfg(
            repo_root,
            tok,
            tmp_path / "warm",
            "train.steps=3",
            f"checkpoint.init_from={tmp_path / 'donor'}",
            *common,
        )
    )
    assert warm.start_step == 0  # step and optimizer fresh ...
    assert warm.losses[1] < fresh.losses[1] - 0.5  # ... but the weights are the trained ones
    assert warm.losses[1] == pytest.approx(donor.losses[12], abs=0.5)


def test_cli_reports_missing_data_in_one_line(repo_root, tmp_path, capsys):
    from megatron_mmed.cli import main

    config = str(repo_root / "configs/train/tiny_cpu.yaml")
    assert main(["train", "--config", config, f"checkpoint.dir={tmp_path}"]) == 2
    assert "data.blend is required" in capsys.readouterr().err
    assert (
        main(["train", "--config", config, f"checkpoint.dir={tmp_path}", f"data.blend={tmp_path}/no.json"])
        == 2
    )
    assert "not found" in capsys.readouterr().err


def test_wandb_offline_run_is_recognised_by_wandb_sync(repo_root, tok, tmp_path):
    pytest.importorskip("wandb")
    from megatron_mmed.training.loop import train

    run = tmp_path / "run"
    extra = [
        "train.steps=4",
        "schedule.warmup_steps=1",
        "logging.eval_interval=4",
        "logging.wandb_project=mmed-test",
    ]
    train(_cfg(repo_root, tok, run, *extra))
    offline = sorted((run / "wandb").glob("offline-run-*"))
    assert len(offline) == 1 and list(offline[0].glob("run-*.wandb"))
    wandb_cli = Path(sys.executable).parent / "wandb"
    out = subprocess.run(
        [str(wandb_cli), "sync", "--dry-run", str(offline[0])], capture_output=True, text=True, timeout=120
    )
    assert out.returncode == 0 and "Would sync 1 run" in out.stdout + out.stderr, out.stdout + out.stderr


@pytest.mark.skipif(torch.cuda.is_available(), reason="the CPU refusals")
@pytest.mark.parametrize(
    "overrides, message",
    [
        (["precision.dtype=bf16", "precision.fp8=hybrid"], "precision.fp8 needs NVIDIA GPUs"),
        (
            ["precision.dtype=bf16", "precision.fp8=e4m3", "precision.fp8_recipe=tensorwise"],
            "Set precision.fp8=null",
        ),
        (["parallel.cp=2"], "parallel.cp > 1 needs Transformer Engine"),
        (["model.spec=te"], "model.spec=te needs Transformer Engine"),
    ],
)
def test_gpu_only_settings_are_refused_clearly_on_cpu(repo_root, tok, tmp_path, overrides, message):
    from megatron_mmed.training.loop import train

    with pytest.raises(UserError, match=message):
        train(_cfg(repo_root, tok, tmp_path / "run", *overrides))
    assert not (tmp_path / "run").exists()  # refused before anything was written


def test_vocab_smaller_than_data_is_a_user_error(repo_root, tok, tmp_path):
    from megatron_mmed.training.loop import train

    with pytest.raises(UserError, match="vocab_size 257 > model vocab 200"):
        train(
            _cfg(
                repo_root,
                tok,
                tmp_path / "run",
                "model.vocab_size=200",
                "train.steps=1",
                "schedule.warmup_steps=0",
            )
        )


def test_exit_duration_stops_with_a_checkpoint(repo_root, tok, tmp_path):
    from megatron_mmed.training.loop import train

    run = tmp_path / "run"
    cfg = _cfg(
        repo_root,
        tok,
        run,
        "train.steps=50",
        "checkpoint.exit_duration_minutes=0.0001",
        "logging.eval_iters=0",
    )
    result = train(cfg)
    assert result.stopped_by == "exit_duration" and result.end_step == 1
    assert (run / "latest").read_text().strip() == "iter_0000001"


@pytest.mark.slow
def test_cli_contract_second_identical_command_resumes(repo_root, tok, tmp_path):
    run = tmp_path / "RUN"
    cmd = [
        sys.executable,
        "-m",
        "megatron_mmed.cli",
        "train",
        "--config",
        str(repo_root / "configs/train/tiny_cpu.yaml"),
        f"data.blend={tok}",
        "train.steps=40",
        f"checkpoint.dir={run}",
    ]
    half = subprocess.run([*cmd, "train.exit_at_step=20"], capture_output=True, text=True, timeout=280)
    assert half.returncode == 0, half.stderr[-3000:]
    assert (run / "latest").read_text().strip() == "iter_0000020"
    rest = subprocess.run(cmd, capture_output=True, text=True, timeout=280)
    assert rest.returncode == 0, rest.stderr[-3000:]
    recs = _records(run)
    assert [r["step"] for r in recs] == [5, 10, 15, 20, 25, 30, 35, 40]
    assert any("val_loss_per_lang" in r for r in recs)
    assert (run / "latest").read_text().strip() == "iter_0000040"
    again = subprocess.run(cmd, capture_output=True, text=True, timeout=280)
    assert again.returncode == 0 and "nothing to do" in again.stdout


@pytest.mark.slow
def test_throughput_benchmark_prints_the_fields_on_cpu(repo_root, tmp_path):
    script = str(repo_root / "benchmarks/train_throughput.py")
    out = subprocess.run(
        [sys.executable, "-P", script, "--steps", "4", "--workdir", str(tmp_path / "bench")],
        capture_output=True,
        text=True,
        timeout=280,
        cwd=repo_root,
    )
    assert out.returncode == 0, out.stderr[-3000:]
    rows = json.loads(out.stdout.strip().splitlines()[-1])
    assert rows[0]["case"] == "tiny fp32 seq 128"
    assert rows[0]["tokens_per_s_per_gpu"] > 0 and rows[0]["tflops_per_gpu"] > 0 and 0 < rows[0]["mfu"] < 1
    assert "tokens/s/GPU" in out.stdout and "TFLOP/s/GPU" in out.stdout and "MFU" in out.stdout
    assert not list((tmp_path / "bench").glob("run0/iter_*"))  # checkpoint.save=false


def test_resume_tolerates_and_truncates_a_partial_last_metrics_line(tmp_path, capsys):
    """A kill mid-write leaves half a JSON line in metrics.jsonl: resume drops it (and records past the
    checkpoint) with a warning instead of failing, and reading the metrics skips it too."""
    from megatron_mmed.training.metrics import read_metrics, truncate_metrics

    path = tmp_path / "metrics.jsonl"
    lines = [json.dumps({"step": s, "loss": 5.0 - s / 10}) for s in range(1, 5)]
    path.write_text("\n".join(lines) + '\n{"step": 5, "lo')
    assert [r["step"] for r in read_metrics(tmp_path)] == [1, 2, 3, 4]
    assert "partial" in capsys.readouterr().err
    truncate_metrics(path, 3)
    assert path.read_text() == "\n".join(lines[:3]) + "\n"
    assert "dropped 1 unreadable" in capsys.readouterr().err


def test_a_changed_learning_rate_on_resume_is_applied_and_named(repo_root, tok, tmp_path, capsys):
    """Resuming with another optimizer.lr follows the new schedule from the next step (as a run with that lr
    from the start would), instead of silently keeping the checkpoint's."""
    from megatron_mmed.training.loop import train

    common = [
        "train.steps=6",
        "schedule.warmup_steps=2",
        "logging.eval_iters=0",
        "checkpoint.save_interval=3",
    ]
    train(_cfg(repo_root, tok, tmp_path / "split", *common, "train.exit_at_step=3"))
    capsys.readouterr()
    train(_cfg(repo_root, tok, tmp_path / "split", *common, "optimizer.lr=1e-3"))
    assert "optimizer.lr 0.003 -> 0.001" in capsys.readouterr().out
    fresh = train(_cfg(repo_root, tok, tmp_path / "fresh", *common, "optimizer.lr=1e-3"))
    assert fresh.end_step == 6
    split = {r["step"]: r["lr"] for r in _records(tmp_path / "split")}
    ref = {r["step"]: r["lr"] for r in _records(tmp_path / "fresh")}
    assert [split[s] for s in (4, 5, 6)] == pytest.approx([ref[s] for s in (4, 5, 6)], rel=1e-12)
    assert split[3] == pytest.approx(3 * ref[3], rel=1e-6)  # steps 1-3 ran on the old lr (3e-3 vs 1e-3)


def test_keep_last_prunes_old_checkpoints_and_the_run_resumes(repo_root, tok, tmp_path):
    from megatron_mmed.training.loop import train

    run = tmp_path / "run"
    common = ["train.steps=8", "checkpoint.save_interval=2", "checkpoint.keep_last=2", "logging.eval_iters=0"]
    first = train(_cfg(repo_root, tok, run, *common, "train.exit_at_step=6"))
    assert first.end_step == 6
    assert sorted(d.name for d in run.glob("iter_*")) == ["iter_0000004", "iter_0000006"]
    second = train(_cfg(repo_root, tok, run, *common))
    assert second.start_step == 6 and second.end_step == 8
    assert sorted(d.name for d in run.glob("iter_*")) == ["iter_0000006", "iter_0000008"]
    assert (run / "latest").read_text().strip() == "iter_0000008"

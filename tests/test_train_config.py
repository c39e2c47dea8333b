"""The typed training config, the shipped configs' dry runs, and the FLOPs formula against a hand count."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from megatron_mmed.common.config import ConfigError, load_config
from megatron_mmed.models import get_preset
from megatron_mmed.training.config import TrainConfig, resolve_parallelism, world_size_from_env
from megatron_mmed.training.flops import flops_per_token, parameter_count
from megatron_mmed.training.plan import make_plan

SHIPPED = ["tiny_cpu.yaml", "internlm2_1_8b.yaml", "internlm2_7b.yaml", "internlm2_20b.yaml"]


def test_flops_against_a_hand_count():
    """InternLM2-7B at seq 4096, vocab 92544, counted by hand (2 FLOPs per multiply-add)."""
    f = flops_per_token(get_preset("internlm2-7b"), 4096, 92544)
    h, kv, ffn, s, v, n = 4096, 8 * 128, 14336, 4096, 92544, 32
    qkv = 2 * h * (h + 2 * kv)  # 4096 x 6144 fused QKV
    assert f.qkv == n * qkv == 32 * 50_331_648
    assert f.out_proj == n * 2 * h * h == 32 * 33_554_432
    assert f.mlp == n * (2 * h * ffn * 2 + 2 * ffn * h) == 32 * 352_321_536  # gate + up + down
    assert f.attention == n * (2 * s * h + 2 * s * h) // 2 == 32 * 33_554_432  # QK^T + AV, causal half
    assert f.logits == 2 * h * v == 758_120_448
    assert f.forward == 32 * (50_331_648 + 33_554_432 + 352_321_536 + 33_554_432) + 758_120_448
    assert f.training == 3 * 15_790_505_984 == 47_371_517_952
    # the 6N rule of thumb (N without the input embedding) plus attention agrees within 1%
    n_params = parameter_count(get_preset("internlm2-7b"), 92544) - v * h
    assert f.training == pytest.approx(6 * n_params + 3 * f.attention, rel=0.01)


def test_defaults_are_a_valid_config():
    from megatron_mmed.common.config import validate_tree

    cfg = TrainConfig()
    validate_tree(cfg)
    assert cfg.model.preset == "tiny" and resolve_parallelism(cfg, 1).dp == 1


def test_layout_derives_dp_and_rejects_bad_world_sizes(repo_root):
    cfg = load_config(
        TrainConfig, repo_root / "configs/train/internlm2_7b.yaml", ["parallel.tp=2", "parallel.pp=2"]
    )
    layout = resolve_parallelism(cfg, 32)
    assert (layout.tp, layout.pp, layout.cp, layout.dp) == (2, 2, 1, 8)
    assert layout.tp * layout.pp * layout.cp * layout.dp == 32
    assert layout.num_microbatches == 512 // (1 * 8)
    with pytest.raises(ConfigError, match="not a multiple of TP x PP x CP"):
        resolve_parallelism(cfg, 6)


def test_world_size_sources(repo_root, monkeypatch):
    cfg = load_config(TrainConfig, repo_root / "configs/train/tiny_cpu.yaml", ["parallel.tp=2"])
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    assert world_size_from_env(cfg) == 2  # TP x PP x CP when nothing says otherwise
    monkeypatch.setenv("WORLD_SIZE", "8")
    assert world_size_from_env(cfg) == 8
    assert world_size_from_env(cfg, 4) == 4


@pytest.mark.parametrize(
    "overrides, message",
    [
        (["parallel.tp=3"], "must divide the attention heads"),
        (["parallel.pp=3"], "do not split into pp"),
        (["parallel.sequence_parallel=true"], "needs parallel.tp >= 2"),
        (["precision.fp8=hybrid", "precision.dtype=fp32"], "needs precision.dtype=bf16"),
        (["precision.fp8=e5m2"], "not one of"),
        (["train.global_batch_size=7"], "multiple of train.micro_batch_size"),
        (["schedule.decay_style=WSD"], "wsd_decay_steps"),
        (["optimizer.min_lr=1.0"], "min_lr"),
        (["model.preset=gpt2"], "unknown preset"),
        (["model.seq_length=40000"], "max positions"),
        (["data.split=90,10"], "three non-negative numbers"),
        (["train.exit_at_step=100"], "exit_at_step"),
        (["nonsense.key=1"], "unknown config key"),
        (["launch.nodes=0"], "launch.nodes must be >= 1"),
        (["launch.tasks_per_node=0"], "launch.tasks_per_node must be >= 1"),
        (["launch.device=tpu"], "not one of"),
        (["launch.nodes=2", "launch.tasks_per_node=4", "parallel.world_size=16"], "contradicts"),
        (["train.steps=5"], r"schedule.warmup_steps \(5\) must be below the decay steps \(train.steps = 5\)"),
        (["schedule.decay_steps=3"], r"schedule.warmup_steps \(5\) must be below .*schedule.decay_steps = 3"),
        (["schedule.decay_style=WSD", "schedule.wsd_decay_steps=50"], "wsd_decay_steps 50 exceeds"),
    ],
)
def test_validate_rejects_bad_values(repo_root, overrides, message):
    with pytest.raises(ConfigError, match=message):
        load_config(TrainConfig, repo_root / "configs/train/tiny_cpu.yaml", overrides)


def test_launch_section_is_the_planned_world_size(repo_root, monkeypatch):
    """A recipe's ``launch:`` section (nodes x tasks per node) is the world size a dry run plans for."""
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    cfg = load_config(TrainConfig, repo_root / "configs/train/internlm2_7b.yaml")
    assert (cfg.launch.nodes, cfg.launch.tasks_per_node) == (4, 8)
    assert world_size_from_env(cfg) == 32
    cfg = load_config(TrainConfig, repo_root / "configs/train/internlm2_7b.yaml", ["launch.nodes=8"])
    assert world_size_from_env(cfg) == 64
    assert world_size_from_env(cfg, 16) == 16
    tiny = load_config(TrainConfig, repo_root / "configs/train/tiny_cpu.yaml")
    assert tiny.launch is None and world_size_from_env(tiny) == 1


@pytest.mark.parametrize(
    "name, nodes, tp, pp, sp",
    [
        ("internlm2_1_8b.yaml", 1, 1, 1, False),
        ("internlm2_7b.yaml", 4, 2, 1, True),
        ("internlm2_20b.yaml", 8, 4, 2, True),
    ],
)
def test_size_recipes_hold_the_whole_layout(repo_root, name, nodes, tp, pp, sp):
    """Node count, layout and FP8 live in the recipe (the launch scripts add none), on 8-GPU H100 nodes."""
    cfg = load_config(TrainConfig, repo_root / "configs/train" / name)
    assert (cfg.launch.nodes, cfg.launch.tasks_per_node, cfg.launch.device) == (nodes, 8, "cuda")
    assert (cfg.parallel.tp, cfg.parallel.pp, cfg.parallel.sequence_parallel) == (tp, pp, sp)
    assert cfg.precision.fp8 == "hybrid" and cfg.precision.dtype == "bf16"
    assert cfg.parallel.world_size is None  # one figure for the size of the job: launch.nodes


@pytest.mark.parametrize("name", SHIPPED)
def test_shipped_configs_plan_at_tp2_pp2(repo_root, name):
    cfg = load_config(TrainConfig, repo_root / "configs/train" / name, ["parallel.tp=2", "parallel.pp=2"])
    plan = make_plan(cfg, world_size_from_env(cfg))
    par = plan.parallelism
    assert par.tp * par.pp * par.cp * par.dp == par.world_size
    assert plan.parameters > 0 and plan.flops.training > 0


@pytest.mark.parametrize("name", ["tiny_cpu.yaml", "internlm2_7b.yaml"])
def test_cli_dry_run_exits_zero_without_data(repo_root, name, monkeypatch):
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    out = subprocess.run(
        [
            sys.executable,
            "-m",
            "megatron_mmed.cli",
            "train",
            "--config",
            str(repo_root / "configs/train" / name),
        ]
        + ["--dry-run", "parallel.tp=2", "parallel.pp=2"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert out.returncode == 0, out.stderr
    assert "TP=2 x PP=2 x CP=1 x DP=" in out.stdout
    assert "parameters:" in out.stdout and "flops/token" in out.stdout and "# resolved config" in out.stdout


def test_cli_config_error_is_one_line_exit_2(repo_root):
    out = subprocess.run(
        [
            sys.executable,
            "-m",
            "megatron_mmed.cli",
            "train",
            "--config",
            str(repo_root / "configs/train/tiny_cpu.yaml"),
        ]
        + ["--dry-run", "parallel.tp=3"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert out.returncode == 2 and "must divide the attention heads" in out.stderr
    assert "Traceback" not in out.stderr


def test_cli_dry_run_names_the_source_of_each_value(repo_root, monkeypatch):
    """Without the launcher, values come from the YAML, the command line or the defaults; env knobs are ignored."""
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    out = subprocess.run(
        [
            sys.executable,
            "-m",
            "megatron_mmed.cli",
            "train",
            "--config",
            str(repo_root / "configs/train/tiny_cpu.yaml"),
        ]
        + ["--dry-run", "parallel.tp=2"],
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, "NODES": "3", "DATA": "/nope"},
    )
    assert out.returncode == 0, out.stderr
    lines = {
        line.split("#")[0].strip(): line.split("#")[1].strip()
        for line in out.stdout.splitlines()
        if "=" in line and "  # " in line
    }
    assert lines["parallel.tp=2"] == "override" and lines["model.preset=tiny"] == "yaml"
    assert lines["train.exit_at_step=null"] == "default" and lines["data.blend=null"] == "yaml"
    assert lines["launch=null"] == "default"


def test_every_yaml_float_spelling_is_a_number_in_files_and_overrides(tmp_path):
    """PyYAML reads YAML 1.1, where ``1e-4`` is a string; a user writes YAML 1.2 floats and means numbers."""
    path = tmp_path / "run.yaml"
    path.write_text(
        "optimizer:\n  lr: 1e-4\n  min_lr: 1E-5\n  adam_eps: 1.e-8\n  clip_grad: 1e0\n"
        "  weight_decay: .5e-1\nlogging:\n  peak_tflops: +9.89e2\n"
    )
    cfg = load_config(TrainConfig, path)
    o = cfg.optimizer
    assert (o.lr, o.min_lr, o.adam_eps, o.clip_grad, o.weight_decay) == (1e-4, 1e-5, 1e-8, 1.0, 0.05)
    assert cfg.logging.peak_tflops == 989.0
    cfg = load_config(
        TrainConfig, path, ["optimizer.lr=5e-3", "optimizer.min_lr=5E-4", "optimizer.clip_grad=.inf"]
    )
    assert (cfg.optimizer.lr, cfg.optimizer.min_lr, cfg.optimizer.clip_grad) == (5e-3, 5e-4, float("inf"))
    for bad in ("optimizer.lr=1e", "optimizer.lr=e-4", "optimizer.lr=abc", "optimizer.lr=1.2.3"):
        with pytest.raises(ConfigError, match="optimizer.lr: expected a number"):
            load_config(TrainConfig, path, [bad])

"""The typed ``mmed finetune`` config: shipped YAMLs load and validate; the paper's numbers; bad values."""

from __future__ import annotations

import pytest

from megatron_mmed.common.config import ConfigError, load_config, save_config
from megatron_mmed.finetune.config import FinetuneConfig, steps_per_epoch

SHIPPED = ["mmedbench_full.yaml", "mmedbench_lora.yaml", "tiny_cpu.yaml"]


@pytest.mark.parametrize("name", SHIPPED)
def test_shipped_configs_load_validate_and_round_trip(repo_root, name, tmp_path):
    cfg = load_config(FinetuneConfig, repo_root / "configs/finetune" / name)
    tc = cfg.train_config(total_steps=cfg.train.total_steps(1000))
    tc.validate()
    save_config(cfg, tmp_path / "config.yaml")
    assert load_config(FinetuneConfig, tmp_path / "config.yaml") == cfg  # config.yaml reads back


def test_paper_hyper_parameters(repo_root):
    full = load_config(FinetuneConfig, repo_root / "configs/finetune/mmedbench_full.yaml")
    lora = load_config(FinetuneConfig, repo_root / "configs/finetune/mmedbench_lora.yaml")
    for cfg in (full, lora):
        assert cfg.model.preset == "internlm2-7b" and cfg.precision.dtype == "bf16"
        assert cfg.train.global_batch_size == 128 and cfg.data.max_length == 2048
        assert cfg.optimizer.weight_decay == 0 and cfg.optimizer.clip_grad == 1.0
        assert cfg.schedule.warmup_ratio == 0.03 and cfg.schedule.decay_style == "cosine"
    assert (full.peft, full.train.epochs, full.optimizer.lr) == ("none", 5, 1e-6)
    assert (lora.peft, lora.train.epochs, lora.optimizer.lr) == ("lora", 3, 2e-5)
    assert (lora.lora.rank, lora.lora.dropout, lora.lora.scale) == (16, 0.05, 2.0)
    # 3 % warmup of the run's steps: 90,000 examples / 128 = 704 steps an epoch, x 3 epochs
    total = lora.train.total_steps(90_000)
    assert total == 3 * 704 == 3 * steps_per_epoch(90_000, 128)
    assert lora.train_config(total).schedule.warmup_steps == round(0.03 * total) == 63


def test_lora_targets_and_one_line_errors(repo_root):
    tiny = repo_root / "configs/finetune/tiny_cpu.yaml"
    assert load_config(FinetuneConfig, tiny, ["lora.targets=qkv,fc2"]).lora.targets == ("qkv", "fc2")
    assert load_config(FinetuneConfig, tiny, ["lora.targets=[proj]"]).lora.targets == ("proj",)
    with pytest.raises(
        ConfigError, match=r"lora.targets: unknown target\(s\) 'q_proj' \(choose from qkv, proj, fc1, fc2\)"
    ):
        load_config(FinetuneConfig, tiny, ["peft=lora", "lora.targets=qkv,q_proj"])
    with pytest.raises(ConfigError, match="not one of"):
        load_config(FinetuneConfig, tiny, ["peft=qlora"])
    with pytest.raises(ConfigError, match="exactly one of train.epochs and train.steps"):
        load_config(FinetuneConfig, tiny, ["train.epochs=2"])
    with pytest.raises(ConfigError, match="exceeds model.seq_length"):
        load_config(FinetuneConfig, tiny, ["data.max_length=1024"])
    with pytest.raises(ConfigError, match="lora.dropout"):
        load_config(FinetuneConfig, tiny, ["lora.dropout=1.5"])
    with pytest.raises(ConfigError, match="parallel.tp=3 must divide"):
        load_config(FinetuneConfig, tiny, ["parallel.tp=3"])


def test_train_config_feeds_the_training_stack(repo_root):
    """The TrainConfig handed to build_model_and_optimizer: same sections, steps and one micro-batch per DP rank."""
    from megatron_mmed.training.config import resolve_parallelism

    cfg = load_config(FinetuneConfig, repo_root / "configs/finetune/mmedbench_full.yaml")
    tc = cfg.train_config(total_steps=500, world_size=8)
    assert tc.model == cfg.model and tc.optimizer == cfg.optimizer and tc.parallel == cfg.parallel
    assert tc.train.steps == 500 and tc.schedule.warmup_steps == 15 and tc.train.seed == 42
    layout = resolve_parallelism(tc, 8)
    assert (layout.tp, layout.dp, layout.num_microbatches) == (2, 4, 1)

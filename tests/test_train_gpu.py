"""GPU-only training checks (skipped without CUDA): Transformer Engine spec, BF16 and FP8 steps."""

from __future__ import annotations

import pytest

from megatron_mmed.common.config import load_config
from megatron_mmed.training.config import TrainConfig

pytestmark = [pytest.mark.gpu, pytest.mark.timeout(600)]


@pytest.fixture(scope="module")
def tok(shared_data, tmp_path_factory):
    from megatron_mmed.testing.byte_data import write_byte_level_blend

    return write_byte_level_blend(shared_data / "corpus", tmp_path_factory.mktemp("tok"), ["en", "zh"], 60)


def _run(repo_root, tok, run, *extra):
    from megatron_mmed.training.loop import train

    return train(
        load_config(
            TrainConfig,
            repo_root / "configs/train/tiny_cpu.yaml",
            [f"data.blend={tok}", f"checkpoint.dir={run}", "model.seq_length=128", "train.steps=20"]
            + ["logging.log_interval=1", "model.spec=te", *extra],
        )
    )


def test_te_spec_is_chosen_on_gpu():
    from megatron_mmed.models import get_preset
    from megatron_mmed.models.builder import layer_spec, te_available

    assert te_available()
    spec = layer_spec(get_preset("tiny"), "auto")
    assert spec.submodules.self_attention.submodules.linear_qkv.__name__ == "TELayerNormColumnParallelLinear"


def test_bf16_te_run_trains(repo_root, tok, tmp_path):
    result = _run(repo_root, tok, tmp_path / "run", "precision.dtype=bf16")
    assert result.losses[20] < result.losses[1] - 0.5


@pytest.mark.parametrize("recipe", ["delayed", "tensorwise"])
def test_fp8_step_runs_and_learns(repo_root, tok, tmp_path, recipe):
    # FP8 GEMMs need dimensions divisible by 16: the tiny preset's 64/176 widths pad fine in TE.
    result = _run(
        repo_root,
        tok,
        tmp_path / "run",
        "precision.dtype=bf16",
        "precision.fp8=hybrid",
        f"precision.fp8_recipe={recipe}",
    )
    assert all(v == v for v in result.losses.values())  # no NaN
    assert result.losses[20] < result.losses[1]

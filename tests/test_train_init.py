"""`checkpoint.init_from` and resume check the architecture they load (model_config.yaml), or adopt it."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
import yaml

from megatron_mmed.common.config import ConfigError, load_config
from megatron_mmed.common.errors import UserError
from megatron_mmed.training.config import TrainConfig

pytestmark = pytest.mark.timeout(300)

FAST = [
    "model.seq_length=32",
    "train.micro_batch_size=2",
    "train.global_batch_size=2",
    "train.steps=2",
    "schedule.warmup_steps=0",
    "logging.log_interval=1",
    "logging.eval_iters=0",
]
#: the tiny preset's sizes (hidden 64, 4 heads / 2 KV, ffn 176, 2 layers) over the byte vocabulary (257)
TINY_SIZES = dict(
    vocab_size=257,
    hidden_size=64,
    intermediate_size=176,
    num_hidden_layers=2,
    num_attention_heads=4,
    num_key_value_heads=2,
)


@pytest.fixture(scope="module")
def tok(shared_data, tmp_path_factory):
    from megatron_mmed.testing.byte_data import write_byte_level_blend

    return write_byte_level_blend(shared_data / "corpus", tmp_path_factory.mktemp("tok"), ["en", "fr"], 20)


@pytest.fixture(scope="module")
def llama2_init(tmp_path_factory):
    """A Llama-2-style source (RoPE base 1e4, norm eps 1e-6) with the tiny preset's sizes, converted."""
    from convert_helpers import save_llama, tiny_llama

    from conversion import hf_to_mcore

    root = tmp_path_factory.mktemp("llama2")
    hf = save_llama(tiny_llama(**TINY_SIZES, rope_theta=10000.0, rms_norm_eps=1e-6), root / "hf")
    hf_to_mcore(hf, root / "init", skip_validation=True)
    return root / "init"


def _cfg(repo_root, tok, run, *extra):
    return load_config(
        TrainConfig,
        repo_root / "configs/train/tiny_cpu.yaml",
        [f"data.blend={tok}", f"checkpoint.dir={run}", *FAST, *extra],
    )


def test_init_from_another_architecture_is_refused_naming_each_field(repo_root, tok, llama2_init, tmp_path):
    from megatron_mmed.training.loop import train

    run = tmp_path / "run"
    with pytest.raises(UserError) as e:
        train(_cfg(repo_root, tok, run, f"checkpoint.init_from={llama2_init}"))
    msg = str(e.value)
    assert "RoPE base 1000000 (model.preset tiny) vs 10000 (init_from)" in msg
    assert "norm eps 1e-05 (model.preset tiny) vs 1e-06 (init_from)" in msg
    assert "model.preset=from_init" in msg and "\n" not in msg
    assert not list(run.glob("iter_*")) and not (run / "latest").exists()


def test_from_init_adopts_the_source_architecture_through_to_the_export(
    repo_root, tok, llama2_init, tmp_path
):
    from conversion import mcore_to_hf
    from megatron_mmed.training.loop import train

    cfg = _cfg(
        repo_root, tok, tmp_path / "run", "model.preset=from_init", f"checkpoint.init_from={llama2_init}"
    )
    arch = cfg.architecture()
    assert (arch.rotary_base, arch.norm_epsilon, arch.ffn_hidden_size) == (10000, 1e-6, 176)
    result = train(cfg)
    assert result.end_step == 2
    saved = yaml.safe_load((tmp_path / "run" / "iter_0000002" / "model_config.yaml").read_text())
    assert saved["preset"]["rotary_base"] == 10000 and saved["preset"]["norm_epsilon"] == 1e-6
    report = mcore_to_hf(tmp_path / "run", tmp_path / "hf", family="llama", dtype="fp32")
    assert report.validation.ok
    hf_cfg = json.loads((tmp_path / "hf" / "config.json").read_text())
    assert hf_cfg["rope_theta"] == 10000 and hf_cfg["rms_norm_eps"] == 1e-6


def test_from_init_needs_init_from_and_sizes_that_fit(repo_root, tok, llama2_init, tmp_path):
    with pytest.raises(ConfigError, match="model.preset=from_init needs checkpoint.init_from"):
        _cfg(repo_root, tok, tmp_path / "run", "model.preset=from_init")
    with pytest.raises(
        ConfigError, match="model.num_layers=4 differs from the 2 layers of checkpoint.init_from"
    ):
        _cfg(
            repo_root, tok, tmp_path / "run", "model.preset=from_init", f"checkpoint.init_from={llama2_init}",
            "model.num_layers=4",
        )  # fmt: skip


def test_dry_run_of_from_init_shows_the_source_architecture(repo_root, llama2_init):
    out = subprocess.run(
        [sys.executable, "-m", "megatron_mmed.cli", "train", "--config", str(repo_root / "configs/train/tiny_cpu.yaml"),
         "--dry-run", "model.preset=from_init", f"checkpoint.init_from={llama2_init}", "model.seq_length=64"],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert out.returncode == 0, out.stderr
    assert "model: hf:hf" in out.stdout and "ffn=176 vocab=257 (padded 384)" in out.stdout


def test_resume_with_a_different_architecture_is_refused(repo_root, tok, tmp_path):
    """The vocab pads to the same 384 rows, so without the check the checkpoint would load silently."""
    from megatron_mmed.training.loop import train

    run = tmp_path / "run"
    train(_cfg(repo_root, tok, run, "train.exit_at_step=1"))
    with pytest.raises(UserError, match=r"vocab \(before padding\) 300 \(this run\) vs 257 \(checkpoint\)"):
        train(_cfg(repo_root, tok, run, "model.vocab_size=300"))
    assert (run / "latest").read_text().strip() == "iter_0000001"

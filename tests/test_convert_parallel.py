"""A checkpoint saved by ``mmed train`` at TP=2 or PP=2 (two gloo ranks) converts to HF and matches TP=1 logits."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
import torch

from conversion import mcore_to_hf
from megatron_mmed.common.distributed import free_port

pytestmark = [pytest.mark.timeout(300), pytest.mark.slow]


@pytest.fixture(scope="module")
def tok(shared_data, tmp_path_factory):
    from megatron_mmed.testing.byte_data import write_byte_level_blend

    return write_byte_level_blend(shared_data / "corpus", tmp_path_factory.mktemp("tok"), ["en", "zh"], 20)


def _train_two_ranks(repo_root, tok, run, *overrides: str) -> None:
    cmd = [
        sys.executable, "-m", "megatron_mmed.cli", "train",
        "--config", str(repo_root / "configs/train/tiny_cpu.yaml"),
        f"data.blend={tok}", f"checkpoint.dir={run}", *overrides,
        "train.steps=2", "model.seq_length=32", "logging.eval_iters=0", "schedule.warmup_steps=0",
    ]  # fmt: skip
    port = free_port()
    procs = []
    for rank in range(2):
        env = {**os.environ, "RANK": str(rank), "LOCAL_RANK": str(rank), "WORLD_SIZE": "2"}
        env.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), OMP_NUM_THREADS="1")
        procs.append(
            subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        )
    outs = []
    for p in procs:
        try:
            outs.append(p.communicate(timeout=240)[0])
        except subprocess.TimeoutExpired:
            for q in procs:
                q.kill()
            raise
    assert all(p.returncode == 0 for p in procs), "\n".join(o[-3000:] for o in outs)


@pytest.mark.parametrize("parallel", ["parallel.tp=2", "parallel.pp=2"])
def test_train_checkpoint_converts_and_matches_tp1_logits(repo_root, tok, tmp_path, parallel):
    from transformers import LlamaForCausalLM

    from conversion import validate as V
    from conversion.mcore_io import McoreCheckpoint, checkpoint_arch
    from megatron_mmed.models.weights import resolve_weights_dir

    run = tmp_path / "run"
    _train_two_ranks(repo_root, tok, run, parallel)
    assert (run / "latest").read_text().strip() == "iter_0000002"
    out = tmp_path / "hf"
    report = mcore_to_hf(run, out, family="llama", dtype="fp32")
    # the validation compares the TP=1 megatron-core model loaded from the 2-rank checkpoint with transformers
    assert report.validation.ok and report.validation.max_abs_diff <= 1e-4, report.summary()
    assert report.validation.top1_agreement == 1.0
    ckpt = resolve_weights_dir(run)
    arch, name, _ = checkpoint_arch(ckpt)
    assert name == "tiny" and arch.vocab_size == json.loads((out / "config.json").read_text())["vocab_size"]
    ids = V.fixed_token_ids(arch.vocab_size)
    tp1 = V.mcore_logits(arch, ckpt, McoreCheckpoint.open(ckpt).padded_vocab, ids)
    hf = LlamaForCausalLM.from_pretrained(out).eval()
    with torch.no_grad():
        torch.testing.assert_close(hf(torch.tensor([ids])).logits[0], tp1, atol=1e-4, rtol=0)


def test_continued_pretraining_round_trip_at_tp2(repo_root, tok, tmp_path):
    """HF (tiny preset sizes, rope_scaling) -> init_from -> `mmed train` at TP=2 -> HF: loads, generates, carries config."""
    from convert_helpers import save_llama, tiny_llama
    from transformers import LlamaForCausalLM

    from conversion import hf_to_mcore

    sizes = dict(
        vocab_size=257,
        hidden_size=64,
        intermediate_size=176,
        num_attention_heads=4,
        max_position_embeddings=1024,
    )
    hf = save_llama(
        tiny_llama(**sizes, rope_scaling={"rope_type": "dynamic", "factor": 2.0}), tmp_path / "hf"
    )
    init = tmp_path / "init"
    report = hf_to_mcore(hf, init, preset="tiny")  # converted at TP=1 (vocab 257 -> 384), loaded at TP=2
    assert report.validation.ok
    _train_two_ranks(repo_root, tok, tmp_path / "run", "parallel.tp=2", f"checkpoint.init_from={init}")
    out = tmp_path / "out"
    back = mcore_to_hf(tmp_path / "run", out, family="llama", dtype="fp32")
    assert back.validation.ok and back.validation.max_abs_diff <= 1e-4
    cfg = json.loads((out / "config.json").read_text())
    assert cfg["rope_scaling"] == {"rope_type": "dynamic", "factor": 2.0}  # carried from init_from, unchanged
    assert cfg["bos_token_id"] == 1 and cfg["eos_token_id"] == 2
    model = LlamaForCausalLM.from_pretrained(out).eval()
    generated = model.generate(torch.tensor([[72, 101, 108]]), max_new_tokens=5, do_sample=False)
    assert generated.shape == (1, 8)

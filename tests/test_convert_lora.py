"""LoRA checkpoints -> HF: a PEFT adapter that peft loads on the converted base (same logits), and merged weights."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
import torch
from convert_helpers import TINY, read_tensors, save_internlm2, save_llama, tiny_llama

from conversion import hf_to_mcore, mcore_to_hf
from conversion import validate as V
from conversion.arch import arch_from_hf_config
from conversion.lora import lora_to_peft, peft_logits
from conversion.mcore_io import build_model
from megatron_mmed.common.distributed import mcore_session
from megatron_mmed.common.errors import UserError
from megatron_mmed.finetune.adapters import read_adapter_meta, save_adapters
from megatron_mmed.finetune.config import LoraConfig
from megatron_mmed.finetune.lora import apply_lora, lora_adapters
from megatron_mmed.models.weights import load_weights, read_model_config

pytestmark = pytest.mark.timeout(300)
LORA = LoraConfig(rank=4, alpha=8.0, dropout=0.0, targets=("qkv", "proj", "fc1", "fc2"))


@pytest.fixture(scope="module")
def llama():
    return tiny_llama()


@pytest.fixture(scope="module")
def dirs(llama, tmp_path_factory):
    """HF base, its mcore conversion, and a LoRA 'run' (adapters with non-zero B + latest) on top of it."""
    root = tmp_path_factory.mktemp("lora")
    hf = save_llama(llama, root / "hf")
    hf_to_mcore(hf, root / "mcore", skip_validation=True)
    run = root / "run"
    ids = V.fixed_token_ids(TINY["vocab_size"])
    saved = read_model_config(root / "mcore" / "model_config.yaml")
    with mcore_session():
        model = build_model(saved.preset, saved.padded_vocab_size, torch.float32)
        load_weights(root / "mcore", [model])
        apply_lora(model, LORA, seed=5)
        g = torch.Generator().manual_seed(1)
        with torch.no_grad():
            for _, ad in lora_adapters(model):
                for part in ad.parts:
                    ad.b(part).copy_(torch.randn(ad.b(part).shape, generator=g) * 0.05)
        save_adapters(run / "iter_0000003", model, LORA, root / "mcore", seed=5)
        s = len(ids)
        mask = torch.triu(torch.ones(s, s, dtype=torch.bool), diagonal=1)[None, None]
        with torch.no_grad():
            logits = model(torch.tensor([ids]), torch.arange(s)[None], mask)[0, :, : TINY["vocab_size"]]
    (run / "latest").write_text("iter_0000003\n")
    return {"hf": hf, "mcore": root / "mcore", "run": run, "logits": logits, "ids": ids, "root": root}


def test_peft_adapter_loads_in_peft_with_our_logits(dirs, tmp_path):
    out = tmp_path / "adapter"
    report = lora_to_peft(dirs["run"], dirs["hf"], out)
    assert report.validation is not None and report.validation.ok
    cfg = json.loads((out / "adapter_config.json").read_text())
    assert cfg["peft_type"] == "LORA" and cfg["r"] == 4 and cfg["lora_alpha"] == 8.0
    assert sorted(cfg["target_modules"]) == sorted(
        ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
    )
    keys = set(read_tensors(out))
    assert "base_model.model.model.layers.1.self_attn.k_proj.lora_B.weight" in keys and len(keys) == 2 * 7 * 2
    theirs = peft_logits(dirs["hf"], out, dirs["ids"])
    torch.testing.assert_close(theirs, dirs["logits"], atol=1e-4, rtol=0)
    assert (theirs - _base_logits(dirs)).abs().max() > 1e-2  # the adapter changes the model
    assert read_adapter_meta(dirs["run"] / "iter_0000003").base == str(dirs["mcore"].resolve())
    # its typed settings read back from config.yaml; where the adapters came from is in the report
    from conversion.config import LoraToPeftConfig
    from megatron_mmed.common.config import load_config

    assert load_config(LoraToPeftConfig, out / "config.yaml") == LoraToPeftConfig(
        ckpt=str(dirs["run"]), base=str(dirs["hf"]), out=str(out)
    )
    written = json.loads((out / "conversion_report.json").read_text())
    assert written["direction"] == "lora-to-peft" and written["validation"]["ok"]
    assert any(str(dirs["mcore"].resolve()) in n and "iter_0000003" in n for n in written["notes"])


def _base_logits(dirs):
    from transformers import LlamaForCausalLM

    with torch.no_grad():
        return LlamaForCausalLM.from_pretrained(dirs["hf"])(torch.tensor([dirs["ids"]])).logits[0]


def test_mcore_to_hf_of_a_lora_run_is_the_merged_model(dirs, llama, tmp_path):
    from transformers import LlamaForCausalLM

    out = tmp_path / "merged"
    report = mcore_to_hf(dirs["run"], out, family="llama", dtype="fp32")
    assert report.validation.ok and any("folded" in n for n in report.notes)
    merged = LlamaForCausalLM.from_pretrained(out)
    with torch.no_grad():
        got = merged(torch.tensor([dirs["ids"]])).logits[0]
    torch.testing.assert_close(got, dirs["logits"], atol=1e-4, rtol=0)
    # W + scale * B @ A, read from the PEFT export of the same run (an independent path through layouts)
    adapter = tmp_path / "adapter"
    lora_to_peft(dirs["run"], dirs["hf"], adapter, skip_validation=True)
    ad, base, new = read_tensors(adapter), llama.state_dict(), read_tensors(out)
    for name in (
        "model.layers.0.self_attn.v_proj",
        "model.layers.1.mlp.gate_proj",
        "model.layers.0.self_attn.o_proj",
    ):
        a, b = ad[f"base_model.model.{name}.lora_A.weight"], ad[f"base_model.model.{name}.lora_B.weight"]
        torch.testing.assert_close(
            new[name + ".weight"], base[name + ".weight"] + LORA.scale * b @ a, atol=1e-6, rtol=1e-6
        )


def test_internlm2_base_gets_fused_wqkv_with_the_same_delta(dirs, llama, tmp_path):
    """InternLM2 keeps q/k/v in one wqkv: the three adapters sit side by side at rank 3r (rank/alpha_pattern)."""
    base = save_internlm2(llama, tmp_path / "internlm2")
    out = tmp_path / "adapter"
    report = lora_to_peft(dirs["run"], base, out)
    assert any("not validated" in n for n in report.notes)
    cfg = json.loads((out / "adapter_config.json").read_text())
    assert cfg["rank_pattern"] == {"model.layers.0.attention.wqkv": 12, "model.layers.1.attention.wqkv": 12}
    assert cfg["alpha_pattern"]["model.layers.0.attention.wqkv"] == 24.0
    assert "w1" in cfg["target_modules"] and "wo" in cfg["target_modules"]
    merged = tmp_path / "merged"
    mcore_to_hf(dirs["run"], merged, family="internlm2", dtype="fp32")
    ad, orig, new = read_tensors(out), read_tensors(base), read_tensors(merged)
    for i in range(2):
        m = f"model.layers.{i}.attention.wqkv"
        a, b = ad[f"base_model.model.{m}.lora_A.weight"], ad[f"base_model.model.{m}.lora_B.weight"]
        assert a.shape == (12, 64)
        torch.testing.assert_close(
            new[m + ".weight"], orig[m + ".weight"] + (24.0 / 12) * b @ a, atol=1e-6, rtol=1e-6
        )


def test_bad_inputs_are_one_line_errors(dirs, tmp_path, repo_root):
    with pytest.raises(UserError, match="not a LoRA checkpoint"):
        lora_to_peft(dirs["mcore"], dirs["hf"], tmp_path / "a")
    other = save_llama(tiny_llama(num_hidden_layers=3), tmp_path / "other")
    with pytest.raises(UserError, match=r"is not the model the adapters were trained on: num_layers 3 vs 2"):
        lora_to_peft(dirs["run"], other, tmp_path / "b")
    assert not (tmp_path / "b").exists()
    r = subprocess.run(
        [
            sys.executable,
            "-m",
            "megatron_mmed.cli",
            "convert",
            "lora-to-peft",
            "--ckpt",
            str(dirs["mcore"]),
            "--base",
            str(dirs["hf"]),
            "--out",
            str(tmp_path / "c"),
        ],
        capture_output=True,
        text=True,
        cwd=repo_root,
    )
    assert r.returncode == 2 and "error: " in r.stderr and "not a LoRA checkpoint" in r.stderr
    assert "Traceback" not in r.stderr
    assert arch_from_hf_config(json.loads((dirs["hf"] / "config.json").read_text())).num_layers == 2

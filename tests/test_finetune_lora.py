"""LoRA on megatron-core (CPU, real peft): only adapters train, one step == peft's, merge == W + scale*B@A."""

from __future__ import annotations

import pytest
import torch
from convert_helpers import tiny_llama
from finetune_helpers import SFT_SEQ, SFT_VOCAB, hf_batch, mcore_params_as_hf, mcore_sft, mcore_step, train_sp

from conversion.arch import arch_from_hf_config
from conversion.families import LLAMA
from megatron_mmed.common.distributed import mcore_session
from megatron_mmed.finetune.config import LoraConfig, SFTDataConfig
from megatron_mmed.finetune.data import load_sft_data
from megatron_mmed.finetune.lora import (
    TARGETS,
    adapter_sharded_state_dict,
    lora_adapters,
    merge_lora,
    part_names,
    trainable_parameters,
)
from megatron_mmed.finetune.packing import SFTBatches
from megatron_mmed.finetune.step import sft_forward

pytestmark = pytest.mark.timeout(300)
VOCAB, SEQ = SFT_VOCAB, SFT_SEQ  # the sft_llama / sft_mcore_dir fixtures (conftest)
LORA = LoraConfig(rank=4, alpha=8.0, dropout=0.0)
HF_MODULES = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]


@pytest.fixture(scope="module")
def examples(shared_data, tmp_path_factory):
    sp = train_sp(shared_data / "qa", tmp_path_factory.mktemp("sp") / "tok.model")
    data = load_sft_data(SFTDataConfig(train=str(shared_data / "qa"), tokenizer=str(sp), languages=("es",)))
    return sorted(data.examples, key=lambda e: len(e.tokens))[:3]


def _batch(examples):
    return SFTBatches(examples, SEQ, len(examples), seed=0, pad_to_multiple_of=1).step(0).microbatches


def _randomize_b(model, seed=3):
    """Non-zero B (a fresh adapter has B = 0, which would hide a wrong A or layout)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for _, ad in lora_adapters(model):
            for part in ad.parts:
                ad.b(part).copy_(torch.randn(ad.b(part).shape, generator=g) * 0.05)


def test_parts_come_from_the_layout_map():
    assert [part_names(TARGETS[t]) for t in ("qkv", "proj", "fc1", "fc2")] == [
        ("q_proj", "k_proj", "v_proj"),
        ("o_proj",),
        ("gate_proj", "up_proj"),
        ("down_proj",),
    ]
    assert {t.mcore_weight for t in TARGETS.values()} <= {r.mcore for r in LLAMA.rules}


def test_only_adapters_train_and_base_is_not_in_the_optimizer(sft_mcore_dir, examples):
    with mcore_session():
        model, ddp, opt = mcore_sft(sft_mcore_dir, lr=1e-2, lora=LORA)
        before = {n: p.detach().clone() for n, p in model.named_parameters()}
        train = trainable_parameters(model)
        assert train and all("_lora." in n for n in train)
        assert len(train) == 2 * (3 + 1 + 2 + 1) * 2  # A and B per part, 7 parts, 2 layers
        in_opt = {id(p) for g in opt.param_groups for p in g["params"]}
        assert in_opt == {id(p) for p in train.values()}  # frozen weights hold no optimizer state
        mcore_step(ddp, opt, _batch(examples), SEQ)
        for n, p in model.named_parameters():
            if n in train:
                if ".b_" in n:  # B starts at 0 and moves; A cannot move in step 1 (its grad is B^T...)
                    assert not torch.equal(p, before[n]), n
            else:
                assert torch.equal(p, before[n]), n
        keys = adapter_sharded_state_dict(model)
        assert keys and all("_lora." in k for k in keys)
        assert "decoder.layers.self_attention.linear_qkv_lora.b_q_proj" in {v.key for v in keys.values()}


def test_merged_weights_equal_base_plus_scale_b_a_and_same_logits(sft_mcore_dir, examples, sft_llama):
    arch = arch_from_hf_config(sft_llama.config.to_dict())
    mb = _batch(examples)[0]
    with mcore_session():
        model, _, _ = mcore_sft(sft_mcore_dir, lora=LORA, wrap=False)
        _randomize_b(model)
        base = mcore_params_as_hf(model, arch)
        adapters = {n: ad for n, ad in lora_adapters(model)}
        expected = {}
        for i in range(arch.num_layers):
            for tname, t in TARGETS.items():
                ad = adapters[f"decoder.layers.{i}.{t.module}_lora"]
                for part in ad.parts:
                    hf_name = (
                        f"model.layers.{i}.{'self_attn' if tname in ('qkv', 'proj') else 'mlp'}.{part}.weight"
                    )
                    expected[hf_name] = base[hf_name] + LORA.scale * ad.b(part).detach() @ ad.a(part).detach()
        with torch.no_grad():
            before = sft_forward(model, {**mb, "labels": None})
        merge_lora(model)
        merged = mcore_params_as_hf(model, arch)
        with torch.no_grad():
            after = sft_forward(model, {**mb, "labels": None})
    for name, want in expected.items():
        torch.testing.assert_close(merged[name], want, atol=1e-6, rtol=1e-6)
    torch.testing.assert_close(after, before, atol=1e-4, rtol=1e-4)
    assert torch.isfinite(before).all()


def test_one_lora_step_equals_peft(sft_llama, sft_mcore_dir, examples):
    """Same base, same A and B (B non-zero), AdamW lr 1e-2, clip 1: loss and updated adapters match peft."""
    from peft import LoraConfig as PeftLoraConfig
    from peft import get_peft_model

    arch = arch_from_hf_config(sft_llama.config.to_dict())
    with mcore_session():
        model, ddp, opt = mcore_sft(sft_mcore_dir, lr=1e-2, lora=LORA)
        _randomize_b(model)
        adapters = {n: ad for n, ad in lora_adapters(model)}
        init = {
            (i, part): (ad.a(part).detach().clone(), ad.b(part).detach().clone())
            for i in range(arch.num_layers)
            for t in TARGETS.values()
            for ad in [adapters[f"decoder.layers.{i}.{t.module}_lora"]]
            for part in ad.parts
        }
        loss = mcore_step(ddp, opt, _batch(examples), SEQ)
        after = {
            (i, part): (ad.a(part).detach().clone(), ad.b(part).detach().clone())
            for i in range(arch.num_layers)
            for t in TARGETS.values()
            for ad in [adapters[f"decoder.layers.{i}.{t.module}_lora"]]
            for part in ad.parts
        }
    hf = tiny_llama(vocab_size=VOCAB, max_position_embeddings=SEQ)
    hf.load_state_dict(sft_llama.state_dict())
    hf.config._attn_implementation = "eager"
    peft_model = get_peft_model(
        hf, PeftLoraConfig(r=LORA.rank, lora_alpha=LORA.alpha, lora_dropout=0.0, target_modules=HF_MODULES)
    )
    mods = dict(peft_model.named_modules())
    with torch.no_grad():
        for (i, part), (a, b) in init.items():
            sub = "self_attn" if part in ("q_proj", "k_proj", "v_proj", "o_proj") else "mlp"
            m = mods[f"base_model.model.model.layers.{i}.{sub}.{part}"]
            m.lora_A["default"].weight.copy_(a)
            m.lora_B["default"].weight.copy_(b)
    peft_model.train()
    ids, labels, att = hf_batch(examples)
    out = peft_model(input_ids=ids, attention_mask=att, labels=labels)
    out.loss.backward()
    params = [p for p in peft_model.parameters() if p.requires_grad]
    assert len(params) == len(init) * 2
    torch.nn.utils.clip_grad_norm_(params, 1.0)
    torch.optim.AdamW(params, lr=1e-2, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.0).step()
    assert loss == pytest.approx(out.loss.item(), rel=1e-5)
    for (i, part), (a, b) in after.items():
        sub = "self_attn" if part in ("q_proj", "k_proj", "v_proj", "o_proj") else "mlp"
        m = mods[f"base_model.model.model.layers.{i}.{sub}.{part}"]
        torch.testing.assert_close(a, m.lora_A["default"].weight.detach(), atol=1e-4, rtol=1e-4)
        torch.testing.assert_close(b, m.lora_B["default"].weight.detach(), atol=1e-4, rtol=1e-4)
        assert not torch.equal(a, init[(i, part)][0])  # A moved too (B was non-zero)


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_tp2_lora_step_equals_tp1(sft_mcore_dir, examples, tmp_path):
    """The same LoRA step at TP=2 (adapters resharded from a TP=1 save), with and without sequence parallel:
    same loss and the same updated adapters, read back as global tensors."""
    import json
    import subprocess
    import sys
    from pathlib import Path

    from conversion.mcore_io import McoreCheckpoint
    from megatron_mmed.common.distributed import free_port
    from megatron_mmed.finetune.adapters import save_adapters

    mbs = SFTBatches(examples, SEQ, len(examples), seed=0, pad_to_multiple_of=2).step(0).microbatches
    torch.save(mbs, tmp_path / "batch.pt")
    with mcore_session():
        model, ddp, opt = mcore_sft(sft_mcore_dir, lr=1e-2, lora=LORA)
        _randomize_b(model)
        save_adapters(tmp_path / "init", model, LORA, sft_mcore_dir)
        loss = mcore_step(ddp, opt, mbs, SEQ)
        save_adapters(tmp_path / "tp1", model, LORA, sft_mcore_dir)
    torchrun = Path(sys.executable).parent / "torchrun"
    worker = Path(__file__).parent / "lora_tp_worker.py"
    r = subprocess.run(
        [
            str(torchrun),
            "--nproc_per_node=2",
            f"--master_port={free_port()}",
            str(worker),
            str(sft_mcore_dir),
            str(tmp_path / "init"),
            str(tmp_path / "batch.pt"),
            str(tmp_path),
        ],
        capture_output=True,
        text=True,
        timeout=280,
    )
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-4000:]
    losses = json.loads((tmp_path / "losses.json").read_text())
    assert losses["tp2"] == pytest.approx(loss, rel=1e-5) and losses["tp2sp"] == pytest.approx(loss, rel=1e-5)
    ref = McoreCheckpoint.open(tmp_path / "tp1")
    moved = 0
    for name in ("tp2", "tp2sp"):
        got = McoreCheckpoint.open(tmp_path / name)
        assert set(got.shapes) == set(ref.shapes)
        for key in ref.shapes:
            for i in range(2):
                layer_key = key.replace("decoder.layers.", f"decoder.layers.{i}.")
                a, b = ref.get(layer_key), got.get(layer_key)
                torch.testing.assert_close(b, a, atol=2e-5, rtol=1e-4)
                moved += int(not torch.equal(a, McoreCheckpoint.open(tmp_path / "init").get(layer_key)))
    assert moved > 0

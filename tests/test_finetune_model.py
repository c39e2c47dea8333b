"""SFT numerics on megatron-core (CPU, real models): loss mask, packed == unpacked, one step == transformers."""

from __future__ import annotations

import pytest
import torch
from convert_helpers import tiny_llama
from finetune_helpers import (
    SFT_SEQ,
    SFT_VOCAB,
    hf_batch,
    mcore_grads_as_hf,
    mcore_params_as_hf,
    mcore_sft,
    mcore_step,
    train_sp,
)

from conversion.arch import arch_from_hf_config
from megatron_mmed.common.distributed import mcore_session
from megatron_mmed.finetune.config import SFTDataConfig
from megatron_mmed.finetune.data import load_sft_data
from megatron_mmed.finetune.packing import SFTBatches
from megatron_mmed.finetune.step import sft_forward

pytestmark = pytest.mark.timeout(300)
VOCAB, SEQ = SFT_VOCAB, SFT_SEQ  # the sft_llama / sft_mcore_dir fixtures (conftest)


@pytest.fixture(scope="module")
def examples(shared_data, tmp_path_factory):
    """Three short real examples (two direct, one with rationale) tokenized by a SentencePiece model."""
    sp = train_sp(shared_data / "qa", tmp_path_factory.mktemp("sp") / "tok.model")
    data = load_sft_data(
        SFTDataConfig(train=str(shared_data / "qa"), tokenizer=str(sp), languages=("es", "zh"))
    )
    direct = sorted((e for e in data.examples if not e.rationale), key=lambda e: len(e.tokens))
    rat = sorted((e for e in data.examples if e.rationale), key=lambda e: len(e.tokens))
    picked = [direct[0], rat[0], direct[1]]
    assert sum(len(e.tokens) for e in picked) < SEQ and all(e.num_target > 5 for e in picked)
    return picked


def _alone(ex):
    return SFTBatches([ex], SEQ, 1, pack=False, pad_to_multiple_of=1).step(0).microbatches[0]


def _packed(examples):
    b = SFTBatches(examples, SEQ, len(examples), pack=True, seed=0, pad_to_multiple_of=1)
    mbs = b.step(0).microbatches
    assert len(mbs) == 1 and int(mbs[0]["segment_ids"].max()) == len(examples) - 1  # one row holds all
    return mbs[0], b.example_indices(0)[1].tolist()


def _grads(model, mb):
    model.zero_grad()
    loss = sft_forward(model, mb)
    ((loss * mb["loss_mask"]).sum() / mb["loss_mask"].sum()).backward()
    return {n: p.grad.clone() for n, p in model.named_parameters()}


def test_prompt_labels_get_exactly_zero_gradient(sft_mcore_dir, examples):
    """Changing a prompt token's label leaves every gradient bit-identical; changing a target label does not."""
    with mcore_session():
        model, _, _ = mcore_sft(sft_mcore_dir, wrap=False)
        mb = _alone(examples[1])
        base = _grads(model, mb)
        prompt_pos = int(torch.nonzero(mb["loss_mask"][0] == 0)[3])
        changed = {k: v.clone() for k, v in mb.items()}
        changed["labels"][0, prompt_pos] = (changed["labels"][0, prompt_pos] + 7) % VOCAB
        same = _grads(model, changed)
        assert all(torch.equal(base[n], same[n]) for n in base)
        target_pos = int(torch.nonzero(mb["loss_mask"][0])[0])
        changed["labels"][0, target_pos] = (changed["labels"][0, target_pos] + 7) % VOCAB
        other = _grads(model, changed)
        assert not torch.equal(base["output_layer.weight"], other["output_layer.weight"])


def test_per_token_loss_is_hand_computed_cross_entropy_over_target_tokens(sft_mcore_dir, examples):
    with mcore_session():
        model, _, _ = mcore_sft(sft_mcore_dir, wrap=False)
        mb = _alone(examples[0])
        with torch.no_grad():
            per_token = sft_forward(model, mb)
            logits = sft_forward(model, {**mb, "labels": None})
        logp = torch.log_softmax(logits.double(), -1)
        nll = -logp.gather(-1, mb["labels"][..., None])[..., 0]
        mask = mb["loss_mask"].bool()
        torch.testing.assert_close(per_token[mask].double(), nll[mask], atol=1e-5, rtol=1e-5)
        ex = examples[0]
        assert int(mask.sum()) == ex.num_target  # target tokens + EOS, nothing of the prompt
        hand = nll[mask].mean()
        got = (per_token * mb["loss_mask"]).sum() / mb["loss_mask"].sum()
        assert abs(float(got) - float(hand)) < 1e-5


def test_packed_batch_equals_examples_alone(sft_mcore_dir, examples):
    """Per-example attention + restarting positions: every target token's loss in the packed row equals its
    loss with the example alone, so the packed loss is the token mean of the examples' losses."""
    with mcore_session():
        model, _, _ = mcore_sft(sft_mcore_dir, wrap=False)
        packed, order = _packed(examples)
        with torch.no_grad():
            per_token = sft_forward(model, packed)
            at, sums, counts = 0, [], []
            for i in order:
                mb = _alone(examples[i])
                alone = sft_forward(model, mb)
                n = mb["tokens"].shape[1]
                torch.testing.assert_close(per_token[0, at : at + n], alone[0], atol=2e-5, rtol=1e-5)
                sums.append(float((alone * mb["loss_mask"]).sum()))
                counts.append(float(mb["loss_mask"].sum()))
                at += n
        packed_loss = float((per_token * packed["loss_mask"]).sum() / packed["loss_mask"].sum())
        assert packed_loss == pytest.approx(sum(sums) / sum(counts), rel=1e-6)
        # without the per-example mask (plain causal over the row) the losses differ: the test can fail
        with torch.no_grad():
            leaky = sft_forward(model, {**packed, "segment_ids": torch.zeros_like(packed["segment_ids"])})
        assert not torch.allclose(leaky, per_token, atol=1e-3)


def test_one_full_finetuning_step_equals_transformers(sft_llama, sft_mcore_dir, examples):
    """Same examples, same AdamW (lr 1e-3, clip 1): loss, gradients and updated weights match HF's step."""
    hf = tiny_llama(vocab_size=VOCAB, max_position_embeddings=SEQ).train()
    hf.load_state_dict(sft_llama.state_dict())
    hf.config._attn_implementation = "eager"
    ids, labels, att = hf_batch(examples)
    out = hf(input_ids=ids, attention_mask=att, labels=labels)
    out.loss.backward()
    norm = torch.nn.utils.clip_grad_norm_(hf.parameters(), 1.0)
    assert norm > 1.5  # clipping is part of what is compared
    hf_grads = {n: p.grad.clone() for n, p in hf.named_parameters()}  # clipped, as Megatron's main_grad
    opt = torch.optim.AdamW(hf.parameters(), lr=1e-3, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.0)
    opt.step()
    arch = arch_from_hf_config(sft_llama.config.to_dict())
    with mcore_session():
        model, ddp, mopt = mcore_sft(sft_mcore_dir, lr=1e-3, clip=1.0)
        # two micro-batches of different token counts: the step still averages over all target tokens
        mbs = [_packed(examples[:2])[0], _alone(examples[2])]
        loss = mcore_step(ddp, mopt, mbs, SEQ)
        grads = mcore_grads_as_hf(model, arch)
        after = mcore_params_as_hf(model, arch)
    assert loss == pytest.approx(out.loss.item(), rel=1e-5)
    for name, p in hf.named_parameters():
        torch.testing.assert_close(grads[name], hf_grads[name], atol=1e-6, rtol=1e-4)
        # Adam's first step is ~lr * g / |g|: fp32 noise in a near-zero gradient moves it by a sliver of lr
        torch.testing.assert_close(after[name], p.detach(), atol=1e-5, rtol=1e-5)
    assert not torch.equal(
        after["model.layers.0.self_attn.q_proj.weight"],
        sft_llama.state_dict()["model.layers.0.self_attn.q_proj.weight"],
    )

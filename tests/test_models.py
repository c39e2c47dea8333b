"""InternLM2 presets: numbers match the cited HF configs, and the built megatron-core model matches the count."""

from __future__ import annotations

import pytest

from megatron_mmed.common.config import ConfigError
from megatron_mmed.models import PRESETS, get_preset, padded_vocab_size
from megatron_mmed.training.flops import parameter_count

# (hidden, layers, heads, kv heads, ffn) from each cited config.json; published totals from the model cards.
HF = {
    "internlm2-1.8b": (2048, 24, 16, 8, 8192, 1.89e9),
    "internlm2-7b": (4096, 32, 32, 8, 14336, 7.74e9),
    "internlm2-20b": (6144, 48, 48, 8, 16384, 19.86e9),
}


@pytest.mark.parametrize("name", sorted(HF))
def test_presets_copy_their_hf_config(name):
    p = get_preset(name)
    h, n, heads, kv, ffn, total = HF[name]
    assert (p.hidden_size, p.num_layers, p.num_attention_heads, p.num_query_groups, p.ffn_hidden_size) == (
        h,
        n,
        heads,
        kv,
        ffn,
    )
    assert (p.vocab_size, p.max_position_embeddings, p.rotary_base, p.norm_epsilon) == (
        92544,
        32768,
        1_000_000,
        1e-5,
    )
    assert p.source.startswith("https://huggingface.co/internlm/")
    assert parameter_count(p, 92544) == pytest.approx(total, rel=0.005)


def test_tiny_preset_keeps_the_architecture_small():
    t = PRESETS["tiny"]
    assert 64 <= t.hidden_size <= 128 and t.num_layers <= 4
    assert t.num_attention_heads > t.num_query_groups  # still grouped-query attention
    assert t.rotary_base == 1_000_000 and t.hidden_size % t.num_attention_heads == 0


def test_unknown_preset_lists_the_valid_ones():
    with pytest.raises(ConfigError, match="internlm2-7b"):
        get_preset("llama")


def test_vocab_padding_is_the_same_at_every_tp():
    """One padded size for TP 1..8, so a checkpoint saved at one TP loads at another."""
    assert {padded_vocab_size(92544, tp) for tp in (1, 2, 4, 8)} == {92544}  # 92544 = 723 * 128
    assert {padded_vocab_size(257, tp) for tp in (1, 2, 4, 8)} == {384}
    assert padded_vocab_size(257, 3) == 384 and padded_vocab_size(257, 3) % 3 == 0
    assert padded_vocab_size(92545, 1, divisible_by=64) == 92608


def test_built_model_parameter_count_matches_formula(mcore):
    """The megatron-core GPTModel of the tiny preset has exactly the parameters flops.parameter_count says."""
    from megatron_mmed.models.builder import build_gpt_model, transformer_config

    arch = PRESETS["tiny"]
    model = build_gpt_model(
        arch, transformer_config(arch, use_cpu_initialization=True), 384, 128, spec="local"
    )
    n = sum(p.numel() for p in model.parameters())
    names = [k for k, _ in model.named_parameters()]
    assert n == parameter_count(arch, 384)
    assert "output_layer.weight" in names and "embedding.word_embeddings.weight" in names  # untied
    assert not any(k.endswith(".bias") for k in names)


def test_padded_vocab_rows_are_masked_in_loss_gradient_and_logits(tmp_path):
    """Vocab 1000 padded to 1024: the loss equals transformers' (the 24 padding logits take no part in the
    softmax), the padding rows of the output layer get no gradient, and generation never sees them."""
    import math

    import torch
    import torch.nn.functional as F
    from convert_helpers import save_llama, tiny_llama

    from conversion import hf_to_mcore
    from conversion.mcore_io import build_model
    from megatron_mmed.common.distributed import mcore_session
    from megatron_mmed.models.weights import load_weights, read_model_config

    hf = tiny_llama(vocab_size=1000)
    hf_to_mcore(save_llama(hf, tmp_path / "hf"), tmp_path / "mc", skip_validation=True)
    saved = read_model_config(tmp_path / "mc" / "model_config.yaml")
    arch = saved.preset
    assert saved.padded_vocab_size == 1024
    ids = torch.tensor([[(7919 * i + 13) % 1000 for i in range(33)]])
    tokens, labels = ids[:, :-1], ids[:, 1:]
    hf.zero_grad()
    out = hf(tokens)
    true_loss = F.cross_entropy(out.logits[0].float(), labels[0])
    true_loss.backward()
    padded_logits = torch.cat(
        [out.logits[0].detach(), torch.zeros(32, 24)], dim=-1
    )  # what Megatron-LM trains on
    unmasked = F.cross_entropy(padded_logits, labels[0]).item()
    assert 1e-3 < unmasked / true_loss.item() - 1 < 1e-2  # the effect the mask removes (~2.4e-3 here)
    with mcore_session():
        model = build_model(arch, 1024, torch.float32)
        load_weights(tmp_path / "mc", [model])
        positions = torch.arange(32)[None]
        mask = torch.triu(torch.ones(32, 32, dtype=torch.bool), diagonal=1)[None, None]
        loss = model(tokens, positions, mask, labels=labels).mean()
        assert math.isclose(loss.item(), true_loss.item(), rel_tol=1e-5), (
            loss.item(),
            true_loss.item(),
            unmasked,
        )
        loss.backward()
        grad = model.output_layer.weight.grad
        assert torch.count_nonzero(grad[1000:]) == 0
        torch.testing.assert_close(grad[:1000], hf.lm_head.weight.grad, atol=1e-5, rtol=1e-4)
        with torch.no_grad():
            logits = model(tokens, positions, mask)
        assert logits.shape[-1] == 1024 and logits[..., 1000:].max() < -1e30
        assert logits.argmax(-1).max() < 1000

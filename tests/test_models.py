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


def test_built_model_parameter_count_matches_formula():
    """The megatron-core GPTModel of the tiny preset has exactly the parameters flops.parameter_count says."""
    import torch

    from megatron_mmed.models.builder import build_gpt_model, transformer_config
    from megatron_mmed.training.cpu_shim import cpu_shim

    arch = PRESETS["tiny"]
    with cpu_shim():
        from megatron.core import parallel_state as ps
        from megatron.core.tensor_parallel import model_parallel_cuda_manual_seed

        torch.distributed.init_process_group("gloo", init_method="tcp://127.0.0.1:0", rank=0, world_size=1)
        try:
            ps.initialize_model_parallel()
            model_parallel_cuda_manual_seed(1, force_reset_rng=True)
            model = build_gpt_model(
                arch, transformer_config(arch, use_cpu_initialization=True), 384, 128, spec="local"
            )
            n = sum(p.numel() for p in model.parameters())
            names = [k for k, _ in model.named_parameters()]
        finally:
            ps.destroy_model_parallel()
            torch.distributed.destroy_process_group()
    assert n == parameter_count(arch, 384)
    assert "output_layer.weight" in names and "embedding.word_embeddings.weight" in names  # untied
    assert not any(k.endswith(".bias") for k in names)

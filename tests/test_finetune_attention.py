"""Per-segment (varlen) attention of packed rows on CPU == megatron-core's dense block-diagonal masked attention."""

from __future__ import annotations

import pytest
import torch
from finetune_helpers import attention_mask

from megatron_mmed.finetune.packing import PAD_SEGMENT, row_segment_params
from megatron_mmed.models.attention import VARLEN_MODES, SegmentAttention

HEADS, GROUPS, DIM = 8, 2, 16  # grouped-query attention: 4 query heads per key/value head


def _segments(rows: list[list[int]], s: int) -> torch.Tensor:
    """``[b, s]`` segment ids: each row holds segments of the given lengths, then padding."""
    seg = torch.full((len(rows), s), PAD_SEGMENT, dtype=torch.long)
    for r, lengths in enumerate(rows):
        at = 0
        for k, n in enumerate(lengths):
            seg[r, at : at + n] = k
            at += n
    return seg


def _attention(cls, config):
    from megatron.core.transformer.enums import AttnMaskType

    return cls(config, layer_number=1, attn_mask_type=AttnMaskType.causal, attention_type="self")


def _config():
    from megatron.core.transformer.transformer_config import TransformerConfig

    return TransformerConfig(
        num_layers=1,
        hidden_size=HEADS * DIM,
        num_attention_heads=HEADS,
        num_query_groups=GROUPS,
        kv_channels=DIM,
        attention_dropout=0.0,
        masked_softmax_fusion=False,
        params_dtype=torch.float32,
    )


def _qkv(s: int, b: int):
    g = torch.Generator().manual_seed(0)
    q = torch.randn(s, b, HEADS, DIM, generator=g, dtype=torch.float64).float().requires_grad_()
    k = torch.randn(s, b, GROUPS, DIM, generator=g, dtype=torch.float64).float().requires_grad_()
    v = torch.randn(s, b, GROUPS, DIM, generator=g, dtype=torch.float64).float().requires_grad_()
    return q, k, v


def _out_and_grads(fn, q, k, v, weight):
    for t in (q, k, v):
        t.grad = None
    out = fn(q, k, v)
    (out * weight).sum().backward()
    return out.detach(), [t.grad.clone() for t in (q, k, v)]


@pytest.mark.parametrize("mode", VARLEN_MODES)
def test_segment_attention_equals_dense_masked_attention(mcore, mode, monkeypatch):
    """Three packed rows (3 segments + padding, 2 segments + padding, all padding) with GQA: on every example
    position the output, and everywhere the grads of q, k, v, match megatron-core's DotProductAttention under
    the block-diagonal causal mask (padding carries no loss, so its outputs are weighted 0)."""
    from megatron.core.transformer.dot_product_attention import DotProductAttention

    monkeypatch.setattr(SegmentAttention, "varlen_mode", mode)
    s, b = 24, 3
    seg = _segments([[7, 5, 9], [11, 10], []], s)
    real = (seg != PAD_SEGMENT).t()[:, :, None]  # [s, b, 1]
    q, k, v = _qkv(s, b)
    weight = torch.randn(s, b, HEADS * DIM, generator=torch.Generator().manual_seed(1)) * real
    config = _config()
    dense = _attention(DotProductAttention, config)
    varlen = _attention(SegmentAttention, config)
    mask = attention_mask(seg)
    params = row_segment_params(seg)
    assert params.cu_seqlens_q.tolist() == [0, 7, 12, 21, 32, 42, 42]  # example lengths
    assert params.cu_seqlens_q_padded.tolist() == [0, 7, 12, 24, 35, 48, 72]  # where each starts
    ref, ref_grads = _out_and_grads(lambda *t: dense(*t, mask), q, k, v, weight)
    got, got_grads = _out_and_grads(lambda *t: varlen(*t, None, packed_seq_params=params), q, k, v, weight)
    assert got.shape == ref.shape == (s, b, HEADS * DIM)
    torch.testing.assert_close(got * real, ref * real, atol=1e-5, rtol=1e-5)
    assert not got[~real[..., 0]].any()  # padding: not attended
    for g, r in zip(got_grads, ref_grads):
        torch.testing.assert_close(g, r, atol=1e-5, rtol=1e-5)
    # one segment per row (plain causal) differs: the comparison can fail
    leaky = varlen(q, k, v, None, packed_seq_params=row_segment_params(torch.zeros_like(seg)))
    assert not torch.allclose(leaky * real, ref * real, atol=1e-3)


@pytest.mark.parametrize("mode", VARLEN_MODES)
def test_segment_attention_thd_layout(mcore, mode, monkeypatch):
    """megatron-core's THD layout ([t, heads, dim], what it hands core attention for qkv_format='thd') gives
    the same output as the SBHD layout of the same row."""
    monkeypatch.setattr(SegmentAttention, "varlen_mode", mode)
    s = 16
    seg = _segments([[3, 8, 4]], s)
    q, k, v = _qkv(s, 1)
    attn = _attention(SegmentAttention, _config())
    params = row_segment_params(seg)
    sbhd = attn(q, k, v, None, packed_seq_params=params)
    thd = attn(q[:, 0], k[:, 0], v[:, 0], None, packed_seq_params=params)
    torch.testing.assert_close(thd, sbhd[:, 0], atol=0, rtol=0)


def test_segment_attention_without_segments_is_megatron_core_attention(mcore):
    """No packed_seq_params: the causal-mask path of DotProductAttention, unchanged (pretraining's)."""
    from megatron.core.transformer.dot_product_attention import DotProductAttention

    s = 12
    q, k, v = _qkv(s, 2)
    mask = attention_mask(torch.zeros(2, s, dtype=torch.long))
    config = _config()
    ref = _attention(DotProductAttention, config)(q, k, v, mask)
    got = _attention(SegmentAttention, config)(q, k, v, mask)
    torch.testing.assert_close(got, ref, atol=0, rtol=0)


def test_row_segment_params_rejects_a_mismatched_row(mcore):
    attn = _attention(SegmentAttention, _config())
    q, k, v = _qkv(8, 1)
    with pytest.raises(ValueError, match="cu_seqlens_q ends at 10, the packed rows hold 8"):
        attn(q, k, v, None, packed_seq_params=row_segment_params(torch.zeros(1, 10, dtype=torch.long)))

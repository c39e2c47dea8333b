"""Per-segment causal attention for megatron-core's local spec: packed rows without an ``s x s`` mask.

:class:`SegmentAttention` is the local spec's ``core_attention``. Given ``packed_seq_params`` it attends each
segment of a packed row to itself with ``torch.nn.functional.scaled_dot_product_attention(is_causal=True)``
(GQA through ``enable_gqa``), reading the segments from ``cu_seqlens_q`` as Transformer Engine's THD path does.
Without them it is megatron-core's ``DotProductAttention`` unchanged (pretraining's causal mask path).

Two layouts are accepted: THD (``[t, heads, dim]``, one row, what megatron-core hands over for
``qkv_format="thd"``) and SBHD (``[s, b, heads, dim]``) with ``cu_seqlens_q`` over the rows laid end to end
(row 0's positions, then row 1's, ...; every row starts a segment), see
:func:`megatron_mmed.finetune.packing.row_segment_params`. The segments are either attended one SDPA call each
(``"loop"``) or gathered into one batch padded to the longest segment (``"padded"``: pad keys come after every
real query of their segment, so the causal mask alone keeps them out; pad queries are dropped).
"""

from __future__ import annotations

import torch
from megatron.core.transformer.dot_product_attention import DotProductAttention

VARLEN_MODES = ("padded", "loop")


class SegmentAttention(DotProductAttention):
    """``DotProductAttention`` that, given ``packed_seq_params``, attends causally within each segment only."""

    varlen_mode: str = "padded"  # "padded" (one SDPA over segments padded to the longest) or "loop"

    def forward(
        self,
        query,
        key,
        value,
        attention_mask,
        attn_mask_type=None,
        attention_bias=None,
        packed_seq_params=None,
    ):
        if packed_seq_params is None:
            return super().forward(query, key, value, attention_mask, attn_mask_type, attention_bias)
        if attention_bias is not None or self.config.window_size is not None:
            raise ValueError("per-segment attention supports neither attention_bias nor window_size")
        if self.softmax_offset is not None:
            raise ValueError("per-segment attention supports only softmax_type='vanilla'")
        thd = query.dim() == 3
        if thd:  # [t, h, d]: one row
            query, key, value = query.unsqueeze(1), key.unsqueeze(1), value.unsqueeze(1)
        s, b, hq, d = query.shape
        cu = packed_seq_params.cu_seqlens_q
        if int(cu[-1]) != s * b:
            raise ValueError(f"cu_seqlens_q ends at {int(cu[-1])}, the packed rows hold {s * b} positions")
        q, k, v = (x.transpose(0, 1).reshape(b * s, x.shape[2], d) for x in (query, key, value))
        scale = self.softmax_scale * (self.layer_number if self.config.apply_query_key_layer_scaling else 1)
        dropout = self.attention_dropout.p if self.training else 0.0
        attend = _padded if self.varlen_mode == "padded" else _loop
        out = attend(q, k, v, cu.to(torch.long), scale, dropout)  # [b*s, hq, d]
        if thd:
            return out.reshape(s, hq * d)
        return out.reshape(b, s, hq * d).transpose(0, 1).contiguous()


def _sdpa(q, k, v, scale: float, dropout: float):
    """Causal SDPA over ``[..., heads, len, dim]`` (key/value heads may be fewer: grouped-query attention)."""
    return torch.nn.functional.scaled_dot_product_attention(
        q, k, v, dropout_p=dropout, is_causal=True, scale=scale, enable_gqa=k.shape[-3] != q.shape[-3]
    )


def _loop(q, k, v, cu: torch.Tensor, scale: float, dropout: float):
    """One SDPA call per segment (``q/k/v``: ``[t, heads, dim]``), outputs concatenated in order."""
    bounds = cu.tolist()
    outs = [
        _sdpa(
            q[a:e].transpose(0, 1), k[a:e].transpose(0, 1), v[a:e].transpose(0, 1), scale, dropout
        ).transpose(0, 1)
        for a, e in zip(bounds[:-1], bounds[1:])
    ]
    return torch.cat(outs, 0)


def _padded(q, k, v, cu: torch.Tensor, scale: float, dropout: float):
    """All segments in one SDPA call: ``[segments, heads, longest, dim]``, each segment left-aligned.

    A segment shorter than the longest is filled with the positions that follow it (clamped to the end);
    those come after all its real queries, so ``is_causal`` hides them, and their own outputs are dropped.
    """
    t = q.shape[0]
    starts, lengths = cu[:-1], cu[1:] - cu[:-1]
    longest = int(lengths.max())
    offsets = torch.arange(longest, device=q.device)
    index = (starts[:, None] + offsets[None, :]).clamp_(max=t - 1)  # [segments, longest]
    gathered = [x[index].transpose(1, 2) for x in (q, k, v)]  # [segments, heads, longest, dim]
    out = _sdpa(*gathered, scale, dropout).transpose(1, 2).reshape(-1, q.shape[1], q.shape[2])
    # position p of segment i, offset j, sits at slot i * longest + j of the padded output
    slot = torch.repeat_interleave(torch.arange(len(lengths), device=q.device) * longest - starts, lengths)
    return out[slot + torch.arange(t, device=q.device)]

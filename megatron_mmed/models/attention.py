"""Per-segment causal attention for megatron-core's local spec: packed rows without an ``s x s`` mask.

:class:`SegmentAttention` is the local spec's ``core_attention``. Given ``packed_seq_params`` it attends each
segment (example) of a packed row to itself with ``scaled_dot_product_attention(is_causal=True)`` (GQA through
``enable_gqa``), reading the segments as Transformer Engine's THD path does: lengths from ``cu_seqlens_q``,
start offsets from ``cu_seqlens_q_padded`` (or ``cu_seqlens_q`` when unpadded). Positions outside every
segment (row padding) are not attended and get a zero output; nothing reads them (no loss, no other token
attends them). Without ``packed_seq_params`` it is megatron-core's ``DotProductAttention`` unchanged
(pretraining's causal-mask path).

Layouts: THD (``[t, heads, dim]``, what megatron-core hands over for ``qkv_format="thd"``) and SBHD
(``[s, b, heads, dim]``) with the offsets over the rows laid end to end (row 0's positions, then row 1's, ...),
see :func:`megatron_mmed.finetune.packing.row_segment_params`. The segments are attended one SDPA call each
(``"loop"``) or gathered into one batch padded to the longest segment (``"padded"``: pad keys come after every
real query of their segment, so the causal mask alone keeps them out; pad queries are dropped).
"""

from __future__ import annotations

import torch
from megatron.core.transformer.dot_product_attention import DotProductAttention

VARLEN_MODES = ("padded", "loop")


class SegmentAttention(DotProductAttention):
    """``DotProductAttention`` that, given ``packed_seq_params``, attends causally within each segment only."""

    # "loop" (one SDPA call per segment) or "padded" (one over segments padded to the longest); loop measured
    # faster on CPU (benchmarks/finetune.py: padding to the longest wastes more than the calls cost)
    varlen_mode: str = "loop"

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
        cu = packed_seq_params.cu_seqlens_q.to(torch.long)
        cu_padded = packed_seq_params.cu_seqlens_q_padded
        cu_padded = cu if cu_padded is None else cu_padded.to(torch.long)
        if int(cu_padded[-1]) != s * b:
            raise ValueError(
                f"cu_seqlens_q ends at {int(cu_padded[-1])}, the packed rows hold {s * b} positions"
            )
        q, k, v = (x.transpose(0, 1).reshape(b * s, x.shape[2], d) for x in (query, key, value))
        scale = self.softmax_scale * (self.layer_number if self.config.apply_query_key_layer_scaling else 1)
        dropout = self.attention_dropout.p if self.training else 0.0
        attend = _padded if self.varlen_mode == "padded" else _loop
        out = attend(q, k, v, cu_padded[:-1], cu[1:] - cu[:-1], scale, dropout)  # [b*s, hq*d]
        if thd:
            return out
        return out.reshape(b, s, hq * d).transpose(0, 1).contiguous()


def _sdpa(q, k, v, scale: float, dropout: float):
    """Causal SDPA over ``[batch, heads, len, dim]`` (key/value heads may be fewer: grouped-query attention).
    Four dimensions: with three, CPU SDPA takes its unfused math path."""
    return torch.nn.functional.scaled_dot_product_attention(
        q, k, v, dropout_p=dropout, is_causal=True, scale=scale, enable_gqa=k.shape[1] != q.shape[1]
    )


def _loop(q, k, v, starts: torch.Tensor, lengths: torch.Tensor, scale: float, dropout: float):
    """One SDPA call per segment (``q/k/v``: ``[t, heads, dim]``); positions outside every segment get 0."""
    t, width = q.shape[0], q.shape[1] * q.shape[2]
    pieces, at = [], 0
    for a, n in zip(starts.tolist(), lengths.tolist()):
        if a > at:
            pieces.append(q.new_zeros(a - at, width))
        if n:
            seg = [x[a : a + n].transpose(0, 1)[None] for x in (q, k, v)]  # [1, heads, n, dim]
            pieces.append(_sdpa(*seg, scale, dropout)[0].transpose(0, 1).reshape(n, width))
        at = a + n
    if at < t:
        pieces.append(q.new_zeros(t - at, width))
    return torch.cat(pieces, 0)


def _padded(q, k, v, starts: torch.Tensor, lengths: torch.Tensor, scale: float, dropout: float):
    """All segments in one SDPA call: ``[segments, heads, longest, dim]``, each segment left-aligned.

    A segment shorter than the longest is filled with the positions that follow it (clamped to the end);
    those come after all its real queries, so ``is_causal`` hides them, and their own outputs are dropped.
    Positions outside every segment (a row's padding) get 0.
    """
    t, width, dev = q.shape[0], q.shape[1] * q.shape[2], q.device
    nseg, longest = len(lengths), int(lengths.max()) if len(lengths) else 0
    if longest == 0:
        return q.new_zeros(t, width)
    index = (starts[:, None] + torch.arange(longest, device=dev)[None, :]).clamp_(max=t - 1)
    gathered = [x[index].transpose(1, 2) for x in (q, k, v)]  # [segments, heads, longest, dim]
    out = _sdpa(*gathered, scale, dropout).transpose(1, 2).reshape(nseg * longest, width)
    out = torch.cat([out, out.new_zeros(1, width)])  # slot nseg * longest: the zeros of padding positions
    # token j of segment i sits at position starts[i] + j and at slot i * longest + j of the padded output
    seg = torch.repeat_interleave(torch.arange(nseg, device=dev), lengths)
    offset = torch.arange(len(seg), device=dev) - torch.repeat_interleave(
        torch.cumsum(lengths, 0) - lengths, lengths
    )
    source = torch.full((t,), nseg * longest, dtype=torch.long, device=dev)
    source[starts[seg] + offset] = seg * longest + offset
    return out[source]

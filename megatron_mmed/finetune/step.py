"""The SFT forward step for megatron-core's schedules: per-example attention and positions, masked loss.

On CPU (local spec) a packed row's segments reach the local spec's
:class:`~megatron_mmed.models.attention.SegmentAttention` as ``cu_seqlens`` (:func:`row_segment_params`), which
attends each example to itself (SDPA, no ``s x s`` mask), and RoPE angles are taken at each token's own position
(``position_ids`` restart per example; megatron-core's ``RotaryEmbedding`` would otherwise number the whole row
0..s-1). On GPU with Transformer Engine the row goes through megatron-core's packed-sequence (THD) path, where
``cu_seqlens`` do both. The loss is the sum of per-token cross-entropy over target tokens with their count, so a
global batch averages over all its target tokens (``calculate_per_token_loss``), whatever the micro-batch split.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator

import torch

from megatron_mmed.finetune.packing import packed_seq_params, row_segment_params


class ExamplePositionRoPE(torch.nn.Module):
    """Wraps a GPTModel's ``RotaryEmbedding``: while ``positions`` is set, returns angles at those positions.

    Holds no tensors of its own, so the model's (sharded) state dict does not change.
    """

    def __init__(self, inner: torch.nn.Module) -> None:
        super().__init__()
        self.inner = inner
        self.positions: torch.Tensor | None = None  # [b, s]

    def get_rotary_seq_len(self, *args, **kwargs) -> int:
        return self.inner.get_rotary_seq_len(*args, **kwargs)

    def forward(self, max_seq_len: int, offset: int = 0, packed_seq: bool = False, cp_group=None):
        emb = self.inner(max_seq_len, offset=offset, packed_seq=packed_seq, cp_group=cp_group)
        if self.positions is None or packed_seq:
            return emb
        return emb[:, 0][self.positions.t()]  # [s, 1, 1, d] -> [s, b, 1, d]


def _gpt(model):
    from megatron.core.utils import get_attr_wrapped_model

    return get_attr_wrapped_model(model, "rotary_pos_emb", return_model_obj=True)


def use_example_positions(model) -> None:
    """Make ``model`` (a GPTModel, possibly DDP/Float16-wrapped) honour ``position_ids`` in RoPE."""
    gpt = _gpt(model)
    if not isinstance(gpt.rotary_pos_emb, ExamplePositionRoPE):
        gpt.rotary_pos_emb = ExamplePositionRoPE(gpt.rotary_pos_emb)


@contextlib.contextmanager
def example_positions(model, position_ids: torch.Tensor) -> Iterator[None]:
    """RoPE at ``position_ids`` for the forward passes inside the block (installs the wrapper if needed)."""
    use_example_positions(model)
    rope = _gpt(model).rotary_pos_emb
    rope.positions = position_ids
    try:
        yield
    finally:
        rope.positions = None


def masked_loss(loss_mask: torch.Tensor) -> Callable:
    """``loss_func`` for megatron-core's schedules: (sum of target-token losses, their count, for logging)."""

    def loss_func(per_token_loss: torch.Tensor):
        mask = loss_mask.float()
        loss_sum = (per_token_loss.float() * mask).sum()
        count = mask.sum()
        return loss_sum, count.to(torch.int), {"lm loss": torch.stack([loss_sum.detach(), count])}

    return loss_func


def sft_forward(model, batch: dict[str, torch.Tensor], thd: bool = False):
    """Per-token losses ``[b, s]`` of one SFT micro-batch (already on the model's device)."""
    if thd:
        return model(
            batch["tokens"],
            batch["position_ids"],
            None,
            labels=batch["labels"],
            packed_seq_params=packed_seq_params(batch["segment_ids"]),
        )
    with example_positions(model, batch["position_ids"]):
        return model(
            batch["tokens"],
            batch["position_ids"],
            None,
            labels=batch["labels"],
            packed_seq_params=row_segment_params(batch["segment_ids"]),
        )


def make_forward_step(device: str | torch.device = "cpu", thd: bool = False) -> Callable:
    """``forward_step_func(data_iterator, model)`` for ``get_forward_backward_func()``: next SFT micro-batch
    from the iterator, per-token loss, and the masked ``loss_func``. ``thd``: the GPU packed path."""

    def forward_step(data_iterator, model):
        batch = {k: v.to(device, non_blocking=True) for k, v in next(data_iterator).items()}
        return sft_forward(model, batch, thd), masked_loss(batch["loss_mask"])

    return forward_step

"""Epoch order, per-step packing and micro-batches of SFT examples: a pure function of (seed, step).

A step takes the next ``global_batch_size`` examples of its epoch's order (``epoch_order``: one seeded
permutation per epoch, so a resumed run at step ``s`` sees exactly the examples an uninterrupted one would),
packs them first-fit into rows of ``seq_length`` positions, and deals the rows to the DP ranks (empty rows
pad the count to a multiple of DP x micro-batch so every rank runs the same number of micro-batches).

In a row every example keeps its attention to itself and its positions restart at 0: ``segment_ids`` give the
segments of the local spec's per-segment attention on CPU (:func:`row_segment_params`; the tests hold the
equivalent dense mask) and ``cu_seqlens`` megatron-core's packed (THD) path on GPU
(:func:`packed_seq_params`). An example of ``n`` tokens fills ``n - 1`` positions (inputs
``tokens[:-1]``, labels ``tokens[1:]``), and ``loss_mask`` is 1 where the label is a target token.
"""

from __future__ import annotations

import bisect
from dataclasses import dataclass

import numpy as np
import torch

from megatron_mmed.finetune.config import steps_per_epoch
from megatron_mmed.finetune.data import SFTTokens

PAD_SEGMENT = -1  # segment id of padding positions (attend only among themselves, no loss)


def epoch_order(num_examples: int, seed: int, epoch: int) -> np.ndarray:
    """The examples' order in ``epoch``: a permutation drawn from (seed, epoch) alone."""
    return np.random.default_rng([seed, epoch]).permutation(num_examples)


def first_fit(lengths: list[int], capacity: int) -> list[list[int]]:
    """Indices of ``lengths`` packed first-fit, in order, into bins of ``capacity`` (bins in creation order).

    Each item goes to the fullest bin it still fits (best fit over a sorted list of remaining capacities),
    which keeps the packing tight without reordering the data; an item larger than ``capacity`` is an error.
    """
    bins: list[list[int]] = []
    free: list[tuple[int, int]] = []  # sorted (remaining capacity, bin index)
    for i, n in enumerate(lengths):
        if n > capacity:
            raise ValueError(f"item of {n} positions exceeds the row capacity {capacity}")
        k = bisect.bisect_left(free, (n, -1))
        if k < len(free):
            room, b = free.pop(k)
            bins[b].append(i)
            if room - n > 0:
                bisect.insort(free, (room - n, b))
        else:
            bins.append([i])
            if capacity - n > 0:
                bisect.insort(free, (capacity - n, len(bins) - 1))
    return bins


@dataclass
class StepBatch:
    """One optimizer step's data on one DP rank, plus the step's global counts (for metrics)."""

    step: int
    epoch: int
    microbatches: list[dict[str, torch.Tensor]]  # tokens, labels, loss_mask, position_ids, segment_ids
    examples: int  # examples in this step (all ranks)
    positions: int  # row positions in this step (all ranks), padding included
    real_positions: int  # positions holding example tokens (all ranks)
    target_tokens: int  # positions with loss (all ranks)

    @property
    def num_microbatches(self) -> int:
        return len(self.microbatches)

    @property
    def non_padding_share(self) -> float:
        return self.real_positions / max(self.positions, 1)


class SFTBatches:
    """Step -> this rank's micro-batches; deterministic in (examples, seed, sizes), independent of history."""

    def __init__(
        self,
        examples: list[SFTTokens],
        seq_length: int,
        global_batch_size: int,
        micro_batch_size: int = 1,
        dp_size: int = 1,
        seed: int = 42,
        pack: bool = True,
        pad_id: int = 0,
        pad_to_multiple_of: int = 8,
        fixed_length: bool = False,
    ) -> None:
        if not examples:
            raise ValueError("no examples")
        longest = max(len(e.tokens) for e in examples)
        if longest - 1 > seq_length:
            raise ValueError(f"an example of {longest} tokens does not fit seq_length {seq_length}")
        self.examples, self.seq_length = examples, seq_length
        self.gbs, self.mbs, self.dp, self.seed = global_batch_size, micro_batch_size, dp_size, seed
        self.pack, self.pad_id, self.multiple = pack, pad_id, pad_to_multiple_of
        self.fixed_length = fixed_length  # rows always seq_length long (pipeline parallelism needs it)
        self.steps_per_epoch = steps_per_epoch(len(examples), global_batch_size)
        self._order: tuple[int, np.ndarray] | None = None

    def _epoch(self, epoch: int) -> np.ndarray:
        if self._order is None or self._order[0] != epoch:
            self._order = (epoch, epoch_order(len(self.examples), self.seed, epoch))
        return self._order[1]

    def example_indices(self, step: int) -> tuple[int, np.ndarray]:
        """``(epoch, indices)`` of the examples that step ``step`` (0-based) trains on."""
        epoch, k = divmod(step, self.steps_per_epoch)
        return epoch, self._epoch(epoch)[k * self.gbs : (k + 1) * self.gbs]

    def rows(self, step: int) -> tuple[int, list[list[int]]]:
        """``(epoch, rows)``: the step's example indices grouped into rows, padded with empty rows to DP x mbs."""
        epoch, idx = self.example_indices(step)
        if self.pack:
            bins = first_fit([len(self.examples[i].tokens) - 1 for i in idx], self.seq_length)
            rows = [[int(idx[j]) for j in b] for b in bins]
        else:
            rows = [[int(i)] for i in idx]
        per = self.dp * self.mbs
        rows += [[] for _ in range(-len(rows) % per)]
        return epoch, rows

    def step(self, step: int, dp_rank: int = 0) -> StepBatch:
        """Micro-batches of step ``step`` (0-based) for ``dp_rank``: rows ``dp_rank, dp_rank + DP, ...``."""
        epoch, rows = self.rows(step)
        mine = rows[dp_rank :: self.dp]
        mbs = [self._microbatch(mine[k : k + self.mbs]) for k in range(0, len(mine), self.mbs)]
        real = sum(len(self.examples[i].tokens) - 1 for r in rows for i in r)
        target = sum(self.examples[i].num_target for r in rows for i in r)
        return StepBatch(step, epoch, mbs, sum(map(len, rows)), self.positions(rows), real, target)

    def positions(self, rows: list[list[int]]) -> int:
        """Positions computed for ``rows`` on all ranks: each micro-batch is as long as its longest row."""
        total = 0
        for rank in range(self.dp):
            mine = [self._row_length(r) for r in rows[rank :: self.dp]]
            total += sum(
                max(mine[k : k + self.mbs]) * len(mine[k : k + self.mbs])
                for k in range(0, len(mine), self.mbs)
            )
        return total

    def _row_length(self, row: list[int]) -> int:
        n = sum(len(self.examples[i].tokens) - 1 for i in row)
        if self.fixed_length:
            return self.seq_length
        return min(self.seq_length, max(self.multiple, -(-n // self.multiple) * self.multiple))

    def _microbatch(self, rows: list[list[int]]) -> dict[str, torch.Tensor]:
        s = max(self._row_length(r) for r in rows)
        b = len(rows)
        tokens = np.full((b, s), self.pad_id, dtype=np.int64)
        labels = np.full((b, s), self.pad_id, dtype=np.int64)
        loss_mask = np.zeros((b, s), dtype=np.float32)
        position_ids = np.zeros((b, s), dtype=np.int64)
        segment_ids = np.full((b, s), PAD_SEGMENT, dtype=np.int64)
        for r, row in enumerate(rows):
            at = 0
            for seg, i in enumerate(row):
                ex = self.examples[i]
                n = len(ex.tokens) - 1
                tokens[r, at : at + n] = ex.tokens[:-1]
                labels[r, at : at + n] = ex.tokens[1:]
                loss_mask[r, at + ex.prompt_len - 1 : at + n] = 1.0
                position_ids[r, at : at + n] = np.arange(n)
                segment_ids[r, at : at + n] = seg
                at += n
            position_ids[r, at:] = np.arange(s - at)
        return {
            "tokens": torch.from_numpy(tokens),
            "labels": torch.from_numpy(labels),
            "loss_mask": torch.from_numpy(loss_mask),
            "position_ids": torch.from_numpy(position_ids),
            "segment_ids": torch.from_numpy(segment_ids),
        }


def cu_seqlens(segment_ids: torch.Tensor) -> torch.Tensor:
    """Cumulative sequence lengths (int32, starting at 0) of the segments of a one-row micro-batch; the
    padding tail counts as one more sequence so the total equals the row length (what TE's THD kernels need)."""
    if segment_ids.shape[0] != 1:
        raise ValueError("the packed (THD) path needs micro_batch_size=1")
    seg = segment_ids[0]
    change = torch.nonzero(seg[1:] != seg[:-1]).flatten() + 1
    bounds = torch.cat([torch.zeros(1, dtype=torch.long), change.cpu(), torch.tensor([seg.numel()])])
    return bounds.to(torch.int32).to(segment_ids.device)


def packed_seq_params(segment_ids: torch.Tensor):
    """megatron-core ``PackedSeqParams`` (THD) for a one-row packed micro-batch: per-example attention and
    RoPE positions restarting per example inside Transformer Engine's kernels (GPU only)."""
    from megatron.core.packed_seq_params import PackedSeqParams

    cu = cu_seqlens(segment_ids)
    longest = int((cu[1:] - cu[:-1]).max())
    return PackedSeqParams(
        qkv_format="thd",
        cu_seqlens_q=cu,
        cu_seqlens_kv=cu,
        max_seqlen_q=longest,
        max_seqlen_kv=longest,
    )


def row_segment_params(segment_ids: torch.Tensor):
    """megatron-core ``PackedSeqParams`` (SBHD) for :class:`~megatron_mmed.models.attention.SegmentAttention`:
    the examples of a ``[b, s]`` micro-batch with its rows laid end to end, in Transformer Engine's padded-THD
    convention: ``cu_seqlens_q`` sums the examples' lengths, ``cu_seqlens_q_padded`` gives where each starts (a
    row's last example also spans the row's padding; an empty row is one example of length 0). Attention then
    stays within each example and skips padding, without an ``s x s`` mask."""
    from megatron.core.packed_seq_params import PackedSeqParams

    b, s = segment_ids.shape
    seg = segment_ids.cpu()
    lengths, padded = [], []
    for row in seg:
        counts = torch.bincount(row[row != PAD_SEGMENT]).tolist()  # segment ids are 0, 1, ... in order
        lengths += counts or [0]
        padded += counts[:-1] + [s - sum(counts[:-1])] if counts else [s]
    cu = torch.tensor([0, *lengths]).cumsum(0).to(torch.int32).to(segment_ids.device)
    cu_padded = torch.tensor([0, *padded]).cumsum(0).to(torch.int32).to(segment_ids.device)
    longest = max(padded)  # RoPE's table covers every position of a row, padding's included
    return PackedSeqParams(
        qkv_format="sbhd",
        cu_seqlens_q=cu,
        cu_seqlens_kv=cu,
        cu_seqlens_q_padded=cu_padded,
        cu_seqlens_kv_padded=cu_padded,
        max_seqlen_q=longest,
        max_seqlen_kv=longest,
    )


def packing_stats(batches: SFTBatches, steps: int | None = None) -> dict[str, float | int]:
    """Non-padding share, rows and examples per row over the first ``steps`` steps (default: one epoch)."""
    n = steps or batches.steps_per_epoch
    positions = real = rows_total = examples = 0
    for s in range(n):
        _, rows = batches.rows(s)
        positions += batches.positions(rows)
        real += sum(len(batches.examples[i].tokens) - 1 for r in rows for i in r)
        rows_total += len(rows)
        examples += sum(map(len, rows))
    return {
        "steps": n,
        "rows": rows_total,
        "examples": examples,
        "examples_per_row": examples / max(rows_total, 1),
        "non_padding_share": real / max(positions, 1),
        "seq_length": batches.seq_length,
        "pack": batches.pack,
    }

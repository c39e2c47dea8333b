"""Prompt-pass groups for batched greedy generation: rows that share a token prefix go together (the paper prompt
repeats ~220 tokens, the Alpaca wrapper and the language's instruction, in every question: their keys and values
are computed once per group of rows), and rows of similar length share a pass (less right padding).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

# A prompt pass's fixed cost in padded tokens (tiny CPU model: ~3 ms a pass, ~17 us a token): an extra pass is
# worth it only when it saves more padding or recomputed prefix than this.
PASS_COST = 160


@dataclass(frozen=True)
class PrefillGroup:
    """Rows (indices into the batch, longest first) that go through one prompt pass, and how many leading
    tokens they all share (computed once at batch size 1 and broadcast; 0 = none)."""

    rows: tuple[int, ...]
    shared: int


def common_prefix(a: Sequence[int], b: Sequence[int]) -> int:
    """Number of leading tokens ``a`` and ``b`` have in common."""
    n = min(len(a), len(b))
    i = 0
    while i < n and a[i] == b[i]:
        i += 1
    return i


def length_runs(lens: list[int], max_rows: int, pass_cost: int = PASS_COST) -> list[tuple[int, int]]:
    """Cheapest cut of rows sorted longest first into runs of at most ``max_rows`` (each padded to its first
    row's length, plus ``pass_cost`` a run): (start, end) per run."""
    best, cut = [0] + [float("inf")] * len(lens), [0] * (len(lens) + 1)
    for j in range(1, len(lens) + 1):
        for i in range(max(0, j - max_rows), j):
            cost = best[i] + pass_cost + (j - i) * lens[i]
            if cost < best[j]:
                best[j], cut[j] = cost, i
    runs, j = [], len(lens)
    while j:
        runs.append((cut[j], j))
        j = cut[j]
    return runs[::-1]


def _plan(
    run: list[int], lcps: list[int], seqs: Sequence[Sequence[int]]
) -> tuple[float, list[tuple[list, int]]]:
    """(token cost, [(rows, shared prefix)]) for token-sorted rows ``run`` (``lcps``: neighbours' common prefix):
    the run whole, or split where neighbours share least, whichever computes fewer tokens."""
    if len(run) == 1:
        return len(seqs[run[0]]), [(run, 0)]
    low = min(min(lcps), min(len(seqs[r]) for r in run) - 1)  # every row keeps a token of its own
    whole = low + PASS_COST + sum(len(seqs[r]) - low for r in run), [(run, low)]
    cuts = [0, *(k + 1 for k, v in enumerate(lcps) if v <= low), len(run)]
    if len(cuts) == 2:
        return whole
    parts = [_plan(run[a:b], lcps[a : b - 1], seqs) for a, b in zip(cuts, cuts[1:], strict=False)]
    split = sum(c for c, _ in parts), [g for _, gs in parts for g in gs]
    return min(whole, split, key=lambda x: x[0])


def prefill_groups(seqs: Sequence[Sequence[int]], max_rows: int) -> list[PrefillGroup]:
    """Prompt passes of at most ``max_rows`` rows covering every row once: rows with a long common prefix
    together (that prefix computed once), then cut by length so that each pass pads little."""
    order = sorted(range(len(seqs)), key=lambda i: seqs[i])
    lcps = [common_prefix(seqs[a], seqs[b]) for a, b in zip(order, order[1:], strict=False)]
    clusters = _plan(order, lcps, seqs)[1] if seqs else []
    alone = [r for rows, shared in clusters if len(rows) < 2 or not shared for r in rows]  # pooled: no prefix
    out = []
    for rows, shared in [*((rows, s) for rows, s in clusters if len(rows) > 1 and s), (alone, 0)]:
        rows = sorted(rows, key=lambda i: -len(seqs[i]))
        runs = length_runs([len(seqs[r]) - shared for r in rows], max_rows)
        out += [PrefillGroup(tuple(rows[a:b]), shared) for a, b in runs]
    return out

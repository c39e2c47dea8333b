"""Prompt-pass planning for batched generation: rows grouped by their shared token prefix (one per paper-prompt
instruction language), every row covered once with a token of its own, passes cut by length."""

from __future__ import annotations

import pytest

from eval.prefix import PASS_COST, common_prefix, prefill_groups


def _covered(groups, n):
    rows = sorted(r for g in groups for r in g.rows)
    assert rows == list(range(n))


def test_common_prefix():
    assert common_prefix([1, 2, 3], [1, 2, 4]) == 2
    assert common_prefix([1, 2], [1, 2, 3]) == 2
    assert common_prefix([], [1]) == 0 and common_prefix([5], [6]) == 0


def test_rows_split_by_instruction_prefix():
    wrapper = list(range(1000, 1080))
    seqs = []
    for lang in range(3):  # 3 "languages": the wrapper, then 150 tokens of instruction, then the question
        instr = [2000 + 200 * lang + i for i in range(150)]
        seqs += [wrapper + instr + [5000 + 100 * lang + q] * (40 + 30 * q) for q in range(4)]
    groups = prefill_groups(seqs, max_rows=8)
    _covered(groups, len(seqs))
    for g in groups:
        assert g.shared == 230  # wrapper + its language's instruction, not just the common wrapper
        assert len({tuple(seqs[r][:230]) for r in g.rows}) == 1
        assert [len(seqs[r]) for r in g.rows] == sorted((len(seqs[r]) for r in g.rows), reverse=True)


def test_no_shared_pass_when_it_does_not_pay():
    assert [g.shared for g in prefill_groups([[1, 2, 3, 4], [1, 2, 3, 5]], 8)] == [0]  # 3 tokens < a pass
    single = prefill_groups([list(range(500))], 8)
    assert [(g.rows, g.shared) for g in single] == [((0,), 0)]
    assert prefill_groups([], 8) == []


@pytest.mark.parametrize("max_rows", [1, 2, 3, 8])
def test_every_row_keeps_a_token_and_passes_respect_max_rows(max_rows):
    base = list(range(400))
    seqs = [base, base[:300], base + [7] * 5, base[:350], base + [9]]  # some are prefixes of others
    groups = prefill_groups(seqs, max_rows)
    _covered(groups, len(seqs))
    for g in groups:
        assert len(g.rows) <= max_rows
        assert all(len(seqs[r]) > g.shared for r in g.rows)
        assert len({tuple(seqs[r][: g.shared]) for r in g.rows}) == 1


def test_passes_cut_by_length():
    seqs = [[1] * n for n in (900, 880, 120, 110, 100)]
    groups = prefill_groups(seqs, 8)
    long, short = ({0, 1}, {2, 3, 4})
    assert {frozenset(g.rows) for g in groups} >= {frozenset(long)} or PASS_COST > 700
    assert any(set(g.rows) == short for g in groups)

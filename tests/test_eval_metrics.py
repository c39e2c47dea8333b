"""Rationale metrics against hand-computed values, and the language-aware tokenisation they rely on."""

from __future__ import annotations

import math

import pytest

from eval.metrics import corpus_bleu, lcs_length, rationale_metrics, rouge_l, rouge_n, tokenize

CAND = ["the", "cat", "sat", "on", "the", "mat"]
REF = ["the", "cat", "is", "on", "the", "mat"]


def test_bleu_hand_computed():
    # p1 = 5/6, p2 = 3/5, p3 = 1/4, p4 = 0; equal lengths so no brevity penalty.
    b1, b2, b3, b4 = corpus_bleu([CAND], [REF])
    assert b1 == pytest.approx(100 * 5 / 6)
    assert b2 == pytest.approx(100 * math.sqrt(5 / 6 * 3 / 5))
    assert b3 == pytest.approx(50.0)
    assert b4 == 0.0


def test_bleu_brevity_penalty_and_corpus_sums():
    short, ref = ["the", "cat"], ["the", "cat", "sat", "down"]
    b1, b2, _, _ = corpus_bleu([short], [ref])
    assert b1 == pytest.approx(100 * math.exp(1 - 4 / 2))
    assert b2 == pytest.approx(100 * math.exp(1 - 4 / 2))
    # corpus level: counts are summed before dividing (7 of 8 unigrams match; c = 8, r = 10)
    c1 = corpus_bleu([CAND, short], [REF, ref])[0]
    assert c1 == pytest.approx(100 * math.exp(1 - 10 / 8) * 7 / 8)
    assert corpus_bleu([[]], [ref]) == [0.0] * 4


def test_rouge_hand_computed():
    assert rouge_n(CAND, REF, 1) == pytest.approx(5 / 6)
    assert rouge_n(CAND, REF, 2) == pytest.approx(3 / 5)
    assert rouge_l(CAND, REF) == pytest.approx(5 / 6)  # LCS "the cat on the mat"
    assert rouge_n(["the", "cat"], ["the", "cat", "sat", "down"], 1) == pytest.approx(2 / 3)  # P 1, R 1/2
    assert rouge_l([], REF) == 0.0
    assert lcs_length(list("ABCBDAB"), list("BDCABA")) == 4


def test_rationale_metrics_keys_and_identity():
    same = rationale_metrics(["El paciente tiene fiebre alta."], ["el paciente tiene fiebre alta"], "Spanish")
    assert same["n"] == 1
    for k in ("bleu1", "bleu2", "bleu3", "bleu4", "rouge1", "rouge2", "rougeL"):
        assert same[k] == pytest.approx(100.0), k
    m = rationale_metrics([" ".join(CAND)], [" ".join(REF)], "English")
    assert m["bleu1"] == pytest.approx(100 * 5 / 6, abs=1e-3)
    assert m["rougeL"] == pytest.approx(100 * 5 / 6, abs=1e-3)
    assert rationale_metrics([], [], "English") == {"n": 0}


def test_tokenize_per_language():
    assert tokenize("患者出现发热和咳嗽，诊断为肺炎。", "Chinese") == [
        "患者", "出现", "发热", "和", "咳嗽", "诊断", "为", "肺炎",
    ]  # fmt: skip
    ja = tokenize("急性心筋梗塞の患者に、収縮期雑音が出現した。", "Japanese")
    assert ja[:4] == ["急性", "心筋梗塞", "の", "患者"] and "、" not in ja and "。" not in ja
    assert tokenize("L'éthanol est métabolisé, n'est-ce pas?", "French") == [
        "l", "éthanol", "est", "métabolisé", "n", "est", "ce", "pas",
    ]  # fmt: skip
    assert tokenize("Бутамирата цитрат НЕ является", "Russian") == ["бутамирата", "цитрат", "не", "является"]


def test_chinese_metrics_use_words_not_characters():
    # words 患者/发生/咳嗽 vs 患者/发热/咳嗽: 2 of 3 unigrams, 0 of 2 bigrams (characters would give 5/6 and 3/5)
    m = rationale_metrics(["患者发生咳嗽"], ["患者发热咳嗽"], "Chinese")
    assert m["rouge1"] == pytest.approx(100 * 2 / 3, abs=1e-3)
    assert m["rouge2"] == 0.0
    assert m["rougeL"] == pytest.approx(100 * 2 / 3, abs=1e-3)

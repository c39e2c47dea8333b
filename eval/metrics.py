"""Accuracy and rationale metrics: BLEU-1…4, ROUGE-1/2/L over language-aware tokens, optional BERTScore.

Written here rather than taken from sacrebleu/rouge-score so the tokenisation is ours for all six languages
(jieba for Chinese, janome for Japanese, lower-cased word tokens otherwise) and the definitions are pinned:
BLEU-n is corpus-level cumulative BLEU (uniform weights over 1..n-gram precisions, brevity penalty), ROUGE-n
and ROUGE-L are the mean per-item F1; all reported ×100.
"""

from __future__ import annotations

import logging
import math
import re
from collections import Counter
from collections.abc import Sequence
from functools import lru_cache
from typing import Any

_WORD = re.compile(r"\w+")


@lru_cache(maxsize=1)
def _janome():
    from janome.tokenizer import Tokenizer

    return Tokenizer(wakati=True)


@lru_cache(maxsize=1)
def _jieba():
    import jieba

    jieba.setLogLevel(logging.WARNING)
    return jieba


def tokenize(text: str, language: str) -> list[str]:
    """Word tokens for BLEU/ROUGE: jieba (Chinese), janome (Japanese), ``\\w+`` otherwise; lower-cased, no punctuation."""
    text = text.casefold()
    if language == "Chinese":
        toks = _jieba().lcut(text)
    elif language == "Japanese":
        toks = list(_janome().tokenize(text))
    else:
        return _WORD.findall(text)
    return [t.strip() for t in toks if _WORD.search(t)]


def _ngrams(tokens: Sequence[str], n: int) -> Counter:
    return Counter(tuple(tokens[i : i + n]) for i in range(len(tokens) - n + 1))


def corpus_bleu(
    candidates: Sequence[Sequence[str]], references: Sequence[Sequence[str]], max_n: int = 4
) -> list[float]:
    """Cumulative corpus BLEU-1..``max_n`` (×100) of tokenised candidates against one reference each."""
    matches = [0] * max_n
    totals = [0] * max_n
    cand_len = ref_len = 0
    for cand, ref in zip(candidates, references, strict=True):
        cand_len += len(cand)
        ref_len += len(ref)
        for n in range(1, max_n + 1):
            c, r = _ngrams(cand, n), _ngrams(ref, n)
            matches[n - 1] += sum(min(v, r[g]) for g, v in c.items())
            totals[n - 1] += max(len(cand) - n + 1, 0)
    if cand_len == 0:
        return [0.0] * max_n
    bp = 1.0 if cand_len > ref_len else math.exp(1 - ref_len / cand_len)
    scores = []
    for n in range(1, max_n + 1):
        precisions = [matches[k] / totals[k] if totals[k] else 0.0 for k in range(n)]
        if min(precisions) == 0.0:
            scores.append(0.0)
            continue
        scores.append(100.0 * bp * math.exp(sum(math.log(p) for p in precisions) / n))
    return scores


def _f1(overlap: int, n_cand: int, n_ref: int) -> float:
    if overlap == 0 or n_cand == 0 or n_ref == 0:
        return 0.0
    p, r = overlap / n_cand, overlap / n_ref
    return 2 * p * r / (p + r)


def rouge_n(cand: Sequence[str], ref: Sequence[str], n: int) -> float:
    """ROUGE-n F1 (0..1) of one candidate against one reference."""
    c, r = _ngrams(cand, n), _ngrams(ref, n)
    overlap = sum(min(v, r[g]) for g, v in c.items())
    return _f1(overlap, sum(c.values()), sum(r.values()))


def lcs_length(a: Sequence[str], b: Sequence[str]) -> int:
    """Length of the longest common subsequence (two-row dynamic programme)."""
    if len(a) < len(b):
        a, b = b, a
    prev = [0] * (len(b) + 1)
    for x in a:
        cur = [0]
        for j, y in enumerate(b, 1):
            cur.append(prev[j - 1] + 1 if x == y else max(prev[j], cur[j - 1]))
        prev = cur
    return prev[-1]


def rouge_l(cand: Sequence[str], ref: Sequence[str]) -> float:
    """ROUGE-L F1 (0..1, β = 1) from the longest common subsequence."""
    return _f1(lcs_length(cand, ref), len(cand), len(ref))


def rationale_metrics(candidates: Sequence[str], references: Sequence[str], language: str) -> dict[str, Any]:
    """BLEU-1..4 and ROUGE-1/2/L (×100) of predicted against reference rationales of one language."""
    cands = [tokenize(c, language) for c in candidates]
    refs = [tokenize(r, language) for r in references]
    out: dict[str, Any] = {"n": len(cands)}
    if not cands:
        return out
    for n, v in enumerate(corpus_bleu(cands, refs), 1):
        out[f"bleu{n}"] = round(v, 4)
    k = len(cands)
    out["rouge1"] = round(100 * sum(rouge_n(c, r, 1) for c, r in zip(cands, refs)) / k, 4)
    out["rouge2"] = round(100 * sum(rouge_n(c, r, 2) for c, r in zip(cands, refs)) / k, 4)
    out["rougeL"] = round(100 * sum(rouge_l(c, r) for c, r in zip(cands, refs)) / k, 4)
    return out


def bertscore(
    candidates: Sequence[str],
    references: Sequence[str],
    model_path: str,
    layer: int = -1,
    batch_size: int = 16,
) -> dict[str, float]:
    """Mean BERTScore P/R/F1 (×100; greedy cosine matching, no idf, no baseline) with a local encoder."""
    import torch
    from transformers import AutoModel, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(model_path, local_files_only=True)
    model = AutoModel.from_pretrained(model_path, local_files_only=True).eval()
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token

    def embed(texts: Sequence[str]) -> list[torch.Tensor]:
        vecs = []
        for i in range(0, len(texts), batch_size):
            enc = tok(
                list(texts[i : i + batch_size]),
                return_tensors="pt",
                padding=True,
                truncation=True,
                max_length=512,
                return_special_tokens_mask=True,
            )
            special = enc.pop("special_tokens_mask")
            with torch.no_grad():
                hidden = model(**enc, output_hidden_states=True).hidden_states[layer]
            keep = enc["attention_mask"].bool() & ~special.bool()
            for h, m in zip(hidden, keep):
                vecs.append(torch.nn.functional.normalize(h[m].float(), dim=-1))
        return vecs

    ps, rs, fs = [], [], []
    for c, r in zip(embed(candidates), embed(references), strict=True):
        if len(c) == 0 or len(r) == 0:
            ps.append(0.0), rs.append(0.0), fs.append(0.0)
            continue
        sim = c @ r.T
        p, rr = sim.max(dim=1).values.mean().item(), sim.max(dim=0).values.mean().item()
        ps.append(p), rs.append(rr), fs.append(2 * p * rr / (p + rr) if p + rr > 0 else 0.0)
    k = max(len(fs), 1)
    return {
        "bertscore_p": 100 * sum(ps) / k,
        "bertscore_r": 100 * sum(rs) / k,
        "bertscore_f1": 100 * sum(fs) / k,
    }

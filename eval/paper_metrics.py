"""The paper's rationale numbers, reproduced: ``paper_bleu`` and ``paper_rouge`` (×100, per-item means).

MAGIC-AI4Med/MMedLM ``metrics/rationale_similarity.py`` labels as "BLEU-1" NLTK's ``sentence_bleu`` with its
default 4-gram weights and smoothing method 1, and as "ROUGE-1" the ``rouge`` package's (summary-level) ROUGE-L
F; neither is what its name says, so ours keep their own columns next to the correct BLEU-1..4 / ROUGE-1/2/L of
``eval.metrics``. Both are written here from their definitions (no nltk/rouge dependency, no network):

- candidate: the generated response (cut at ``### Response:`` as the official script's split does), newlines
  removed (which glues words), ``###Rationale:`` … before ``###Answer: OPTION ``; reference: the item's
  rationale, newlines removed as well (the official result file cannot hold them), trailing space stripped.
- BLEU tokens: en/fr/es/ru ``nltk.word_tokenize`` (English Punkt sentences, then the Treebank rules of NLTK
  3.10, case kept, punctuation as tokens); zh jieba; ja janome surfaces. Smoothing method 1 adds 0.1 to a zero
  count over the raw n-gram total, as NLTK does on Python <= 3.11.
- ROUGE: the text split on ``.`` into sentences and on spaces into words (zh/ja: tokens joined by spaces);
  recall/precision = union-LCS words over the *distinct* words of reference / candidate (the package's sets).
  An empty side scores 0 (the package raises).

Punkt: NLTK's English model is a download; we apply Punkt's decision rule with an empty orthographic table and
the abbreviation list below instead of the trained one. It splits the same on ordinary prose; a sentence that
ends in an abbreviation, an initial or a number before a capitalised word can differ.
"""

from __future__ import annotations

import math
import re
from collections import Counter
from collections.abc import Sequence

from eval.metrics import _janome, _jieba

#: Abbreviations (lower-case, without the final period) that do not end a sentence.
ABBREVIATIONS = frozenset(
    [
        "e.g",
        "i.e",
        "etc",
        "vs",
        "dr",
        "mr",
        "mrs",
        "ms",
        "prof",
        "st",
        "jr",
        "sr",
        "fig",
        "figs",
        "no",
        "nos",
        "vol",
        "approx",
        "inc",
        "ltd",
        "co",
        "corp",
        "dept",
        "univ",
        "ca",
        "cf",
        "al",
        "jan",
        "feb",
        "mar",
        "apr",
        "jun",
        "jul",
        "aug",
        "sep",
        "sept",
        "oct",
        "nov",
        "dec",
        "u.s",
        "u.k",
        "a.m",
        "p.m",
    ]
)

# ---- sentences: Punkt's rule (Kiss & Strunk 2006) with an empty orthographic table ----
_NON_WORD = r"[)\";}\]*:@'({\[\u2018\u2019\u201c\u201d\xab\xbb?!]"
_END = re.compile(rf"[.?!](?=(?P<after>{_NON_WORD}|\s+(?P<next>\S+)))")
_NUMBER = re.compile(r"^-?[.,]?\d[\d,.-]*\.?$")
_INITIAL = re.compile(r"[^\W\d]\.$")
_REALIGN = re.compile(r"[\"')\]}]+?(?:\s+|(?=--)|$)")


def _breaks_after(text: str, m: re.Match) -> bool:
    """Whether the ``.?!`` at ``m`` ends a sentence."""
    if text[m.end() : m.end() + 1] in ("?", "!", "."):
        return False  # "!!!" ends once, after the last one
    if m.group() != ".":
        return True
    start = m.start()
    while start > 0 and not text[start - 1].isspace() and not re.match(_NON_WORD, text[start - 1]):
        start -= 1
    tok = text[start : m.end()]
    if tok.endswith(".."):
        return False  # an ellipsis
    word = tok[:-1].lower()
    if word in ABBREVIATIONS or word.split("-")[-1] in ABBREVIATIONS:
        return False
    initial, number = bool(_INITIAL.match(tok)), bool(_NUMBER.match(tok))
    if not (initial or number):
        return True
    nxt = m.group("next") or m.group("after")
    if nxt[0] in ";:,.!?" or nxt[0].islower():
        return False
    return not (initial and nxt[0].isupper())


def split_sentences(text: str) -> list[str]:
    """Sentences as Punkt cuts them (each one ends after its ``.?!`` and any closing bracket or quote)."""
    slices, last = [], 0
    for m in _END.finditer(text):
        if m.start() < last or not _breaks_after(text, m):
            continue
        slices.append([last, m.end()])
        last = m.start("next") if m.group("next") else m.end()
    slices.append([last, len(text.rstrip())])
    for a, b in zip(slices, slices[1:], strict=False):
        r = _REALIGN.match(text, b[0])
        if r and r.start() == b[0]:
            a[1] = b[0] + len(r.group().rstrip())
            b[0] = r.end()
    return [text[s:e] for s, e in slices if text[s:e]]


# ---- words: the Penn Treebank conventions as NLTK's NLTKWordTokenizer applies them (NLTK 3.10) ----
_RULES_START = [
    (re.compile("([«“‘„]|[`]+)"), r" \1 "),
    (re.compile(r'^"'), "``"),
    (re.compile(r"(``)"), r" \1 "),
    (re.compile(r"([ (\[{<])(\"|'{2})"), r"\1 `` "),
    (re.compile(r"(?i)(?<!\w)(')(?!(?:re|ve|ll|m|t|s|d|n)\b)(?=\w)"), r"\1 "),
]
_RULES_PUNCT = [
    (re.compile(r"([^.])(\.)([\])}>\"'»”’ ]*+)\s*$"), r"\1 \2 \3 "),
    (re.compile(r"([:,])([^\d])"), r" \1 \2"),
    (re.compile(r"([:,])$"), r" \1 "),
    (re.compile(r"\.{2,}"), r" \g<0> "),
    (re.compile(r"[;@#$%&]"), r" \g<0> "),
    (re.compile("[\u2012-\u2015]"), r" \g<0> "),
    (re.compile(r"([^.])(\.)([\])}>\"']*)\s*$"), r"\1 \2\3 "),
    (re.compile(r"[?!]"), r" \g<0> "),
    (re.compile(r"([^'])' "), r"\1 ' "),
    (re.compile(r"[*]"), r" \g<0> "),
    (re.compile(r"[\]\[(){}<>]"), r" \g<0> "),
    (re.compile(r"--"), r" -- "),
]
_RULES_END = [
    (re.compile("([»”’])"), r" \1 "),
    (re.compile(r"''"), " '' "),
    (re.compile(r'"'), " '' "),
    (re.compile(r"\s+"), " "),
    (re.compile(r"([^' ])('[sS]|'[mM]|'[dD]|') "), r"\1 \2 "),
    (re.compile(r"([^' ])('ll|'LL|'re|'RE|'ve|'VE|n't|N'T) "), r"\1 \2 "),
]
_CONTRACTIONS = [
    re.compile(p)
    for p in (
        r"(?i)\b(can)(not)\b",
        r"(?i)\b(d)('ye)\b",
        r"(?i)\b(gim)(me)\b",
        r"(?i)\b(gon)(na)\b",
        r"(?i)\b(got)(ta)\b",
        r"(?i)\b(lem)(me)\b",
        r"(?i)\b(more)('n)\b",
        r"(?i)\b(wan)(na)(?=\s)",
        r"(?i) ('t)(is)\b",
        r"(?i) ('t)(was)\b",
    )
]


def treebank_words(sentence: str) -> list[str]:
    """Word tokens of one sentence (punctuation split off, the final period a token of its own)."""
    text = sentence
    for rx, sub in _RULES_START + _RULES_PUNCT:
        text = rx.sub(sub, text)
    text = f" {text} "
    for rx, sub in _RULES_END:
        text = rx.sub(sub, text)
    for rx in _CONTRACTIONS:
        text = rx.sub(r" \1 \2 ", text)
    return text.split()


def word_tokenize(text: str) -> list[str]:
    """``nltk.word_tokenize(text)``: Punkt sentences, then Treebank words in each."""
    return [w for s in split_sentences(text) for w in treebank_words(s)]


def paper_tokens(text: str, language: str) -> list[str]:
    """The official script's BLEU tokens: jieba (zh), janome surfaces (ja), ``word_tokenize`` otherwise."""
    if language == "Chinese":
        return list(_jieba().cut(text))
    if language == "Japanese":
        return list(_janome().tokenize(text))
    return word_tokenize(text)


# ---- the two scores ----
def sentence_bleu(reference: Sequence[str], hypothesis: Sequence[str], max_n: int = 4) -> float:
    """NLTK ``sentence_bleu([reference], hypothesis, smoothing_function=method1)`` (0..1)."""
    nums, dens = [], []
    for n in range(1, max_n + 1):
        hyp = Counter(tuple(hypothesis[i : i + n]) for i in range(len(hypothesis) - n + 1))
        ref = Counter(tuple(reference[i : i + n]) for i in range(len(reference) - n + 1))
        nums.append(sum(min(c, ref[g]) for g, c in hyp.items()))
        dens.append(max(1, sum(hyp.values())))
    if nums[0] == 0:
        return 0.0
    c, r = len(hypothesis), len(reference)
    bp = 1.0 if c > r else math.exp(1 - r / c)
    precisions = [(k if k else 0.1) / d for k, d in zip(nums, dens, strict=True)]
    return bp * math.exp(math.fsum(math.log(p) / max_n for p in precisions))


def _lcs_words(x: list[str], y: list[str]) -> set[str]:
    """Words of ``x`` on the longest common subsequence with ``y`` that the ``rouge`` package walks back."""
    table = [[0] * (len(y) + 1) for _ in range(len(x) + 1)]
    for i in range(1, len(x) + 1):
        for j in range(1, len(y) + 1):
            table[i][j] = (
                table[i - 1][j - 1] + 1 if x[i - 1] == y[j - 1] else max(table[i - 1][j], table[i][j - 1])
            )
    i, j, words = len(x), len(y), set()
    while i and j:
        if x[i - 1] == y[j - 1]:
            words.add(x[i - 1])
            i, j = i - 1, j - 1
        elif table[i - 1][j] > table[i][j - 1]:
            i -= 1
        else:
            j -= 1
    return words


def rouge_l_f(hypothesis: str, reference: str) -> float:
    """The ``rouge`` package's ``get_scores(hyp, ref)[0]["rouge-l"]["f"]`` (0..1; 0 when a side is empty)."""
    hyp = [" ".join(s.split()) for s in hypothesis.split(".") if s]
    ref = [" ".join(s.split()) for s in reference.split(".") if s]
    if not hyp or not ref:
        return 0.0
    hyp_words = [s.split(" ") for s in hyp]
    m = len({w for s in ref for w in s.split(" ")})
    n = len({w for s in hyp_words for w in s})
    union: set[str] = set()
    llcs = 0
    for ref_s in ref:
        before = len(union)
        ref_words = ref_s.split(" ")
        for h in hyp_words:
            union |= _lcs_words(ref_words, h)
        llcs += len(union) - before
    r, p = llcs / m, llcs / n
    return 2.0 * (p * r) / (p + r + 1e-8)


def official_rationale(output: str) -> str:
    """The candidate rationale as the official scripts cut it from a generated response."""
    response = output.split("### Response:")[0].strip().replace("\n", "")
    return response.split("###Answer: OPTION ")[0].replace("###Rationale: ", "").strip()


def official_reference(rationale: str) -> str:
    """The reference rationale as it reads back from the official result file."""
    return rationale.replace("\n", "").rstrip()


def paper_rationale_metrics(
    outputs: Sequence[str], references: Sequence[str], language: str
) -> dict[str, float]:
    """Mean ``paper_bleu`` and ``paper_rouge`` (×100) of raw model outputs against reference rationales."""
    bleu = rouge = 0.0
    for out, ref in zip(outputs, references, strict=True):
        cand, gold = official_rationale(out), official_reference(ref)
        bleu += sentence_bleu(paper_tokens(gold, language), paper_tokens(cand, language))
        if language in ("Chinese", "Japanese"):
            cand, gold = " ".join(paper_tokens(cand, language)), " ".join(paper_tokens(gold, language))
        rouge += rouge_l_f(cand, gold)
    k = max(len(outputs), 1)
    return {"paper_bleu": round(100 * bleu / k, 4), "paper_rouge": round(100 * rouge / k, 4)}

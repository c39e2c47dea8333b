"""Our shingles as strings, in pure Python (stdlib only: the peers' venv imports it too).

The same normalised view as ``preprocessing/dedup/shingles.py`` (NFKC + casefold per code point, every digit run -> "0",
punctuation/symbols/whitespace separate words and are dropped for zh/ja) and the same n-grams (word n-grams
for space-separated scripts, character n-grams for zh/ja; a text shorter than n is one shingle). Ours hashes
code-point arrays instead of making strings; ``tests/test_bench_peers.py`` checks that both count the same
shingles per document, so feeding these strings to a peer is "the same shingles".
"""

from __future__ import annotations

import re
import unicodedata

CJK = frozenset({"zh", "ja"})
_DIGITS = re.compile(r"\d+")
# combining marks (Russian stress accents...) are word characters for ours, not for ``\w``
_MARKS = "".join(chr(c) for c in range(0x300, 0x10000) if unicodedata.category(chr(c))[0] == "M")
_NON_WORD = re.compile("(?:[^\\w" + re.escape(_MARKS) + "]|_)+")


class _Fold(dict):
    """``str.translate`` table: a character -> the first character of its NFKC + casefold image (as ours:
    folding is per code point, so ``℃`` -> ``°``, not ``°c``); filled on first sight of each character."""

    def __missing__(self, cp: int) -> str:
        ch = chr(cp)
        self[cp] = out = (unicodedata.normalize("NFKC", ch).casefold() or ch)[0]
        return out


_FOLD = _Fold()


def _view(text: str) -> str:
    return _NON_WORD.sub(" ", _DIGITS.sub("0", text.translate(_FOLD)))


def view_tokens(text: str, lang: str) -> list[str]:
    """Tokens of the normalised view: words, or characters for zh/ja."""
    view = _view(text)
    return list(view.replace(" ", "")) if lang in CJK else view.split()


def ngrams(text: str, lang: str, word_n: int = 2, cjk_n: int = 2) -> list[str]:
    """Every n-gram position of ``text`` (duplicates kept; MinHash of the list = MinHash of its set)."""
    view = _view(text)
    if lang in CJK:
        chars = view.replace(" ", "")
        if len(chars) <= cjk_n:
            return [chars] if chars else []
        return [chars[i : i + cjk_n] for i in range(len(chars) - cjk_n + 1)]
    toks = view.split()
    if len(toks) <= word_n:
        return [" ".join(toks)] if toks else []
    if word_n == 2:
        return [a + " " + b for a, b in zip(toks, toks[1:])]
    return [" ".join(toks[i : i + word_n]) for i in range(len(toks) - word_n + 1)]


def shingle_set(text: str, lang: str, word_n: int = 2, cjk_n: int = 2) -> set[str]:
    return set(ngrams(text, lang, word_n, cjk_n))

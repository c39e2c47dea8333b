"""Controlled edits that turn a document into a near copy (quality evaluation and tests).

``rate`` is the fraction of tokens touched: words for space-separated scripts, characters for zh/ja. Kinds:
``del``/``ins``/``sub`` (tokens removed, inserted or replaced by tokens drawn from ``vocab``), ``swap``
(adjacent tokens exchanged; each swap touches two tokens), ``typo`` (one character changed inside a word;
CJK: a character replaced) and ``boiler`` (``rate`` x length of boilerplate appended).
"""

from __future__ import annotations

import random

from preprocessing.document import CJK_LANGS

KINDS: tuple[str, ...] = ("del", "ins", "sub", "swap", "typo", "boiler")
_LETTERS = "abcdefghijklmnopqrstuvwxyz"


def tokens_of(text: str, lang: str) -> list[str]:
    return list(text) if lang in CJK_LANGS else text.split(" ")


def near_copy(text: str, lang: str, rate: float, kind: str, rng: random.Random, vocab: list[str]) -> str:
    """``text`` with ``rate`` of its tokens edited by ``kind`` (at least one edit)."""
    cjk = lang in CJK_LANGS
    units = tokens_of(text, lang)
    k = max(1, round(rate * len(units)))
    if kind == "boiler":
        units += [rng.choice(vocab) for _ in range(k)]
    elif kind == "swap":
        for i in rng.sample(range(max(1, len(units) - 1)), min(max(1, k // 2), max(1, len(units) - 1))):
            if i + 1 < len(units):
                units[i], units[i + 1] = units[i + 1], units[i]
    else:
        for i in sorted(rng.sample(range(len(units)), min(k, len(units))), reverse=True):
            if kind == "del":
                del units[i]
            elif kind == "ins":
                units.insert(i, rng.choice(vocab))
            elif kind == "sub" or (kind == "typo" and cjk):
                units[i] = rng.choice(vocab)
            elif kind == "typo":
                w = units[i]
                j = rng.randrange(len(w) + 1)
                units[i] = w[:j] + rng.choice(_LETTERS) + w[j + 1 :]
            else:
                raise ValueError(f"unknown edit kind {kind!r} (choose from {', '.join(KINDS)})")
    return ("" if cjk else " ").join(units)

"""Normalised shingle views and vectorised shingle hashing (no per-shingle Python objects).

Normalisation (shingle view only; documents are written unchanged): NFKC, casefold, every digit run -> "0",
punctuation/symbols/whitespace separate words (and are dropped for zh/ja). Shingles are word n-grams for
space-separated scripts and character n-grams for zh/ja, where whitespace does not separate words.
Everything runs on the code-point array of a whole batch of documents: per-code-point NFKC/casefold/class
tables (one packed gather), polynomial hashes of each token by one ``reduceat``, and a second polynomial over
token hashes for the n-grams (n shifted multiply-adds), so no Python object is made per token or shingle
(per-document NFKC and regexes cost more).
Exact-duplicate keys (128 bits) are hashed from the same folded code points, whitespace removed.

Choice of n: ``benchmarks/dedup.py shingles`` measures, per shingle size, the exact Jaccard of the most
similar distinct corpus documents, of the least similar 10%-edited near copies and of the most similar
unrelated ~15-50 KB "books".

Bigrams (words for en/fr/es/ru, characters for zh/ja, where two characters are about one word) are the only
size that keeps 10%-edited copies at or above a threshold (0.6) that distinct documents stay below.
Character 5-grams only find copies with a few % edits; character unigrams merge long unrelated texts.
"""

from __future__ import annotations

import unicodedata

import numpy as np

_M64 = (1 << 64) - 1
_CHAR_BASE = 0x9E3779B97F4A7C15  # odd, so invertible modulo 2**64
_TOKEN_BASE = 0xC2B2AE3D27D4EB4F
_EXACT_BASE = 0xA0761D6478BD642F
_LEN_MIX = np.uint64(0xD6E8FEB86659FD93)
_OTHER, _WORD, _DIGIT, _SPACE = 0, 1, 2, 3  # _SPACE separates words like _OTHER; exact keys drop it
_SEP = "\n"  # joins the documents of a batch; a non-word character, so tokens never cross documents

_pow_cache: dict[int, tuple[np.ndarray, np.ndarray]] = {}


class _Tables:
    """Per BMP code point: its NFKC + casefold image (first character of it) and the image's class.

    Filled lazily for the code points a batch actually contains (a few thousand even for zh/ja), instead of
    normalising all 65,536 up front. Applying NFKC per character is exact for the NFC text that ``mmed prep``
    writes (no combining sequences left to compose); an image of several characters (``ß`` -> ``ss``,
    ``ﬁ`` -> ``fi``) keeps its first. Code points above the BMP are kept as they are, as word characters.
    One uint32 per code point, ``image | class << 21 | not-filled-yet << 23``: one gather per character.
    """

    _NEW = np.uint32(1 << 23)

    def __init__(self) -> None:
        self.packed = np.arange(0x10000, dtype=np.uint32) | self._NEW
        self.packed[0xD800:0xE000] = np.arange(0xD800, 0xE000, dtype=np.uint32)  # surrogates: "other"

    def lookup(self, cp: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Folded code points and their classes."""
        astral = cp.size > 0 and int(cp.max()) >= 0x10000
        low = np.where(cp < 0x10000, cp, 0) if astral else cp
        t = self.packed[low]
        if t.size and int(t.max()) >= self._NEW:
            for c in np.unique(low[t >= self._NEW]).tolist():
                self._fill(c)
            t = self.packed[low]
        fold, cls = t & np.uint32(0x1FFFFF), (t >> np.uint32(21)).astype(np.uint8)
        if not astral:
            return fold, cls
        bmp = cp < 0x10000
        return np.where(bmp, fold, cp), np.where(bmp, cls, np.uint8(_WORD))

    def _fill(self, c: int) -> None:
        ch = (unicodedata.normalize("NFKC", chr(c)).casefold() or chr(c))[0]
        cls = _OTHER
        if ch.isdecimal():
            cls = _DIGIT
        elif (ch.isalnum() or unicodedata.category(ch)[0] == "M") and ch != "_":
            cls = _WORD
        elif ch.isspace():
            cls = _SPACE
        self.packed[c] = ord(ch) | cls << 21


_TABLES = _Tables()


def fmix64(h: np.ndarray) -> np.ndarray:
    """MurmurHash3's 64-bit finaliser (a bijection that spreads every input bit), on uint64 arrays."""
    h = h ^ (h >> np.uint64(33))
    h = h * np.uint64(0xFF51AFD7ED558CCD)
    h = h ^ (h >> np.uint64(33))
    h = h * np.uint64(0xC4CEB9FE1A85EC53)
    return h ^ (h >> np.uint64(33))


def _power_table(base: int, size: int) -> np.ndarray:
    """``base**j`` mod 2**64 for j < size, by doubling (each step one vectorised multiply)."""
    out = np.empty(size, dtype=np.uint64)
    out[0] = 1
    k = 1
    while k < size:
        m = min(k, size - k)
        np.multiply(out[:m], np.uint64(pow(base, k, 1 << 64)), out=out[k : k + m])
        k += m
    return out


def _powers(base: int, length: int) -> tuple[np.ndarray, np.ndarray]:
    """``base**j`` and ``base**-j`` mod 2**64 for j < length (cached, grown when a batch needs more)."""
    have = _pow_cache.get(base)
    if have is None or len(have[0]) < length:
        size = max(length + length // 4, 1 << 16)
        _pow_cache[base] = (_power_table(base, size), _power_table(pow(base, -1, 1 << 64), size))
    return _pow_cache[base]


def _run_hash(values: np.ndarray, base: int, s: np.ndarray, length: np.ndarray) -> np.ndarray:
    """Polynomial hashes ``sum values[j] * base**(j-s)`` (mod 2**64) over ``[s, next s)``, ``s`` sorted; 0 where
    ``length`` is 0. One ``reduceat`` (no prefix sums): values past a span's end must be 0 up to the next ``s``.
    """
    fwd, inv = _powers(base, len(values) + 1)
    terms = np.empty(len(values) + 1, dtype=np.uint64)  # a trailing 0: a start may equal len(values)
    np.multiply(values, fwd[: len(values)], out=terms[:-1])
    terms[-1] = 0
    out = np.zeros(len(s), dtype=np.uint64)
    if len(s):
        np.multiply(np.add.reduceat(terms, s), inv[s], out=out, where=length > 0)
    return out


def _normalised(texts: list[str]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Code points (folded), their classes, and each document's start, of the batch joined by ``_SEP``.

    Every document, the last one too, is followed by one ``_SEP``, so every start is inside the arrays.
    """
    starts = np.zeros(len(texts), dtype=np.int64)
    np.cumsum([len(t) + 1 for t in texts[:-1]], out=starts[1:])
    joined = _SEP.join(texts) + _SEP
    cp = np.frombuffer(joined.encode("utf-32-le", "surrogatepass"), dtype=np.uint32)
    folded, cls = _TABLES.lookup(cp)
    return folded, cls, starts


def _exact_keys(cp: np.ndarray, cls: np.ndarray, starts: np.ndarray) -> np.ndarray:
    """``(docs, 2)`` uint64: two polynomial hashes of each document's folded text without whitespace."""
    keep = cls != _SPACE
    lens = np.add.reduceat(keep, starts, dtype=np.int64)
    bounds = np.zeros(len(starts), dtype=np.int64)
    np.cumsum(lens[:-1], out=bounds[1:])
    vals = cp[keep]
    out = np.empty((len(starts), 2), dtype=np.uint64)
    mix = lens.astype(np.uint64) * _LEN_MIX
    for col, base in enumerate((_CHAR_BASE, _EXACT_BASE)):
        out[:, col] = fmix64(_run_hash(vals, base, bounds, lens) ^ mix)
    return out


def _tokens(cp: np.ndarray, cls: np.ndarray, starts: np.ndarray, cjk: bool) -> tuple[np.ndarray, np.ndarray]:
    """Token hashes of all documents (in order) and the token count of each document (``cp`` is modified)."""
    digit = cls == _DIGIT
    repeat = np.flatnonzero(digit[1:] & digit[:-1]) + 1  # a digit run becomes one "0"
    if len(repeat):
        keep = np.ones(len(cp), dtype=bool)
        keep[repeat] = False
        cp, cls, digit = cp[keep], cls[keep], digit[keep]
        starts = starts - np.searchsorted(repeat, starts)
    np.copyto(cp, 48, where=digit)
    word = (cls - np.uint8(_WORD)) < 2  # _WORD or _DIGIT
    if cjk:
        th = fmix64(cp[word].astype(np.uint64) + np.uint64(0x632BE59BD9B4E019))
        return th, np.add.reduceat(word, starts, dtype=np.int64)
    edge = np.zeros(len(word) + 1, dtype=bool)
    np.not_equal(word[1:], word[:-1], out=edge[1 : len(word)])
    edge[0] = word[0]  # the array ends with a separator, so the last token's end is an edge too
    first = edge[:-1] & word
    pos = np.flatnonzero(first)
    ends = np.flatnonzero(edge[:-1] & ~word)
    th = fmix64(_span_hash(cp, _CHAR_BASE, pos, ends) ^ ((ends - pos).astype(np.uint64) * _LEN_MIX))
    return th, np.add.reduceat(first, starts, dtype=np.int64)


def _span_hash(values: np.ndarray, base: int, s: np.ndarray, e: np.ndarray) -> np.ndarray:
    """Polynomial hashes ``sum values[j] * base**(j-s)`` of the spans ``[s, e)`` (prefix sums, mod 2**64):
    cheaper than ``_run_hash`` when spans are many and short (a ``reduceat`` over 10**5 segments is slow)."""
    fwd, inv = _powers(base, len(values) + 1)
    prefix = np.empty(len(values) + 1, dtype=np.uint64)
    prefix[0] = 0
    np.multiply(values, fwd[: len(values)], out=prefix[1:])
    np.cumsum(prefix[1:], out=prefix[1:])
    return (prefix[e] - prefix[s]) * inv[s]


def _ngram_hash(th: np.ndarray, first: np.ndarray, width: np.ndarray, n: int) -> np.ndarray:
    """``sum th[first+k] * TOKEN_BASE**k`` for ``k < width`` (``width <= n``): n shifted multiply-adds."""
    h = th[first]
    short = bool((width < n).any())
    for k in range(1, n):
        term = th[np.minimum(first + k, len(th) - 1)] * np.uint64(pow(_TOKEN_BASE, k, 1 << 64))
        if short:
            term[width <= k] = 0
        h += term
    return h


def hash_batch(texts: list[str], n: int, cjk: bool) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Exact keys ``(docs, 2)``, 32-bit shingle hashes, and offsets: doc ``i`` owns ``h[off[i]:off[i+1]]``.

    A text with fewer than ``n`` tokens is one shingle (all its tokens); one without tokens has none.
    """
    if not texts:
        return np.zeros((0, 2), np.uint64), np.zeros(0, np.uint32), np.zeros(1, np.int64)
    cp, cls, starts = _normalised(texts)
    exact = _exact_keys(cp, cls, starts)
    th, tokens = _tokens(cp, cls, starts, cjk)
    n_sh = np.where(tokens > 0, np.maximum(tokens - n + 1, 1), 0)
    offsets = np.zeros(len(texts) + 1, dtype=np.int64)
    np.cumsum(n_sh, out=offsets[1:])
    total = int(offsets[-1])
    if total == 0:
        return exact, np.zeros(0, dtype=np.uint32), offsets
    tok_start = np.zeros(len(texts), dtype=np.int64)
    np.cumsum(tokens[:-1], out=tok_start[1:])
    doc_of = np.repeat(np.arange(len(texts)), n_sh)
    first = tok_start[doc_of] + (np.arange(total) - offsets[doc_of])
    width = np.minimum(n, tokens[doc_of])
    h = _ngram_hash(th, first, width, n) ^ (width.astype(np.uint64) * _LEN_MIX)
    return exact, (fmix64(h) >> np.uint64(32)).astype(np.uint32), offsets

"""dedup's vectorised kernels against straightforward references: shingle hashes against a per-character
Python implementation of the documented rules, MinHash blocks and permutations against datasketch."""

from __future__ import annotations

import unicodedata

import numpy as np
import pytest
from datasketch import MinHash

from preprocessing.dedup import minhash
from preprocessing.dedup.minhash import permutations, signatures_datasketch, signatures_numpy
from preprocessing.dedup.shingles import hash_batch

M64 = (1 << 64) - 1
CHAR_BASE, TOKEN_BASE, LEN_MIX = 0x9E3779B97F4A7C15, 0xC2B2AE3D27D4EB4F, 0xD6E8FEB86659FD93

TEXTS = [
    "The patient, aged 54, had fever for 3 days; CRP 120 mg/L.",
    "Le patient âgé de 54 ans — fièvre depuis 3 jours ! Straße ﬁn",
    "El paciente de 54 años tuvo fiebre durante 3 días y tos 😷 seca.",
    "Пациент 54 лет, лихорадка 3 дня, кашель; ＣＲＰ １２０ мг/л",
    "病人，54岁，发热3天，伴咳嗽。😷 服药后好转",
    "患者は54歳、3日間の発熱と咳があった。ｶﾀｶﾅ 🦠🦠",
    "",
    "!!! ??? ...",
    "one",
    "one two",
    "a_b 12345 x1y2 naïve café 𝔘𝔫𝔦𝔠𝔬𝔡𝔢 ok",
    "   ",
    "",
]


def _fmix64(h: int) -> int:
    h ^= h >> 33
    h = (h * 0xFF51AFD7ED558CCD) & M64
    h ^= h >> 33
    h = (h * 0xC4CEB9FE1A85EC53) & M64
    return h ^ (h >> 33)


def _poly(values: list[int], base: int) -> int:
    return sum(v * pow(base, j, 1 << 64) for j, v in enumerate(values)) & M64


def _fold_class(ch: str) -> tuple[int, str]:
    """The documented per-character rule: NFKC + casefold (first character), then word/digit/space/other."""
    if ord(ch) >= 0x10000:
        return ord(ch), "word"
    if 0xD800 <= ord(ch) < 0xE000:
        return ord(ch), "other"
    f = (unicodedata.normalize("NFKC", ch).casefold() or ch)[0]
    if f.isdecimal():
        return ord(f), "digit"
    if (f.isalnum() or unicodedata.category(f)[0] == "M") and f != "_":
        return ord(f), "word"
    return ord(f), "space" if f.isspace() else "other"


def reference_shingles(text: str, n: int, cjk: bool) -> list[int]:
    """32-bit shingle hashes of one text, one token and one n-gram at a time."""
    chars: list[tuple[int, str]] = []
    for ch in text:
        cp, cls = _fold_class(ch)
        if cls == "digit":
            if chars and chars[-1][1] == "digit":
                continue  # a digit run becomes one "0"
            cp = ord("0")
        chars.append((cp, cls))
    tokens: list[int] = []
    run: list[int] = []
    for cp, cls in [*chars, (0, "other")]:
        if cls in ("word", "digit"):
            if cjk:
                tokens.append(_fmix64((cp + 0x632BE59BD9B4E019) & M64))
            else:
                run.append(cp)
        elif run:
            tokens.append(_fmix64(_poly(run, CHAR_BASE) ^ ((len(run) * LEN_MIX) & M64)))
            run = []
    if not tokens:
        return []
    width = min(n, len(tokens))
    return [
        _fmix64(_poly(tokens[i : i + width], TOKEN_BASE) ^ ((width * LEN_MIX) & M64)) >> 32
        for i in range(len(tokens) - width + 1)
    ]


@pytest.mark.parametrize("n", [1, 2, 3, 5])
@pytest.mark.parametrize("cjk", [False, True])
def test_shingle_hashes_equal_a_per_character_reference(n: int, cjk: bool) -> None:
    _, h, off = hash_batch(TEXTS, n, cjk)
    for i, text in enumerate(TEXTS):
        assert h[off[i] : off[i + 1]].tolist() == reference_shingles(text, n, cjk), (n, cjk, text)


def test_shingle_hashes_do_not_depend_on_the_batch() -> None:
    """A document's shingles are the same alone and inside any batch (batches are cut by size)."""
    ex, h, off = hash_batch(TEXTS, 2, False)
    for i, text in enumerate(TEXTS):
        ex_i, h_i, _ = hash_batch([text], 2, False)
        assert np.array_equal(h_i, h[off[i] : off[i + 1]]) and np.array_equal(ex_i[0], ex[i]), text


def test_exact_keys_ignore_whitespace_only() -> None:
    ex, _, _ = hash_batch(
        ["Fever 3 days", "fever\n3  DAYS", "fever 4 days", "fever3days", "", " \t"], 2, False
    )
    assert np.array_equal(ex[0], ex[1]) and np.array_equal(ex[0], ex[3]) and np.array_equal(ex[4], ex[5])
    assert len({tuple(row) for row in ex.tolist()}) == 3


@pytest.mark.parametrize(("num_perm", "seed"), [(128, 1), (64, 7), (3, 0)])
def test_permutations_are_datasketch_affine32(num_perm: int, seed: int) -> None:
    a, b = MinHash(num_perm=num_perm, seed=seed, scheme="affine32").permutations
    ours = permutations(num_perm, seed)
    assert np.array_equal(ours[0], a) and np.array_equal(ours[1], b)
    assert ours[0].dtype == ours[1].dtype == np.uint32


def test_signatures_over_many_blocks_equal_datasketch(monkeypatch: pytest.MonkeyPatch) -> None:
    """Blocks smaller than some documents, empty documents between: every document as datasketch has it."""
    rng = np.random.default_rng(0)
    sizes = rng.integers(0, 300, size=200)
    sizes[[0, 5, 6, 199]] = 0
    sizes[50] = 2_000  # larger than a block
    offsets = np.concatenate(([0], np.cumsum(sizes))).astype(np.int64)
    hashes = rng.integers(0, 1 << 32, size=int(offsets[-1]), dtype=np.uint64).astype(np.uint32)
    monkeypatch.setattr(minhash, "_CHUNK_ELEMS", 16 * 500)
    ours = signatures_numpy(hashes, offsets, 16, 3)
    assert np.array_equal(ours, signatures_datasketch(hashes, offsets, 16, 3))
    assert (ours[sizes == 0] == minhash.EMPTY).all()

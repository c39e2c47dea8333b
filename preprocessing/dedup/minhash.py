"""MinHash signatures, bit-identical to datasketch's ``affine32`` scheme, computed for many documents at once.

datasketch (``MinHash(num_perm, seed)``, scheme ``affine32``) supplies the permutations ``h -> a*h + b mod
2**32`` applied after its MurmurHash3 pre-mix; the ``numpy`` backend applies them to all shingles of a batch
and takes per-document minima with ``np.minimum.reduceat``. The ``datasketch`` backend feeds the same 32-bit
shingle hashes to ``MinHash.generator`` (identity hash function) and gives the same signatures, slower.
"""

from __future__ import annotations

from functools import lru_cache

import numpy as np
from datasketch import MinHash

#: signature value of a document without shingles (datasketch's "empty" value)
EMPTY = np.uint32(0xFFFFFFFF)
_CHUNK_ELEMS = 1 << 22  # shingles x permutations per vectorised step (16 MB of uint32)


@lru_cache(maxsize=8)
def permutations(num_perm: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """datasketch's affine32 permutation parameters ``(a, b)`` as uint32 arrays."""
    a, b = MinHash(num_perm=num_perm, seed=seed, scheme="affine32").permutations
    return a.astype(np.uint32), b.astype(np.uint32)


def fmix32(h: np.ndarray) -> np.ndarray:
    """MurmurHash3's 32-bit finaliser (datasketch pre-mixes every input hash with it)."""
    h = h ^ (h >> np.uint32(16))
    h = h * np.uint32(0x85EBCA6B)
    h = h ^ (h >> np.uint32(13))
    h = h * np.uint32(0xC2B2AE35)
    return h ^ (h >> np.uint32(16))


def _identity(x: int) -> int:
    return x


def signatures_numpy(hashes: np.ndarray, offsets: np.ndarray, num_perm: int, seed: int) -> np.ndarray:
    """``(docs, num_perm)`` uint32 signatures of the shingle hashes ``hashes[offsets[i]:offsets[i+1]]``."""
    a, b = permutations(num_perm, seed)
    n_docs = len(offsets) - 1
    out = np.full((n_docs, num_perm), EMPTY, dtype=np.uint32)
    mixed = fmix32(hashes.astype(np.uint32, copy=False))
    nonempty = np.flatnonzero(offsets[1:] > offsets[:-1])
    step = max(1, _CHUNK_ELEMS // num_perm)
    i = 0
    while i < len(nonempty):
        # take documents until the chunk holds ~step shingles (always at least one document)
        lo = offsets[nonempty[i]]
        j = int(np.searchsorted(offsets[nonempty + 1], lo + step, side="right"))
        j = max(j, i + 1)
        docs = nonempty[i:j]
        hi = offsets[docs[-1] + 1]
        # (num_perm, shingles): each permutation row is contiguous, so reduceat runs over contiguous runs
        phv = np.multiply(a[:, None], mixed[None, lo:hi])
        phv += b[:, None]
        out[docs] = np.minimum.reduceat(phv, offsets[docs] - lo, axis=1).T
        i = j
    return out


def signatures_datasketch(hashes: np.ndarray, offsets: np.ndarray, num_perm: int, seed: int) -> np.ndarray:
    """Same as ``signatures_numpy`` through ``datasketch.MinHash.generator`` (the reference path)."""
    per_doc = (hashes[offsets[i] : offsets[i + 1]].tolist() for i in range(len(offsets) - 1))
    gen = MinHash.generator(per_doc, num_perm=num_perm, seed=seed, hashfunc=_identity, scheme="affine32")
    out = np.empty((len(offsets) - 1, num_perm), dtype=np.uint32)
    for i, m in enumerate(gen):
        out[i] = m.hashvalues
    return out


def agreement(sig_a: np.ndarray, sig_b: np.ndarray) -> np.ndarray:
    """Estimated Jaccard of row pairs: the fraction of equal signature values."""
    return (sig_a == sig_b).mean(axis=-1, dtype=np.float64).astype(np.float32)

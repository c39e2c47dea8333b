"""MinHash signatures, bit-identical to datasketch's ``affine32`` scheme, computed for many documents at once.

The permutations ``h -> a*h + b mod 2**32`` (applied after datasketch's MurmurHash3 pre-mix) are drawn as
datasketch's ``MinHash(num_perm, seed, scheme="affine32")`` draws them, without importing datasketch (its
package import pulls in scipy: ~1 CPU s of serial start-up per run). The ``numpy`` backend applies them to
all shingles of a batch, a cache-sized block at a time into one reused buffer, and takes per-document minima
with ``np.minimum.reduceat``. The ``datasketch`` backend feeds the same 32-bit shingle hashes to
``MinHash.generator`` (identity hash function) and gives the same signatures, slower.
"""

from __future__ import annotations

from functools import lru_cache

import numpy as np

#: signature value of a document without shingles (datasketch's "empty" value)
EMPTY = np.uint32(0xFFFFFFFF)
_CHUNK_ELEMS = 1 << 20  # shingles x permutations per vectorised step (4 MB of uint32: stays in cache)


@lru_cache(maxsize=8)
def permutations(num_perm: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """datasketch's affine32 permutation parameters ``(a, b)`` as uint32 arrays (odd ``a``: a bijection)."""
    gen = np.random.RandomState(seed)
    a = gen.randint(0, 1 << 31, num_perm, dtype=np.uint32) * np.uint32(2) + np.uint32(1)
    b = gen.randint(0, 1 << 32, num_perm, dtype=np.uint32)
    return a, b


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
    a, b = a[:, None], b[:, None]
    n_docs = len(offsets) - 1
    out = np.full((n_docs, num_perm), EMPTY, dtype=np.uint32)
    mixed = fmix32(hashes.astype(np.uint32, copy=False))
    nonempty = np.flatnonzero(offsets[1:] > offsets[:-1])
    ends = offsets[nonempty + 1]
    step = max(1, _CHUNK_ELEMS // num_perm)
    buf = np.empty(num_perm * min(step, len(hashes)), dtype=np.uint32)  # reused: no page faults per block
    i = 0
    while i < len(nonempty):
        # take documents until the block holds ~step shingles (always at least one document)
        lo = offsets[nonempty[i]]
        j = max(int(np.searchsorted(ends, lo + step, side="right")), i + 1)
        docs = nonempty[i:j]
        hi = offsets[docs[-1] + 1]
        # (num_perm, shingles): each permutation row is contiguous, so reduceat runs over contiguous runs
        width = int(hi - lo)
        phv = buf[: num_perm * width].reshape(num_perm, width) if num_perm * width <= len(buf) else None
        phv = np.multiply(a, mixed[None, lo:hi], out=phv)
        phv += b
        out[docs] = np.minimum.reduceat(phv, offsets[docs] - lo, axis=1).T
        i = j
    return out


def signatures_datasketch(hashes: np.ndarray, offsets: np.ndarray, num_perm: int, seed: int) -> np.ndarray:
    """Same as ``signatures_numpy`` through ``datasketch.MinHash.generator`` (the reference path)."""
    from datasketch import MinHash  # here only: the package import costs ~1 CPU s (scipy)

    per_doc = (hashes[offsets[i] : offsets[i + 1]].tolist() for i in range(len(offsets) - 1))
    gen = MinHash.generator(per_doc, num_perm=num_perm, seed=seed, hashfunc=_identity, scheme="affine32")
    out = np.empty((len(offsets) - 1, num_perm), dtype=np.uint32)
    for i, m in enumerate(gen):
        out[i] = m.hashvalues
    return out


def agreement(sig_a: np.ndarray, sig_b: np.ndarray) -> np.ndarray:
    """Estimated Jaccard of row pairs: the fraction of equal signature values."""
    return (sig_a == sig_b).mean(axis=-1, dtype=np.float64).astype(np.float32)

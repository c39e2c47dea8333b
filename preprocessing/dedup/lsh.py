"""LSH banding on disk: bands x rows for a threshold, band hashes, and candidate pairs from sorted buckets.

Two documents become a candidate pair when all ``rows`` signature values of some band agree; the
probability is ``1 - (1 - J**rows)**bands`` (the S-curve). Candidates are then verified by their estimated
Jaccard over the whole signature, so a pair that collides by chance in one band never merges clusters.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

import numpy as np

from preprocessing.dedup.minhash import agreement
from preprocessing.dedup.shingles import fmix64

_PRIME = np.uint64(0x100000001B3)


@dataclass(frozen=True)
class Banding:
    """An LSH banding: ``bands`` bands of ``rows`` signature values each, and its S-curve error areas."""

    bands: int
    rows: int
    fp_area: float  # area under the S-curve below the threshold (chance of candidate for non-dups)
    fn_area: float  # area above the S-curve above the threshold (chance of missing a dup)

    def probability(self, jaccard: float) -> float:
        """Chance that two documents with this Jaccard share at least one band."""
        return 1.0 - (1.0 - jaccard**self.rows) ** self.bands

    def describe(self) -> str:
        pts = ", ".join(f"P({j:.1f})={self.probability(j):.3f}" for j in (0.3, 0.5, 0.6, 0.7, 0.8, 0.9))
        return f"{self.bands} bands x {self.rows} rows ({pts})"


def _areas(threshold: float, b: np.ndarray, r: np.ndarray, grid: int = 401) -> tuple[np.ndarray, np.ndarray]:
    """False-positive and false-negative areas of the S-curves of every ``(b, r)`` (arrays, vectorised)."""
    lo = np.linspace(0.0, threshold, grid)[None, :]
    hi = np.linspace(threshold, 1.0, grid)[None, :]
    b, r = b[:, None].astype(np.float64), r[:, None].astype(np.float64)
    fp = np.trapezoid(1.0 - (1.0 - lo**r) ** b, lo, axis=1)
    fn = np.trapezoid((1.0 - hi**r) ** b, hi, axis=1)
    return fp, fn


@lru_cache(maxsize=16)
def choose_banding(
    threshold: float, num_perm: int, fp_weight: float = 0.5, fn_weight: float = 0.5
) -> Banding:
    """The ``bands x rows <= num_perm`` minimising ``fp_weight*FP area + fn_weight*FN area`` (datasketch's rule)."""
    combos = np.array([(b, r) for b in range(1, num_perm + 1) for r in range(1, num_perm // b + 1)])
    fp, fn = _areas(threshold, combos[:, 0], combos[:, 1])
    best = int(np.argmin(fp_weight * fp + fn_weight * fn))
    return Banding(int(combos[best, 0]), int(combos[best, 1]), float(fp[best]), float(fn[best]))


def fixed_banding(threshold: float, bands: int, rows: int) -> Banding:
    fp, fn = _areas(threshold, np.array([bands]), np.array([rows]))
    return Banding(bands, rows, float(fp[0]), float(fn[0]))


def band_hashes(sig: np.ndarray, bands: int, rows: int) -> np.ndarray:
    """``(bands, docs)`` uint64 hashes of each band's ``rows`` signature values (band index mixed in)."""
    out = np.empty((bands, sig.shape[0]), dtype=np.uint64)
    for j in range(bands):
        h = np.full(sig.shape[0], ((j + 1) * 0x9E3779B97F4A7C15) & 0xFFFFFFFFFFFFFFFF, dtype=np.uint64)
        for c in range(j * rows, (j + 1) * rows):
            h = (h ^ sig[:, c].astype(np.uint64)) * _PRIME
        out[j] = fmix64(h)
    return out


def partition_bounds(parts: int) -> np.ndarray:
    """Lower band-hash bound of each of ``parts`` equal ranges of the uint64 space (the last runs to 2**64)."""
    step = (1 << 64) // parts
    return np.array([p * step for p in range(parts)], dtype=np.uint64)


def bucket_pairs(keys: np.ndarray, docs: np.ndarray, max_all_pairs: int) -> tuple[np.ndarray, np.ndarray]:
    """Candidate pairs ``(a, b)``, ``a < b``, of documents sharing a key (``keys`` need not be sorted).

    A bucket of at most ``max_all_pairs`` documents yields all its pairs; a bigger one yields each member
    paired with the bucket's smallest document and with its predecessor (linear, not quadratic).
    """
    if len(keys) < 2:
        return np.zeros(0, dtype=np.uint64), np.zeros(0, dtype=np.uint64)
    order = np.lexsort((docs, keys))
    k, d = keys[order], docs[order]
    starts = np.flatnonzero(np.concatenate(([True], k[1:] != k[:-1])))
    sizes = np.diff(np.concatenate((starts, [len(k)])))
    multi = sizes >= 2
    starts, sizes = starts[multi], sizes[multi]
    left: list[np.ndarray] = []
    right: list[np.ndarray] = []
    small = sizes <= max_all_pairs
    for size in np.unique(sizes[small]):
        st = starts[small & (sizes == size)]
        ii, jj = np.triu_indices(int(size), 1)
        left.append(d[(st[:, None] + ii[None, :]).ravel()])
        right.append(d[(st[:, None] + jj[None, :]).ravel()])
    for st, size in zip(starts[~small], sizes[~small]):
        members = d[st : st + size]
        left += [np.full(size - 1, members[0]), members[1:-1]]
        right += [members[1:], members[2:]]
    if not left:
        return np.zeros(0, dtype=np.uint64), np.zeros(0, dtype=np.uint64)
    a, b = np.concatenate(left), np.concatenate(right)
    pairs = np.unique(np.stack((np.minimum(a, b), np.maximum(a, b)), axis=1), axis=0)
    return pairs[:, 0], pairs[:, 1]


def verify_pairs(sig_a: np.ndarray, sig_b: np.ndarray, threshold: float) -> tuple[np.ndarray, np.ndarray]:
    """Mask of pairs whose estimated Jaccard reaches ``threshold``, and the estimates."""
    est = agreement(sig_a, sig_b)
    return est >= np.float32(threshold) - np.float32(1e-6), est

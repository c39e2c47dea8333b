"""``DedupConfig``: one config shared by every dedup stage (saved as ``OUT/config.yaml`` and in the work dir).

Defaults come from ``benchmarks/dedup.py shingles`` (see ``shingles.py``): word 2-grams for en/fr/es/ru,
character 2-grams for zh/ja, and a Jaccard threshold of 0.6. Copies with 10% of their tokens edited fall
well below 0.8 for every n >= 2, so 0.8 would only find copies with a few % of edits; 0.6 finds them at 10%
while the most similar distinct documents of the corpus stay below it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar, Literal

from megatron_mmed.common.config import ConfigError

#: the dedup stages in order, each runnable alone (``mmed dedup --stage``, one slurm array each)
SUBSTAGES: tuple[str, ...] = ("signatures", "buckets", "clusters", "filter")


@dataclass(frozen=True)
class DedupConfig:
    """Exact + MinHash near-duplicate removal. ``bands``/``rows`` 0 = chosen from ``threshold``."""

    #: fields outside the fingerprint of a run: an output or work folder made with other values of these may
    #: be resumed (every other field, such as the threshold or the shingle sizes, must match)
    OUTPUT_NEUTRAL: ClassVar[frozenset[str]] = frozenset(
        {
            "fp_weight",
            "fn_weight",
            "backend",
            "batch_chars",
            "max_bucket_pairs",
            "work_dir",
            "keep_work",
            "peer_timeout_s",
            "workers",
        }
    )

    threshold: float = 0.6  # estimated Jaccard of shingle sets at/above which two documents are near-dups
    num_perm: int = 128  # MinHash permutations (signature length)
    seed: int = 1  # permutation seed (datasketch's affine32 scheme)
    word_ngram: int = 2  # shingle size in words for space-separated scripts (en, fr, es, ru, ...)
    cjk_ngram: int = 2  # shingle size in characters for zh/ja
    bands: int = 0
    rows: int = 0
    # weights of the false-positive/false-negative areas when choosing bands x rows; candidates are verified,
    # so a false positive only costs a comparison: favour recall (23 x 5 at 0.6: P(candidate | J=0.6) = 0.85)
    fp_weight: float = 0.2
    fn_weight: float = 0.8
    backend: Literal["numpy", "datasketch"] = "numpy"  # both give bit-identical signatures
    batch_chars: int = 1_000_000  # characters shingled per vectorised batch
    partition_docs: int = 2_000_000  # max (band hash, doc) entries one bucket task holds in memory
    max_bucket_pairs: int = 32  # buckets up to this size verify all pairs; larger: star + chain pairs
    work_dir: str = ""  # intermediate data (default OUT/.work)
    keep_work: bool = False  # keep signatures/buckets/edges after a successful run
    #: ``--stage all`` over several ranks: how long a rank waits for a peer that is not running (no lock)
    peer_timeout_s: float = 300.0
    #: worker processes (the output is byte-identical for any number)
    workers: int = 1

    def validate(self) -> None:
        if not 0.0 < self.threshold <= 1.0:
            raise ConfigError(f"threshold must be in (0, 1], got {self.threshold}")
        if not 2 <= self.num_perm <= 4096:
            raise ConfigError(f"num_perm must be in [2, 4096], got {self.num_perm}")
        if self.word_ngram < 1 or self.cjk_ngram < 1:
            raise ConfigError("word_ngram and cjk_ngram must be >= 1")
        if (self.bands == 0) != (self.rows == 0):
            raise ConfigError("set both bands and rows, or neither (0 = chosen from the threshold)")
        if self.bands < 0 or self.rows < 0:
            raise ConfigError("bands and rows must be >= 0")
        if self.bands * self.rows > self.num_perm:
            raise ConfigError(f"bands*rows = {self.bands * self.rows} exceeds num_perm = {self.num_perm}")
        if self.fp_weight < 0 or self.fn_weight < 0 or self.fp_weight + self.fn_weight == 0:
            raise ConfigError("fp_weight and fn_weight must be >= 0 and not both 0")
        if self.batch_chars < 1_000 or self.partition_docs < 1_000:
            raise ConfigError("batch_chars and partition_docs must be >= 1000")
        if self.peer_timeout_s <= 0:
            raise ConfigError(f"peer_timeout_s must be > 0, got {self.peer_timeout_s}")
        if self.workers < 1:
            raise ConfigError(f"workers must be >= 1, got {self.workers}")
        if self.max_bucket_pairs < 2:
            raise ConfigError(f"max_bucket_pairs must be >= 2, got {self.max_bucket_pairs}")

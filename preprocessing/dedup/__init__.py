"""Exact + MinHash near-duplicate removal as restartable stages (signatures -> buckets -> clusters -> filter)."""

from preprocessing.dedup.config import DedupConfig
from preprocessing.dedup.run import DedupResult, run_dedup
from preprocessing.dedup.stages import STAGES

__all__ = ["STAGES", "DedupConfig", "DedupResult", "run_dedup"]

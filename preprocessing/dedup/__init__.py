"""Exact + MinHash near-duplicate removal as restartable stages (signatures -> buckets -> clusters -> filter)."""

from preprocessing.dedup.config import SUBSTAGES, DedupConfig
from preprocessing.dedup.run import DedupResult, run_dedup

__all__ = ["SUBSTAGES", "DedupConfig", "DedupResult", "run_dedup"]

"""Counters of one ``mmed extract`` shard (stored in its completion marker) and their sum over a run."""

from __future__ import annotations

from collections import Counter, defaultdict
from typing import Any

UNKNOWN = "unknown"


class ExtractStats:
    """Counts per group (``pdf``, ``html``, ``warc``, ``drops``, ``ocr_packs``, ...), seconds per kind of page,
    and documents/characters per language hint. Plain JSON round trip, summed with ``merge``."""

    def __init__(self) -> None:
        self.counts: defaultdict[str, Counter[str]] = defaultdict(Counter)
        self.seconds: Counter[str] = Counter()
        self.lang_docs: Counter[str] = Counter()
        self.lang_chars: Counter[str] = Counter()

    def add(self, group: str, key: str, n: int = 1) -> None:
        self.counts[group][key] += n

    def time(self, kind: str, seconds: float) -> None:
        self.seconds[kind] += seconds

    def doc(self, source_type: str, lang: str | None, chars: int, sign: int = 1) -> None:
        """A document written (``sign=-1``: one taken back by the run-wide URL dedup)."""
        self.counts[source_type]["docs"] += sign
        self.counts[source_type]["chars"] += sign * chars
        self.lang_docs[lang or UNKNOWN] += sign
        self.lang_chars[lang or UNKNOWN] += sign * chars

    def merge(self, other: ExtractStats) -> ExtractStats:
        for group, c in other.counts.items():
            self.counts[group].update(c)
        self.seconds.update(other.seconds)
        self.lang_docs.update(other.lang_docs)
        self.lang_chars.update(other.lang_chars)
        return self

    def to_dict(self) -> dict[str, Any]:
        return {
            "counts": {g: dict(sorted(c.items())) for g, c in sorted(self.counts.items()) if c},
            "seconds": {k: round(v, 4) for k, v in sorted(self.seconds.items())},
            "lang_docs": dict(sorted(self.lang_docs.items())),
            "lang_chars": dict(sorted(self.lang_chars.items())),
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> ExtractStats:
        s = cls()
        for g, c in d.get("counts", {}).items():
            s.counts[g].update(c)
        s.seconds.update(d.get("seconds", {}))
        s.lang_docs.update(d.get("lang_docs", {}))
        s.lang_chars.update(d.get("lang_chars", {}))
        return s

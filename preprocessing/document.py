"""The document record that flows through the preprocessing stages."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

#: The six MMedC languages, in the paper's order.
LANGS: tuple[str, ...] = ("en", "zh", "ja", "fr", "ru", "es")

#: ISO code -> MMedBench file/language name.
LANGUAGE_NAMES: dict[str, str] = {
    "en": "English",
    "zh": "Chinese",
    "ja": "Japanese",
    "fr": "French",
    "ru": "Russian",
    "es": "Spanish",
}

#: Languages written without spaces between words: character-based rules and n-grams.
CJK_LANGS: frozenset[str] = frozenset({"zh", "ja"})


@dataclass
class Doc:
    """One document. ``scores`` collects the filter scores that decided it (written with kept docs)."""

    id: str
    text: str
    source: str = ""
    lang: str | None = None
    scores: dict[str, Any] = field(default_factory=dict)

    def to_record(self) -> dict[str, Any]:
        rec: dict[str, Any] = {"id": self.id, "text": self.text, "lang": self.lang, "source": self.source}
        if self.scores:
            rec["scores"] = self.scores
        return rec

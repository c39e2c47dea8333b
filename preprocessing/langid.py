"""Offline language identification for the six MMedC languages (py3langid + script rules).

The detector scores over py3langid's full label set (140 languages), so a German, Korean or Arabic document
is rejected instead of being forced onto the nearest of our six. Script rules go first because n-gram
detectors are weak exactly where scripts are decisive:

* Han + kana make up most of the sample (a Latin/Cyrillic word counts once, see ``script_counts``) and kana
  are >= 2 % of them -> ``ja`` (kanji-heavy Japanese is often labelled Chinese by n-gram detectors);
* Han make up most of the sample otherwise -> ``zh`` (py3langid splits Chinese into zh/wuu/yue and is unsure
  on short Traditional text);
* otherwise the detector decides; ``wuu``/``yue`` fold into ``zh``. Other Cyrillic languages are told apart
  from Russian by the detector itself (uk, bg, sr in the tests; be, mk checked by hand: all >= 0.88).

URLs and e-mail addresses are removed from the sample first: they are language-neutral and made py3langid
label a link-heavy English post ``zxx`` (no language).

Accuracy per language, the lowest confidence of a correct label and the time per document on the shared
corpus: ``python -m benchmarks.filters langid``; other languages' text is rejected
(``tests/test_langid.py``).

``min_confidence`` = 0.5: correct labels score well above it (see the benchmark), while text the detector
cannot place spreads its mass (a one-word "Patient": 0.07, a table of codes: 0.12), so 0.5 rejects "no
idea" only.
``max_chars`` = 2000: the naive-Bayes posterior has converged long before that and detection cost is
linear in the sample, so a 50 MB document costs the same as a paragraph.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from megatron_mmed.common.config import ConfigError
from preprocessing.document import LANGS

#: py3langid labels that are written Chinese varieties; they count as ``zh``.
_ZH_FAMILY: frozenset[str] = frozenset({"zh", "wuu", "yue"})

#: A script-rule decision needs this share of the letter units (see ``script_counts``) to be Han (+ kana).
_CJK_DOMINANT = 0.5
#: Kana share of Han + kana from which Han text is Japanese. Not "any kana": Chinese text sometimes quotes a
#: Japanese name ("の"), while real Japanese, even a kanji-heavy title, has >= 5 % (corpus minimum: 29 %).
_MIN_KANA_SHARE = 0.02

_URL_RE = re.compile(r"(?:https?://|www\.)\S+|\S+@\S+\.\w+", re.IGNORECASE)


_HAN = "\u3005\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff\U00020000-\U0003134f"  # 々 counts with kanji
# U+30FB (・) and U+30FC (ー) are left out: they appear in Chinese text as punctuation too.
_KANA = "\u3041-\u3096\u309d-\u309f\u30a1-\u30fa\u31f0-\u31ff\uff66-\uff9d"
_HAN_RE = re.compile(f"[{_HAN}]")
_KANA_RE = re.compile(f"[{_KANA}]")
#: a run of letters that are neither Han nor kana (a Latin/Cyrillic/... word)
_OTHER_RUN_RE = re.compile(f"[^\\W\\d_{_HAN}{_KANA}]+")


def script_counts(text: str) -> tuple[int, int, int]:
    """``(units, han, kana)`` of ``text``: units are Han/kana characters plus runs of other letters.

    Counting a Latin/Cyrillic word as one unit (not one per letter) keeps lab values such as
    "AST 78U/L, ALT 62U/L" from outweighing the Japanese or Chinese around them. Regex counts, not a Python
    loop over characters: this runs on every document.
    """
    han = len(_HAN_RE.findall(text))
    kana = len(_KANA_RE.findall(text))
    runs = len(_OTHER_RUN_RE.findall(text))
    return runs + han + kana, han, kana


@dataclass(frozen=True)
class LangIdConfig:
    """Which languages to keep and how sure the detector must be."""

    languages: tuple[str, ...] = LANGS
    min_confidence: float = 0.5
    max_chars: int = 2000

    def validate(self) -> None:
        if not self.languages:
            raise ConfigError("langid.languages: must name at least one language")
        bad = [lg for lg in self.languages if lg not in LANGS]
        if bad:
            raise ConfigError(f"langid.languages: {bad} not supported (choose from {list(LANGS)})")
        if len(set(self.languages)) != len(self.languages):
            raise ConfigError(f"langid.languages: duplicates in {list(self.languages)}")
        if not 0.0 <= self.min_confidence <= 1.0:
            raise ConfigError(f"langid.min_confidence: {self.min_confidence} must be in [0, 1]")
        if self.max_chars < 50:
            raise ConfigError(f"langid.max_chars: {self.max_chars} is too small (>= 50; default 2000)")


class LanguageIdentifier:
    """Labels a text with one of the configured languages, or ``None`` when it is something else or unsure."""

    def __init__(self, cfg: LangIdConfig) -> None:
        from py3langid.langid import MODEL_FILE
        from py3langid.langid import LanguageIdentifier as _PyLangId

        cfg.validate()
        self.cfg = cfg
        self._keep = frozenset(cfg.languages)
        # Full label set on purpose: restricting it would force every foreign text onto one of ours.
        self._model = _PyLangId.from_model_file(MODEL_FILE, norm_probs=True)

    def sample(self, text: str) -> str:
        """The part of ``text`` that is scored: a prefix of ``max_chars`` characters without URLs/e-mails."""
        head = text[: 2 * self.cfg.max_chars]
        if "@" in head or "http" in head or "www." in head:
            head = _URL_RE.sub(" ", head)
        return head[: self.cfg.max_chars]

    def detect(self, text: str) -> tuple[str | None, float]:
        """``(lang, confidence)``; ``lang`` is None for text without letters, foreign or low-confidence text."""
        sample = self.sample(text)
        units, han, kana = script_counts(sample)
        if units == 0:
            return None, 0.0
        lang, conf = self._decide(sample, units, han, kana)
        conf = min(max(conf, 0.0), 1.0)
        if lang not in self._keep or conf < self.cfg.min_confidence:
            return None, conf
        return lang, conf

    def _decide(self, sample: str, units: int, han: int, kana: int) -> tuple[str, float]:
        cjk = han + kana
        if cjk >= _CJK_DOMINANT * units:
            if kana and kana >= _MIN_KANA_SHARE * cjk:
                return "ja", cjk / units
            if han >= _CJK_DOMINANT * units:
                return "zh", han / units
        ranked = self._model.rank(sample)
        top, conf = ranked[0]
        if top in _ZH_FAMILY:
            return "zh", sum(p for lg, p in ranked if lg in _ZH_FAMILY)
        return top, conf

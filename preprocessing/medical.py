"""Medical-domain filter for ``mmed prep``: keep a document only if it reads as medicine.

Two presets:

* ``mmedc`` reproduces the MMedC paper's keyword rule (arXiv 2402.13963) from its keyword JSON: distinct keyword
  hits and a keyword character ratio, each against a per-language threshold.
* ``default`` is ours: hand-written lists under ``preprocessing/keywords/<lang>.txt`` (stems for inflected
  languages, Traditional characters folded for zh), one compiled trie regex per language, and a length-aware
  decision (short documents need fewer distinct terms but a denser text; long ones need more distinct terms).
"""

from __future__ import annotations

import json
import math
import re
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from megatron_mmed.common.config import ConfigError
from megatron_mmed.common.errors import UserError
from preprocessing.document import CJK_LANGS, LANGS

#: Our hand-written keyword lists, one ``<lang>.txt`` per language (shipped as package data).
KEYWORDS_DIR = Path(__file__).resolve().parent / "keywords"

#: Traditional -> Simplified pairs for characters common in medical Chinese (zh only), applied to text and terms.
_ZH_TRAD_SIMP = (
    "醫医 藥药 療疗 診诊 斷断 臟脏 腫肿 瘡疮 癥症 狀状 檢检 術术 經经 傷伤 脈脉 壓压 體体 頭头 腦脑 頸颈 "
    "膽胆 腎肾 腸肠 節节 氣气 熱热 嘔呕 瀉泻 發发 燒烧 瘍疡 潰溃 癒愈 瘧疟 結结 縮缩 擴扩 補补 劑剂 齒齿 "
    "齦龈 嚨咙 膚肤 膿脓 鬱郁 癇痫 癡痴 癱瘫 瘓痪 衛卫 護护 師师 歷历 應应 併并 產产 婦妇 嬰婴 兒儿 營营 "
    "養养 驗验 糞粪 滯滞 謝谢 織织 細细 積积 聽听 視视 臨临 證证 癲癫 痺痹 癆痨 蟲虫 鏡镜 動动 靜静 徵征 "
    "損损 輸输 膠胶 導导 針针 變变 異异 過过 濕湿 陰阴 陽阳 虛虚 實实 風风 復复 製制 測测 後后 "
)


def _zh_fold_table() -> dict[int, str]:
    pairs = _ZH_TRAD_SIMP.split()
    if any(len(p) != 2 for p in pairs):
        raise AssertionError("malformed Traditional/Simplified pair")
    return {ord(p[0]): p[1] for p in pairs if p[0] != p[1]}


_ZH_FOLD = _zh_fold_table()


def normalize(text: str, lang: str) -> str:
    """Lower-case, plus ё->е for ru and Traditional->Simplified folding of medical characters for zh."""
    text = text.lower()
    if lang == "ru":
        text = text.replace("ё", "е")
    elif lang == "zh":
        text = text.translate(_ZH_FOLD)
    return text


# ---------------------------------------------------------------------------------------------------------------
# Config
# ---------------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class MedicalConfig:
    """Which medical rule to apply, and the length-aware thresholds of the ``default`` preset.

    ``default``: a document of ``n`` units (words; characters for zh/ja) is kept iff its distinct keyword hits
    reach ``min_hits + hits_per_log2 * log2(max(1, n / short_units))`` (at most ``max_hits``) and its keyword
    ratio (share of units covered by keywords) reaches ``min_ratio[lang]`` scaled by ``short_ratio_boost`` for
    documents shorter than ``short_units`` (linearly down to 1x at ``short_units``).
    """

    preset: Literal["default", "mmedc"] = "default"
    keywords_file: str | None = None
    min_hits: int = 3
    max_hits: int = 8
    hits_per_log2: float = 1.0
    short_units: dict[str, int] = field(
        default_factory=lambda: {"en": 150, "fr": 150, "es": 150, "ru": 150, "zh": 300, "ja": 300}
    )
    min_ratio: dict[str, float] = field(
        default_factory=lambda: {"en": 0.025, "fr": 0.025, "es": 0.025, "ru": 0.025, "zh": 0.04, "ja": 0.04}
    )
    short_ratio_boost: float = 1.5

    def validate(self) -> None:
        if self.preset not in ("default", "mmedc"):
            raise ConfigError(f"medical.preset: {self.preset!r} is not one of ['default', 'mmedc']")
        if self.preset == "mmedc" and not self.keywords_file:
            raise ConfigError(
                "medical.preset 'mmedc' needs the MMedC keyword JSON: pass --keywords FILE "
                "(medical.keywords_file)"
            )
        if self.preset != "mmedc" and self.keywords_file:
            raise ConfigError("medical.keywords_file (--keywords) is only used by preset 'mmedc'")
        if self.min_hits < 1 or self.max_hits < self.min_hits:
            raise ConfigError(
                f"medical: need 1 <= min_hits <= max_hits, got {self.min_hits}, {self.max_hits}"
            )
        if self.hits_per_log2 < 0 or self.short_ratio_boost < 1:
            raise ConfigError("medical: hits_per_log2 must be >= 0 and short_ratio_boost >= 1")
        for name in ("short_units", "min_ratio"):
            table = getattr(self, name)
            missing = [lang for lang in LANGS if lang not in table]
            unknown = sorted(set(table) - set(LANGS))
            if missing or unknown:
                raise ConfigError(
                    f"medical.{name}: needs exactly the languages {', '.join(LANGS)} "
                    f"(missing: {', '.join(missing) or '-'}; unknown: {', '.join(unknown) or '-'})"
                )
            bad = {k: v for k, v in table.items() if not (v > 0 if name == "short_units" else 0 <= v <= 1)}
            if bad:
                raise ConfigError(f"medical.{name}: out-of-range value(s) {bad}")


# ---------------------------------------------------------------------------------------------------------------
# Keyword lists and the trie regex
# ---------------------------------------------------------------------------------------------------------------

WORD, STEM, SUFFIX = "word", "stem", "suffix"


def parse_keyword_list(path: Path, lang: str) -> dict[str, str]:
    """``term -> kind`` from one list; UserError if malformed.

    ``term`` is a whole word (or words), ``stem*`` any word starting with ``stem``, ``*suffix`` any word ending
    with ``suffix``; inside a multi-word term ``word*`` lets that word inflect. ``#`` starts a comment.
    """
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except OSError as e:
        raise UserError(f"cannot read keyword list {path}: {e.strerror or e}") from None
    except UnicodeDecodeError:
        raise UserError(f"keyword list {path} is not UTF-8 text") from None
    terms: dict[str, str] = {}
    for lineno, raw in enumerate(lines, 1):
        line = raw.split("#", 1)[0].strip()
        if not line:
            continue
        kind = WORD
        if line.startswith("*"):
            kind, line = SUFFIX, line[1:]
        elif line.endswith("*"):
            kind, line = STEM, line[:-1]
        term = " ".join(normalize(line, lang).split())
        inner_stars_ok = all(w.rstrip("*") and "*" not in w.rstrip("*") for w in term.split(" "))
        if not term or not inner_stars_ok or (kind == SUFFIX and (" " in term or "*" in term)):
            raise UserError(f"{path}:{lineno}: malformed keyword {raw.strip()!r}")
        if lang in CJK_LANGS and (kind != WORD or "*" in term):
            raise UserError(f"{path}:{lineno}: '*' wildcards are for space-separated languages only")
        if kind == WORD and (lang in CJK_LANGS or terms.get(term) == STEM):
            kind = STEM  # zh/ja terms are substrings; a stem subsumes the same whole word
        terms[term] = kind
    if not terms:
        raise UserError(f"keyword list {path} has no terms")
    return terms


def _trie_regex(terms: dict[str, str], whole_words: bool) -> str:
    """One regex alternation shaped as a trie (shared prefixes factored out), longest term first.

    A whole-word end becomes ``(?!\\w)``; a stem end accepts any continuation. Matching is then linear-ish in
    the text instead of trying every term at every position.
    """
    root: dict[str, Any] = {}
    for term, kind in terms.items():
        node = root
        for ch in term:
            node = node.setdefault(ch, {})
        end = kind == STEM or not whole_words
        node[""] = end or node.get("", False)  # True: stem end, False: whole-word end

    def emit(node: dict[str, Any]) -> str:
        branches = []
        for ch in sorted(k for k in node if k):
            atom = {" ": r"\s+", "*": r"\w*"}.get(ch) or re.escape(ch)
            branches.append(atom + emit(node[ch]))
        if "" not in node:
            return branches[0] if len(branches) == 1 else "(?:" + "|".join(branches) + ")"
        if node[""]:  # stem end: longer branches are optional
            return "(?:" + "|".join(branches) + ")?" if branches else ""
        return "(?:" + "|".join([*branches, r"(?!\w)"]) + ")"

    return emit(root)


def compile_keywords(terms: dict[str, str], lang: str) -> re.Pattern[str]:
    """The per-language matcher: a trie for words/stems (+ a word-ending branch for ``*suffix`` terms)."""
    if lang in CJK_LANGS:
        return re.compile(_trie_regex(terms, whole_words=False))
    trie = _trie_regex({t: k for t, k in terms.items() if k != SUFFIX}, whole_words=True)
    # ``*suffix``: take the whole word possessively, then look back for the suffix (no backtracking).
    suffixes = sorted(t for t, k in terms.items() if k == SUFFIX)
    alts = [trie] + (
        [r"\w++(?:" + "|".join(f"(?<={re.escape(s)})" for s in suffixes) + ")"] if suffixes else []
    )
    return re.compile(r"(?<!\w)(?:" + "|".join(alts) + ")")


# ---------------------------------------------------------------------------------------------------------------
# The filter
# ---------------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class _MmedcLang:
    short: frozenset[str]  # exact whitespace-token matches
    long: tuple[str, ...]  # substring counts
    hit_times: int
    hit_ratio: float


def _is_long_keyword(kw: str) -> bool:
    """MMedC: a keyword is matched as a substring if longer than 10 chars, or longer than 5 with a space."""
    return len(kw) > 10 or (len(kw) > 5 and " " in kw)


def load_mmedc_keywords(path: str | Path) -> dict[str, _MmedcLang]:
    """Parse the MMedC keyword JSON (``thresholds`` + ``keywords[lang]`` = two lists); UserError if malformed."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"--keywords: MMedC keyword file not found: {path}")
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise UserError(f"--keywords: {path} is not valid JSON: {e}") from None
    out: dict[str, _MmedcLang] = {}
    try:
        for lang in LANGS:
            lists = data["keywords"][lang]
            th = data["thresholds"][lang]
            if not isinstance(lists, dict) or not lists:
                raise TypeError(f"keywords.{lang} must be a mapping of keyword lists")
            words = set()
            for name, items in lists.items():
                if not isinstance(items, list) or not all(isinstance(w, str) and w.strip() for w in items):
                    raise TypeError(f"keywords.{lang}.{name} must be a list of non-empty strings")
                words.update(w.lower() for w in items)
            hit_times, hit_ratio = th["hit_times"], th["hit_ratio"]
            if not isinstance(hit_times, int) or not isinstance(hit_ratio, int | float):
                raise TypeError(f"thresholds.{lang} must hold an integer hit_times and a number hit_ratio")
            if lang in CJK_LANGS:
                short, long = frozenset(), tuple(sorted(words))
            else:
                short = frozenset(w for w in words if not _is_long_keyword(w))
                long = tuple(sorted(w for w in words if _is_long_keyword(w)))
            out[lang] = _MmedcLang(short, long, hit_times, float(hit_ratio))
    except (KeyError, TypeError, AttributeError) as e:
        what = f"missing key {e}" if isinstance(e, KeyError) else str(e)
        raise UserError(f"--keywords: {path} is not an MMedC keyword file ({what})") from None
    return out


class MedicalFilter:
    """Scores documents with the configured preset; lists and regexes are built once here."""

    def __init__(self, cfg: MedicalConfig) -> None:
        cfg.validate()
        self.cfg = cfg
        if cfg.preset == "mmedc":
            self._mmedc = load_mmedc_keywords(cfg.keywords_file or "")
        else:
            self._regex: dict[str, re.Pattern[str]] = {}
            for lang in LANGS:
                terms = parse_keyword_list(KEYWORDS_DIR / f"{lang}.txt", lang)
                self._regex[lang] = compile_keywords(terms, lang)

    def score(self, text: str, lang: str) -> tuple[bool, dict[str, float]]:
        """``(keep, scores)`` for one document in language ``lang`` (one of ``LANGS``)."""
        if self.cfg.preset == "mmedc":
            return self._score_mmedc(text, lang)
        return self._score_default(text, lang)

    def _lang(self, lang: str) -> None:
        if lang not in LANGS:
            raise ValueError(f"medical filter: unsupported language {lang!r} (expected one of {LANGS})")

    def _score_mmedc(self, text: str, lang: str) -> tuple[bool, dict[str, float]]:
        self._lang(lang)
        spec = self._mmedc[lang]
        low = text.lower()
        hits, weighted = 0, 0
        if spec.short:
            tokens = Counter(low.split())
            for kw in spec.short & tokens.keys():
                hits += 1
                weighted += tokens[kw] * len(kw)
        for kw in spec.long:
            n = low.count(kw)
            if n:
                hits += 1
                weighted += n * len(kw)
        ratio = weighted / len(text) if text else 0.0
        keep = hits >= spec.hit_times and ratio >= spec.hit_ratio
        return keep, {"med_hits": float(hits), "med_ratio": round(ratio, 4)}

    def required(self, units: int, lang: str) -> tuple[float, float]:
        """``(distinct hits, keyword ratio)`` that a document of ``units`` words/characters needs."""
        cfg = self.cfg
        short = cfg.short_units[lang]
        need_hits = cfg.min_hits + cfg.hits_per_log2 * math.log2(max(1.0, units / short))
        frac = min(1.0, units / short)
        need_ratio = cfg.min_ratio[lang] * (cfg.short_ratio_boost - (cfg.short_ratio_boost - 1) * frac)
        return min(float(cfg.max_hits), need_hits), need_ratio

    def _score_default(self, text: str, lang: str) -> tuple[bool, dict[str, float]]:
        self._lang(lang)
        norm = normalize(text, lang)
        found = self._regex[lang].findall(norm)
        if lang in CJK_LANGS:
            units = len("".join(norm.split()))
            covered = sum(map(len, found))
            distinct = set(found)
        else:
            units = len(norm.split())
            distinct = {" ".join(m.split()) for m in found}
            covered = sum(len(m.split()) for m in found)
        ratio = covered / units if units else 0.0
        need_hits, need_ratio = self.required(units, lang)
        keep = len(distinct) >= need_hits and ratio >= need_ratio
        return keep, {
            "med_hits": float(len(distinct)),
            "med_count": float(len(found)),
            "med_ratio": round(ratio, 4),
        }

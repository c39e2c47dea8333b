"""Gopher-style quality filters (Rae et al. 2021, appendix A) adapted to en/zh/ja/fr/ru/es.

Space-separated languages use Gopher's word rules; Chinese and Japanese have no spaces, so their
length/alpha/symbol rules count characters ("tokens": one per ideograph/kana, one per run of other letters or
digits) and their repetition rules use character n-grams. Every rule can be switched off by name
(``disabled``); ``apply`` returns the bare rule name, which the stage records as ``quality:<rule>``.

Adaptations of Gopher, each chosen on the shared test corpus (see the field comments): minimum length 15
words / 30 characters (short medical QA contexts are real documents), alpha ratio 0.75 and typographic
" — " / " : " tokens not counted as words, duplicate n-grams count repeats only (not the first occurrence),
the top n-gram must occur >= 3 times, line-ratio rules need >= 3 lines (an exam stem ending in "..." is one
line of two), Russian mean word length up to 12, higher CJK duplicate-n-gram limits. Pass rates per
language and domain, and the time per corpus: ``python -m benchmarks.filters quality``. Cost is linear in
the text (n-gram statistics read the first ``ngram_max_tokens`` tokens only).
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field

from megatron_mmed.common.config import ConfigError
from preprocessing.document import CJK_LANGS

#: Rule names in the order they are checked (cheap first); ``quality:<name>`` is the rejection reason.
RULES: tuple[str, ...] = (
    "max_length",
    "min_length",
    "mean_word_length",
    "symbol_ratio",
    "bullet_lines",
    "ellipsis_lines",
    "alpha_ratio",
    "dup_lines",
    "dup_paragraphs",
    "top_ngram",
    "dup_ngram",
)

# Ideographs, kana (incl. ー and 々): each one is a token of its own in CJK text.
_CJK_CLASS = "\u3005\u3040-\u309f\u30a1-\u30fa\u30fc\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff\uff66-\uff9d"
# Other tokens: letter/digit runs, joined across . , / so that "9.7g/dL" or "4,000" stay one token.
_TOKEN_RE = re.compile(f"[{_CJK_CLASS}]|[^\\W_{_CJK_CLASS}]+(?:[.,/][^\\W_{_CJK_CLASS}]+)*")
_SYMBOL_RE = re.compile(r"#|…+|\.{3,}|。{3,}")
_ELLIPSIS_END_RE = re.compile(r"(?:…|\.\.\.|。。。)[\s\"'”’」』)）\]]*$")
_BULLETS = (*"•●○◦▪▫■□‣⁃∙・→➢►✓", "- ", "* ", "– ", "— ")
_PARA_SPLIT_RE = re.compile(r"\n[ \t]*\n+")
#: The most frequent n-gram only counts when it occurs this often: in a 50-word text one 4-gram said twice
#: already covers 16 % (Gopher's limit), which is ordinary prose; keyword stuffing repeats far more.
_TOP_NGRAM_MIN_COUNT = 3
#: Punctuation that French/Russian/Spanish typography sets off by spaces (" — ", " : ", " « "); such a token
#: is not a word for the alpha ratio (Gopher counted English, where these are attached to words).
_SPACED_PUNCT = "—–-:;!?¡¿«»\"'“”„()"
_STRIP = "\"'“”‘’«»„()[]{}<>.,;:!?¿¡-–—/\\|*_~`…、。，．！？：；（）「」『』【】《》〈〉·"


@dataclass(frozen=True)
class SpaceThresholds:
    """Thresholds for space-separated languages (lengths in words, word n-grams); Gopher's unless noted."""

    min_length: int = 15  # Gopher 50; medical QA contexts of 20-50 words are real documents
    min_alpha_ratio: float = 0.75  # Gopher 0.8; abstracts full of doses and p-values reach 0.82
    max_symbol_ratio: float = 0.1
    top_ngram_sizes: tuple[int, ...] = (2, 3, 4)
    top_ngram_max: tuple[float, ...] = (0.20, 0.18, 0.16)
    dup_ngram_sizes: tuple[int, ...] = (5, 6, 7, 8, 9, 10)
    dup_ngram_max: tuple[float, ...] = (0.15, 0.14, 0.13, 0.12, 0.11, 0.10)

    def validate(self) -> None:
        if self.min_length < 0:
            raise ConfigError(f"quality: min_length {self.min_length} must be >= 0")
        for name in ("min_alpha_ratio", "max_symbol_ratio"):
            v = getattr(self, name)
            if not 0.0 <= v <= 1.0:
                raise ConfigError(f"quality: {name} {v} must be in [0, 1]")
        for kind in ("top", "dup"):
            sizes, maxes = getattr(self, f"{kind}_ngram_sizes"), getattr(self, f"{kind}_ngram_max")
            if len(sizes) != len(maxes):
                raise ConfigError(f"quality: {kind}_ngram_sizes and {kind}_ngram_max need the same length")
            if any(n < 1 for n in sizes) or any(not 0.0 <= m <= 1.0 for m in maxes):
                raise ConfigError(f"quality: {kind}_ngram sizes must be >= 1 and maxima in [0, 1]")


@dataclass(frozen=True)
class CjkThresholds(SpaceThresholds):
    """Thresholds for zh/ja: lengths in characters, character n-grams (a character is ~0.6 word)."""

    min_length: int = 30
    # Character 5..10-grams are 3..6 words: set phrases recur (CMExam explanations restate the question, up
    # to 0.32 of the characters at n=5), so the limits are higher than Gopher's word n-gram ones.
    dup_ngram_max: tuple[float, ...] = (0.40, 0.34, 0.30, 0.28, 0.27, 0.26)


@dataclass(frozen=True)
class QualityConfig:
    """Quality rules; thresholds per script group, every rule switchable off via ``disabled``."""

    disabled: tuple[str, ...] = ()
    line_cleanup: bool = True
    max_chars: int = 1_000_000
    mean_word_length: tuple[float, float] = (3.0, 10.0)
    mean_word_length_by_lang: dict[str, tuple[float, float]] = field(
        default_factory=lambda: {"ru": (3.0, 12.0)}
    )
    line_rules_min_lines: int = 3
    max_bullet_lines: float = 0.9
    max_ellipsis_lines: float = 0.3
    max_dup_lines: tuple[float, float] = (0.3, 0.2)
    max_dup_paragraphs: tuple[float, float] = (0.3, 0.2)
    ngram_max_tokens: int = 50_000
    space: SpaceThresholds = field(default_factory=SpaceThresholds)
    cjk: CjkThresholds = field(default_factory=CjkThresholds)

    def validate(self) -> None:
        unknown = [r for r in self.disabled if r not in RULES]
        if unknown:
            raise ConfigError(f"quality.disabled: unknown rule(s) {unknown} (rules: {list(RULES)})")
        if self.max_chars < 1 or self.ngram_max_tokens < 100:
            raise ConfigError("quality: max_chars must be >= 1 and ngram_max_tokens >= 100")
        for where, rng in [("", self.mean_word_length), *self.mean_word_length_by_lang.items()]:
            if len(rng) != 2 or not 0 < rng[0] < rng[1]:
                raise ConfigError(
                    f"quality.mean_word_length{'_by_lang.' + where if where else ''}: need (min, max)"
                    f" with 0 < min < max, got {rng}"
                )
        if self.line_rules_min_lines < 1:
            raise ConfigError("quality.line_rules_min_lines: must be >= 1")
        for name in ("max_bullet_lines", "max_ellipsis_lines"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise ConfigError(f"quality.{name}: must be in [0, 1]")
        for name in ("max_dup_lines", "max_dup_paragraphs"):
            pair = getattr(self, name)
            if len(pair) != 2 or any(not 0.0 <= v <= 1.0 for v in pair):
                raise ConfigError(f"quality.{name}: (fraction, char fraction) must be in [0, 1]")
        self.space.validate()
        self.cjk.validate()


def _dup_fractions(items: Sequence[str]) -> tuple[float, float]:
    """(share of items that repeat an earlier one, share of characters in those repeats)."""
    if not items:
        return 0.0, 0.0
    seen: set[str] = set()
    dup_n = dup_chars = total_chars = 0
    for it in items:
        total_chars += len(it)
        if it in seen:
            dup_n += 1
            dup_chars += len(it)
        else:
            seen.add(it)
    return dup_n / len(items), (dup_chars / total_chars if total_chars else 0.0)


def _top_ngram_frac(tokens: Sequence[str], lens: Sequence[int], total: int, n: int) -> float:
    """Share of characters covered by the most frequent n-gram (Gopher); 0 unless it occurs >= 3 times."""
    if len(tokens) < n or total == 0:
        return 0.0
    counts = Counter(zip(*(tokens[i:] for i in range(n))))
    gram, count = counts.most_common(1)[0]
    if count < _TOP_NGRAM_MIN_COUNT:
        return 0.0
    return min(1.0, count * sum(len(t) for t in gram) / total)


def _dup_ngram_frac(tokens: Sequence[str], lens: Sequence[int], total: int, n: int) -> float:
    """Share of characters in tokens covered by a repeat of an earlier n-gram (Gopher's duplicate n-grams).

    The first occurrence is not counted (as for duplicate lines): a phrase said twice in an abstract is
    half as "duplicated" as Gopher's both-occurrences reading would make it.
    """
    if len(tokens) < n or total == 0:
        return 0.0
    seen: set[tuple[str, ...]] = set()
    covered = bytearray(len(tokens))
    ones = b"\x01" * n
    for i, gram in enumerate(zip(*(tokens[i:] for i in range(n)))):
        if gram in seen:
            covered[i : i + n] = ones
        else:
            seen.add(gram)
    return sum(ln for ln, c in zip(lens, covered) if c) / total


_ALNUM_RE = re.compile(r"[^\W_]")
_LETTER_RE = re.compile(r"[^\W\d_]")
_BLANKS_RE = re.compile(r"\n{3,}")
_BOILERPLATE_RE = re.compile(
    r"javascript|all rights reserved|tous droits réservés|todos los derechos reservados|все права защищены"
    r"|版权所有|版權所有|無断転載|skip to (?:main )?content",
    re.IGNORECASE,
)
_COOKIE_RE = re.compile(r"cookie|куки|クッキー", re.IGNORECASE)
_CONSENT_RE = re.compile(
    r"accept|agree|consent|polic|privacy|we use|site uses|browsing|utilis|navigation|acept|utiliz|usamos"
    r"|política|navegaci|использ|соглас|политик|приня|使用|接受|同意|隐私|政策|利用|ポリシー",
    re.IGNORECASE,
)
#: Whole-line navigation/UI labels (compared lower-cased, without arrows/pipes around them).
_NAV_TEXT = (
    "home|menu|main menu|login|log in|log out|sign in|sign up|register|subscribe|share|print|search|next|previous"
    "|back|back to top|read more|more|comments|reply|close|accueil|connexion|rechercher|partager|imprimer"
    "|suivant|précédent|lire la suite|retour en haut|inicio|buscar|compartir|imprimir|iniciar sesión|siguiente"
    "|anterior|leer más|volver arriba|главная|войти|поиск|поделиться|печать|далее|назад|наверх|читать далее"
    "|首页|登录|注册|分享|搜索|打印|返回|返回顶部|上一页|下一页|阅读全文|ホーム|ログイン|検索|シェア|印刷|次へ|前へ"
    "|トップへ戻る|ページの先頭へ|続きを読む"
)
_NAV_LINES = frozenset(_NAV_TEXT.split("|"))
_NAV_DECOR = " \t»«›‹>|<·•→←-"
#: Longest line the boilerplate/nav rules may drop: a long line that mentions cookies is content.
_MAX_BOILERPLATE_LINE = 200


def drop_line(line: str) -> bool:
    """True for a line the conservative line cleanup removes (no letters/digits, UI boilerplate, nav label)."""
    s = line.strip()
    if not s:
        return False
    if not _ALNUM_RE.search(s):
        return True
    if len(s) > _MAX_BOILERPLATE_LINE:
        return False
    if _BOILERPLATE_RE.search(s) or (_COOKIE_RE.search(s) and _CONSENT_RE.search(s)):
        return True
    return len(s) <= 40 and s.strip(_NAV_DECOR).lower() in _NAV_LINES


def clean_lines(text: str) -> tuple[str, int]:
    """``text`` without the lines ``drop_line`` flags, and how many were dropped."""
    lines = text.split("\n")
    kept = [ln for ln in lines if not drop_line(ln)]
    dropped = len(lines) - len(kept)
    if not dropped:
        return text, 0
    return _BLANKS_RE.sub("\n\n", "\n".join(kept)).strip("\n"), dropped


class QualityFilter:
    """Applies line cleanup and the enabled rules; the first failing rule is the rejection reason."""

    def __init__(self, cfg: QualityConfig) -> None:
        cfg.validate()
        self.cfg = cfg
        self._on = frozenset(r for r in RULES if r not in cfg.disabled)

    def apply(self, text: str, lang: str) -> tuple[str, str | None, dict[str, float]]:
        """``(cleaned text, failing rule or None, scores)``; stops at the first failing rule."""
        cfg, on = self.cfg, self._on
        cjk = lang in CJK_LANGS
        th = cfg.cjk if cjk else cfg.space
        scores: dict[str, float] = {}

        def done(rule: str | None) -> tuple[str, str | None, dict[str, float]]:
            return text, rule, {k: round(float(v), 4) for k, v in scores.items()}

        scores["chars"] = len(text)
        if "max_length" in on and len(text) > cfg.max_chars:
            return done("max_length")
        if cfg.line_cleanup:
            text, scores["lines_dropped"] = clean_lines(text)
            scores["chars"] = len(text)

        words = text.split()
        if cjk:
            tokens = _TOKEN_RE.findall(text)
            scores["nonspace_chars"] = sum(len(w) for w in words)
            if "min_length" in on and scores["nonspace_chars"] < th.min_length:
                return done("min_length")
        else:
            tokens = None
            scores["words"] = len(words)
            if "min_length" in on and len(words) < th.min_length:
                return done("min_length")
            if "mean_word_length" in on:
                stripped = [n for n in (len(w.strip(_STRIP)) for w in words) if n]
                scores["mean_word_length"] = sum(stripped) / len(stripped) if stripped else 0.0
                lo, hi = cfg.mean_word_length_by_lang.get(lang, cfg.mean_word_length)
                if not lo <= scores["mean_word_length"] <= hi:
                    return done("mean_word_length")

        units = tokens if tokens is not None else words
        if "symbol_ratio" in on:
            scores["symbol_ratio"] = len(_SYMBOL_RE.findall(text)) / max(len(units), 1)
            if scores["symbol_ratio"] > th.max_symbol_ratio:
                return done("symbol_ratio")

        lines = [s for s in (ln.strip() for ln in text.split("\n")) if s]
        line_rules = len(lines) >= cfg.line_rules_min_lines
        if "bullet_lines" in on and line_rules:
            scores["bullet_lines"] = sum(ln.startswith(_BULLETS) for ln in lines) / max(len(lines), 1)
            if scores["bullet_lines"] > cfg.max_bullet_lines:
                return done("bullet_lines")
        if "ellipsis_lines" in on and line_rules:
            ends = sum(1 for ln in lines if _ELLIPSIS_END_RE.search(ln))
            scores["ellipsis_lines"] = ends / max(len(lines), 1)
            if scores["ellipsis_lines"] > cfg.max_ellipsis_lines:
                return done("ellipsis_lines")
        if "alpha_ratio" in on:
            counted = [u for u in units if u.strip(_SPACED_PUNCT)]
            with_letter = sum(1 for u in counted if _LETTER_RE.search(u))
            scores["alpha_ratio"] = with_letter / len(counted) if counted else 0.0
            if scores["alpha_ratio"] < th.min_alpha_ratio:
                return done("alpha_ratio")
        if "dup_lines" in on:
            scores["dup_line_frac"], scores["dup_line_char_frac"] = _dup_fractions(lines)
            lim = cfg.max_dup_lines
            if scores["dup_line_frac"] > lim[0] or scores["dup_line_char_frac"] > lim[1]:
                return done("dup_lines")
        if "dup_paragraphs" in on:
            paras = [p for p in (p.strip() for p in _PARA_SPLIT_RE.split(text)) if p]
            scores["dup_para_frac"], scores["dup_para_char_frac"] = _dup_fractions(paras)
            lim = cfg.max_dup_paragraphs
            if scores["dup_para_frac"] > lim[0] or scores["dup_para_char_frac"] > lim[1]:
                return done("dup_paragraphs")

        if "top_ngram" in on or "dup_ngram" in on:
            grams = _ngram_tokens(
                tokens if tokens is not None else _TOKEN_RE.findall(text), cfg.ngram_max_tokens
            )
            lens = [len(t) for t in grams]
            total = sum(lens)
            for rule, sizes, maxes, fn in (
                ("top_ngram", th.top_ngram_sizes, th.top_ngram_max, _top_ngram_frac),
                ("dup_ngram", th.dup_ngram_sizes, th.dup_ngram_max, _dup_ngram_frac),
            ):
                if rule not in on:
                    continue
                for n, limit in zip(sizes, maxes):
                    key = f"{rule.split('_')[0]}_{n}gram"
                    scores[key] = fn(grams, lens, total, n)
                    if scores[key] > limit:
                        return done(rule)
        return done(None)


def _ngram_tokens(tokens: list[str], cap: int) -> list[str]:
    """Lower-cased tokens for the repetition statistics, at most ``cap`` of them (linear time on huge docs)."""
    return [t.lower() for t in tokens[:cap]]

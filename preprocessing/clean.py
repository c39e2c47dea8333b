"""Text cleaning before language ID and filtering: ftfy repair, NFC, control characters, whitespace.

Nothing here re-flows text: lines are never joined, so a line break between two CJK characters can never
turn into a spurious space. Decisions worth knowing:

* ftfy runs with ``fix_character_width=False`` and our own NFC: ftfy's default width fix and NFKC rewrite
  CJK full-width punctuation ("，。（）：" -> ",.():"). Instead only full-width ASCII letters/digits
  ("ＡＢＣ１２３") are folded to ASCII and half-width katakana ("ｶﾀｶﾅ") widened, which is what the width fix
  is for. Curly quotes are kept (they are the standard quotes of Chinese text). HTML entities are always
  unescaped: our inputs are plain text, so "&amp;" is a leftover, and ftfy's "auto" mode would skip a whole
  line as soon as it contains "<" ("p < 0.05").
* U+3000 (ideographic space), NBSP, tabs and the other Unicode spaces become one ASCII space. They are
  formatting (indentation, alignment of names/columns), every later stage splits on them anyway, and one
  canonical space lets exact/near-dup detection match copies that differ only in spacing.
* Lines are stripped at both ends, runs of blank lines become one blank line (the paragraph separator).
* Control characters: C0/C1 except ``\\n``/``\\t`` (and ``\\r``, a line ending) are removed, as are invisible format characters that
  break words (soft hyphen, zero-width space, BOM, word joiner). ZWJ/ZWNJ are kept (emoji, scripts).

Speed (``clean_text`` with defaults on mixed six-language corpus text, a 2-core machine shared with other
jobs; ``tests/test_clean.py::test_speed_5mb``): 5 MB in 2.2-2.4 s, of which ftfy is ~70 %; 50 MB in 22 s.
"""

from __future__ import annotations

import re
import unicodedata
from dataclasses import dataclass
from typing import Literal

import ftfy

from megatron_mmed.common.config import ConfigError

_FTFY_CONFIG = ftfy.TextFixerConfig(
    unescape_html=True, fix_character_width=False, uncurl_quotes=False, normalization=None, explain=False
)

#: Full-width ASCII letters/digits -> ASCII (punctuation in U+FF01..FF0F etc. is left alone on purpose).
_WIDTH_ALNUM = {
    **{cp: cp - 0xFEE0 for cp in range(0xFF10, 0xFF1A)},
    **{cp: cp - 0xFEE0 for cp in range(0xFF21, 0xFF3B)},
    **{cp: cp - 0xFEE0 for cp in range(0xFF41, 0xFF5B)},
}
_FULLWIDTH_ALNUM_RE = re.compile("[\uff10-\uff19\uff21-\uff3a\uff41-\uff5a]")
_HALFWIDTH_KANA_RE = re.compile("[\uff61-\uff9f]+")

_LINE_BREAKS_RE = re.compile("\r\n|[\r\x0b\x0c\x1c\x1d\x1e\x85\u2028\u2029]")
# C0 except \t \n \r, DEL, C1; plus invisible word-breaking format characters. \r is a line ending, left to
# the whitespace step (removing it would join lines of old-Mac text).
_CONTROL_RE = re.compile("[\x00-\x08\x0b\x0c\x0e-\x1f\x7f-\x9f\u00ad\u200b\u2060\ufeff]+")
_ODD_SPACE = "\t\u00a0\u1680\u2000-\u200a\u202f\u205f\u3000"
# Only runs that need changing match (a lone ASCII space does not), which keeps the substitution cheap.
_SPACE_RUN_RE = re.compile(f"[ {_ODD_SPACE}]{{2,}}|[{_ODD_SPACE}]")
_EDGE_SPACE_RE = re.compile(r" +\n *|\n +")
_BLANK_LINES_RE = re.compile(r"\n{3,}")


@dataclass(frozen=True)
class CleanConfig:
    """Which cleaning steps run (all on by default)."""

    fix_text: bool = True
    normalize: Literal["NFC", "none"] = "NFC"
    strip_control: bool = True
    normalize_whitespace: bool = True

    def validate(self) -> None:
        if self.normalize not in ("NFC", "none"):
            raise ConfigError(
                f"clean.normalize: {self.normalize!r} is not one of ['NFC', 'none'] "
                "(NFKC is not offered: it rewrites CJK full-width punctuation)"
            )


def _ftfy(text: str) -> str:
    """ftfy repairs (mojibake, entities, ligatures, line breaks) without width or normalisation changes."""
    text = ftfy.fix_text(text, _FTFY_CONFIG)
    if _FULLWIDTH_ALNUM_RE.search(text):
        text = text.translate(_WIDTH_ALNUM)
    if _HALFWIDTH_KANA_RE.search(text):
        text = _HALFWIDTH_KANA_RE.sub(lambda m: unicodedata.normalize("NFKC", m.group()), text)
    return text


def clean_text(text: str, cfg: CleanConfig) -> str:
    """Apply the enabled cleaning steps; linear in the text length and never joins lines."""
    if cfg.fix_text:
        text = _ftfy(text)
    if cfg.normalize == "NFC" and not unicodedata.is_normalized("NFC", text):
        text = unicodedata.normalize("NFC", text)
    if cfg.normalize_whitespace:
        text = _LINE_BREAKS_RE.sub("\n", text)
    if cfg.strip_control:
        text = _CONTROL_RE.sub("", text)
    if cfg.normalize_whitespace:
        text = _SPACE_RUN_RE.sub(" ", text)
        text = _EDGE_SPACE_RE.sub("\n", text)
        text = _BLANK_LINES_RE.sub("\n\n", text)
        text = text.strip(" \n")
    return text

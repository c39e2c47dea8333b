"""Book text from page lines: running headers/footers, paragraphs, hyphenation and CJK joining, records.

Works on ``Page`` objects (lines with their position on the page, from a PDF text layer or from OCR), so the
same rules apply to born-digital and scanned books. Everything here is plain Python over a book's lines (a
1,000-page book is a few MB of text); the PDF itself is read page by page in ``preprocessing.extract.pdf``.

* Running headers/footers: a line in the top or bottom band of a page whose text, with digits folded, repeats
  at an edge of a page at most two pages away (odd/even headers alternate); lines that are only a page number
  ("12", "- xii -", "Page 3 of 9", "第 5 页") at an edge go too.
* Chapters and front/back matter: ``preprocessing.extract.structure``; ``assemble`` turns its sections
  into records' text.
* Joining: a line-end hyphen between letters is removed unless the book itself writes that word with a hyphen
  inside a line; lines meet without a space when either side is Chinese/Japanese; paragraphs (from vertical
  gaps, indentation, short last lines) are separated by a newline.
"""

from __future__ import annotations

import re
from collections import defaultdict
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from preprocessing.extract.structure import Section

#: pdfium writes U+FFFE where it joined a line-end hyphen to the next line itself
PDFIUM_HYPHEN = "\ufffe"
_LINE_END_HYPHENS = "-\u00ad\u2010\x02" + PDFIUM_HYPHEN

#: a line is in the header/footer band when it lies in the top or bottom 10 % of the page
EDGE_BAND = 0.10


@dataclass(slots=True)
class Line:
    """One text line; positions are fractions of the page (``top``/``bottom`` from the top edge)."""

    text: str
    top: float
    bottom: float
    left: float
    right: float
    para: bool = False  # starts a paragraph


@dataclass
class Page:
    """One page of a book: its lines and how they were obtained (``text``, ``ocr``, ``blank``, ``failed``)."""

    number: int  # 1-based
    lines: list[Line]
    method: str
    detail: str = ""
    ends_para: bool = True  # the last line ends a paragraph (set by ``mark_paragraphs``)


@dataclass
class Chapter:
    title: str | None
    text: str
    first_page: int
    last_page: int
    pages: list[int] = field(default_factory=list)


# ---------------------------------------------------------------- patterns (six languages)

_ROMAN = r"(?=[mdclxvi])m{0,3}(?:c[md]|d?c{0,3})(?:x[cl]|l?x{0,3})(?:i[xv]|v?i{0,3})"
_NUM = rf"(?:\d{{1,4}}|{_ROMAN})"
PAGE_NUMBER_RE = re.compile(
    rf"^[\s\-–—·•|\[\](){{}}]*(?:(?:page|p\.|pág\.?|página|стр\.?|страница|seite)\s*)?{_NUM}"
    rf"(?:\s*(?:/|of|de|sur|из)\s*\d{{1,4}})?[\s\-–—·•|\[\](){{}}]*$"
    r"|^第?\s*\d{1,4}\s*[页頁]$|^\d{1,4}\s*ページ$",
    re.IGNORECASE,
)
_CHAPTER_WORDS = r"chapter|part|chapitre|partie|cap[ií]tulo|parte|глава|часть|раздел"
#: an edge key (see ``_edge_key``) of a chapter heading: "chapter #", "第#章"
_CHAPTER_KEY_RE = re.compile(rf"^(?:{_CHAPTER_WORDS})\b|^第", re.IGNORECASE)
_TERMINAL = frozenset('.!?。！？…:;»"”’)')
_DIGITS_RE = re.compile(r"\d+")
_NONWORD_RE = re.compile(r"[\W_]+")
_JOIN_RE = re.compile(rf"([^\W\d_]*){PDFIUM_HYPHEN}([^\W\d_]*)")


def is_cjk(ch: str) -> bool:
    """Chinese/Japanese characters and full-width punctuation (text that is written without spaces)."""
    o = ord(ch)
    return (
        0x2E80 <= o <= 0x9FFF
        or 0xF900 <= o <= 0xFAFF
        or 0xFF00 <= o <= 0xFFEF
        or 0x3000 <= o <= 0x303F
        or 0x20000 <= o <= 0x3134F
    )


def _edge_key(text: str) -> str:
    """What a running header repeats: letters and digit runs (folded to #), case-folded."""
    return _NONWORD_RE.sub(" ", _DIGITS_RE.sub("#", text.casefold())).strip()


# ---------------------------------------------------------------- running headers / footers


def _edge_lines(page: Page) -> list[int]:
    """Indices of the lines in the top/bottom band set in body-size type or smaller (a large chapter title
    near the top edge is not a running header)."""
    lines = page.lines
    low = 1.0 - EDGE_BAND
    idx = [i for i, ln in enumerate(lines) if ln.top < EDGE_BAND or ln.bottom > low]
    if not idx:
        return idx
    limit = 1.25 * _median([ln.bottom - ln.top for ln in lines[:: max(1, len(lines) // 15)]])
    return [i for i in idx if lines[i].bottom - lines[i].top <= limit]


def remove_running_lines(pages: list[Page]) -> int:
    """Drop running headers/footers and page numbers from ``pages`` in place; returns how many lines went."""
    candidates: list[list[int]] = []  # per page: indices of lines in the edge bands
    where: defaultdict[str, list[int]] = defaultdict(list)  # edge key -> page indices
    for pi, page in enumerate(pages):
        idx = _edge_lines(page)
        candidates.append(idx)
        for key in {_edge_key(page.lines[i].text) for i in idx}:
            if key:
                where[key].append(pi)
    running = set()
    for key, pis in where.items():
        if len(pis) < 2:
            continue
        near = sum(1 for a, b in zip(pis, pis[1:]) if b - a <= 2)
        # a chapter heading ("chapter #") opens pages far apart; a running header repeats page after page
        if near >= (2 if _CHAPTER_KEY_RE.match(key) else 1):
            running.add(key)
    removed = 0
    for page, idx in zip(pages, candidates):
        if not idx:
            continue
        drop = {
            i
            for i in idx
            if PAGE_NUMBER_RE.match(page.lines[i].text) or _edge_key(page.lines[i].text) in running
        }
        if drop:
            page.lines = [ln for i, ln in enumerate(page.lines) if i not in drop]
            removed += len(drop)
    return removed


# ---------------------------------------------------------------- paragraphs


def _median(values: list[float]) -> float:
    s = sorted(values)
    return s[len(s) // 2] if s else 0.0


def mark_paragraphs(page: Page, sizes: bool = True) -> None:
    """Set ``Line.para`` from geometry: an extra vertical gap, a first-line indent, a short line ending a
    sentence before it, a change of font size (``sizes``: off for OCR, whose boxes hug the ink), or a jump
    back up the page (next column)."""
    lines = page.lines
    if not lines:
        return
    heights = [ln.bottom - ln.top for ln in lines]
    mh = _median(heights) or 0.01
    left = _median([ln.left for ln in lines])
    rights = sorted(ln.right for ln in lines)
    right = rights[
        len(rights) * 9 // 10
    ]  # the text block's right edge (lines of ragged text end short of it)
    width = max(right - left, 0.05)
    gaps = [b.top - a.bottom for a, b in zip(lines, lines[1:]) if b.top > a.bottom - 0.5 * mh]
    gap = _median(gaps)
    indent = 0.012
    prev = None
    for ln, h in zip(lines, heights):
        indented = ln.left > left + indent
        if prev is None:
            ln.para = indented
        else:
            g = ln.top - prev.bottom
            prev_h = prev.bottom - prev.top
            prev_short = prev.right < right - 0.15 * width and prev.text[-1:] in _TERMINAL
            prev_centered = (
                prev.left > left + 0.1 * width
                and abs((prev.left - left) - (right - prev.right)) < 0.05 * width
            )
            ln.para = (
                g > gap + 0.5 * mh
                or g < -mh  # back up the page: the next column or a float
                or (indented and prev.left <= left + indent)
                or prev_short
                or prev_centered
                or (sizes and abs(h - prev_h) > 0.2 * mh)
            )
        prev = ln
    last = lines[-1]
    page.ends_para = last.text[-1:] in _TERMINAL and (len(lines) == 1 or last.right < right - 0.15 * width)


def reading_order(lines: list[Line]) -> list[Line]:
    """Lines in the top band first and lines wholly in the bottom band last (each by position), the body in
    the PDF's own order between them: a running header drawn after the body must not split a sentence."""
    head: list[Line] = []
    body: list[Line] = []
    foot: list[Line] = []
    low = 1.0 - EDGE_BAND
    for ln in lines:
        (head if ln.top < EDGE_BAND else foot if ln.top >= low else body).append(ln)
    if not head and not foot:
        return lines
    if len(head) > 1:
        head.sort(key=lambda ln: ln.top)
    if len(foot) > 1:
        foot.sort(key=lambda ln: ln.top)
    return head + body + foot


# ---------------------------------------------------------------- joining


def _hyphen_words(pages: list[Page]) -> set[str]:
    """Words the book writes with a hyphen inside a line ("anti-inflammatory"), case-folded. Found from the
    hyphens (a few per page) rather than by a regex over every word of the book."""
    found: set[str] = set()
    for page in pages:
        for ln in page.lines:
            text = ln.text
            i = text.find("-", 1)
            while 0 < i < len(text) - 1:
                if text[i - 1].isalpha() and text[i + 1].isalpha():
                    found.add(f"{_word_tail(text, i)}-{_HEAD_RE.match(text, i + 1).group(0)}".casefold())
                i = text.find("-", i + 1)
    return found


_HEAD_RE = re.compile(r"[^\W\d_]*")


def _word_tail(text: str, end: int | None = None) -> str:
    """The letters that end ``text[:end]`` (a scan back over a few characters, not a regex over the line)."""
    end = len(text) if end is None else end
    i = end
    while i > 0 and text[i - 1].isalpha():
        i -= 1
    return text[i:end]


def _word_head(text: str) -> str:
    m = _HEAD_RE.match(text)
    return m.group(0) if m else ""


class Joiner:
    """Joins a chapter's lines into paragraphs (hyphenation, CJK, spaces) with the book's hyphenated words."""

    def __init__(self, pages: list[Page]):
        self._keep: set[str] | None = None
        self._pages = pages

    def _keeps_hyphen(self, left: str, right: str) -> bool:
        if self._keep is None:
            self._keep = _hyphen_words(self._pages)
        return f"{left}-{right}".casefold() in self._keep

    def _pdfium_join(self, m: re.Match) -> str:
        left, right = m.group(1), m.group(2)
        return f"{left}-{right}" if left and right and self._keeps_hyphen(left, right) else left + right

    def line_text(self, text: str) -> str:
        text = text.strip()
        if PDFIUM_HYPHEN in text:
            text = _JOIN_RE.sub(self._pdfium_join, text)
        return text

    def join(self, lines: list[Line]) -> str:
        """Paragraphs separated by a newline. (Runs once per line of a book: kept to plain string tests.)"""
        out: list[str] = []
        prev = ""
        for ln in lines:
            text = ln.text
            if PDFIUM_HYPHEN in text:
                text = self.line_text(text)
            if not text:
                continue
            if prev:
                last = prev[-1]
                # a word broken at a line end is joined even across a paragraph mark (no paragraph ends so)
                if last in _LINE_END_HYPHENS and text[0].islower() and len(prev) > 1 and prev[-2].isalpha():
                    left, right = _word_tail(prev[:-1]), _word_head(text)
                    keep = left and right and self._keeps_hyphen(left, right)
                    out[-1] = prev[:-1] + ("-" if keep else "")
                elif ln.para:
                    out.append("\n")
                elif not ((last >= "\u2e80" and is_cjk(last)) or (text[0] >= "\u2e80" and is_cjk(text[0]))):
                    out.append(" ")
            out.append(text)
            prev = text
        return "".join(out)


def assemble(pages: list[Page], sections: list[Section], min_chars: int) -> list[Chapter]:
    """Records' text per body/chapter section (front/back matter dropped), short sections merged forward."""
    joiner = Joiner(pages)
    bounds = [s.start for s in sections] + [(len(pages), 0)]
    chapters: list[Chapter] = []
    carry: list[Line] = []
    carry_pages: list[int] = []
    for s, (pi0, li0), (pi1, li1) in zip(sections, bounds, bounds[1:]):
        lines: list[Line] = []
        nums: list[int] = []
        for pi in range(pi0, min(pi1 + 1, len(pages))):
            page = pages[pi]
            a = li0 if pi == pi0 else 0
            b = li1 if pi == pi1 else len(page.lines)
            if a < b:
                chunk = page.lines[a:b]
                if not lines or (a == 0 and pages[pi - 1].ends_para):
                    chunk[0].para = True
                lines += chunk
                nums.append(page.number)
        if s.kind in ("front", "back"):
            continue
        if carry and lines:
            lines[0].para = True
        lines = carry + lines
        nums = carry_pages + nums
        text = joiner.join(lines)
        if (
            len(text) < min_chars
            and s is not sections[-1]
            and any(x.kind in ("chapter", "body") for x in sections[sections.index(s) + 1 :])
        ):
            carry, carry_pages = lines, nums  # a part title page or an epigraph: goes with the next chapter
            continue
        carry, carry_pages = [], []
        if text:
            chapters.append(Chapter(s.title, text, nums[0], nums[-1], nums))
    if carry:
        text = joiner.join(carry)
        if text:
            chapters.append(Chapter(None, text, carry_pages[0], carry_pages[-1], carry_pages))
    return chapters

"""Book structure from page lines: running headers/footers, paragraphs, chapters, front/back matter, joining.

Works on ``Page`` objects (lines with their position on the page, from a PDF text layer or from OCR), so the
same rules apply to born-digital and scanned books. Everything here is plain Python over a book's lines (a
1,000-page book is a few MB of text); the PDF itself is read page by page in ``preprocessing.extract.pdf``.

* Running headers/footers: a line in the top or bottom band of a page whose text, with digits folded, repeats
  at an edge of a page at most two pages away (odd/even headers alternate); lines that are only a page number
  ("12", "- xii -", "Page 3 of 9", "第 5 页") at an edge go too.
* Chapters: the PDF outline when it has one, else headings that open a page ("Chapter 3", "Глава 3",
  "第3章", ...). Front matter (cover, copyright, contents, preface) is what comes before the first chapter;
  back matter (index, bibliography) starts at a back-matter title after the last chapter start. A book with no
  chapters is one record, with its cover/copyright/contents pages and its trailing index pages cut by content.
* Joining: a line-end hyphen between letters is removed unless the book itself writes that word with a hyphen
  inside a line; lines meet without a space when either side is Chinese/Japanese; paragraphs (from vertical
  gaps, indentation, short last lines) are separated by a newline.
"""

from __future__ import annotations

import re
from collections import defaultdict
from dataclasses import dataclass, field

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
class Section:
    """A run of the book's lines: a chapter (``kind='chapter'``) or front/back matter."""

    kind: str  # chapter | front | back | body
    title: str | None
    start: tuple[int, int]  # (page index, line index) of its first line
    source: str = "headings"  # outline | headings | none


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
CHAPTER_RE = re.compile(
    rf"^(?:{_CHAPTER_WORDS})\s+{_NUM}\b|^第\s*[\d一二三四五六七八九十百零〇]+\s*[章部篇編编]", re.IGNORECASE
)
#: an edge key (see ``_edge_key``) of a chapter heading: "chapter #", "第#章"
_CHAPTER_KEY_RE = re.compile(rf"^(?:{_CHAPTER_WORDS})\b|^第", re.IGNORECASE)
_FRONT_TITLES = (
    "contents|table of contents|preface|foreword|acknowledge?ments|dedication|about the authors?|"
    "list of (?:figures|tables|abbreviations|contributors)|contributors|"
    "table des matières|sommaire|préface|avant-propos|remerciements|"
    "liste des (?:figures|tableaux|abréviations|collaborateurs)|"
    "índice(?: general)?|contenidos?|prefacio|prólogo|agradecimientos|"
    "lista de (?:figuras|tablas|abreviaturas|colaboradores)|"
    "содержание|оглавление|предисловие|благодарности|список (?:сокращений|иллюстраций|таблиц)|"
    "目录|目錄|前言|序言?|致谢|出版说明|内容提要|内容简介|目次|序文|まえがき|はじめに|謝辞|凡例|執筆者一覧"
)
_BACK_TITLES = (
    "index|subject index|bibliography|references|further reading|"
    "bibliographie|références(?: bibliographiques)?|"
    "índice (?:alfabético|analítico|de materias)|bibliografía|referencias(?: bibliográficas)?|"
    "(?:предметный |алфавитный )?указатель|библиография|литература|список литературы|"
    "索引|参考文献|參考文獻|文献"
)
FRONT_TITLE_RE = re.compile(rf"^\s*(?:{_FRONT_TITLES})\s*[.:]?\s*$", re.IGNORECASE)
BACK_TITLE_RE = re.compile(rf"^\s*(?:{_BACK_TITLES})\s*[.:]?\s*$", re.IGNORECASE)
COPYRIGHT_RE = re.compile(
    r"©|\(c\)\s*\d{4}|\bisbn\b|all rights reserved|tous droits réservés|todos los derechos reservados|"
    r"reservados todos los derechos|все права защищены|版权所有|版權所有|著作権|無断転載",
    re.IGNORECASE,
)
#: a table-of-contents or index entry: text ending in a page number (after dot leaders or a space)
_ENTRY_RE = re.compile(r"(?:\.{2,}|…|·{2,}|\s|[,，])\s*\d{1,4}\s*$")
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


def remove_title_lines(pages: list[Page], titles: list[str]) -> int:
    """Drop edge-band lines that repeat a title of the book (its name, an outline entry, a chapter heading
    found on a page) without being that heading: a chapter title printed as the running header of its only
    odd page repeats nowhere else. Lines that are headings themselves ("Chapter 3 ...") stay."""
    keys = {_edge_key(t) for t in titles}
    heads = [_heading(page) for page in pages]
    keys.update(_edge_key(h[1]) for h in heads if h is not None)
    keys = {k for k in keys if _long_enough(k)}
    if not keys:
        return 0
    removed = 0
    for page, h in zip(pages, heads):
        drop = set()
        for i in _edge_lines(page):
            text = page.lines[i].text
            if _is_title_line(text) or (h is not None and i == h[2]):
                continue
            k = _edge_key(text)
            if _long_enough(k) and any(t == k or t.endswith(" " + k) for t in keys):
                drop.add(i)
        if drop:
            page.lines = [ln for i, ln in enumerate(page.lines) if i not in drop]
            removed += len(drop)
    return removed


def _long_enough(key: str) -> bool:
    """Four letters, or two Chinese/Japanese characters: shorter keys match too much."""
    return len(key) >= 4 or (len(key) >= 2 and all(map(is_cjk, key.replace(" ", ""))))


def _is_title_line(text: str) -> bool:
    return bool(CHAPTER_RE.match(text) or FRONT_TITLE_RE.match(text) or BACK_TITLE_RE.match(text))


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


# ---------------------------------------------------------------- structure


def _first_line(page: Page) -> str:
    return page.lines[0].text.strip() if page.lines else ""


def _is_entry_page(page: Page) -> bool:
    """A contents or index page: most lines end in a page number."""
    n = len(page.lines)
    return n >= 4 and sum(1 for ln in page.lines if _ENTRY_RE.search(ln.text)) >= 0.6 * n


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


#: a page's first line at least this much taller than the page's median line is a chapter title
_TITLE_SIZE = 1.4


def _big_title(page: Page, i: int) -> bool:
    line = page.lines[i]
    if len(page.lines) < i + 4 or line.top >= 0.3:
        return False
    nxt = page.lines[i + 1]
    if line.bottom - line.top < _TITLE_SIZE * (nxt.bottom - nxt.top) * 0.8:
        return False  # the usual case, decided without a median
    rest = [ln.bottom - ln.top for ln in page.lines[i + 1 :]]
    return (
        len(rest) >= 3
        and line.bottom - line.top >= _TITLE_SIZE * _median(rest)
        and line.top < 0.3
        and len(line.text) < 80
        and line.text.rstrip()[-1:] not in _TERMINAL
    )


def _heading_at(page: Page, i: int) -> tuple[str, str] | None:
    text = page.lines[i].text.strip()
    if not text:
        return None
    m = CHAPTER_RE.match(text)
    if m and not text[0].islower() and not _ENTRY_RE.search(text):
        nxt = page.lines[i + 1].text.strip() if i + 1 < len(page.lines) else ""
        if nxt and not text[m.end() :].strip(" .:-–—") and len(nxt) < 80:
            text = f"{text} {nxt}"  # "Chapter 3" + "Cardiology" on the next line
        return "chapter", text
    if FRONT_TITLE_RE.match(text):
        return "front", text
    if BACK_TITLE_RE.match(text):
        return "back", text
    if _big_title(page, i) and not text[0].islower() and not _ENTRY_RE.search(text):
        return "chapter", text
    return None


def _heading(page: Page) -> tuple[str, str, int] | None:
    """``(kind, title, line index)`` when the page opens with a chapter, front-matter or back-matter title (a
    chapter title is "Chapter 3 ..." or its equivalent, or a short line in much larger type). The line under
    a running header that survived so far (one seen on no other page) is tried too."""
    for i in range(min(2, len(page.lines))):
        h = _heading_at(page, i)
        if h is not None:
            return (*h, i)
        if page.lines[i].top >= EDGE_BAND:
            break
    return None


def sections_from_outline(pages: list[Page], outline: list[tuple[int, str, int]]) -> list[Section] | None:
    """Sections from the PDF outline ``(level, title, page index)``; None when it names no chapter.

    The top level is used, unless it holds at most three content entries (book parts) and the next level
    holds more (the chapters inside them).
    """
    outline = [(lvl, t.strip(), p) for lvl, t, p in outline if 0 <= p < len(pages) and t.strip()]
    if not outline:
        return None
    top = min(lvl for lvl, _, _ in outline)

    def kind(title: str) -> str:
        if FRONT_TITLE_RE.match(title):
            return "front"
        if BACK_TITLE_RE.match(title):
            return "back"
        return "chapter"

    entries = [e for e in outline if e[0] == top]
    content = [e for e in entries if kind(e[1]) == "chapter"]
    deeper = [e for e in outline if e[0] == top + 1 and kind(e[1]) == "chapter"]
    if len(content) <= 3 and len(deeper) > len(content):
        entries = sorted([e for e in entries if kind(e[1]) != "chapter"] + deeper, key=lambda e: e[2])
    if not any(kind(t) == "chapter" for _, t, _ in entries):
        return None
    sections = []
    for _, title, pi in entries:
        li = _find_title_line(pages[pi], title)
        sections.append(Section(kind(title), title, (pi, li), "outline"))
    sections.sort(key=lambda s: s.start)
    return sections


def _find_title_line(page: Page, title: str) -> int:
    """The line where ``title`` starts on ``page`` (a chapter may open mid-page); 0 when not found."""
    key = _edge_key(title)[:24]
    if key:
        for i, ln in enumerate(page.lines[:60]):
            k = _edge_key(ln.text)
            if k and (k.startswith(key) or key.startswith(k)) and len(k) >= min(len(key), 4):
                return i
    return 0


def sections_from_headings(pages: list[Page]) -> list[Section]:
    """Sections opened by chapter/front/back titles at the top of pages (contents pages never open one)."""
    sections = []
    for pi, page in enumerate(pages):
        h = _heading(page)
        if h is not None and (h[0] == "front" or not _is_entry_page(page)):
            sections.append(Section(h[0], h[1], (pi, h[2]), "headings"))
    return sections


def _front_pages_by_content(pages: list[Page]) -> int:
    """How many leading pages are cover, copyright, contents or front-matter title pages."""
    n = 0
    limit = max(8, len(pages) // 5) if len(pages) >= 4 else 0  # a short paper has no front matter
    for page in pages[:limit]:
        text = " ".join(ln.text for ln in page.lines)
        if (
            not page.lines
            or (n == 0 and len(text) < 300)  # cover or title page
            or COPYRIGHT_RE.search(text)
            or _is_entry_page(page)
            or FRONT_TITLE_RE.match(_first_line(page))
        ):
            n += 1
        else:
            break
    return n if n < len(pages) else 0


def _back_start_by_content(pages: list[Page], start: int) -> int:
    """The first page of trailing index/bibliography pages (``len(pages)`` when there are none)."""
    cut = len(pages)
    for pi in range(len(pages) - 1, start - 1, -1):
        page = pages[pi]
        if not page.lines or _is_entry_page(page) or BACK_TITLE_RE.match(_first_line(page)):
            cut = pi
        else:
            break
    for pi in range(max(start, len(pages) * 7 // 10), cut):  # a back title further up, in the last 30 %
        if BACK_TITLE_RE.match(_first_line(pages[pi])):
            return pi
    return cut


def plan_sections(
    pages: list[Page], outline: list[tuple[int, str, int]], cut_front_back: bool, split_chapters: bool
) -> list[Section]:
    """Ordered sections covering the book from its first line; ``body``/``chapter`` ones become records."""
    sections = sections_from_outline(pages, outline) if split_chapters else None
    if sections is None and split_chapters:
        heads = sections_from_headings(pages)
        if any(s.kind == "chapter" for s in heads):
            sections = heads
    if sections is not None:
        first = next(i for i, s in enumerate(sections) if s.kind == "chapter")
        last = max(i for i, s in enumerate(sections) if s.kind == "chapter")
        for s in sections[:first]:
            s.kind = "front"
        for s in sections[last + 1 :]:
            s.kind = "back"  # "Índice" after the last chapter is the index
        if sections[0].start != (0, 0):
            sections.insert(0, Section("front", None, (0, 0), sections[0].source))
    else:
        start = _front_pages_by_content(pages) if cut_front_back else 0
        back = _back_start_by_content(pages, start) if cut_front_back else len(pages)
        sections = [Section("body", None, (start, 0), "none")]
        if start:
            sections.insert(0, Section("front", None, (0, 0), "none"))
        if back < len(pages):
            sections.append(Section("back", None, (back, 0), "none"))
    if not cut_front_back:
        for s in sections:
            if s.kind in ("front", "back"):
                s.kind = "body"
    return sections


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

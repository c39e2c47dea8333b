"""Book structure: chapters from the PDF outline or from headings, front and back matter, title-like headers.

Chapters come from the outline when it has one, else from headings that open a page ("Chapter 3", "Глава 3",
"第3章", ... or a short line in much larger type). Front matter (cover, copyright, contents, preface) is what
comes before the first chapter; back matter (index, bibliography) starts at a back-matter title after the last
chapter start. A book with no chapters is one record, with its cover/copyright/contents pages and its trailing
index pages cut by content. Works on the ``Page``/``Line`` objects of ``preprocessing.extract.book``.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from preprocessing.extract.book import (
    _CHAPTER_WORDS,
    _NUM,
    _TERMINAL,
    EDGE_BAND,
    Page,
    _edge_key,
    _edge_lines,
    _median,
    is_cjk,
)

CHAPTER_RE = re.compile(
    rf"^(?:{_CHAPTER_WORDS})\s+{_NUM}\b|^第\s*[\d一二三四五六七八九十百零〇]+\s*[章部篇編编]", re.IGNORECASE
)
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


@dataclass
class Section:
    """A run of the book's lines: a chapter (``kind='chapter'``) or front/back matter."""

    kind: str  # chapter | front | back | body
    title: str | None
    start: tuple[int, int]  # (page index, line index) of its first line
    source: str = "headings"  # outline | headings | none


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


def _first_line(page: Page) -> str:
    return page.lines[0].text.strip() if page.lines else ""


def _is_entry_page(page: Page) -> bool:
    """A contents or index page: most lines end in a page number."""
    n = len(page.lines)
    return n >= 4 and sum(1 for ln in page.lines if _ENTRY_RE.search(ln.text)) >= 0.6 * n


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

"""PDF books -> chapter records: pypdfium2 text layer page by page, OCR for scanned pages, book structure.

pypdfium2 (PDFium, Apache-2.0/BSD-3) rather than PyMuPDF (AGPL-3.0): the repo is Apache-2.0 and used inside
companies, and PDFium's text layer is as good for this job. Each page is opened, read and closed before the
next, so memory holds the book's text (a few MB for 1,000 pages), never its pages or images.

A page is *scanned* when its text layer has fewer than ``pdf.min_page_chars`` characters and it holds an
image, or when most of its text layer is unmapped glyphs; with ``--ocr auto`` it is rendered at
``tesseract.dpi`` and OCR'd, with ``--ocr always`` every page is, with ``--ocr never`` none is.
"""

from __future__ import annotations

import re
import subprocess
import time
from collections.abc import Callable, Iterator
from typing import Any

from preprocessing.extract.book import (
    PDFIUM_HYPHEN,
    Line,
    Page,
    assemble,
    mark_paragraphs,
    reading_order,
    remove_running_lines,
)
from preprocessing.extract.config import ExtractConfig
from preprocessing.extract.ocr import PageReader, Tesseract
from preprocessing.extract.sources import TooLarge, Unit, read_bytes
from preprocessing.extract.stats import ExtractStats
from preprocessing.extract.structure import plan_sections, remove_title_lines

#: what one PDF yields: ("doc" | "rejected", record)
Item = tuple[str, dict[str, Any]]


def _rejected(uid: str, reason: str, detail: str, unit: Unit, **extra: Any) -> Item:
    return "rejected", {"id": uid, "reason": reason, "detail": detail, "source": unit.name, **extra}


#: what a broken font mapping leaves in a text layer: U+FFFD, control characters, private-use code points
_GARBAGE_RE = re.compile("[\ufffd\x00\x01\x03-\x08\x0b\x0c\x0e-\x1f\ue000-\uf8ff]")


def _garbage_share(text: str) -> float:
    if not _GARBAGE_RE.search(text):
        return 0.0
    return len(_GARBAGE_RE.findall(text)) / max(len(text), 1)


def text_layer_lines(page, textpage) -> tuple[str, list[Line]]:
    """The page's text and its lines with positions (loose boxes of each line's first and last character).

    pdfium joins a line that ends in a hyphen to the text that follows it in the content stream, marking the
    join with U+FFFE; that text may be the next line but also a running header drawn after the body. Such
    lines are split back at the mark (the first part keeps its hyphen), so headers come off cleanly and the
    book-level joiner decides about the hyphen. This runs for every line of every page, so the boxes come from
    PDFium's C call directly (one reused rectangle), and a line at least 80 % as long as the page's longest
    takes that line's right edge (it is no paragraph's short last line) instead of asking for its own.
    """
    import pypdfium2.raw as pdfium_c

    text = textpage.get_text_range()
    left, bottom, right, top = page.get_bbox()
    sx, sy = 1.0 / ((right - left) or 1.0), 1.0 / ((top - bottom) or 1.0)
    spans: list[tuple[str, int, int]] = []  # (text, index of its first and of its last character)
    off = 0
    for raw in text.split("\r\n"):
        if PDFIUM_HYPHEN not in raw:
            stripped = raw.strip()
            if stripped is raw:  # nothing stripped (str.strip returns the same object)
                spans.append((raw, off, off + len(raw) - 1))
            elif stripped:
                first = off + raw.index(stripped[0])
                spans.append((stripped, first, first + len(stripped) - 1))
        else:
            seg_off = off
            segments = raw.split(PDFIUM_HYPHEN)
            for k, seg in enumerate(segments):
                stripped = seg.strip()
                if stripped:
                    first = seg_off + seg.index(stripped[0])
                    spans.append(
                        (stripped + ("-" if k < len(segments) - 1 else ""), first, first + len(stripped) - 1)
                    )
                seg_off += len(seg) + 1
        off += len(raw) + 2
    if not spans:
        return text, []
    if len(text) != textpage.count_chars():  # no index match: ranks on the page stand in for positions
        n = len(spans)
        return text, [Line(t, i / n, i / n, 0.0, 1.0) for i, (t, _, _) in enumerate(spans)]
    rect = pdfium_c.FS_RECTF()
    raw_tp = textpage.raw
    loose_box = pdfium_c.FPDFText_GetLooseCharBox
    longest = max(spans, key=lambda sp: len(sp[0]))
    if not loose_box(raw_tp, longest[1], rect):
        n = len(spans)
        return text, [Line(t, i / n, i / n, 0.0, 1.0) for i, (t, _, _) in enumerate(spans)]
    loose_box(raw_tp, longest[2], rect)
    full_right = rect.right
    long_line = 0.8 * len(longest[0])
    lines: list[Line] = []
    for t, first, end in spans:
        loose_box(raw_tp, first, rect)
        l0, b0, t0 = rect.left, rect.bottom, rect.top
        if len(t) >= long_line:  # not a paragraph's short last line, whatever its exact end
            r0 = full_right
        elif end != first and loose_box(raw_tp, end, rect):
            r0 = rect.right
            if rect.bottom < b0:
                b0 = rect.bottom
            if rect.top > t0:
                t0 = rect.top
        else:
            r0 = rect.right
        lines.append(Line(t, (top - t0) * sy, (top - b0) * sy, (l0 - left) * sx, (r0 - left) * sx))
    return text, reading_order(lines)


def _has_image(page) -> bool:
    import pypdfium2.raw as pdfium_c

    return any(True for _ in page.get_objects(filter=[pdfium_c.FPDF_PAGEOBJ_IMAGE], max_depth=2))


def _render_gray(page, dpi: int):
    import numpy as np

    bitmap = page.render(scale=dpi / 72, grayscale=True)
    arr = bitmap.to_numpy()
    return np.ascontiguousarray(arr.reshape(arr.shape[0], arr.shape[1]))


def _open(unit: Unit, max_bytes: int):
    """``(document, None)`` or ``(None, (reason, detail))``."""
    import pypdfium2 as pdfium
    import pypdfium2.raw as pdfium_c

    try:
        src = read_bytes(unit, max_bytes) if unit.member else unit.path
        if not unit.member and unit.size > max_bytes:
            raise TooLarge(f"{unit.size:,} bytes > {max_bytes:,}")
        return pdfium.PdfDocument(src), None
    except TooLarge as e:
        return None, ("too_large", str(e))
    except pdfium.PdfiumError as e:
        code = getattr(e, "err_code", None)
        if code in (pdfium_c.FPDF_ERR_PASSWORD, pdfium_c.FPDF_ERR_SECURITY):
            return None, ("encrypted", f"password protected or unsupported security handler ({e})")
        if _no_pages(unit):  # PDFium opens no document without a page
            return None, ("empty", "the PDF's page tree has no pages")
        return None, ("unreadable", str(e))
    except (OSError, ValueError, RuntimeError) as e:
        return None, ("unreadable", f"{type(e).__name__}: {e}")


def _no_pages(unit: Unit) -> bool:
    """A small PDF whose page tree counts zero pages (PDFium refuses to open it, with a stale error code)."""
    if unit.size > 1 << 20:
        return False
    try:
        data = read_bytes(unit, 1 << 20)
    except (OSError, TooLarge):
        return False
    return bool(
        data.startswith(b"%PDF")
        and re.search(rb"/Count\s*0\b", data)
        and not re.search(rb"/Type\s*/Page\b", data)
    )


def _outline(pdf) -> list[tuple[int, str, int]]:
    out = []
    try:
        for bm in pdf.get_toc():
            dest = bm.get_dest()
            index = dest.get_index() if dest is not None else None
            if index is not None:
                out.append((bm.level, bm.get_title() or "", index))
    except Exception:  # a broken or cyclic outline: the book falls back to headings
        return []
    return out


class PdfExtractor:
    """Extracts one book at a time; holds the OCR engine and the language detector of this process."""

    def __init__(self, cfg: ExtractConfig, detect: Callable[[str], str | None]):
        self.cfg = cfg
        self.detect = detect
        self.tesseract = Tesseract(cfg.tesseract.command, cfg.tesseract.timeout_s)
        if cfg.ocr == "always":
            self.tesseract.languages()  # fail at once, not at the first page, when Tesseract is missing

    def extract(self, unit: Unit, stats: ExtractStats) -> Iterator[Item]:
        """Records (one per chapter, else one per book) and rejections of ``unit``; counts go to ``stats``."""
        pcfg = self.cfg.pdf
        stats.add("pdf", "files")
        pdf, err = _open(unit, pcfg.max_file_mb * 2**20)
        if pdf is None:
            yield _rejected(unit.name, *err, unit)
            return
        try:
            n = len(pdf)
            if n == 0:
                yield _rejected(unit.name, "empty", "the PDF has no pages", unit)
                return
            if n > pcfg.max_pages:
                yield _rejected(
                    unit.name, "too_large", f"{n:,} pages > pdf.max_pages={pcfg.max_pages:,}", unit
                )
                return
            title = (pdf.get_metadata_value("Title") or "").strip() or None
            outline = _outline(pdf)
            pages, failed, lang = yield from self._pages(pdf, n, unit, stats)
        finally:
            pdf.close()
        yield from self._records(unit, pages, outline, title, lang, failed, stats)

    def _pages(self, pdf, n: int, unit: Unit, stats: ExtractStats):
        """Every page's lines, read one page at a time (generator: yields page-level rejections)."""
        cfg = self.cfg
        lang = cfg.lang_hint or None
        reader: PageReader | None = None
        pages: list[Page] = []
        failed = 0
        sample: list[str] = []  # text-layer text seen so far (the book's language for OCR)
        for i in range(n):
            t0 = time.perf_counter()
            stats.add("pdf", "pages")
            try:
                page = pdf[i]
            except Exception as e:
                failed += 1
                stats.add("pdf", "pages_failed")
                yield _rejected(f"{unit.name}#p{i + 1}", "unreadable", f"page {i + 1}: {e}", unit)
                pages.append(Page(i + 1, [], "failed"))
                continue
            try:
                text, lines = "", []
                if cfg.ocr != "always":
                    textpage = page.get_textpage()
                    try:
                        text, lines = text_layer_lines(page, textpage)
                    finally:
                        textpage.close()
                chars = (
                    len(text) if len(text) > 4 * cfg.pdf.min_page_chars else sum(len(ln.text) for ln in lines)
                )
                scanned = cfg.ocr == "always" or (
                    (chars < cfg.pdf.min_page_chars and _has_image(page))
                    or (chars and _garbage_share(text) > cfg.pdf.max_garbage_share)
                )
                if not scanned or cfg.ocr == "never":
                    if lines and (not scanned or chars >= cfg.pdf.min_page_chars):
                        pages.append(Page(i + 1, lines, "text"))
                        stats.add("pdf", "pages_text")
                        stats.time("pdf_text", time.perf_counter() - t0)
                        if lang is None and sum(map(len, sample)) < 4000:
                            sample.append(text)
                    else:
                        pages.append(Page(i + 1, [], "blank", "no text layer" if scanned else ""))
                        stats.add("pdf", "pages_scanned_skipped" if scanned else "pages_blank")
                    continue
                if reader is None:
                    known = lang or (self.detect(" ".join(sample)) if sum(map(len, sample)) >= 200 else None)
                    reader = PageReader(
                        self.tesseract, cfg.tesseract.dpi, cfg.tesseract.min_confidence, known, self.detect
                    )
                gray = _render_gray(page, cfg.tesseract.dpi)
            finally:
                page.close()
            try:
                res, detail = reader.read(gray)
            except subprocess.TimeoutExpired:
                res, detail = None, f"timed out after {cfg.tesseract.timeout_s} s"
            except (RuntimeError, OSError, subprocess.SubprocessError) as e:
                res, detail = None, f"tesseract failed: {e}"
            del gray
            stats.time("pdf_ocr", time.perf_counter() - t0)
            if res is None:
                failed += 1
                stats.add("pdf", "pages_ocr_failed")
                pages.append(Page(i + 1, [], "failed", detail))
                yield _rejected(f"{unit.name}#p{i + 1}", "ocr_failed", f"page {i + 1}: {detail}", unit)
            elif not res.lines:
                pages.append(Page(i + 1, [], "blank", detail))
                stats.add("pdf", "pages_blank")
            else:
                pages.append(Page(i + 1, res.lines, "ocr", res.pack))
                stats.add("pdf", "pages_ocr")
                stats.add("ocr_packs", res.pack)
        if reader is not None and reader.lang:
            lang = reader.lang
        elif lang is None and sample:
            lang = self.detect(" ".join(sample))
        return pages, failed, lang

    def _records(
        self,
        unit: Unit,
        pages: list[Page],
        outline: list[tuple[int, str, int]],
        title: str | None,
        lang: str | None,
        failed: int,
        stats: ExtractStats,
    ) -> Iterator[Item]:
        pcfg = self.cfg.pdf
        if not any(p.lines for p in pages):
            if failed and all(p.method == "failed" for p in pages):
                yield _rejected(unit.name, "ocr_failed", f"no page of {len(pages)} could be read", unit)
            else:
                why = "no text layer and --ocr never" if self.cfg.ocr == "never" else "no text on any page"
                yield _rejected(unit.name, "empty", why, unit)
            return
        if pcfg.remove_headers:
            removed = remove_running_lines(pages)
            removed += remove_title_lines(pages, [t for _, t, _ in outline] + [title or ""])
            stats.add("pdf", "running_lines_removed", removed)
        for p in pages:
            mark_paragraphs(p, sizes=p.method == "text")
        sections = plan_sections(pages, outline, pcfg.cut_front_back, pcfg.split_chapters)
        kept = self._kept_pages(pages, sections)
        stats.add("pdf", "pages_cut", sum(1 for p in pages if p.lines and p.number not in kept))
        chapters = assemble(pages, sections, pcfg.min_chapter_chars)
        if not chapters:
            yield _rejected(unit.name, "empty", "no text left after front/back matter was cut", unit)
            return
        structure = sections[0].source
        stats.add("structure", structure)
        method = {p.number: p.method for p in pages}
        pack = {p.number: p.detail for p in pages if p.method == "ocr"}
        for k, ch in enumerate(chapters, 1):
            uid = unit.name if len(chapters) == 1 and structure == "none" else f"{unit.name}#ch{k:02d}"
            ocr_pages = sum(1 for n in ch.pages if method.get(n) == "ocr")
            how = "ocr" if ocr_pages == len(ch.pages) else "text+ocr" if ocr_pages else "text"
            meta = {
                "type": "pdf",
                "title": title,
                "chapter": ch.title,
                "chapter_index": k,
                "pages": [ch.first_page, ch.last_page],
                "page_count": len(pages),
                "method": how,
                "ocr_pages": ocr_pages,
                "ocr_packs": sorted({pack[n] for n in ch.pages if n in pack}),
                "structure": structure,
                "lang_hint": lang,
            }
            yield "doc", {"id": uid, "text": ch.text, "source": unit.name, "meta": meta}

    @staticmethod
    def _kept_pages(pages: list[Page], sections) -> set[int]:
        bounds = [s.start[0] for s in sections] + [len(pages)]
        kept: set[int] = set()
        for s, a, b in zip(sections, bounds, bounds[1:]):
            if s.kind in ("chapter", "body"):
                kept.update(p.number for p in pages[a : max(b, a + 1)])
        return kept

"""OCR of scanned pages (Tesseract): the tests' textbook pages rendered to images and re-wrapped as image-only
PDFs, read back in six languages without a language hint; vertical Japanese; scanned pages inside a text book.

Slow (Tesseract is ~5-10 s a page on one core), so a few pages per language. Needs the Debian packages that
``make test`` installs (tesseract-ocr + eng chi-sim jpn jpn-vert fra rus spa); skipped, saying so, without them.
"""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import pytest
from extract_helpers import STRINGS, cer, corpus_paragraphs, make_book, scan_pages, vertical_japanese_page

from megatron_mmed.common.config import load_config
from megatron_mmed.common.io import read_jsonl_zst
from preprocessing.document import CJK_LANGS, LANGS
from preprocessing.extract import ExtractConfig, run_extract

pytestmark = pytest.mark.slow

PACKS = {"eng", "chi_sim", "jpn", "jpn_vert", "fra", "rus", "spa", "osd"}


@pytest.fixture(scope="module", autouse=True)
def tesseract():
    exe = shutil.which("tesseract")
    if exe is None:
        pytest.skip("tesseract-ocr is not installed (make test installs it from Debian; needs root and apt)")
    langs = set(subprocess.run([exe, "--list-langs"], capture_output=True, text=True).stdout.split()[4:])
    if not langs >= PACKS:
        pytest.skip(f"Tesseract language packs missing: {sorted(PACKS - langs)} (make test installs them)")


def _docs(out: Path) -> dict[str, dict]:
    return {r["id"]: r for f in sorted((out / "docs").glob("*.jsonl.zst")) for r in read_jsonl_zst(f)}


def _rejected(out: Path) -> dict[str, dict]:
    return {r["id"]: r for f in sorted((out / "rejected").glob("*.jsonl.zst")) for r in read_jsonl_zst(f)}


@pytest.fixture(scope="module")
def scans(shared_data, tmp_path_factory):
    """One short chapter per language (one or two pages, running header, page numbers), scanned at 300 dpi."""
    base = tmp_path_factory.mktemp("scans")
    books = {}
    for lang in LANGS:
        chars = 700 if lang in CJK_LANGS else 1800
        books[lang] = make_book(
            base / "text" / f"{lang}.pdf",
            shared_data,
            lang,
            chapters=1,
            front_back=False,
            chars_per_chapter=chars,
        )
        scan_pages(
            base / "text" / f"{lang}.pdf",
            base / "scans" / f"{lang}.pdf",
            list(range(1, books[lang].pages + 1)),
        )
    return base, books


def test_scanned_pages_ocr_in_six_languages(scans):
    base, books = scans
    cfg = load_config(ExtractConfig, None, ["workers=2"])  # no language hint: detected from the pages
    result = run_extract([base / "scans"], base / "out", cfg, show_progress=False)
    docs = _docs(base / "out")
    measured = {}
    for lang, book in books.items():
        ((head, expected),) = book.chapters.items()
        r = docs[f"scans/{lang}.pdf#ch01"]
        m = r["meta"]
        assert m["method"] == "ocr" and m["ocr_pages"] == book.pages and m["lang_hint"] == lang, m
        assert m["chapter"] is not None and m["structure"] == "headings"
        measured[lang] = round(cer(expected, r["text"]), 4)
        assert STRINGS[lang]["book"] not in r["text"]  # the scanned running header went too
    print("OCR CER per language (1-2 scanned pages each, 300 dpi):", measured)
    (base / "ocr_cer.json").write_text(json.dumps(measured))
    for lang, err in measured.items():
        assert err <= (0.10 if lang in CJK_LANGS else 0.05), (lang, err)
    rep = result.report
    assert rep["pages"]["pdf_ocr"] == sum(b.pages for b in books.values()) and rep["ocr_share"] == 1.0
    assert set(rep["ocr_packs"]) == {"eng", "fra", "spa", "rus+eng", "chi_sim", "jpn"}
    assert rep["seconds_per_page"]["pdf_ocr"] > 0
    # --ocr never: the same scans are recorded, not silently dropped
    run_extract(
        [base / "scans"], base / "never", load_config(ExtractConfig, None, ["ocr=never"]), show_progress=False
    )
    rej = _rejected(base / "never")
    assert {r["reason"] for r in rej.values()} == {"empty"} and len(rej) == len(LANGS)
    assert all("no text layer" in r["detail"] for r in rej.values())


def test_only_scanned_pages_of_a_text_book_are_ocrd(shared_data, tmp_path: Path):
    import pypdfium2 as pdfium

    book = make_book(tmp_path / "text.pdf", shared_data, "fr")
    head = list(book.chapters)[1]
    page = book.chapter_pages[head][1]  # the second page of chapter 2 becomes a scan
    scan_pages(tmp_path / "text.pdf", tmp_path / "scan.pdf", [page])
    text, scan = (
        pdfium.PdfDocument(str(tmp_path / "text.pdf")),
        pdfium.PdfDocument(str(tmp_path / "scan.pdf")),
    )
    mixed = pdfium.PdfDocument.new()
    mixed.import_pages(text, list(range(page - 1)))
    mixed.import_pages(scan, [0])
    mixed.import_pages(text, list(range(page, book.pages)))
    (tmp_path / "in").mkdir()
    mixed.save(str(tmp_path / "in" / "mixed.pdf"))
    for d in (mixed, text, scan):
        d.close()
    cfg = load_config(ExtractConfig, None, ["lang_hint=fr"])
    result = run_extract([tmp_path / "in"], tmp_path / "out", cfg, show_progress=False)
    assert result.report["pages"]["pdf_ocr"] == 1 and result.report["pages"]["pdf_text"] == book.pages - 1
    docs = _docs(tmp_path / "out")
    assert len(docs) == 3  # the outline went, so chapters come from the headings
    for k, (h, expected) in enumerate(book.chapters.items(), 1):
        r = docs[f"in/mixed.pdf#ch{k:02d}"]
        assert r["meta"]["method"] == ("text+ocr" if h == head else "text")
        assert r["meta"]["ocr_packs"] == (["fra"] if h == head else [])
        assert cer(expected, r["text"]) <= (0.03 if h == head else 0.01), h


def test_vertical_japanese_uses_the_vertical_model(shared_data, tmp_path: Path):
    text = "".join(corpus_paragraphs(shared_data, "ja")[:3])
    printed = vertical_japanese_page(tmp_path / "vertical.pdf", text)
    scan_pages(tmp_path / "vertical.pdf", tmp_path / "in" / "vertical.pdf", [1])
    result = run_extract([tmp_path / "in"], tmp_path / "out", load_config(ExtractConfig), show_progress=False)
    docs = _docs(tmp_path / "out")
    if docs:
        (r,) = docs.values()
        assert r["meta"]["ocr_packs"] == ["jpn_vert"] and r["meta"]["lang_hint"] == "ja"
        err = cer(printed, r["text"])
        print(f"vertical Japanese OCR CER: {err:.4f}")
        assert err <= 0.10
    else:  # the alternative the contract allows: the page is recorded as ocr_failed
        assert [r["reason"] for r in _rejected(tmp_path / "out").values()] == ["ocr_failed", "ocr_failed"]
    assert result.report["ocr_packs"].get("jpn_vert") == 1


def test_unreadable_scans_are_recorded_as_ocr_failed(scans, tmp_path: Path):
    base, books = scans
    (tmp_path / "in").mkdir()
    shutil.copy(base / "scans" / "ja.pdf", tmp_path / "in" / "ja.pdf")
    # the wrong language pack reads Japanese as noise: mean confidence far below the threshold
    result = run_extract(
        [tmp_path / "in"],
        tmp_path / "out",
        load_config(ExtractConfig, None, ["lang_hint=en"]),
        show_progress=False,
    )
    rej = _rejected(tmp_path / "out")
    pages = [r for k, r in rej.items() if "#p" in k]
    n = books["ja"].pages
    assert len(pages) == n and all(r["reason"] == "ocr_failed" and "confidence" in r["detail"] for r in pages)
    assert rej["in/ja.pdf"]["reason"] == "ocr_failed"  # no page of the book could be read
    assert result.report["pages"]["pdf_ocr_failed"] == n and not _docs(tmp_path / "out")

"""`mmed extract` on textbook PDFs with a text layer, made by the tests in six languages (fpdf2 + Noto CJK):
chapters, running headers/footers, front/back matter, hyphenation and CJK joining, and every bad PDF recorded."""

from __future__ import annotations

from pathlib import Path

import pytest
from extract_helpers import STRINGS, cer, make_book

from megatron_mmed.common.config import load_config
from megatron_mmed.common.io import read_jsonl_zst
from preprocessing.document import LANGS
from preprocessing.extract import ExtractConfig, run_extract
from preprocessing.extract.book import Joiner, Line, Page, remove_running_lines

#: how each test book marks its chapters: bookmarks, "Chapter 3 ..." headings, or titles in large type alone
BOOKS = [
    ("en", "outline"),
    ("en", "plain"),
    ("fr", "headings"),
    ("es", "outline"),
    ("ru", "headings"),
    ("zh", "outline"),
    ("zh", "plain"),
    ("ja", "headings"),
]


def _docs(out: Path) -> dict[str, dict]:
    return {r["id"]: r for f in sorted((out / "docs").glob("*.jsonl.zst")) for r in read_jsonl_zst(f)}


def _rejected(out: Path) -> dict[str, dict]:
    return {r["id"]: r for f in sorted((out / "rejected").glob("*.jsonl.zst")) for r in read_jsonl_zst(f)}


@pytest.fixture(scope="module")
def shelf(shared_data, tmp_path_factory):
    """Eight books (six languages, each kind of chapter structure in Latin and CJK) extracted in one run."""
    base = tmp_path_factory.mktemp("shelf")
    books = {}
    for lang, mode in BOOKS:
        path = base / "books" / f"{lang}_{mode}.pdf"
        heading = "plain" if mode == "plain" else "numbered"
        books[lang, mode] = make_book(path, shared_data, lang, outline=mode == "outline", heading=heading)
    result = run_extract([base / "books"], base / "out", load_config(ExtractConfig), show_progress=False)
    return base, books, result


@pytest.mark.slow  # builds and extracts eight books (~30 s)
def test_chapters_equal_known_text_in_six_languages(shelf):
    base, books, result = shelf
    docs = _docs(base / "out")
    worst = {}
    for (lang, mode), book in books.items():
        recs = [r for r in docs.values() if r["source"] == f"books/{lang}_{mode}.pdf"]
        assert [r["meta"]["chapter"] for r in recs] == list(book.chapters), (lang, mode)
        for k, (head, expected) in enumerate(book.chapters.items(), 1):
            r = docs[f"books/{lang}_{mode}.pdf#ch{k:02d}"]
            assert set(r) == {"id", "text", "source", "meta"}
            m = r["meta"]
            assert m["type"] == "pdf" and m["method"] == "text" and m["ocr_pages"] == 0
            assert m["pages"] == [book.chapter_pages[head][0], book.chapter_pages[head][-1]]
            assert m["page_count"] == book.pages and m["lang_hint"] == lang
            assert m["structure"] == ("outline" if mode == "outline" else "headings")
            assert m["title"] == STRINGS[lang]["book"]
            err = cer(expected, r["text"])
            worst[lang] = max(worst.get(lang, 0.0), err)
            assert err <= 0.01, (lang, mode, head, err)
            # running headers (book title), page numbers, front and back matter are gone
            for s in book.absent:
                assert s not in r["text"], (lang, mode, s)
    print("text-layer CER, worst chapter per language:", {k: round(v, 4) for k, v in worst.items()})
    rep = result.report
    assert rep["totals"]["docs_out"] == 3 * len(books) and rep["totals"]["rejected"] == 0
    assert rep["pages"]["pdf_ocr"] == 0 and rep["ocr_share"] == 0.0
    assert rep["structure"] == {"headings": 5, "outline": 3}
    assert set(rep["lang_hint"]) == set(LANGS)
    assert rep["sources"]["pdf"]["pages_cut"] == sum(
        b.pages - sum(map(len, b.chapter_pages.values())) for b in books.values()
    )


@pytest.mark.slow  # builds and extracts eight books (~30 s)
def test_paragraphs_are_kept(shelf):
    base, books, _ = shelf
    docs = _docs(base / "out")
    for (lang, mode), book in books.items():
        for k, expected in enumerate(book.chapters.values(), 1):
            got = docs[f"books/{lang}_{mode}.pdf#ch{k:02d}"]["text"].split("\n")
            want = expected.split("\n")
            # one paragraph per line; a page break inside a paragraph does not split it
            assert len(got) == len(want), (lang, k, len(got), len(want))


def test_book_without_chapters_is_one_record_with_matter_cut(shared_data, tmp_path):
    books = {}
    for lang in ("en", "ru", "zh"):
        books[lang] = make_book(
            tmp_path / "in" / f"{lang}.pdf", shared_data, lang, outline=False, heading="none"
        )
    run_extract([tmp_path / "in"], tmp_path / "out", load_config(ExtractConfig), show_progress=False)
    docs = _docs(tmp_path / "out")
    for lang, book in books.items():
        r = docs[f"in/{lang}.pdf"]  # one record per book: its id is the file's
        assert r["meta"]["structure"] == "none" and r["meta"]["chapter"] is None
        assert cer("\n".join(book.chapters.values()), r["text"]) <= 0.01
        for s in book.absent:
            assert s not in r["text"], (lang, s)


def _line(text: str, top: float, para: bool = False) -> Line:
    return Line(text, top, top + 0.02, 0.1, 0.9, para)


def test_hyphenation_and_cjk_joining():
    pages = [Page(1, [_line("Anti-inflammatory drugs help.", 0.3)], "text")]
    j = Joiner(pages)
    lines = [
        _line("The patient had hyper-", 0.4),
        _line("tension and took anti-", 0.42),
        _line("inflammatory drugs; тахи-", 0.44),
        _line("кардия прошла.", 0.46),
        _line("New paragraph.", 0.5, para=True),
    ]
    assert j.join(lines) == (
        "The patient had hypertension and took anti-inflammatory drugs; тахикардия прошла.\nNew paragraph."
    )
    # pdfium's own join mark (U+FFFE where it removed a line-end hyphen)
    assert j.line_text("hyper\ufffetension, anti\ufffeinflammatory") == "hypertension, anti-inflammatory"
    # Chinese/Japanese lines meet without a space; a Latin word at the break keeps one
    assert (
        j.join([_line("患者は頭痛を", 0.1), _line("訴えた。血压", 0.12), _line("升高。", 0.14)])
        == "患者は頭痛を訴えた。血压升高。"
    )
    assert j.join([_line("HbA1c", 0.1), _line("7.5%", 0.12)]) == "HbA1c 7.5%"


def test_running_headers_need_repetition_on_nearby_pages():
    def page(n: int, top: str, body: str) -> Page:
        return Page(n, [_line(top, 0.04), _line(body, 0.3), _line(str(n), 0.95)], "text")

    pages = [page(1, "Chapter 1", "body one"), page(2, "Handbook", "body two"), page(3, "Cardiology", "x")]
    pages += [page(4, "Handbook", "y"), page(9, "Chapter 2", "z")]
    removed = remove_running_lines(pages)
    texts = [[ln.text for ln in p.lines] for p in pages]
    assert texts[1] == ["body two"] and texts[3] == ["y"]  # "Handbook" two pages apart: a running header
    assert texts[0] == ["Chapter 1", "body one"]  # chapter headings far apart stay
    assert texts[4] == ["Chapter 2", "z"] and texts[2] == ["Cardiology", "x"]  # seen once: stays
    assert removed == 5 + 2  # five page numbers, two headers


def test_bad_pdfs_are_recorded_never_crash(shared_data, tmp_path: Path):
    from fpdf import FPDF

    src = tmp_path / "in"
    src.mkdir()
    book = make_book(src / "long.pdf", shared_data, "en")
    encrypted = FPDF()
    encrypted.add_page()
    encrypted.set_font("helvetica", size=12)
    encrypted.cell(text="secret medical notes")
    encrypted.set_encryption(owner_password="owner", user_password="user")
    encrypted.output(str(src / "encrypted.pdf"))
    good = (src / "long.pdf").read_bytes()
    (src / "truncated.pdf").write_bytes(good[: len(good) // 3])
    (src / "garbage.pdf").write_bytes(b"%PDF-1.7\n" + bytes(range(256)) * 20)
    (src / "empty_file.pdf").write_bytes(b"")
    import pypdfium2 as pdfium

    zero = pdfium.PdfDocument.new()
    zero.save(str(src / "zero_pages.pdf"))
    zero.close()
    blank = pdfium.PdfDocument.new()
    blank.new_page(420, 595).close()
    blank.save(str(src / "blank.pdf"))
    blank.close()
    cfg = load_config(ExtractConfig, None, [f"pdf.max_pages={book.pages - 1}"])
    result = run_extract([src], tmp_path / "out", cfg, show_progress=False)
    rej = {k.split("/", 1)[1]: v for k, v in _rejected(tmp_path / "out").items()}
    assert rej["encrypted.pdf"]["reason"] == "encrypted"
    assert rej["truncated.pdf"]["reason"] == "unreadable"
    assert rej["garbage.pdf"]["reason"] == "unreadable"
    assert rej["empty_file.pdf"]["reason"] == "unreadable"
    assert rej["zero_pages.pdf"]["reason"] == "empty"
    assert rej["blank.pdf"]["reason"] == "empty"
    assert (
        rej["long.pdf"]["reason"] == "too_large"
        and f"> pdf.max_pages={book.pages - 1}" in rej["long.pdf"]["detail"]
    )
    assert all(r["detail"] and r["source"] for r in rej.values())
    assert not _docs(tmp_path / "out")
    assert result.report["totals"]["drops"] == {"empty": 2, "encrypted": 1, "too_large": 1, "unreadable": 3}
    assert result.report["totals"]["docs_in"] == 7

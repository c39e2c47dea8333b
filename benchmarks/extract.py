"""Speed and memory of `mmed extract`, each next to the plain library call it is built on (same run, same input).

* text-layer PDF: pages/s of our book extraction (headers/footers, paragraphs, chapters, front/back matter,
  hyphenation) vs pypdfium2 ``get_textpage().get_text_range()`` alone, on a generated N-page English textbook;
  the structure handling may cost at most 30 % over the raw call. Peak RSS of a fresh process extracting the
  book at N/5 and N pages (streaming: the same).
* OCR: scanned pages (300 dpi) per second per core through our reader vs the plain chain a script would run on
  the same image-only PDF: pypdfium2 renders each page at 300 dpi, ``tesseract -l eng`` reads it (both one
  thread: OMP_THREAD_LIMIT=1). Both sides render, so the difference is what we add (TSV layout, structure).
* HTML: pages/s of our extraction (banner pruning, head metadata, charset) vs ``trafilatura.extract(html)``; with
  resiliparse installed (not a dependency) also its ``extract_plain_text(main_content=True)``, and for each the
  share of the article kept and of boilerplate let through on the pages (the choice in the README).

Timings are CPU seconds of this process (steadier than wall time on a shared machine; both sides are
single-threaded), the best of ``--repeat`` interleaved runs; Tesseract's are its child-process CPU seconds.

    .venv/bin/python -m benchmarks.extract [--pages 1000] [--ocr-pages 3] [--html-pages 120] [--data ../shared/data]
"""

from __future__ import annotations

import argparse
import io
import json
import os
import re
import resource
import subprocess
import sys
import tempfile
import time
from html import escape
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
BOOK = "Handbook of Clinical Medicine"


def _english(data: Path) -> list[str]:
    out = []
    for line in (data / "corpus" / "en.jsonl").read_text(encoding="utf-8").splitlines():
        text = re.sub(r"\s+", " ", json.loads(line)["text"]).strip()
        out.append(text.encode("latin-1", "replace").decode("latin-1"))  # core PDF fonts are Latin-1
    return out


def make_textbook(path: Path, pages: int, paras: list[str]) -> None:
    """An English textbook: running headers (book/chapter title), page numbers, a chapter every 25 pages,
    first-line indents, long words hyphenated at line ends. Core Helvetica, so 1,000 pages write in seconds."""
    from fpdf import FPDF

    pdf = FPDF(unit="pt", format="A4")
    pdf.set_font("helvetica", size=10)
    words = " ".join(paras).split()
    wi = 0
    width = 595 - 2 * 60
    for p in range(1, pages + 1):
        pdf.add_page()
        chapter = (p - 1) // 25 + 1
        pdf.set_font_size(9)
        pdf.text(60, 40, f"Chapter {chapter}" if p % 2 else BOOK)
        pdf.text(290, 810, str(p))
        y = 80
        if (p - 1) % 25 == 0:
            pdf.set_font_size(18)
            pdf.text(60, y, f"Chapter {chapter} Topic {chapter}")
            y += 40
        pdf.set_font_size(10)
        line, indent = "", 15
        while y < 780:
            w = words[wi % len(words)]
            cand = f"{line} {w}" if line else w
            if not line or pdf.get_string_width(cand) <= width - indent:  # a too-long word gets a line
                line = cand
                wi += 1
                if wi % 120 == 0:  # end of a paragraph
                    pdf.text(60 + indent, y, line)
                    y, line, indent = y + 14, "", 15
                continue
            if w.isalpha() and len(w) > 8 and pdf.get_string_width(f"{line} {w[:4]}-") <= width - indent:
                line, words[wi % len(words)] = f"{line} {w[:4]}-", w[4:]
            pdf.text(60 + indent, y, line)
            y, line, indent = y + 14, "", 0
    pdf.output(str(path))


def raw_pdf(path: Path) -> int:
    import pypdfium2 as pdfium

    doc = pdfium.PdfDocument(str(path))
    n = 0
    for i in range(len(doc)):
        page = doc[i]
        tp = page.get_textpage()
        n += len(tp.get_text_range())
        tp.close()
        page.close()
    doc.close()
    return n


def _extractors():
    from megatron_mmed.common.config import load_config
    from preprocessing.extract import ExtractConfig
    from preprocessing.extract.run import ShardExtractor

    return ShardExtractor(load_config(ExtractConfig, None, ["lang_hint=en"]))


def ours_pdf(ex, path: Path) -> int:
    from preprocessing.extract.sources import Unit
    from preprocessing.extract.stats import ExtractStats

    unit = Unit(str(path), path.name, "pdf", size=path.stat().st_size)
    return sum(len(r.get("text", "")) for _, r in ex.pdf.extract(unit, ExtractStats()))


def best(fn, repeat: int) -> float:
    times = []
    for _ in range(repeat):
        t0 = time.process_time()
        fn()
        times.append(time.process_time() - t0)
    return min(times)


def peak_rss_mb(path: Path) -> tuple[float, float]:
    """(RSS after imports, peak RSS) in MB of a fresh process that extracts ``path``."""
    code = (
        "import resource, sys, json; from pathlib import Path; import benchmarks.extract as b; "
        "ex = b._extractors(); import pypdfium2; "
        "base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss; "
        f"b.ours_pdf(ex, Path({str(path)!r})); "
        "print(json.dumps([base, resource.getrusage(resource.RUSAGE_SELF).ru_maxrss]))"
    )
    out = subprocess.run([sys.executable, "-c", code], check=True, capture_output=True, text=True, cwd=REPO)
    base, peak = json.loads(out.stdout.strip().splitlines()[-1])
    return base / 1024, peak / 1024


def bench_pdf(args, tmp: Path, paras: list[str]) -> None:
    big, small = tmp / "book.pdf", tmp / "book_small.pdf"
    t0 = time.time()
    make_textbook(big, args.pages, paras)
    make_textbook(small, max(args.pages // 5, 1), paras)
    print(
        f"generated {args.pages}-page textbook in {time.time() - t0:.1f} s ({big.stat().st_size / 2**20:.1f} MB)"
    )
    ex = _extractors()
    ours_pdf(ex, small)  # warm up (imports, language model)
    raw_t, ours_t = [], []
    for _ in range(args.repeat):  # interleaved, best of each
        raw_t.append(best(lambda: raw_pdf(big), 1))
        ours_t.append(best(lambda: ours_pdf(ex, big), 1))
    raw, ours = min(raw_t), min(ours_t)
    n = args.pages
    print(
        f"text-layer PDF: raw get_text_range {n / raw:8.0f} pages/s | mmed extract {n / ours:8.0f} pages/s | "
        f"structure handling +{100 * (ours / raw - 1):.0f}% over the raw call (goal <= 30%)"
    )
    for p, label in ((small, f"{max(n // 5, 1)} pages"), (big, f"{n} pages")):
        base, peak = peak_rss_mb(p)
        print(
            f"peak RSS extracting {label:>10}: {peak:7.1f} MB ({peak - base:+.1f} MB over the process after imports)"
        )


def bench_ocr(args, tmp: Path, paras: list[str]) -> None:
    import shutil

    import pypdfium2 as pdfium
    from fpdf import FPDF

    from preprocessing.extract.ocr import to_pgm
    from preprocessing.extract.pdf import _render_gray

    if shutil.which("tesseract") is None:
        print("OCR: skipped (tesseract not installed; make test installs it)")
        return
    src = tmp / "ocr_src.pdf"
    make_textbook(src, args.ocr_pages, paras)
    doc = pdfium.PdfDocument(str(src))
    scan = FPDF(unit="pt", format="A4")
    for i in range(args.ocr_pages):
        img = doc[i].render(scale=300 / 72, grayscale=True).to_pil()
        buf = io.BytesIO()
        img.save(buf, format="PNG")
        scan.add_page()
        scan.image(buf, x=0, y=0, w=595, h=842)
    (tmp / "scan").mkdir()
    scan.output(str(tmp / "scan" / "scan.pdf"))
    env = {**os.environ, "OMP_THREAD_LIMIT": "1"}

    def child_cpu() -> float:
        r = resource.getrusage(resource.RUSAGE_CHILDREN)
        return r.ru_utime + r.ru_stime

    def plain() -> None:
        scanned = pdfium.PdfDocument(str(tmp / "scan" / "scan.pdf"))
        for i in range(len(scanned)):
            subprocess.run(
                ["tesseract", "stdin", "stdout", "-l", "eng", "--dpi", "300"],
                input=to_pgm(_render_gray(scanned[i], 300)),
                env=env,
                capture_output=True,
                check=True,
            )
        scanned.close()

    ex = _extractors()
    raw = ours = float("inf")
    for _ in range(args.repeat):  # interleaved, best of each
        c0, p0 = child_cpu(), time.process_time()
        plain()
        raw = min(raw, child_cpu() - c0 + time.process_time() - p0)
        c0, p0 = child_cpu(), time.process_time()
        ours_pdf(ex, tmp / "scan" / "scan.pdf")
        ours = min(ours, child_cpu() - c0 + time.process_time() - p0)
    n = args.ocr_pages
    print(
        f"OCR (eng, 300 dpi, 1 thread): plain render + tesseract {n / raw:.3f} pages/s per core | mmed extract "
        f"{n / ours:.3f} pages/s per core (TSV + structure: {100 * (ours / raw - 1):+.0f}%)"
    )


PAGE = """<!DOCTYPE html><html lang="{lang}"><head><meta charset="utf-8"><title>{title} | Health</title>
<meta property="article:published_time" content="2024-02-03"><link rel="canonical" href="https://x.org/{i}">
<script>var a=1;</script></head><body><header><nav><ul>{nav}</ul></nav></header>
<div class="cookie-consent"><p>We use cookies to improve your experience on our website. By continuing to
browse you accept our use of cookies.</p><button>Accept</button></div>
<main><article><h1>{title}</h1>{body}</article><section class="comments"><h3>Comments</h3>
<div class="comment"><p>Great article, thanks a lot! My grandmother had the same problem last year.</p></div>
</section></main><aside class="sidebar"><h3>Related</h3><ul>{nav}</ul><p>Subscribe to our newsletter and get the
latest health news every week.</p></aside><footer><p>(c) 2024 Health Info Online. All rights reserved.</p>
</footer></body></html>"""


def _pages(data: Path, n: int) -> list[tuple[str, list[str]]]:
    pages = []
    langs = ["en", "zh", "ja", "fr", "ru", "es"]
    texts = {
        lang: [
            re.sub(r"\s+", " ", json.loads(x)["text"])
            for x in (data / "corpus" / f"{lang}.jsonl").read_text(encoding="utf-8").splitlines()
        ]
        for lang in langs
    }
    nav = "".join(f'<li><a href="/{k}">Section {k}</a></li>' for k in range(12))
    for i in range(n):
        lang = langs[i % 6]
        body = texts[lang][(3 * i) % len(texts[lang]) :][:3]
        html = PAGE.format(
            lang=lang, title=f"Article {i}", nav=nav, i=i, body="".join(f"<p>{escape(p)}</p>" for p in body)
        )
        pages.append((html, body))
    return pages


def _quality(text: str, body: list[str]) -> tuple[float, float]:
    """(share of the article's paragraphs kept, share of the extracted characters that are not article)."""
    norm = [re.sub(r"\s+", " ", p).strip() for p in body]
    lines = [re.sub(r"\s+", " ", x).strip() for x in (text or "").splitlines() if x.strip()]
    foreign = sum(len(x) for x in lines if not any(x in p for p in norm) and not x.startswith("Article "))
    kept = sum(1 for p in norm if p in re.sub(r"\s+", " ", text or ""))
    return kept / len(norm), foreign / max(sum(map(len, lines)), 1)


def bench_html(args, data: Path) -> None:
    import trafilatura

    from preprocessing.extract.stats import ExtractStats

    pages = _pages(data, args.html_pages)
    ex = _extractors()
    blobs = [h.encode("utf-8") for h, _ in pages]
    ours_fn = lambda: [ex.html.page(b, "id", "src", "html", ExtractStats()) for b in blobs]  # noqa: E731
    raw_fn = lambda: [trafilatura.extract(h) for h, _ in pages]  # noqa: E731
    ours_fn()
    raw_t, ours_t = [], []
    for _ in range(args.repeat):
        raw_t.append(best(raw_fn, 1))
        ours_t.append(best(ours_fn, 1))
    raw, ours = min(raw_t), min(ours_t)
    n = len(pages)
    print(
        f"HTML: trafilatura.extract {n / raw:6.0f} pages/s | mmed extract {n / ours:6.0f} pages/s "
        f"(+{100 * (ours / raw - 1):.0f}% over the raw call, goal <= 30%)"
    )
    results = {
        "mmed extract (trafilatura)": [r.get("text", "") for _, r in ours_fn()],
        "trafilatura.extract": raw_fn(),
    }
    try:
        from resiliparse.extract.html2text import extract_plain_text
        from resiliparse.parse.html import HTMLTree

        res_fn = lambda: [extract_plain_text(HTMLTree.parse(h), main_content=True) for h, _ in pages]  # noqa: E731
        t = best(res_fn, args.repeat)
        print(f"HTML: resiliparse extract_plain_text(main_content=True) {n / t:6.0f} pages/s")
        results["resiliparse"] = res_fn()
    except ImportError:
        print("HTML: resiliparse not installed (not a dependency): pip install resiliparse to compare")
    for name, texts in results.items():
        q = [_quality(t, body) for t, (_, body) in zip(texts, pages)]
        kept = sum(a for a, _ in q) / len(q)
        foreign = sum(b for _, b in q) / len(q)
        print(
            f"  {name:28s} article paragraphs kept {100 * kept:5.1f}%  boilerplate in output {100 * foreign:5.1f}%"
        )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--pages", type=int, default=1000, help="pages of the text-layer textbook")
    ap.add_argument("--ocr-pages", type=int, default=3, help="scanned pages to OCR (0: skip)")
    ap.add_argument("--html-pages", type=int, default=120)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--data", type=Path, default=REPO.parent / "shared" / "data")
    args = ap.parse_args()
    print(f"load average at start: {' '.join(f'{x:.1f}' for x in os.getloadavg())} ({os.cpu_count()} CPUs)")
    paras = _english(args.data)
    with tempfile.TemporaryDirectory() as d:
        tmp = Path(d)
        bench_pdf(args, tmp, paras)
        if args.ocr_pages:
            bench_ocr(args, tmp, paras)
    bench_html(args, args.data)
    print(f"load average at end: {' '.join(f'{x:.1f}' for x in os.getloadavg())}")


if __name__ == "__main__":
    main()

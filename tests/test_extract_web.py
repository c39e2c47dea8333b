"""`mmed extract` on web pages written by the tests in six languages (navigation, cookie banner, sidebar,
comments and footer around a known article) as HTML files and inside WARC files built with warcio."""

from __future__ import annotations

import gzip
from pathlib import Path

import pytest
from extract_helpers import boilerplate_only_page, corpus_paragraphs, html_page, overlap, write_warc

from megatron_mmed.common.config import load_config
from megatron_mmed.common.io import read_jsonl_zst
from preprocessing.document import LANGS
from preprocessing.extract import ExtractConfig, run_extract
from preprocessing.extract.html import decode, normalize_url

TITLES = {
    "en": "Managing high blood pressure",
    "fr": "Prise en charge de l'hypertension",
    "es": "Tratamiento de la hipertensión",
    "ru": "Лечение артериальной гипертензии",
    "zh": "高血压的治疗",
    "ja": "高血圧の治療",
}


def _docs(out: Path) -> dict[str, dict]:
    return {r["id"]: r for f in sorted((out / "docs").glob("*.jsonl.zst")) for r in read_jsonl_zst(f)}


def _rejected(out: Path) -> dict[str, dict]:
    return {r["id"]: r for f in sorted((out / "rejected").glob("*.jsonl.zst")) for r in read_jsonl_zst(f)}


@pytest.fixture(scope="module")
def site(shared_data, tmp_path_factory):
    """Two article layouts per language as HTML files; returns (folder, {file name: (title, paragraphs, url)})."""
    base = tmp_path_factory.mktemp("site")
    pages = {}
    for lang in LANGS:
        paras = corpus_paragraphs(shared_data, lang)
        for variant in (0, 1):
            body = paras[20 + 3 * variant : 23 + 3 * variant]
            url = f"https://health.example.org/{lang}/article-{variant}"
            name = f"{lang}-{variant}.html"
            html = html_page(lang, TITLES[lang], body, url, "2023-05-14", variant)
            (base / "pages" / lang).mkdir(parents=True, exist_ok=True)
            (base / "pages" / lang / name).write_text(html, encoding="utf-8")
            pages[f"pages/{lang}/{name}"] = (lang, body, url)
    return base, pages


def test_html_main_text_in_six_languages(site):
    base, pages = site
    (base / "pages" / "en" / "consent.html").write_text(boilerplate_only_page("en"), encoding="utf-8")
    (base / "pages" / "zh" / "nav.htm").write_text(boilerplate_only_page("zh"), encoding="utf-8")
    (base / "pages" / "fr" / "empty.html").write_bytes(b"")
    result = run_extract([base / "pages"], base / "out", load_config(ExtractConfig), show_progress=False)
    docs = _docs(base / "out")
    assert set(docs) == set(pages)
    for uid, (lang, body, url) in pages.items():
        r = docs[uid]
        recall, foreign = overlap("\n".join([TITLES[lang], *body]), r["text"])
        assert recall >= 0.95 and foreign <= 0.05, (uid, recall, foreign)
        m = r["meta"]
        assert m == {
            "type": "html",
            "url": url,
            "title": TITLES[lang],
            "lang": lang,
            "date": "2023-05-14",
            "charset": "utf-8",
            "lang_hint": lang,
        }
        for junk in ("cookie", "Cookie", "©", "newsletter"):  # banner, footer, sidebar
            assert junk not in r["text"], (uid, junk)
    rej = _rejected(base / "out")
    assert {k: v["reason"] for k, v in rej.items()} == {
        "pages/en/consent.html": "boilerplate_only",
        "pages/zh/nav.htm": "boilerplate_only",
        "pages/fr/empty.html": "empty",
    }
    rep = result.report
    assert rep["sources"]["html"]["files"] == len(pages) + 3 and rep["pages"]["html"] == len(pages) + 3
    assert rep["lang_hint"] == {
        lang: {"docs": 2, "chars": sum(len(docs[k]["text"]) for k in docs if docs[k]["meta"]["lang"] == lang)}
        for lang in sorted(LANGS)
    }
    assert rep["seconds_per_page"]["html"] > 0


def test_charsets_from_header_meta_or_guess(shared_data):
    ru = "Артериальная гипертензия — самое частое хроническое заболевание у взрослых."
    page = f'<html><head><meta charset="windows-1251"></head><body><p>{ru}</p></body></html>'.encode("cp1251")
    assert decode(page) == (page.decode("cp1251"), "cp1251")
    ja = "高血圧は成人で最も多い慢性疾患である。"
    sjis = f"<html><body><p>{ja}</p></body></html>".encode("shift_jis")
    assert decode(sjis, "Shift_JIS")[0] == sjis.decode("shift_jis")  # the HTTP header's charset
    fr = " ".join(corpus_paragraphs(shared_data, "fr")[:3])
    cp1252 = f"<html><body><p>{fr}</p></body></html>".encode("cp1252", "replace")
    text, codec = decode(cp1252)  # no declaration, not UTF-8: guessed
    assert text == cp1252.decode("cp1252"), codec
    assert decode(b"\xef\xbb\xbf<p>caf\xc3\xa9</p>")[0] == "<p>café</p>"  # BOM


def test_url_normalization():
    assert normalize_url("HTTPS://Example.ORG/a/b?x=1#part") == "https://example.org/a/b?x=1"
    assert normalize_url("http://example.org") == "http://example.org/"
    assert normalize_url("http://example.org/A") != normalize_url("http://example.org/a")  # paths are exact


def test_warc_response_records_only(site, tmp_path: Path):
    base, pages = site
    entries = []
    for uid, (_, _, url) in pages.items():
        entries.append((url, (base / uid).read_bytes(), "text/html; charset=utf-8"))
    ru_url, ru_file = next((u, k) for k, (lg, _, u) in pages.items() if lg == "ru")
    cp1251 = (base / ru_file).read_text(encoding="utf-8").replace('charset="utf-8"', "").encode("cp1251")
    entries.append(("https://health.example.org/ru/cp1251", cp1251, "text/html; charset=windows-1251"))
    entries.append((pages[next(iter(pages))][2] + "#comments", entries[0][1], "text/html"))  # same URL again
    entries.append(("https://health.example.org/xhtml", entries[1][1], "application/xhtml+xml"))
    (tmp_path / "crawl").mkdir()
    write_warc(tmp_path / "crawl" / "a.warc.gz", entries)
    write_warc(
        tmp_path / "crawl" / "b.warc", entries[:2], extra=False, gzip=False
    )  # both URLs seen in a.warc.gz
    result = run_extract(
        [tmp_path / "crawl"], tmp_path / "out", load_config(ExtractConfig), show_progress=False
    )
    docs = _docs(tmp_path / "out")
    rej = _rejected(tmp_path / "out")
    by_url = {r["meta"]["url"]: r for r in docs.values()}
    assert set(by_url) == {u for u, _, _ in entries[:-2]} | {"https://health.example.org/xhtml"}
    for uid, (lang, body, url) in pages.items():
        r = by_url[url]
        assert r["meta"]["type"] == "warc" and r["meta"]["crawl_date"] and r["source"] == "crawl/a.warc.gz"
        recall, foreign = overlap("\n".join([TITLES[lang], *body]), r["text"])
        assert recall >= 0.95 and foreign <= 0.05, (uid, recall, foreign)
    cyr = by_url["https://health.example.org/ru/cp1251"]
    assert cyr["meta"]["charset"] == "cp1251" and cyr["text"] == by_url[ru_url]["text"]
    reasons = sorted((r["reason"], r.get("detail", "")) for r in rej.values())
    assert reasons == sorted(
        [
            ("not_html", "image/png"),
            ("not_html", "application/pdf"),
            ("http_status", "HTTP 404"),
            ("http_status", "HTTP 301"),
            (
                "duplicate_url",
                f"same URL as {by_url[entries[0][0]]['id']}",
            ),  # within the file (fragment ignored)
            ("duplicate_url", f"same URL as {by_url[entries[0][0]]['id']}"),  # b.warc, across shards
            ("duplicate_url", f"same URL as {by_url[entries[1][0]]['id']}"),
        ]
    )
    assert {r["id"].split("#")[0] for r in rej.values() if r["reason"] == "duplicate_url"} == {
        "crawl/a.warc.gz",
        "crawl/b.warc",
    }
    assert not list((tmp_path / "out" / "docs").glob("00001*"))  # every page of b.warc was a duplicate
    rep = result.report
    n_resp = len(entries) + 4
    assert rep["sources"]["warc"]["responses"] == n_resp + 2 and rep["totals"]["docs_in"] == n_resp + 2
    assert rep["warc_skipped_records"] == {"request": n_resp + 2, "metadata": n_resp + 2, "warcinfo": 2}
    assert rep["totals"]["docs_out"] == len(docs) and rep["totals"]["drops"]["duplicate_url"] == 3


def test_corrupt_warc_keeps_what_was_read(site, tmp_path: Path):
    base, pages = site
    entries = [(url, (base / uid).read_bytes(), "text/html") for uid, (_, _, url) in list(pages.items())[:3]]
    write_warc(tmp_path / "good.warc.gz", entries, extra=False)
    data = (tmp_path / "good.warc.gz").read_bytes()
    (tmp_path / "in").mkdir()
    (tmp_path / "in" / "cut.warc.gz").write_bytes(data[: int(len(data) * 0.7)])
    (tmp_path / "in" / "notgzip.warc.gz").write_bytes(gzip.compress(b"this is not a WARC file\r\n\r\n"))
    run_extract([tmp_path / "in"], tmp_path / "out", load_config(ExtractConfig), show_progress=False)
    docs = _docs(tmp_path / "out")
    rej = _rejected(tmp_path / "out")
    assert 1 <= len(docs) < 3  # the pages before the cut
    assert {r["reason"] for r in rej.values()} == {"unreadable"} and len(rej) == 2
    assert all(r["detail"] for r in rej.values())

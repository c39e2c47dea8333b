"""Web pages -> records: HTML files and WARC ``response`` records, main text through trafilatura.

trafilatura rather than resiliparse: on the test pages (six languages, navigation, cookie banner, sidebar,
comments and footer around a known article) both keep the article, trafilatura drops more of the
boilerplate (comments, cookie banners) and is pure Python over lxml, while resiliparse needs a compiled
wheel and takes the whole ``<main>`` with its comments (numbers: ``benchmarks/extract.py``, README).

Metadata (title, canonical URL, ``lang`` tag, publication date) is read from the parsed page's head with a few
XPath queries before trafilatura prunes the tree; trafilatura's own metadata pass (author, site name, the
extensive date search of htmldate) is not run: it costs more than a third of the extraction itself.
Charset: the HTTP header (WARC), else the page's ``<meta charset>``, else UTF-8, else charset_normalizer's
guess; ``mmed prep`` runs ftfy over the text afterwards as for every source.
"""

from __future__ import annotations

import codecs
import logging
import re
import time
import zlib
from collections.abc import Callable, Iterator
from typing import Any
from urllib.parse import urlsplit, urlunsplit

from preprocessing.document import LANGS
from preprocessing.extract.config import ExtractConfig
from preprocessing.extract.sources import TooLarge, Unit, open_stream, read_bytes
from preprocessing.extract.stats import ExtractStats

Item = tuple[str, dict[str, Any]]
HTML_TYPES = frozenset({"text/html", "application/xhtml+xml"})
_META_CHARSET_RE = re.compile(rb"""<meta[^>]+charset\s*=\s*["']?\s*([A-Za-z0-9_\-:.]+)""", re.IGNORECASE)
_HEADER_CHARSET_RE = re.compile(r"charset\s*=\s*[\"']?([A-Za-z0-9_\-:.]+)", re.IGNORECASE)
_DATE_XPATH = (
    "//meta[@property='article:published_time' or @name='article:published_time' or @itemprop='datePublished'"
    " or @name='date' or @name='DC.date.issued' or @name='dc.date' or @name='citation_publication_date'"
    " or @property='og:published_time']/@content | //time/@datetime"
)
#: cookie/consent banners: trafilatura keeps one when a page has no article, so they are pruned first
_LOWER = "translate({}, 'ABCDEFGHIJKLMNOPQRSTUVWXYZ', 'abcdefghijklmnopqrstuvwxyz')"
_BANNER_XPATH = (
    "//*["
    + " or ".join(
        f"contains({_LOWER.format(attr)}, '{word}')"
        for attr in ("@id", "@class")
        for word in ("cookie", "consent", "gdpr")
    )
    + "]"
)
_DATE_RE = re.compile(r"\d{4}-\d{2}-\d{2}|\d{4}/\d{2}/\d{2}")


def normalize_url(url: str) -> str:
    """The URL that exact dedup compares: scheme and host lowercased, fragment dropped, empty path as ``/``."""
    try:
        parts = urlsplit(url.strip())
    except ValueError:
        return url.strip()
    return urlunsplit((parts.scheme.lower(), parts.netloc.lower(), parts.path or "/", parts.query, ""))


def _codec(name: str | None) -> str | None:
    if not name:
        return None
    try:
        return codecs.lookup(name.strip().strip("\"'")).name
    except LookupError:
        return None


def decode(data: bytes, header_charset: str | None = None) -> tuple[str, str]:
    """``(text, codec)``: BOM, HTTP header charset, ``<meta>`` charset, UTF-8, then charset_normalizer."""
    for bom, name in (
        (codecs.BOM_UTF8, "utf-8"),
        (codecs.BOM_UTF16_LE, "utf-16"),
        (codecs.BOM_UTF16_BE, "utf-16"),
    ):
        if data.startswith(bom):
            return data.decode(name, "replace").lstrip("\ufeff"), name
    m = _META_CHARSET_RE.search(data[:4096])
    for name in (_codec(header_charset), _codec(m.group(1).decode("ascii", "ignore")) if m else None):
        if name:
            try:
                return data.decode(name), name
            except UnicodeDecodeError:
                continue
    try:
        return data.decode("utf-8"), "utf-8"
    except UnicodeDecodeError:
        pass
    from charset_normalizer import from_bytes

    best = from_bytes(data[: 1 << 20]).best()
    name = best.encoding if best is not None else "utf-8"
    return data.decode(name, "replace"), name


def _first(tree, xpath: str) -> str | None:
    for value in tree.xpath(xpath):
        text = (value if isinstance(value, str) else value.text_content() or "").strip()
        if text:
            return re.sub(r"\s+", " ", text)
    return None


def page_metadata(tree) -> dict[str, str | None]:
    """Title, canonical URL, language tag and publication date (ISO day) from the page's head."""
    lang = tree.get("lang") or tree.get("{http://www.w3.org/XML/1998/namespace}lang")
    if not lang:
        lang = _first(
            tree, "//meta[translate(@http-equiv,'CONTENT-LAGU','content-lagu')='content-language']/@content"
        )
    date = _first(tree, _DATE_XPATH)
    m = _DATE_RE.search(date or "")
    return {
        "title": _first(tree, "//meta[@property='og:title']/@content")
        or _first(tree, "//h1")
        or _first(tree, "//title"),
        "url": _first(tree, "//link[@rel='canonical']/@href | //meta[@property='og:url']/@content"),
        "lang": lang.strip() if lang else None,
        "date": m.group(0).replace("/", "-") if m else None,
    }


def _lang_code(tag: str | None) -> str | None:
    if not tag:
        return None
    code = re.split(r"[-_]", tag.strip().lower(), maxsplit=1)[0]
    return code or None


class HtmlExtractor:
    """Extracts web pages; one per process (holds the language detector)."""

    def __init__(self, cfg: ExtractConfig, detect: Callable[[str], str | None]):
        self.cfg = cfg
        self.detect = detect
        logging.getLogger("trafilatura").setLevel(logging.CRITICAL)  # bad pages are recorded, not logged

    def page(
        self,
        data: bytes,
        uid: str,
        source: str,
        kind: str,
        stats: ExtractStats,
        url: str | None = None,
        header_charset: str | None = None,
        extra: dict[str, Any] | None = None,
    ) -> Item:
        """One page -> ``("doc", record)`` or ``("rejected", record)``."""
        import trafilatura
        from trafilatura.utils import load_html

        t0 = time.perf_counter()
        stats.add(kind, "pages")
        html, codec = decode(data, header_charset)
        rec = {"id": uid, "source": source}
        if not html.strip():
            return "rejected", {**rec, "reason": "empty", "detail": "empty page", "url": url}
        tree = load_html(html)
        if tree is None:
            return "rejected", {**rec, "reason": "unreadable", "detail": "not parseable as HTML", "url": url}
        meta = page_metadata(tree)
        doc = trafilatura.bare_extraction(
            tree,
            url=url,
            include_comments=False,
            include_tables=self.cfg.html.include_tables,
            with_metadata=False,
            prune_xpath=_BANNER_XPATH,
        )
        text = (doc.text or "").strip() if doc is not None else ""
        stats.time(kind, time.perf_counter() - t0)
        page_url = url or meta["url"]
        if len(text) < self.cfg.html.min_chars:
            detail = f"{len(text)} characters of main text < html.min_chars={self.cfg.html.min_chars}"
            return "rejected", {**rec, "reason": "boilerplate_only", "detail": detail, "url": page_url}
        tag = _lang_code(meta["lang"])
        hint = self.cfg.lang_hint or (tag if tag in LANGS else None) or self.detect(text)
        out_meta = {
            "type": kind,
            "url": page_url,
            "title": meta["title"],
            "lang": meta["lang"],
            "date": meta["date"],
            "charset": codec,
            "lang_hint": hint,
            **(extra or {}),
        }
        return "doc", {**rec, "text": text, "meta": out_meta}

    def html_file(self, unit: Unit, stats: ExtractStats) -> Item:
        stats.add("html", "files")
        try:
            data = read_bytes(unit, self.cfg.html.max_page_mb * 2**20)
        except TooLarge as e:
            return "rejected", {"id": unit.name, "source": unit.name, "reason": "too_large", "detail": str(e)}
        except OSError as e:
            return "rejected", {
                "id": unit.name,
                "source": unit.name,
                "reason": "unreadable",
                "detail": str(e),
            }
        return self.page(data, unit.name, unit.name, "html", stats)

    def warc_file(self, unit: Unit, stats: ExtractStats) -> Iterator[Item]:
        """Pages of the WARC's ``response`` records with an HTML content type; other responses are recorded
        (``not_html``, ``http_status``), request/metadata/warcinfo records only counted."""
        from warcio.archiveiterator import ArchiveIterator
        from warcio.recordloader import ArchiveLoadFailed

        stats.add("warc", "files")
        max_bytes = self.cfg.html.max_page_mb * 2**20
        n = -1
        try:
            with open_stream(unit) as fh:
                records = ArchiveIterator(fh)
                for n, record in enumerate(records):
                    if record.format != "warc":
                        raise ValueError(f"not a WARC record ({record.format} format)")
                    stats.add("warc", "records")
                    if record.rec_type != "response" or record.http_headers is None:
                        stats.add("warc_skipped", record.rec_type)
                        continue
                    stats.add("warc", "responses")
                    uid = f"{unit.name}#{n}"
                    url = record.rec_headers.get_header("WARC-Target-URI")
                    ctype = record.http_headers.get_header("Content-Type") or ""
                    mime = ctype.split(";")[0].strip().lower()
                    base = {"id": uid, "source": unit.name, "url": url}
                    if mime not in HTML_TYPES:
                        yield "rejected", {**base, "reason": "not_html", "detail": mime or "no content type"}
                        continue
                    status = record.http_headers.get_statuscode() or ""
                    if not status.startswith("2"):
                        yield "rejected", {**base, "reason": "http_status", "detail": f"HTTP {status}"}
                        continue
                    data = record.content_stream().read(max_bytes + 1)
                    if len(data) > max_bytes:
                        yield (
                            "rejected",
                            {**base, "reason": "too_large", "detail": f"page > {max_bytes:,} bytes"},
                        )
                        continue
                    m = _HEADER_CHARSET_RE.search(ctype)
                    extra = {"crawl_date": record.rec_headers.get_header("WARC-Date")}
                    yield self.page(
                        data, uid, unit.name, "warc", stats, url, m.group(1) if m else None, extra
                    )
                # warcio stops quietly at a cut gzip member: bytes left after the last whole record tell (an
                # uncompressed file ends with the last record's 4-byte CRLF CRLF). Asked only now: asking for
                # the offset while a record is being read empties its payload.
                end = records.get_record_offset() + records.get_record_length() if n >= 0 else 0
                if fh.tell() - end > 4:
                    n += 1
                    raise ValueError(f"{fh.tell() - end:,} bytes after the last complete record (truncated?)")
        except (
            ArchiveLoadFailed,
            OSError,
            EOFError,
            ValueError,
            zlib.error,
        ) as e:  # the rest of the file is lost
            where = f"after record {n}" if n >= 0 else "at the start"
            yield (
                "rejected",
                {
                    "id": f"{unit.name}#{n + 1}",
                    "source": unit.name,
                    "reason": "unreadable",
                    "detail": f"{type(e).__name__}: {e} ({where})",
                },
            )

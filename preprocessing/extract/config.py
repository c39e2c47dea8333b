"""``ExtractConfig``: how ``mmed extract`` reads PDFs, runs OCR and extracts web pages (saved as OUT/config.yaml)."""

from __future__ import annotations

from dataclasses import dataclass, field

from megatron_mmed.common.config import ConfigError
from preprocessing.document import LANGS

OCR_MODES: tuple[str, ...] = ("auto", "always", "never")


@dataclass(frozen=True)
class PdfConfig:
    """Text layer, scanned-page detection and book structure."""

    #: books with more pages are rejected as ``too_large`` (a 1,000-page textbook streams in flat memory)
    max_pages: int = 5000
    #: files (or archive members) larger than this are rejected as ``too_large`` before they are opened
    max_file_mb: int = 2048
    #: a page whose text layer has fewer non-space characters than this is treated as scanned
    min_page_chars: int = 20
    #: a page whose text layer is mostly unmapped glyphs (U+FFFD, controls, private use) is treated as scanned
    max_garbage_share: float = 0.25
    #: cut cover, copyright page, table of contents, preface, bibliography and index
    cut_front_back: bool = True
    #: remove running headers/footers (lines repeated at page edges) and page numbers
    remove_headers: bool = True
    #: one record per chapter (outline or headings), else one per book
    split_chapters: bool = True
    #: a chapter with less text than this is merged into the next one (a part title page, an epigraph)
    min_chapter_chars: int = 200

    def validate(self) -> None:
        if self.max_pages < 1 or self.max_file_mb < 1:
            raise ConfigError("pdf.max_pages and pdf.max_file_mb must be >= 1")
        if self.min_page_chars < 0 or self.min_chapter_chars < 0:
            raise ConfigError("pdf.min_page_chars and pdf.min_chapter_chars must be >= 0")
        if not 0.0 < self.max_garbage_share <= 1.0:
            raise ConfigError(f"pdf.max_garbage_share must be in (0, 1], got {self.max_garbage_share}")


@dataclass(frozen=True)
class TesseractConfig:
    """OCR of scanned pages through the Tesseract command (Debian ``tesseract-ocr`` + language packs)."""

    command: str = "tesseract"
    #: pages are rendered at this resolution for OCR (300 is Tesseract's sweet spot for book print)
    dpi: int = 300
    #: a page whose mean word confidence is below this (0-100) is recorded as ``ocr_failed``
    min_confidence: float = 45.0
    #: seconds one page may take before it is recorded as ``ocr_failed``
    timeout_s: int = 600

    def validate(self) -> None:
        if not 72 <= self.dpi <= 1200:
            raise ConfigError(f"tesseract.dpi must be in [72, 1200], got {self.dpi}")
        if not 0.0 <= self.min_confidence <= 100.0:
            raise ConfigError(f"tesseract.min_confidence must be in [0, 100], got {self.min_confidence}")
        if self.timeout_s < 1:
            raise ConfigError("tesseract.timeout_s must be >= 1")


@dataclass(frozen=True)
class HtmlConfig:
    """Main-text extraction from HTML files and WARC response records."""

    #: a page whose main text is shorter than this is recorded as ``boilerplate_only``
    min_chars: int = 100
    #: pages larger than this are rejected as ``too_large`` without parsing
    max_page_mb: int = 32
    #: keep tables of the main text (drug doses, lab values)
    include_tables: bool = True
    #: drop later pages whose URL (fragment removed, scheme and host lowercased) was already seen in this run
    dedup_urls: bool = True

    def validate(self) -> None:
        if self.min_chars < 1 or self.max_page_mb < 1:
            raise ConfigError("html.min_chars and html.max_page_mb must be >= 1")


@dataclass(frozen=True)
class ExtractConfig:
    """Everything ``mmed extract`` does; saved as ``OUT/config.yaml``."""

    #: ``auto``: OCR the pages without a usable text layer; ``always``: OCR every page; ``never``: no OCR
    ocr: str = "auto"
    #: the language of the inputs when known (picks the OCR language pack, fills ``meta.lang_hint``); empty:
    #: detected (text-layer text or HTML ``lang`` tag, else Tesseract's script detection on scans)
    lang_hint: str = ""
    #: HTML files are grouped into shards of this many files (each PDF and WARC file is its own shard)
    html_per_shard: int = 200
    pdf: PdfConfig = field(default_factory=PdfConfig)
    tesseract: TesseractConfig = field(default_factory=TesseractConfig)
    html: HtmlConfig = field(default_factory=HtmlConfig)
    workers: int = 1

    def validate(self) -> None:
        if self.ocr not in OCR_MODES:
            raise ConfigError(f"ocr must be one of {list(OCR_MODES)}, got {self.ocr!r}")
        if self.lang_hint and self.lang_hint not in LANGS:
            raise ConfigError(f"lang_hint must be one of {list(LANGS)} (or empty), got {self.lang_hint!r}")
        if self.html_per_shard < 1:
            raise ConfigError(f"html_per_shard must be >= 1, got {self.html_per_shard}")
        if self.workers < 1:
            raise ConfigError(f"workers must be >= 1, got {self.workers}")

"""``mmed extract``: textbook PDFs (text layer or OCR), HTML pages and WARC crawls -> JSONL for ``mmed prep``.

``sources`` (inputs -> units -> shards), ``pdf`` (pypdfium2 pages, scanned-page detection), ``ocr``
(Tesseract), ``book`` (headers/footers, paragraphs, chapters, front/back matter), ``html`` (trafilatura,
WARC via warcio), ``run`` (shards, markers, URL dedup), ``report``.
"""

from preprocessing.extract.config import ExtractConfig
from preprocessing.extract.run import ExtractResult, run_extract

__all__ = ["ExtractConfig", "ExtractResult", "run_extract"]

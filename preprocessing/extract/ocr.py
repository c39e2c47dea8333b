"""OCR of rendered pages through the Tesseract command (Debian ``tesseract-ocr`` and its language packs).

The page image goes to ``tesseract`` on stdin as a PGM and comes back as TSV (words with boxes, confidences
and block/paragraph/line numbers), so OCR'd pages become the same positioned ``Line`` objects as text-layer
pages and go through the same book-structure rules. One Tesseract process per page with
``OMP_THREAD_LIMIT=1``: one page is one core, and ``--workers`` sets how many run at once.

Language pack: from the language hint, else from the book's own text, else from Tesseract's script
detection (``--psm 0``, the ``osd`` pack) on a half-resolution copy of the page. Latin script is OCR'd with
English+French+Spanish at once (the three share the script; the combined model keeps the accents); the
book's language is then fixed from the recognised text. Vertical Japanese (columns right to left) is found
from the page's ink profile and read with ``jpn_vert`` (page segmentation mode 5); a Japanese page whose
confidence stays low either way is recorded as ``ocr_failed``.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from dataclasses import dataclass

import numpy as np

from megatron_mmed.common.errors import UserError
from preprocessing.extract.book import Line

#: MMedC language -> Tesseract pack (``tesseract-ocr-<pack with - for _>`` Debian packages)
PACKS: dict[str, str] = {"en": "eng", "zh": "chi_sim", "ja": "jpn", "fr": "fra", "ru": "rus", "es": "spa"}
#: the pack set each language is read with: Russian medical text quotes Latin names (Pityrosporum ovale),
#: which ``rus`` alone turns into Cyrillic look-alikes (test pages: CER 5.2 % -> 3.3 %, 15 % slower)
READ_WITH: dict[str, str] = {**PACKS, "ru": "rus+eng"}
VERTICAL_PACK = "jpn_vert"
LATIN_PACKS = "eng+fra+spa"
#: Tesseract OSD script name -> MMedC language (None: Latin, decided from the recognised text)
SCRIPTS: dict[str, str | None] = {
    "Latin": None,
    "Cyrillic": "ru",
    "Han": "zh",
    "Japanese": "ja",
    "Hiragana": "ja",
    "Katakana": "ja",
}
DEBIAN_PACKAGES = "tesseract-ocr " + " ".join(
    f"tesseract-ocr-{p.replace('_', '-')}" for p in [*PACKS.values(), VERTICAL_PACK]
)


class OcrUnavailable(UserError):
    """Tesseract or a language pack is missing: the run stops with how to install it (nothing is lost)."""


@dataclass
class OcrResult:
    lines: list[Line]
    confidence: float  # mean word confidence, 0-100
    words: int
    pack: str


def to_pgm(gray: np.ndarray) -> bytes:
    """A binary PGM of a 2-D uint8 image (what Tesseract reads from stdin without extra libraries)."""
    gray = np.ascontiguousarray(gray, dtype=np.uint8)
    h, w = gray.shape
    return b"P5\n%d %d\n255\n" % (w, h) + gray.tobytes()


def is_vertical(gray: np.ndarray) -> bool:
    """Whether the text on the page runs in vertical columns: within the ink's bounding box, horizontal lines
    of text leave blank pixel rows between them (the leading), vertical columns leave blank pixel columns."""
    ink = gray < 128
    rows = ink.sum(axis=1)
    cols = ink.sum(axis=0)
    r = np.flatnonzero(rows)
    c = np.flatnonzero(cols)
    if len(r) < 20 or len(c) < 20:
        return False
    rows = rows[r[0] : r[-1] + 1]
    cols = cols[c[0] : c[-1] + 1]
    blank_rows = float(np.mean(rows <= max(1, cols.size // 500)))
    blank_cols = float(np.mean(cols <= max(1, rows.size // 500)))
    return blank_cols > 0.15 and blank_cols > 1.5 * blank_rows


class Tesseract:
    """Runs the ``tesseract`` command; checks once which language packs are installed."""

    def __init__(self, command: str = "tesseract", timeout_s: int = 600):
        self.command = command
        self.timeout_s = timeout_s
        self._langs: set[str] | None = None
        self._env = {**os.environ, "OMP_THREAD_LIMIT": "1"}

    def languages(self) -> set[str]:
        if self._langs is None:
            exe = shutil.which(self.command)
            if exe is None:
                raise OcrUnavailable(
                    f"scanned pages need OCR but `{self.command}` is not installed "
                    f"(apt-get install {DEBIAN_PACKAGES}; or --ocr never)"
                )
            res = subprocess.run([exe, "--list-langs"], capture_output=True, text=True, timeout=60)
            self._langs = {x.strip() for x in res.stdout.splitlines()[1:] if x.strip()}
        return self._langs

    def require(self, pack: str) -> None:
        missing = [p for p in pack.split("+") if p not in self.languages()]
        if missing:
            pkgs = " ".join(f"tesseract-ocr-{p.replace('_', '-')}" for p in missing)
            raise OcrUnavailable(
                f"Tesseract language pack(s) {', '.join(missing)} missing (apt-get install {pkgs})"
            )

    def _run(self, image: bytes, args: list[str]) -> str:
        res = subprocess.run(
            [self.command, "stdin", "stdout", *args],
            input=image,
            capture_output=True,
            timeout=self.timeout_s,
            env=self._env,
        )
        if res.returncode != 0:
            raise RuntimeError(
                res.stderr.decode("utf-8", "replace").strip()[-300:] or f"exit {res.returncode}"
            )
        return res.stdout.decode("utf-8", "replace")

    def script(self, gray: np.ndarray, dpi: int) -> str | None:
        """Tesseract's script detection (``osd``) on a half-resolution copy; None when it cannot tell."""
        self.require("osd")
        try:
            out = self._run(to_pgm(gray[::2, ::2]), ["--psm", "0", "--dpi", str(dpi // 2)])
        except RuntimeError:
            return None  # "Too few characters": a near-empty page
        fields = dict(line.split(":", 1) for line in out.splitlines() if ":" in line)
        return fields.get("Script", "").strip() or None

    def recognize(self, gray: np.ndarray, pack: str, dpi: int, psm: int = 3) -> OcrResult:
        """Words grouped into positioned lines; paragraphs start where Tesseract's block or paragraph does."""
        self.require(pack)
        out = self._run(to_pgm(gray), ["-l", pack, "--psm", str(psm), "--dpi", str(dpi), "tsv"])
        h, w = gray.shape
        lines: list[Line] = []
        confs: list[float] = []
        cur_key = None
        words: list[str] = []
        box = [0, 0, 0, 0]  # left, top, right, bottom (pixels)
        par_key = None

        cjk = any(p in pack for p in ("chi", "jpn"))

        def flush() -> None:
            if words:
                text = words[0]
                for word in words[1:]:
                    # Chinese/Japanese: Tesseract splits runs into "words"; only Latin words keep a space
                    spaced = not cjk or (
                        text[-1].isascii() and text[-1].isalnum() and word[0].isascii() and word[0].isalnum()
                    )
                    text += " " + word if spaced else word
                lines.append(Line(text, box[1] / h, box[3] / h, box[0] / w, box[2] / w, para=new_par))

        new_par = True
        for row in out.splitlines()[1:]:
            f = row.split("\t")
            if len(f) < 12 or f[0] != "5" or not f[11].strip():
                continue
            key = (f[2], f[3], f[4])
            left, top, width, height = int(f[6]), int(f[7]), int(f[8]), int(f[9])
            if key != cur_key:
                flush()
                new_par = (f[2], f[3]) != par_key
                par_key = (f[2], f[3])
                cur_key, words = key, []
                box = [left, top, left + width, top + height]
            else:
                box = [
                    min(box[0], left),
                    min(box[1], top),
                    max(box[2], left + width),
                    max(box[3], top + height),
                ]
            words.append(f[11].strip())
            confs.append(float(f[10]))
        flush()
        conf = sum(confs) / len(confs) if confs else 0.0
        return OcrResult(lines, conf, len(confs), pack)


class PageReader:
    """Picks the language pack for each scanned page of one book and runs Tesseract on it."""

    def __init__(self, engine: Tesseract, dpi: int, min_confidence: float, lang: str | None, detect):
        self.engine = engine
        self.dpi = dpi
        self.min_confidence = min_confidence
        self.lang = lang  # the book's language once known
        self._detect = detect  # text -> MMedC language or None (the language identifier)

    def read(self, gray: np.ndarray) -> tuple[OcrResult | None, str]:
        """``(result, detail)``; result None (with the reason in ``detail``) when the page cannot be read.

        The first page of a book without a known language goes through script detection; the recognised text
        then fixes the book's language (a Latin page read with the combined packs is read again with its
        own), so later pages skip detection."""
        lang = self.lang
        if lang is None:
            script = self.engine.script(gray, self.dpi)
            if script is not None and script not in SCRIPTS:
                return None, f"script {script} is not one of the six languages'"
            lang = SCRIPTS.get(script or "Latin")
        if lang == "ja":
            res = self._japanese(gray)
        else:
            res = self.engine.recognize(gray, READ_WITH[lang] if lang else LATIN_PACKS, self.dpi)
        if self.lang is None:
            found = self._detect(" ".join(ln.text for ln in res.lines))
            if lang is None and found in ("en", "fr", "es"):
                res = self.engine.recognize(gray, READ_WITH[found], self.dpi)
            elif lang == "zh" and found == "ja":  # a kanji-heavy page that is Japanese after all
                res = self._japanese(gray)
            self.lang = found or lang
        return self._judge(res)

    def _japanese(self, gray: np.ndarray) -> OcrResult:
        vertical = is_vertical(gray)
        res = self._recognize_ja(gray, vertical)
        if res.confidence < self.min_confidence:  # the writing-direction guess may be wrong: try the other
            other = self._recognize_ja(gray, not vertical)
            if other.confidence > res.confidence:
                res = other
        return res

    def _recognize_ja(self, gray: np.ndarray, vertical: bool) -> OcrResult:
        if vertical:
            return self.engine.recognize(gray, VERTICAL_PACK, self.dpi, psm=5)
        return self.engine.recognize(gray, PACKS["ja"], self.dpi)

    def _judge(self, res: OcrResult) -> tuple[OcrResult | None, str]:
        if res.words == 0:
            return res, "no text found"
        if res.confidence < self.min_confidence:
            return None, f"mean confidence {res.confidence:.0f} < {self.min_confidence:.0f} ({res.pack})"
        return res, res.pack

"""``mmed extract``: textbook PDFs, HTML pages and WARC crawls -> the JSONL that ``mmed prep`` reads.

::

    OUT/config.yaml                          the ExtractConfig that made this folder
    OUT/docs/<shard>.jsonl.zst               {"id", "text", "source", "meta": {...}} (``mmed prep --input OUT/docs``)
    OUT/rejected/<shard>.jsonl.zst           {"id", "reason", "detail", "source", ...}: nothing is lost unrecorded
    OUT/rejected/<shard>.urldup.jsonl.zst    pages whose URL an earlier shard already had
    OUT/report.json|md, OUT/*.png            pages and documents per source type, OCR share, time per page, ...
    OUT/.done/extract/<shard>.json           completion markers (counters and page URLs of the shard)
    OUT/.done/extract-urls/<shard>.json      the run-wide URL dedup of a shard, once every shard is done

Shards are written through temp files and then marked done, so a rerun after ``kill -9`` skips finished shards
and the output equals an uninterrupted run, for any ``--workers`` and any ``--rank/--world-size`` split. URLs
are deduplicated exactly: within a shard as it runs, across shards (first shard in input order wins) by the
task that finds every shard done, which then writes the report.
"""

from __future__ import annotations

import fcntl
import time
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import xxhash

from megatron_mmed.common.io import DoneMarkers, JsonlZstWriter, files_digest, read_jsonl_zst
from preprocessing.extract.config import ExtractConfig
from preprocessing.extract.html import HtmlExtractor, normalize_url
from preprocessing.extract.pdf import PdfExtractor
from preprocessing.extract.sources import Shard, Unit, discover, plan_shards
from preprocessing.extract.stats import ExtractStats
from preprocessing.stage import open_stage, resume_shards

DOCS = "docs"
REJECTED = "rejected"
STAGE = "extract"
URL_STAGE = "extract-urls"


def docs_file(out: Path, shard_id: str) -> Path:
    return out / DOCS / f"{shard_id}.jsonl.zst"


def url_key(url: str) -> str:
    return xxhash.xxh3_128_hexdigest(normalize_url(url).encode("utf-8"))


class ShardExtractor:
    """Holds the extractors of one process (language detector, OCR engine); extracts one shard at a time."""

    def __init__(self, cfg: ExtractConfig):
        from preprocessing.langid import LangIdConfig, LanguageIdentifier

        self.cfg = cfg
        lid = LanguageIdentifier(LangIdConfig())

        def detect(text: str) -> str | None:
            return lid.detect(text)[0] if text.strip() else None

        self.pdf = PdfExtractor(cfg, detect)
        self.html = HtmlExtractor(cfg, detect)

    def _items(self, unit: Unit, stats: ExtractStats):
        stats.add("inputs", unit.kind)
        if unit.kind == "pdf":
            yield from self.pdf.extract(unit, stats)
        elif unit.kind == "warc":
            yield from self.html.warc_file(unit, stats)
        elif unit.kind == "html":
            yield self.html.html_file(unit, stats)
        else:  # unsupported archive member, or an archive that cannot be listed
            reason = "unsupported" if unit.kind == "unsupported" else "unreadable"
            yield "rejected", {"id": unit.name, "source": unit.name, "reason": reason, "detail": unit.detail}

    def run_shard(self, shard: Shard, out: Path) -> dict[str, Any]:
        """Extract one shard into its output files; returns what its completion marker holds."""
        stats = ExtractStats()
        docs = JsonlZstWriter(docs_file(out, shard.shard_id))
        rejected = JsonlZstWriter(out / REJECTED / f"{shard.shard_id}.jsonl.zst")
        urls: list[list[str]] = []
        seen: dict[str, str] = {}
        try:
            for unit in shard.units:
                for kind, rec in self._items(unit, stats):
                    if kind == "doc":
                        url = rec["meta"].get("url") if self.cfg.html.dedup_urls else None
                        if url:
                            key = url_key(url)
                            if key in seen:
                                kind, rec = (
                                    "rejected",
                                    {
                                        "id": rec["id"],
                                        "source": rec["source"],
                                        "reason": "duplicate_url",
                                        "detail": f"same URL as {seen[key]}",
                                        "url": url,
                                    },
                                )
                            else:
                                seen[key] = rec["id"]
                                urls.append([key, rec["id"]])
                    if kind == "doc":
                        stats.doc(rec["meta"]["type"], rec["meta"].get("lang_hint"), len(rec["text"]))
                        docs.write(rec)
                    else:
                        stats.add("drops", rec["reason"])
                        rejected.write(rec)
            docs.close()
            rejected.close()
        except BaseException:
            docs.abort()
            rejected.abort()
            raise
        return {"shard": shard.describe(), "stats": stats.to_dict(), "urls": urls}


@contextmanager
def _finalize_lock(out: Path):
    """One array task at a time dedups URLs and writes the report (a kill releases the lock)."""
    path = out / ".done" / STAGE / ".finalize.lock"
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def dedup_urls(out: Path, shards: list[Shard], results: dict[str, dict[str, Any]]) -> ExtractStats:
    """Drop pages whose URL an earlier shard (input order) already kept; returns the counts to take off."""
    first: dict[str, str] = {}
    drops: dict[str, dict[str, str]] = {}
    for s in shards:
        for key, rid in results[s.shard_id]["urls"]:
            if key in first:
                drops.setdefault(s.shard_id, {})[rid] = first[key]
            else:
                first[key] = rid
    markers = DoneMarkers(out, URL_STAGE)
    delta = ExtractStats()
    for sid, ids in sorted(drops.items()):
        if markers.is_done(sid):
            delta.merge(ExtractStats.from_dict(markers.read(sid)["delta"]))
            continue
        path = docs_file(out, sid)
        kept, dropped = [], []
        for rec in read_jsonl_zst(path) if path.is_file() else ():
            (dropped if rec["id"] in ids else kept).append(rec)
        d = ExtractStats()
        dup_file = out / REJECTED / f"{sid}.urldup.jsonl.zst"
        with JsonlZstWriter(dup_file, create_empty=True) as w:
            for rec in dropped:
                meta = rec["meta"]
                w.write(
                    {
                        "id": rec["id"],
                        "source": rec["source"],
                        "reason": "duplicate_url",
                        "detail": f"same URL as {ids[rec['id']]}",
                        "url": meta.get("url"),
                    }
                )
                d.doc(meta["type"], meta.get("lang_hint"), len(rec["text"]), sign=-1)
                d.add("drops", "duplicate_url")
        if not kept:
            path.unlink(missing_ok=True)
        elif dropped:  # else an earlier, interrupted pass already rewrote this file
            with JsonlZstWriter(path) as w:
                for rec in kept:
                    w.write(rec)
        markers.mark(sid, {"dropped": sorted(ids), "delta": d.to_dict()})
        delta.merge(d)
    return delta


@dataclass
class ExtractResult:
    out_dir: Path
    stats: ExtractStats
    shards_total: int
    shards_skipped: int
    skipped_files: list[str]
    seconds: float
    report: dict[str, Any]


def run_extract(
    inputs: list[str | Path],
    out_dir: str | Path,
    cfg: ExtractConfig,
    show_progress: bool = True,
    rank: int = 0,
    world_size: int = 1,
) -> ExtractResult:
    """Run ``mmed extract`` over ``inputs`` into ``out_dir`` (resuming finished shards).

    With ``world_size > 1`` (a slurm array) this task takes shards ``rank, rank + world_size, ...``; whichever
    task finds every shard done at its end dedups URLs across shards and writes the report.
    """
    from preprocessing.extract.report import write_extract_report

    t0 = time.time()
    units, skipped_files = discover(inputs)
    digest = files_digest((u.name, u.path) for u in units)
    with open_stage(STAGE, out_dir, cfg, reads=inputs, input=digest, rank=rank, world_size=world_size) as out:
        # built up front: a missing Tesseract (--ocr always) fails before any work
        local = ShardExtractor(cfg)
        shards = plan_shards(units, cfg.html_per_shard)
        done = resume_shards(
            STAGE, shards, out, cfg, local, rank=rank, world_size=world_size, show_progress=show_progress
        )
        results, skipped = done.results, done.skipped
        if not done.complete:
            return ExtractResult(
                out, ExtractStats(), len(shards), skipped, skipped_files, time.time() - t0, {}
            )
        with _finalize_lock(out):
            stats = ExtractStats()
            for sid in sorted(results):
                stats.merge(ExtractStats.from_dict(results[sid]["stats"]))
            if cfg.html.dedup_urls:
                stats.merge(dedup_urls(out, shards, results))
            report = write_extract_report(out, stats, n_shards=len(shards), skipped_files=skipped_files)
        return ExtractResult(out, stats, len(shards), skipped, skipped_files, time.time() - t0, report)

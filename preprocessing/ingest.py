"""Ingest: turn input paths into shards and stream raw documents out of each shard.

Formats: ``.jsonl``/``.json`` (one object a line), ``.jsonl.gz``, ``.jsonl.zst``, ``.parquet``, ``.txt`` (one
document per file) and ``.zip`` archives of ``.txt`` files (how MMedC is distributed). Reading is streaming:
memory does not grow with input size (one line or one parquet batch at a time).

Plain JSONL files larger than ``shard_bytes`` are cut into byte ranges at line boundaries, so a single large
file still spreads over workers; the cut points depend only on the file, never on the worker count. Every
line or member becomes either a ``Doc`` or a ``BadRecord`` (parse/encoding/unreadable), never nothing.
"""

from __future__ import annotations

import gzip
import json
import os
import stat
import zipfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import zstandard

from megatron_mmed.common.config import ConfigError
from megatron_mmed.common.errors import UserError
from megatron_mmed.common.io import UnreadableError, ZstdLines, display_path
from preprocessing.document import Doc

JSONL_SUFFIXES = (".jsonl", ".json", ".ndjson")
BOM = b"\xef\xbb\xbf"
SUPPORTED = (*JSONL_SUFFIXES, ".jsonl.gz", ".jsonl.zst", ".json.gz", ".json.zst", ".parquet", ".txt", ".zip")


@dataclass(frozen=True)
class IngestConfig:
    """How raw inputs are read and split into shards."""

    text_field: str = "text"
    id_field: str = "id"
    #: plain JSONL files are cut into shards of about this many bytes (at line boundaries)
    shard_bytes: int = 128 * 2**20
    #: trust a record's ``lang`` field (when it is one of the configured languages) instead of detecting
    trust_lang_field: bool = False
    parquet_batch_rows: int = 1024

    def validate(self) -> None:
        if not self.text_field:
            raise ConfigError("ingest.text_field must not be empty")
        if self.shard_bytes < 1024:
            raise ConfigError(f"ingest.shard_bytes must be >= 1024, got {self.shard_bytes}")
        if self.parquet_batch_rows < 1:
            raise ConfigError("ingest.parquet_batch_rows must be positive")


@dataclass(frozen=True)
class Shard:
    """A unit of work: one file, or a byte range ``[start, end)`` of a plain JSONL file."""

    shard_id: str
    path: str
    name: str  # stable source name used in ids: <input root name>/<relative path>
    kind: str  # jsonl | jsonl.gz | jsonl.zst | parquet | txt | zip
    start: int = 0
    end: int = -1
    first_line: int = 1

    def describe(self) -> dict:
        return {
            "path": display_path(self.path),
            "kind": self.kind,
            "start": self.start,
            "end": self.end,
            "first_line": self.first_line,
        }


@dataclass
class BadRecord:
    """An input unit that could not become a document, with the reason it is quarantined."""

    id: str
    reason: str  # parse | encoding | empty | unreadable
    detail: str
    source: str
    raw: str | None = None


def file_kind(path: Path) -> str | None:
    name = path.name.lower()
    for suffix, kind in (
        (".jsonl.gz", "jsonl.gz"),
        (".json.gz", "jsonl.gz"),
        (".jsonl.zst", "jsonl.zst"),
        (".json.zst", "jsonl.zst"),
        (".parquet", "parquet"),
        (".txt", "txt"),
        (".zip", "zip"),
    ):
        if name.endswith(suffix):
            return kind
    if name.endswith(JSONL_SUFFIXES):
        return "jsonl"
    return None


def _walk(root: Path) -> tuple[list[Path], list[str]]:
    """Files under ``root`` (hidden ones left out), following symlinked folders and files: each real folder
    and file is read once, under its path without links when it has one. A link to a folder or file read
    before (an alias, or a loop) and a broken link are listed, with the reason, as skipped."""
    files: dict[tuple[int, int], Path] = {}
    linked_files: list[Path] = []
    skipped: list[str] = []
    st = root.stat()
    seen = {(st.st_dev, st.st_ino): root}
    links: list[Path] = []  # symlinked folders, followed after the real tree so real paths win

    def scan(folder: Path) -> None:
        try:
            entries = sorted(os.scandir(folder), key=lambda e: e.name)
        except OSError as e:
            skipped.append(f"{display_path(folder)} (cannot list: {e.strerror or e})")
            return
        for entry in entries:
            if entry.name.startswith("."):
                continue  # hidden files and folders (e.g. .done markers of an earlier run)
            path = Path(entry.path)
            try:
                info = path.stat()
            except OSError as e:
                why = "broken link" if entry.is_symlink() else f"cannot stat: {e.strerror or e}"
                skipped.append(f"{display_path(path)} ({why})")
                continue
            if stat.S_ISDIR(info.st_mode):
                if entry.is_symlink():
                    links.append(path)
                elif (info.st_dev, info.st_ino) not in seen:
                    seen[(info.st_dev, info.st_ino)] = path
                    scan(path)
            elif not stat.S_ISREG(info.st_mode):
                skipped.append(f"{display_path(path)} (not a regular file)")
            elif entry.is_symlink():
                linked_files.append(path)
            else:
                files.setdefault((info.st_dev, info.st_ino), path)

    scan(root)
    while links:
        link = links.pop(0)
        info = link.stat()
        first = seen.get((info.st_dev, info.st_ino))
        if first is not None:
            skipped.append(f"{display_path(link)} (symlinked folder already read as {display_path(first)})")
            continue
        seen[(info.st_dev, info.st_ino)] = link
        scan(link)
    for path in linked_files:
        info = path.stat()
        first = files.get((info.st_dev, info.st_ino))
        if first is not None:
            skipped.append(f"{display_path(path)} (symlinked file already read as {display_path(first)})")
        else:
            files[(info.st_dev, info.st_ino)] = path
    return sorted(files.values()), skipped


def discover(inputs: list[str | Path]) -> tuple[list[tuple[Path, str]], list[str]]:
    """Expand input paths into ``(file, source name)`` pairs (sorted) and a list of skipped files.

    Source names (used in document ids) are printable text even when a file name is not UTF-8.
    Raises ``UserError`` for a missing path or when no supported file is found.
    """
    files: list[tuple[Path, str]] = []
    skipped: list[str] = []
    for raw in inputs:
        p = Path(raw)
        if not p.exists():
            raise UserError(f"input path does not exist: {display_path(p)}")
        if p.is_dir():
            found, why_skipped = _walk(p)
            skipped += why_skipped
            for f in found:
                if file_kind(f) is None:
                    skipped.append(display_path(f))
                else:
                    files.append((f, display_path(f"{p.resolve().name}/{f.relative_to(p).as_posix()}")))
        elif file_kind(p) is None:
            skipped.append(display_path(p))
        else:
            files.append((p, display_path(p.name)))
    if not files:
        raise UserError(
            f"no supported input files under {', '.join(map(display_path, inputs))} (supported: {', '.join(SUPPORTED)})"
        )
    return files, skipped


def _line_cuts(path: Path, shard_bytes: int) -> list[tuple[int, int, int]]:
    """Byte ranges ``(start, end, first_line)`` of about ``shard_bytes`` each, cut after a newline."""
    size = path.stat().st_size
    if size <= shard_bytes:
        return [(0, size, 1)]
    cuts = [(0, 1)]  # (offset, line number at offset)
    line = 1
    pos = 0
    target = shard_bytes
    block = 1 << 22
    with open(path, "rb") as fh:
        while True:
            buf = fh.read(block)
            if not buf:
                break
            # every cut falls on the first newline at or after the target offset
            while pos + len(buf) > target:
                rel = max(0, target - pos)
                nl = buf.find(b"\n", rel)
                if nl < 0:
                    break
                cut = pos + nl + 1
                cuts.append((cut, line + buf.count(b"\n", 0, nl + 1)))
                target = cut + shard_bytes
            line += buf.count(b"\n")
            pos += len(buf)
    ranges = []
    for i, (start, first) in enumerate(cuts):
        end = cuts[i + 1][0] if i + 1 < len(cuts) else size
        if end > start:
            ranges.append((start, end, first))
    return ranges


def plan_shards(files: list[tuple[Path, str]], cfg: IngestConfig) -> list[Shard]:
    """Split files into shards; ids are ``<file index>-<part>``, stable for the same inputs."""
    shards: list[Shard] = []
    for i, (path, name) in enumerate(files):
        kind = file_kind(path)
        if kind == "jsonl":
            try:
                ranges = _line_cuts(path, cfg.shard_bytes)
            except OSError:
                ranges = [(0, -1, 1)]  # unreadable: the shard records it
            for j, (start, end, first) in enumerate(ranges):
                shards.append(Shard(f"{i:05d}-{j:04d}", str(path), name, kind, start, end, first))
        else:
            shards.append(Shard(f"{i:05d}-0000", str(path), name, kind))
    return shards


def _open_lines(shard: Shard) -> Iterator[bytes]:
    if shard.kind == "jsonl.gz":
        with gzip.open(shard.path, "rb") as fh:
            yield from fh
    elif shard.kind == "jsonl.zst":
        lines = ZstdLines(shard.path)
        yield from lines
        if lines.unreadable is not None:  # a cut or corrupt stream: the rest is recorded, not silently lost
            raise UnreadableError(str(lines.unreadable))
    else:
        with open(shard.path, "rb") as fh:
            fh.seek(shard.start)
            remaining = shard.end - shard.start if shard.end >= 0 else None
            for line in fh:
                if remaining is not None:
                    if remaining <= 0:
                        break
                    remaining -= len(line)
                yield line


def _decode(raw: bytes, uid: str, source: str) -> str | BadRecord:
    if b"\x00" in raw:
        return BadRecord(
            uid, "encoding", "NUL byte in input", source, raw.decode("utf-8", "backslashreplace")
        )
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as e:
        return BadRecord(
            uid,
            "encoding",
            f"invalid UTF-8: {e.reason} at byte {e.start}",
            source,
            raw.decode("utf-8", "backslashreplace"),
        )


def _record_to_doc(obj: object, uid: str, source: str, cfg: IngestConfig, raw: str) -> Doc | BadRecord:
    if not isinstance(obj, dict):
        return BadRecord(uid, "parse", f"expected a JSON object, got {type(obj).__name__}", source, raw)
    rid = obj.get(cfg.id_field)
    if rid is not None and not isinstance(rid, str | int):
        rid = None
    doc_id = str(rid) if rid is not None and str(rid) != "" else uid
    text = obj.get(cfg.text_field)
    src = obj.get("source")
    src = src if isinstance(src, str) and src else source
    if text is None:
        return BadRecord(doc_id, "parse", f"missing field {cfg.text_field!r}", src, raw)
    if not isinstance(text, str):
        return BadRecord(
            doc_id, "parse", f"field {cfg.text_field!r} is {type(text).__name__}, not a string", src, raw
        )
    lang = obj.get("lang")
    return Doc(id=doc_id, text=text, source=src, lang=lang if isinstance(lang, str) else None)


def _iter_jsonl(shard: Shard, cfg: IngestConfig, max_bytes: int) -> Iterator[Doc | BadRecord]:
    line_no = shard.first_line - 1
    for raw in _open_lines(shard):
        line_no += 1
        if line_no == 1 and raw.startswith(BOM):
            raw = raw[
                len(BOM) :
            ]  # a UTF-8 byte order mark (Windows editors write one) is no part of the record
        uid = f"{shard.name}:{line_no}"
        if not raw.strip():
            yield BadRecord(uid, "empty", "blank line", shard.name)
            continue
        text = _decode(raw.rstrip(b"\r\n"), uid, shard.name)
        if isinstance(text, BadRecord):
            yield text
            continue
        try:
            obj = json.loads(text)
        except json.JSONDecodeError as e:
            yield BadRecord(uid, "parse", f"malformed JSON: {e.msg} at column {e.colno}", shard.name, text)
            continue
        doc = _record_to_doc(obj, uid, shard.name, cfg, text)
        if isinstance(doc, Doc) and len(raw) > max_bytes:
            # parsed only to keep its id; the text is neither cleaned nor stored
            doc = BadRecord(
                doc.id, "quality:max_length", f"line of {len(raw)} bytes > {max_bytes}", doc.source
            )
        yield doc


def _iter_parquet(shard: Shard, cfg: IngestConfig, max_bytes: int) -> Iterator[Doc | BadRecord]:
    import pyarrow.parquet as pq

    pf = pq.ParquetFile(shard.path)
    names = set(pf.schema_arrow.names)
    if cfg.text_field not in names:
        yield BadRecord(shard.name, "parse", f"parquet file has no column {cfg.text_field!r}", shard.name)
        return
    cols = [c for c in (cfg.text_field, cfg.id_field, "source", "lang") if c in names]
    row = 0
    for batch in pf.iter_batches(batch_size=cfg.parquet_batch_rows, columns=cols):
        data = batch.to_pydict()
        for k in range(batch.num_rows):
            row += 1
            obj = {c: data[c][k] for c in cols}
            yield _record_to_doc(obj, f"{shard.name}:{row}", shard.name, cfg, "")


def _text_doc(raw: bytes, uid: str, source: str, max_bytes: int) -> Doc | BadRecord:
    raw = raw.removeprefix(BOM)
    if len(raw) > max_bytes:
        return BadRecord(uid, "quality:max_length", f"{len(raw)} bytes > {max_bytes}", source)
    text = _decode(raw, uid, source)
    return text if isinstance(text, BadRecord) else Doc(id=uid, text=text, source=source)


def _iter_txt(shard: Shard, cfg: IngestConfig, max_bytes: int) -> Iterator[Doc | BadRecord]:
    size = Path(shard.path).stat().st_size
    if size > max_bytes:
        yield BadRecord(shard.name, "quality:max_length", f"{size} bytes > {max_bytes}", shard.name)
        return
    yield _text_doc(Path(shard.path).read_bytes(), shard.name, shard.name, max_bytes)


def _iter_zip(shard: Shard, cfg: IngestConfig, max_bytes: int) -> Iterator[Doc | BadRecord]:
    with zipfile.ZipFile(shard.path) as zf:
        for info in sorted(zf.infolist(), key=lambda i: i.filename):
            if info.is_dir():
                continue
            uid = f"{shard.name}:{info.filename}"
            if not info.filename.lower().endswith(".txt"):
                yield BadRecord(uid, "parse", "unsupported archive member (only .txt is read)", shard.name)
                continue
            if info.file_size > max_bytes:
                yield BadRecord(
                    uid, "quality:max_length", f"{info.file_size} bytes > {max_bytes}", shard.name
                )
                continue
            try:
                raw = zf.read(info)
            except (zipfile.BadZipFile, OSError, EOFError) as e:
                yield BadRecord(uid, "unreadable", f"cannot read archive member: {e}", shard.name)
                continue
            yield _text_doc(raw, uid, shard.name, max_bytes)


READERS = {
    "jsonl": _iter_jsonl,
    "jsonl.gz": _iter_jsonl,
    "jsonl.zst": _iter_jsonl,
    "parquet": _iter_parquet,
    "txt": _iter_txt,
    "zip": _iter_zip,
}


def read_shard(shard: Shard, cfg: IngestConfig, max_chars: int | None = None) -> Iterator[Doc | BadRecord]:
    """Documents and bad records of one shard. A file that breaks mid-way yields an ``unreadable`` record.

    Inputs of more than ``4 * max_chars`` bytes (UTF-8 needs at most 4 bytes a character) are rejected as
    ``quality:max_length`` before decoding, so a single 50 MB document cannot stall a worker.
    """
    max_bytes = 4 * max_chars if max_chars else 1 << 62
    produced = 0
    try:
        for item in READERS[shard.kind](shard, cfg, max_bytes):
            produced += 1
            yield item
    except (OSError, EOFError, zipfile.BadZipFile, zstandard.ZstdError, ValueError, UnreadableError) as e:
        # ValueError covers pyarrow's ArrowInvalid (corrupt parquet) and gzip/zstd framing errors
        where = f" after {produced} records" if produced else ""
        yield BadRecord(
            f"{shard.name}#{shard.shard_id}", "unreadable", f"{type(e).__name__}: {e}{where}", shard.name
        )

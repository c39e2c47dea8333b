"""I/O helpers shared by the stages: zstd JSONL records, atomic files, completion markers."""

from __future__ import annotations

import io
import json
import os
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

import orjson
import zstandard

from megatron_mmed.common.errors import UserError

ZSTD_LEVEL = 3
#: read buffer over a zstd stream: one large read per call instead of TextIOWrapper's 8 KB chunks
_READ_BUFFER = 1 << 20


_PLAIN = (str, int, bool, type(None))


def _maybe_lossy(obj: Any) -> bool:
    """Whether orjson's result holds a float of magnitude >= 2**63: orjson turns an integer beyond 64 bits
    into a float (an id like 12345678901234567890123 would silently change), so such a value is re-read."""
    t = type(obj)
    if t is dict:
        values = obj.values()
    elif t is list:
        values = obj
    elif t is float:
        return not -9.2e18 < obj < 9.2e18
    else:
        return False
    return any(type(v) not in _PLAIN and _maybe_lossy(v) for v in values)


def loads(line: bytes | str) -> Any:
    """Parse one JSON value exactly as ``json.loads`` does, about 3x faster on our records: orjson first,
    and the standard library for what orjson refuses (NaN/Infinity, lone-surrogate escapes) or may read
    lossily (integers beyond 64 bits). Raises ``ValueError`` (``json.JSONDecodeError`` or
    ``UnicodeDecodeError``) when the line is not JSON."""
    try:
        obj = orjson.loads(line)
    except orjson.JSONDecodeError:
        return json.loads(line)
    return json.loads(line) if _maybe_lossy(obj) else obj


def dumps(record: dict[str, Any]) -> str:
    """One JSON line (UTF-8, no ASCII escaping)."""
    return json.dumps(record, ensure_ascii=False, separators=(",", ":"))


class JsonlZstWriter:
    """Streams records into ``path`` (``.jsonl.zst``) through a temp file renamed on ``close()``.

    A crash leaves only ``*.tmp`` files, never a truncated final file. Nothing is created when no record
    is written, unless ``create_empty`` is set.
    """

    def __init__(self, path: str | Path, create_empty: bool = False, level: int = ZSTD_LEVEL):
        self.path = Path(path)
        self.tmp = self.path.with_name(self.path.name + ".tmp")
        self.count = 0
        self._level = level
        self._fh = None
        self._stream = None
        if create_empty:
            self._open()

    def _open(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._fh = open(self.tmp, "wb")  # noqa: SIM115 (closed in close()/abort())
        cctx = zstandard.ZstdCompressor(level=self._level)
        self._stream = io.TextIOWrapper(cctx.stream_writer(self._fh, closefd=False), encoding="utf-8")

    def write(self, record: dict[str, Any]) -> None:
        if self._stream is None:
            self._open()
        self._stream.write(dumps(record))
        self._stream.write("\n")
        self.count += 1

    def close(self) -> None:
        if self._stream is None:
            return
        self._stream.flush()
        self._stream.close()
        self._fh.flush()
        os.fsync(self._fh.fileno())
        self._fh.close()
        os.replace(self.tmp, self.path)
        self._stream = None

    def abort(self) -> None:
        if self._stream is not None:
            try:
                self._stream.close()
                self._fh.close()
            finally:
                self.tmp.unlink(missing_ok=True)
                self._stream = None

    def __enter__(self) -> JsonlZstWriter:
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is None:
            self.close()
        else:
            self.abort()


def write_jsonl_zst(path: str | Path, records: Iterable[dict[str, Any]]) -> int:
    with JsonlZstWriter(path, create_empty=True) as w:
        for r in records:
            w.write(r)
        return w.count


def read_jsonl_zst(path: str | Path) -> Iterator[dict[str, Any]]:
    """Records of one ``.jsonl.zst`` file, streamed."""
    with open(path, "rb") as fh, zstandard.ZstdDecompressor().stream_reader(fh) as raw:
        for line in io.BufferedReader(raw, buffer_size=_READ_BUFFER):
            if not line.isspace():
                yield loads(line)


def iter_jsonl_zst_records(path: str | Path) -> Iterator[tuple[int, dict[str, Any] | None]]:
    """``(0-based line number, record)`` of every non-blank line; ``None`` for a line that is not a JSON
    object (or not UTF-8), so a stage can count and record it instead of crashing (``read_jsonl_zst``
    raises instead). A corrupt zstd stream raises ``zstandard.ZstdError``."""
    with open(path, "rb") as fh, zstandard.ZstdDecompressor().stream_reader(fh) as raw:
        for i, line in enumerate(io.BufferedReader(raw, buffer_size=_READ_BUFFER)):
            if line.isspace():  # blank (a line always ends in "\n" but the last; an empty one ends the loop)
                continue
            try:
                rec = loads(line)
            except ValueError:
                rec = None
            yield i, rec if isinstance(rec, dict) else None


def atomic_write_text(path: str | Path, text: str) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "w", encoding="utf-8") as fh:
        fh.write(text)
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, path)
    return path


def atomic_write_json(path: str | Path, obj: Any) -> Path:
    return atomic_write_text(path, json.dumps(obj, ensure_ascii=False, indent=2, sort_keys=False) + "\n")


def ensure_writable_dir(path: str | Path) -> Path:
    """Create ``path`` (and parents) or raise ``UserError`` when it cannot be written."""
    path = Path(path)
    try:
        path.mkdir(parents=True, exist_ok=True)
        probe = path / ".write_probe"
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as e:
        raise UserError(f"output directory is not writable: {path} ({e.strerror or e})") from None
    return path


class DoneMarkers:
    """Per-shard completion markers under ``root/.done/``: a rerun skips what is done."""

    def __init__(self, root: str | Path, stage: str):
        self.dir = Path(root) / ".done" / stage

    def path(self, shard_id: str) -> Path:
        return self.dir / f"{shard_id}.json"

    def is_done(self, shard_id: str) -> bool:
        return self.path(shard_id).is_file()

    def mark(self, shard_id: str, payload: dict[str, Any]) -> None:
        atomic_write_json(self.path(shard_id), payload)

    def read(self, shard_id: str) -> dict[str, Any]:
        return json.loads(self.path(shard_id).read_text(encoding="utf-8"))

    def check_same_run(self, fingerprint: dict[str, Any], what: str) -> None:
        """Refuse to resume into a folder made with other settings or inputs (it would mix two runs).

        The first run records ``fingerprint`` (JSON-able) as ``_run.json``; a later run must match it.
        """
        path = self.dir / "_run.json"
        if path.is_file():
            if json.loads(path.read_text(encoding="utf-8")) != json.loads(json.dumps(fingerprint)):
                raise UserError(
                    f"{self.dir.parent.parent} holds a {what} made with another config or input; "
                    "use a new --output folder (or delete it)"
                )
        else:
            atomic_write_json(path, fingerprint)

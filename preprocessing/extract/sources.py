"""Inputs of ``mmed extract``: files, folders and ``.zip`` archives -> units (one document source each) -> shards.

A unit is one PDF, HTML page or WARC file, on disk or inside a zip archive. Each PDF and each WARC file is a
shard of its own (a book or a crawl file is the natural unit of work); HTML pages are grouped, in discovery
order, into shards of ``html_per_shard``. The plan depends only on the inputs, never on the worker count.
Archive members that are not one of the three kinds, and archives that cannot be listed, become units too, so
the shard that owns them records them as rejected instead of losing them.
"""

from __future__ import annotations

import zipfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import IO

from megatron_mmed.common.errors import UserError

KINDS: tuple[tuple[str, str], ...] = (
    (".warc.gz", "warc"),
    (".warc", "warc"),
    (".pdf", "pdf"),
    (".html", "html"),
    (".htm", "html"),
    (".xhtml", "html"),
    (".zip", "zip"),
)
SUPPORTED = tuple(s for s, _ in KINDS)


class TooLarge(Exception):
    """A unit over its size limit (recorded as ``too_large``)."""


@dataclass(frozen=True)
class Unit:
    """One input document source: ``path`` on disk, or ``member`` of the zip archive at ``path``."""

    path: str
    name: str  # stable name used in ids: <input root name>/<relative path>[:<archive member>]
    kind: str  # pdf | html | warc | unsupported | unreadable
    member: str = ""
    size: int = 0
    detail: str = ""  # why an unsupported/unreadable unit is one


@dataclass(frozen=True)
class Shard:
    shard_id: str
    kind: str  # pdf | warc | html (a batch of pages and unreadable units)
    units: tuple[Unit, ...]

    def describe(self) -> dict:
        return {"kind": self.kind, "units": [[u.path, u.member, u.kind] for u in self.units]}


def kind_of(name: str) -> str | None:
    low = name.lower()
    for suffix, kind in KINDS:
        if low.endswith(suffix):
            return kind
    return None


def _hidden(rel: str) -> bool:
    return any(part.startswith(".") or part == "__MACOSX" for part in Path(rel).parts)


def _zip_units(path: Path, name: str) -> list[Unit]:
    try:
        with zipfile.ZipFile(path) as zf:
            infos = sorted((i for i in zf.infolist() if not i.is_dir()), key=lambda i: i.filename)
    except (zipfile.BadZipFile, OSError, EOFError) as e:
        return [Unit(str(path), name, "unreadable", detail=f"cannot list archive: {e}")]
    units = []
    for info in infos:
        if _hidden(info.filename):
            continue
        kind = kind_of(info.filename)
        uname = f"{name}:{info.filename}"
        if kind in (None, "zip"):
            detail = "nested archive" if kind == "zip" else "not a .pdf/.html/.htm/.warc[.gz] file"
            units.append(Unit(str(path), uname, "unsupported", info.filename, info.file_size, detail))
        else:
            units.append(Unit(str(path), uname, kind, info.filename, info.file_size))
    return units


def _file_units(path: Path, name: str) -> list[Unit]:
    kind = kind_of(path.name)
    if kind == "zip":
        return _zip_units(path, name)
    try:
        size = path.stat().st_size
    except OSError:
        size = 0
    return [Unit(str(path), name, kind or "unsupported", size=size)]


def discover(inputs: list[str | Path]) -> tuple[list[Unit], list[str]]:
    """Expand input paths into units (sorted within each input) and the files skipped for their extension.

    Raises ``UserError`` for a missing path or when nothing supported is found.
    """
    units: list[Unit] = []
    skipped: list[str] = []
    for raw in inputs:
        p = Path(raw)
        if not p.exists():
            raise UserError(f"input path does not exist: {p}")
        if p.is_dir():
            for f in sorted(x for x in p.rglob("*") if x.is_file()):
                rel = f.relative_to(p).as_posix()
                if _hidden(rel):
                    continue  # hidden files and folders (e.g. .done markers of an earlier run)
                if kind_of(f.name) is None:
                    skipped.append(str(f))
                else:
                    units += _file_units(f, f"{p.resolve().name}/{rel}")
        elif kind_of(p.name) is None:
            skipped.append(str(p))
        else:
            units += _file_units(p, p.name)
    if not units:
        raise UserError(
            f"no supported input files under {', '.join(map(str, inputs))} (supported: {', '.join(SUPPORTED)})"
        )
    return units, skipped


def plan_shards(units: list[Unit], html_per_shard: int) -> list[Shard]:
    """Each PDF and WARC unit is a shard; the other units are batched in order. Ids are stable for the same inputs."""
    shards: list[Shard] = []
    batch: list[Unit] = []

    def flush() -> None:
        if batch:
            shards.append(Shard(f"{len(shards):05d}", "html", tuple(batch)))
            batch.clear()

    for u in units:
        if u.kind in ("pdf", "warc"):
            shards.append(Shard(f"{len(shards):05d}", u.kind, (u,)))
        else:
            batch.append(u)
            if len(batch) >= html_per_shard:
                flush()
    flush()
    return shards


def read_bytes(unit: Unit, max_bytes: int) -> bytes:
    """The unit's whole content; ``TooLarge`` (checked before reading) when over ``max_bytes``."""
    if unit.size > max_bytes:
        raise TooLarge(f"{unit.size:,} bytes > {max_bytes:,}")
    if unit.member:
        with zipfile.ZipFile(unit.path) as zf:
            return zf.read(unit.member)
    return Path(unit.path).read_bytes()


@contextmanager
def open_stream(unit: Unit) -> Iterator[IO[bytes]]:
    """A binary stream over the unit (a zip member is decompressed as it is read, never held whole)."""
    if unit.member:
        with zipfile.ZipFile(unit.path) as zf, zf.open(unit.member) as fh:
            yield fh
    else:
        with open(unit.path, "rb") as fh:
            yield fh

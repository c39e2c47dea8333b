"""The four dedup stages as independent tasks: each reads files and writes files atomically; the stage
protocol (``common.tasks.resume_tasks``) then writes its marker from the payload it returns (with the task's wall
``seconds`` and ``cpu_s``: ``benchmarks/dedup_peers.py --scaling`` schedules the latter on N idle cores).

signatures (one task per input file) -> buckets (one per language x hash range: exact hashes and every band)
-> clusters (one per language) -> filter (one per input file). Documents of different languages are never
compared: every task works inside one language, so a text and its translation are not duplicates.
"""

from __future__ import annotations

import contextlib
import functools
import json
import os
import shutil
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import zstandard

from megatron_mmed.common.errors import UserError
from megatron_mmed.common.io import (
    ZSTD_LEVEL,
    DoneMarkers,
    JsonlZstWriter,
    ZstdLines,
    atomic_write_json,
    loads,
)
from preprocessing.dedup.clusters import choose_kept, connected_components, size_histogram
from preprocessing.dedup.config import DedupConfig
from preprocessing.dedup.lsh import band_hashes, bucket_pairs, partition_bounds, verify_pairs
from preprocessing.dedup.minhash import agreement, signatures_datasketch, signatures_numpy
from preprocessing.dedup.shingles import hash_batch
from preprocessing.dedup.work import ShardArrays, ShardIds, Work, pack, unpack
from preprocessing.document import CJK_LANGS
from preprocessing.layout import StageStats, kept_file, rejected_file, unreadable_record

FILTER_MARKERS = "dedup-filter"  # under OUT/.done (the other stages mark under WORK/.done)
_VERIFY_CHUNK = 200_000


@dataclass(frozen=True)
class Ctx:
    """Everything a task needs (picklable, so tasks run in worker processes)."""

    in_dir: str
    out_dir: str
    work_dir: str
    cfg: DedupConfig
    bands: int
    rows: int
    files: tuple[tuple[str, tuple[str, ...]], ...]  # (lang, input files) in sorted order

    @property
    def work(self) -> Work:
        return Work(self.work_dir)

    def lang_files(self, lang: str) -> tuple[str, ...]:
        return dict(self.files)[lang]

    def markers(self, stage: str) -> DoneMarkers:
        if stage == "filter":
            return DoneMarkers(self.out_dir, FILTER_MARKERS)
        return DoneMarkers(self.work_dir, stage)


def shard_name(path: str | Path) -> str:
    name = Path(path).name
    return name[: -len(".jsonl.zst")] if name.endswith(".jsonl.zst") else name


def _text(rec: dict[str, Any]) -> str:
    text = rec.get("text")
    return text if isinstance(text, str) else ("" if text is None else str(text))


def _raw_lines(lines: ZstdLines) -> Iterator[bytes]:
    """The non-blank lines of a ``.jsonl.zst`` file as bytes (both stages number documents the same way).

    A cut or corrupt file ends where its readable part ends (``lines.unreadable`` then says where).
    """
    for line in lines:
        if line.strip():
            yield line if line.endswith(b"\n") else line + b"\n"


def _records(path: str) -> Iterator[tuple[bytes, dict[str, Any]]]:
    for j, line in enumerate(_raw_lines(ZstdLines(path))):
        try:
            rec = loads(line)
        except ValueError as e:  # the input is not a valid prep output
            raise UserError(f"{path}: line {j + 1} is not JSON ({e})") from None
        yield line, rec if isinstance(rec, dict) else {"text": rec}


class _RawZstWriter:
    """Writes JSON lines as they were read (survivors stay byte-identical), via a temp file renamed on close."""

    def __init__(self, path: Path):
        self.path, self.tmp = path, path.with_name(path.name + ".tmp")
        path.parent.mkdir(parents=True, exist_ok=True)
        self._fh = open(self.tmp, "wb")  # noqa: SIM115 (closed in close/abort)
        self._z = zstandard.ZstdCompressor(level=ZSTD_LEVEL).stream_writer(self._fh, closefd=False)

    def write(self, line: bytes) -> None:
        self._z.write(line)

    def close(self) -> None:
        self._z.close()
        self._fh.flush()
        os.fsync(self._fh.fileno())
        self._fh.close()
        os.replace(self.tmp, self.path)

    def abort(self) -> None:
        with contextlib.suppress(OSError):
            self._fh.close()
        self.tmp.unlink(missing_ok=True)


class _Sink:
    """Only a file's ``write``: numpy then writes an array through Python, whose write errors carry their
    errno (its direct ``tofile`` reports a full disk as a bare "N requested and M written")."""

    def __init__(self, fh: Any):
        self.write = fh.write


def _save(path: Path, arr: np.ndarray | None = None, **arrays: np.ndarray) -> None:
    """``np.save`` (or ``np.savez`` of ``arrays``) through a temp file, which a failed write deletes."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    try:
        with open(tmp, "wb") as fh:
            if arr is not None:
                np.save(_Sink(fh), arr)
            else:
                np.savez(fh, **arrays)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def _timed(task: Callable[..., dict[str, Any]]) -> Callable[..., dict[str, Any]]:
    """``task``'s payload with its wall ``seconds`` and its CPU seconds ``cpu_s`` (this process) added."""

    @functools.wraps(task)
    def timed(*args: Any) -> dict[str, Any]:
        t0, c0 = time.perf_counter(), time.process_time()
        info = task(*args)
        return info | {"seconds": time.perf_counter() - t0, "cpu_s": time.process_time() - c0}

    return timed


# ---------------------------------------------------------------------------------------------- signatures
@_timed
def signatures_task(ctx: Ctx, lang: str, i: int) -> dict[str, Any]:
    """Signatures, sorted band hashes, exact hashes, lengths and ids of input file ``i`` of ``lang``."""
    cfg, work, path = ctx.cfg, ctx.work, ctx.lang_files(lang)[i]
    cjk = lang in CJK_LANGS
    n = cfg.cjk_ngram if cjk else cfg.word_ngram
    sig_fn = signatures_numpy if cfg.backend == "numpy" else signatures_datasketch
    ids: list[str] = []
    lengths: list[int] = []
    exact: list[np.ndarray] = []
    sigs: list[np.ndarray] = []
    has: list[np.ndarray] = []
    texts: list[str] = []
    chars = 0

    def flush() -> None:
        nonlocal texts, chars
        if texts:
            ex, h, off = hash_batch(texts, n, cjk)
            exact.append(ex)
            sigs.append(sig_fn(h, off, cfg.num_perm, cfg.seed))
            has.append(off[1:] > off[:-1])
        texts, chars = [], 0

    for j, (_, rec) in enumerate(_records(path)):
        text = _text(rec)
        rid = rec.get("id")
        ids.append(str(rid) if rid is not None else f"{lang}/{Path(path).name}:{j}")
        lengths.append(len(text))
        texts.append(text)
        chars += len(text)
        if chars >= cfg.batch_chars:
            flush()
    flush()
    n_docs = len(ids)
    sig = np.concatenate(sigs) if sigs else np.zeros((0, cfg.num_perm), dtype=np.uint32)
    has_sh = np.concatenate(has) if has else np.zeros(0, dtype=bool)
    docs = np.flatnonzero(has_sh).astype(np.uint32)
    band = band_hashes(sig[docs], ctx.bands, ctx.rows)
    order = np.argsort(band, axis=1, kind="stable")
    ex_arr = np.concatenate(exact) if exact else np.zeros((0, 2), dtype=np.uint64)
    xorder = np.argsort(ex_arr[:, 0], kind="stable")
    _save(work.arr(lang, i, "sig"), sig)
    _save(work.arr(lang, i, "band"), np.take_along_axis(band, order, axis=1))
    _save(work.arr(lang, i, "bdoc"), docs[order])
    _save(work.arr(lang, i, "exact"), ex_arr)
    _save(work.arr(lang, i, "xkey"), ex_arr[xorder, 0])
    _save(work.arr(lang, i, "xdoc"), xorder.astype(np.uint32))
    _save(work.arr(lang, i, "len"), np.array(lengths, dtype=np.int64))
    atomic_write_json(work.ids(lang, i), ids)
    return {"docs": n_docs, "no_shingles": int(n_docs - len(docs))}


# ------------------------------------------------------------------------------------------------- buckets
def bucket_task_id(lang: str, part: int) -> str:
    return f"{lang}-p{part:03d}"


def _row_pairs(ctx: Ctx, maps: list[dict[str, np.ndarray]], row: int, part: int, parts: int) -> tuple:
    """Candidate pairs of one band ``row`` (-1: exact hash) among keys in hash range ``part``."""
    bounds = partition_bounds(parts)
    keys: list[np.ndarray] = []
    docs: list[np.ndarray] = []
    for i, m in enumerate(maps):
        k, d = (m["xkey"], m["xdoc"]) if row < 0 else (m["band"][row], m["bdoc"][row])
        s = int(np.searchsorted(k, bounds[part], side="left"))
        e = int(np.searchsorted(k, bounds[part + 1], side="left")) if part + 1 < parts else len(k)
        keys.append(np.asarray(k[s:e]))
        docs.append(pack(i, np.asarray(d[s:e])))
    return bucket_pairs(np.concatenate(keys), np.concatenate(docs), ctx.cfg.max_bucket_pairs)


@_timed
def bucket_task(ctx: Ctx, lang: str, part: int, parts: int) -> dict[str, Any]:
    """Verified duplicate pairs of documents sharing the exact hash or a band, for keys in one hash range.

    Bands are read one at a time from the sorted per-file arrays (only this range's slice), so memory is
    bounded by ``partition_docs`` entries whatever the corpus size.
    """
    sigs = ShardArrays(ctx.work, lang, "sig")
    exact = ShardArrays(ctx.work, lang, "exact")
    out_a, out_b, out_j = [], [], []
    candidates = 0
    kinds = ("xkey", "xdoc", "band", "bdoc")
    maps = [
        {kind: np.load(ctx.work.arr(lang, i, kind), mmap_mode="r") for kind in kinds}
        for i in range(len(ctx.lang_files(lang)))
    ]
    for row in range(-1, ctx.bands):
        a, b = _row_pairs(ctx, maps, row, part, parts)
        candidates += len(a)
        for c in range(0, len(a), _VERIFY_CHUNK):
            ca, cb = a[c : c + _VERIFY_CHUNK], b[c : c + _VERIFY_CHUNK]
            if row < 0:
                ok = (exact.gather(ca) == exact.gather(cb)).all(axis=1)
                est = np.ones(len(ca), dtype=np.float32)
            else:
                ok, est = verify_pairs(sigs.gather(ca), sigs.gather(cb), ctx.cfg.threshold)
            out_a.append(ca[ok])
            out_b.append(cb[ok])
            out_j.append(est[ok])
    a = np.concatenate(out_a) if out_a else np.zeros(0, np.uint64)
    b = np.concatenate(out_b) if out_b else np.zeros(0, np.uint64)
    j = np.concatenate(out_j) if out_j else np.zeros(0, np.float32)
    if len(a):  # a pair found in several bands is kept once
        _, first = np.unique(np.stack((a, b), axis=1), axis=0, return_index=True)
        a, b, j = a[first], b[first], j[first]
    _save(ctx.work.edges(lang, bucket_task_id(lang, part)), a=a, b=b, jaccard=j)
    return {"candidates": int(candidates), "verified": int(len(a))}


# ------------------------------------------------------------------------------------------------ clusters
@_timed
def cluster_task(ctx: Ctx, lang: str) -> dict[str, Any]:
    """Union of verified pairs into clusters; per cluster the kept document; removals grouped per input file."""
    work = ctx.work
    edge_files = sorted((work.root / "edges" / lang).glob("*.npz"))
    parts_a, parts_b = [], []
    for f in edge_files:
        with np.load(f) as z:
            parts_a.append(z["a"])
            parts_b.append(z["b"])
    a = np.concatenate(parts_a) if parts_a else np.zeros(0, np.uint64)
    b = np.concatenate(parts_b) if parts_b else np.zeros(0, np.uint64)
    removed_dir = work.root / "removed" / lang
    shutil.rmtree(removed_dir, ignore_errors=True)
    info: dict[str, Any] = {"edges": int(len(a)), "clusters": 0, "docs_in_clusters": 0}
    info |= {"removed_exact": 0, "removed_near": 0, "cluster_sizes": {}}
    if len(a):
        nodes, labels = connected_components(a, b)
        lengths = ShardArrays(work, lang, "len").gather(nodes)
        ids = ShardIds(work, lang).gather(nodes)
        kept_idx = choose_kept(labels, lengths, ids, nodes)
        rm = np.flatnonzero(kept_idx != np.arange(len(nodes)))
        doc, kept = nodes[rm], nodes[kept_idx[rm]]
        exact_arr = ShardArrays(work, lang, "exact")
        is_exact = (exact_arr.gather(doc) == exact_arr.gather(kept)).all(axis=1)
        est = agreement(*(ShardArrays(work, lang, "sig").gather(x) for x in (doc, kept)))
        kept_ids = ids[kept_idx[rm]]
        files, local = unpack(doc)
        for f in np.unique(files):
            sel = np.flatnonzero(files == f)
            rec = {
                "local": local[sel].tolist(),
                "kept_id": kept_ids[sel].tolist(),
                "exact": is_exact[sel].tolist(),
                "jaccard": [round(float(x), 4) for x in est[sel]],
            }
            atomic_write_json(work.removed(lang, int(f)), rec)
        info.update(
            clusters=int(len(np.unique(labels))),
            docs_in_clusters=int(len(nodes)),
            removed_exact=int(is_exact.sum()),
            removed_near=int((~is_exact).sum()),
            cluster_sizes=size_histogram(labels),
        )
    return info


# -------------------------------------------------------------------------------------------------- filter
@_timed
def filter_task(ctx: Ctx, lang: str, i: int) -> dict[str, Any]:
    """Copy survivors of input file ``i`` unchanged to OUT/kept; write removed ones to OUT/rejected."""
    path = ctx.lang_files(lang)[i]
    removed: dict[int, tuple[str, bool, float]] = {}
    rm_path = ctx.work.removed(lang, i)
    if rm_path.is_file():
        r = json.loads(rm_path.read_text(encoding="utf-8"))
        removed = {j: (k, x, s) for j, k, x, s in zip(r["local"], r["kept_id"], r["exact"], r["jaccard"])}
    name = shard_name(path)
    lengths = np.load(ctx.work.arr(lang, i, "len")).tolist()
    stats = StageStats()
    kept_w = _RawZstWriter(kept_file(ctx.out_dir, lang, name))
    rej_w = JsonlZstWriter(rejected_file(ctx.out_dir, f"{lang}-{name}"))
    lines = ZstdLines(path)
    try:
        for j, line in enumerate(_raw_lines(lines)):
            stats.seen(lang, lengths[j])
            if j in removed:
                rid = json.loads(line).get("id")
                kept_id, exact, jac = removed[j]
                reason = "dup:exact" if exact else "dup:near"
                out = {"id": rid if rid is not None else f"{lang}/{Path(path).name}:{j}", "lang": lang}
                out |= {"reason": reason, "kept_id": kept_id}
                if not exact:
                    out["jaccard"] = jac
                rej_w.write(out)
                stats.dropped(lang, reason)
            else:
                kept_w.write(line)
                stats.kept(lang, lengths[j])
        if lines.unreadable is not None:
            stats.seen(lang, 0)
            stats.dropped(lang, "unreadable")
            rej_w.write(unreadable_record(lang, lines.unreadable))
        kept_w.close()
        rej_w.close()
    except BaseException:
        kept_w.abort()
        rej_w.abort()
        raise
    return {"stats": stats.to_dict()}

"""The dedup work folder (intermediate data between stages) and random access to per-shard arrays.

::

    WORK/config.yaml                       the settings that made it
    WORK/sig/<lang>/<i>.sig.npy            (docs, num_perm) uint32 MinHash signatures of input file i
    WORK/sig/<lang>/<i>.band.npy|bdoc.npy  (bands, docs with shingles): band hashes sorted per band, doc index
    WORK/sig/<lang>/<i>.exact.npy          (docs, 2) uint64 exact-duplicate keys; .xkey/.xdoc: sorted first key
    WORK/sig/<lang>/<i>.len.npy, .ids.json document lengths (characters) and ids, for the kept-doc rule
    WORK/edges/<lang>/<task>.npz           verified pairs (a, b, estimated Jaccard) of one bucket task
    WORK/removed/<lang>/<i>.json           removed documents of input file i: local index -> kept id, reason
    WORK/.done/<stage>/<task>.json         completion markers; .done/dedup/_run.json: settings + input digest

Documents are addressed by a packed uint64 ``file_index << 32 | line_index`` (input order, any world size).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

SHIFT = np.uint64(32)
LOW = np.uint64(0xFFFFFFFF)


def pack(file_index: int, local: np.ndarray) -> np.ndarray:
    return (np.uint64(file_index) << SHIFT) | local.astype(np.uint64)


def unpack(packed: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    return (packed >> SHIFT).astype(np.int64), (packed & LOW).astype(np.int64)


class Work:
    """Paths inside the work folder."""

    def __init__(self, root: str | Path):
        self.root = Path(root)

    def sig_prefix(self, lang: str, i: int) -> Path:
        return self.root / "sig" / lang / f"{i:05d}"

    def arr(self, lang: str, i: int, kind: str) -> Path:
        return self.sig_prefix(lang, i).with_suffix(f".{kind}.npy")

    def ids(self, lang: str, i: int) -> Path:
        return self.sig_prefix(lang, i).with_suffix(".ids.json")

    def edges(self, lang: str, task: str) -> Path:
        return self.root / "edges" / lang / f"{task}.npz"

    def removed(self, lang: str, i: int) -> Path:
        return self.root / "removed" / lang / f"{i:05d}.json"


class ShardArrays:
    """Lazily memory-mapped per-file arrays of one language, gathered by packed document index."""

    def __init__(self, work: Work, lang: str, kind: str):
        self.work, self.lang, self.kind = work, lang, kind
        self._open: dict[int, np.ndarray] = {}

    def file(self, i: int) -> np.ndarray:
        if i not in self._open:
            self._open[i] = np.load(self.work.arr(self.lang, i, self.kind), mmap_mode="r")
        return self._open[i]

    def gather(self, packed: np.ndarray) -> np.ndarray:
        """Rows for ``packed`` document indices, in the given order."""
        files, local = unpack(packed)
        out = None
        for f in np.unique(files):
            sel = np.flatnonzero(files == f)
            uniq, pos = np.unique(local[sel], return_inverse=True)  # sorted reads from the memory map
            rows = np.asarray(self.file(int(f))[uniq])
            if out is None:
                out = np.empty((len(packed), *rows.shape[1:]), dtype=rows.dtype)
            out[sel] = rows[pos]
        if out is None:
            raise ValueError("gather() needs at least one document")
        return out


class ShardIds:
    """Document ids per input file, loaded on demand."""

    def __init__(self, work: Work, lang: str):
        self.work, self.lang = work, lang
        self._ids: dict[int, list[str]] = {}

    def gather(self, packed: np.ndarray) -> np.ndarray:
        files, local = unpack(packed)
        out = []
        for f, j in zip(files.tolist(), local.tolist()):
            if f not in self._ids:
                self._ids[f] = json.loads(self.work.ids(self.lang, f).read_text(encoding="utf-8"))
            out.append(self._ids[f][j])
        return np.array(out, dtype=str) if out else np.zeros(0, dtype="<U1")

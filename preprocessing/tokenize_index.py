"""Megatron indexed datasets (``.bin`` tokens + ``.idx`` index) written and read with numpy alone.

The bytes are those of megatron-core's ``IndexedDatasetBuilder`` (tested against it, parts and merges), but
``mmed tokenize`` no longer imports torch and megatron-core for it: that import was 3-12 s of every run.
``.idx`` layout: ``MMIDIDX\\0\\0``, version ``<Q`` 1, dtype code ``<B``, sequence count ``<Q``, document count
``<Q`` (one more than the documents: it starts at 0), then int32 sequence lengths, int64 byte pointers, int64
document indices.
"""

from __future__ import annotations

import contextlib
import shutil
import struct
from dataclasses import dataclass
from pathlib import Path

import numpy as np

HEADER = b"MMIDIDX\x00\x00"
#: megatron-core's ``DType`` codes
DTYPE_CODES = {
    np.dtype(np.uint8): 1,
    np.dtype(np.int8): 2,
    np.dtype(np.int16): 3,
    np.dtype(np.int32): 4,
    np.dtype(np.int64): 5,
    np.dtype(np.float64): 6,
    np.dtype(np.float32): 7,
    np.dtype(np.uint16): 8,
}
_FROM_CODE = {v: k for k, v in DTYPE_CODES.items()}
_FIXED = len(HEADER) + 8 + 1 + 8 + 8


@dataclass(frozen=True)
class Index:
    """A ``.idx`` file read back: token dtype, tokens per sequence, sequence index ending each document."""

    dtype: np.dtype
    sequence_lengths: np.ndarray  # int32
    document_indices: np.ndarray  # int64, starts at 0


def read_index(path: str | Path) -> Index:
    """Read a text-only ``.idx`` (as megatron-core's ``_IndexReader`` does, without the pointers)."""
    with open(path, "rb") as fh:
        head = fh.read(_FIXED)
        if len(head) < _FIXED or head[: len(HEADER)] != HEADER:
            raise ValueError(f"{path}: not a Megatron .idx file (bad header)")
        (code,) = struct.unpack("<B", head[len(HEADER) + 8 : len(HEADER) + 9])
        seqs, docs = struct.unpack("<QQ", head[-16:])
        if code not in _FROM_CODE:
            raise ValueError(f"{path}: not a Megatron .idx file (dtype code {code})")
        lengths = np.fromfile(fh, dtype=np.int32, count=seqs)
        fh.seek(8 * seqs, 1)  # the pointers follow from the lengths
        doc_idx = np.fromfile(fh, dtype=np.int64, count=docs)
    if lengths.size != seqs or doc_idx.size != docs:
        raise ValueError(f"{path}: not a Megatron .idx file (truncated)")
    return Index(_FROM_CODE[code], lengths, doc_idx)


class IndexWriter:
    """Streams documents into ``bin_path`` and writes the ``.idx`` at :meth:`finalize` (one sequence per
    document for :meth:`add_documents`; :meth:`add_index` appends a whole dataset, as megatron-core's does)."""

    def __init__(self, bin_path: str | Path, dtype: type | np.dtype):
        self.dtype = np.dtype(dtype)
        if self.dtype not in DTYPE_CODES:
            raise ValueError(f"unsupported token dtype {self.dtype}")
        self.bin_path = Path(bin_path)
        self.data_file = open(self.bin_path, "wb")  # noqa: SIM115 - closed in finalize()/abort()
        self._lengths: list[np.ndarray] = []
        self._doc_idx: list[np.ndarray] = [np.zeros(1, np.int64)]
        self._sequences = 0

    def add_documents(self, tokens: np.ndarray, lengths: list[int]) -> None:
        """Append ``len(lengths)`` documents whose tokens lie back to back in ``tokens``, in one write."""
        if tokens.dtype != self.dtype:
            raise ValueError(f"expected {self.dtype} tokens, got {tokens.dtype}")
        lens = np.asarray(lengths, dtype=np.int64)
        if int(lens.sum()) != tokens.size:
            raise ValueError(f"lengths add up to {int(lens.sum())}, not the {tokens.size} tokens given")
        self.data_file.write(memoryview(np.ascontiguousarray(tokens)).cast("B"))
        first = self._sequences + 1
        self._sequences += lens.size
        self._lengths.append(lens.astype(np.int32))
        self._doc_idx.append(np.arange(first, self._sequences + 1, dtype=np.int64))

    def add_index(self, prefix: str | Path) -> None:
        """Append the dataset ``prefix.bin|idx`` (a part) after what is written so far."""
        idx = read_index(f"{prefix}.idx")
        if idx.dtype != self.dtype:
            raise ValueError(f"{prefix}.idx holds {idx.dtype} tokens, this dataset {self.dtype}")
        self._lengths.append(idx.sequence_lengths)
        self._doc_idx.append(idx.document_indices[1:] + self._sequences)
        self._sequences += idx.sequence_lengths.size
        with open(f"{prefix}.bin", "rb") as fh:
            shutil.copyfileobj(fh, self.data_file, 1 << 24)

    def finalize(self, idx_path: str | Path) -> None:
        """Close the ``.bin`` and write the ``.idx``."""
        self.data_file.close()
        lengths = np.concatenate(self._lengths) if self._lengths else np.zeros(0, np.int32)
        pointers = np.zeros(lengths.size, np.int64)
        np.cumsum(lengths[:-1], dtype=np.int64, out=pointers[1:])
        pointers *= self.dtype.itemsize
        doc_idx = np.concatenate(self._doc_idx)
        with open(idx_path, "wb") as fh:
            fh.write(HEADER + struct.pack("<QB", 1, DTYPE_CODES[self.dtype]))
            fh.write(struct.pack("<QQ", lengths.size, doc_idx.size))
            for arr in (lengths, pointers, doc_idx):
                fh.write(memoryview(arr).cast("B"))

    def abort(self) -> None:
        """Close and delete the unfinished ``.bin`` (after an error such as a full disk)."""
        with contextlib.suppress(OSError):
            self.data_file.close()
        self.bin_path.unlink(missing_ok=True)

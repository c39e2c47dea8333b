"""Our numpy .bin/.idx writer and reader against megatron-core's ``IndexedDatasetBuilder`` / ``IndexedDataset``."""

from __future__ import annotations

import warnings

import numpy as np
import pytest

from preprocessing.tokenize_index import IndexWriter, read_index

with warnings.catch_warnings():
    warnings.simplefilter("ignore")
    from megatron.core.datasets.indexed_dataset import IndexedDataset, IndexedDatasetBuilder


def _docs(seed: int, n: int, dtype) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    return [rng.integers(0, 8000, size=int(k)).astype(dtype) for k in rng.integers(1, 300, size=n)]


@pytest.mark.parametrize("dtype", [np.uint16, np.int32])
def test_parts_and_merge_are_byte_identical_to_megatron_core(tmp_path, dtype):
    parts = [_docs(s, n, dtype) for s, n in ((0, 40), (1, 1), (2, 25))]
    for k, docs in enumerate(parts):  # one part per input file, written in batches as tokenize_file does
        ref = IndexedDatasetBuilder(str(tmp_path / f"ref{k}.bin"), dtype=dtype)
        for d in docs:
            ref.add_document(d.tolist(), [d.size])
        ref.finalize(str(tmp_path / f"ref{k}.idx"))
        ours = IndexWriter(tmp_path / f"ours{k}.bin", dtype)
        for chunk in (docs[:1], docs[1:10], docs[10:]):
            if chunk:
                ours.add_documents(np.concatenate(chunk), [d.size for d in chunk])
        ours.finalize(tmp_path / f"ours{k}.idx")
        for ext in ("bin", "idx"):
            assert (tmp_path / f"ours{k}.{ext}").read_bytes() == (tmp_path / f"ref{k}.{ext}").read_bytes()
    ref = IndexedDatasetBuilder(str(tmp_path / "ref.bin"), dtype=dtype)
    ours = IndexWriter(tmp_path / "ours.bin", dtype)
    for k in range(len(parts)):
        ref.add_index(str(tmp_path / f"ref{k}"))
        ours.add_index(tmp_path / f"ours{k}")
    ref.finalize(str(tmp_path / "ref.idx"))
    ours.finalize(tmp_path / "ours.idx")
    for ext in ("bin", "idx"):
        assert (tmp_path / f"ours.{ext}").read_bytes() == (tmp_path / f"ref.{ext}").read_bytes()
    everything = [d.tolist() for docs in parts for d in docs]
    ds = IndexedDataset(str(tmp_path / "ours"))
    assert [x.tolist() for x in ds] == everything and ds.index.dtype == dtype
    got = read_index(tmp_path / "ours.idx")
    assert got.dtype == np.dtype(dtype)
    assert got.sequence_lengths.tolist() == [len(d) for d in everything]
    assert got.document_indices.tolist() == ds.document_indices.tolist()


def test_bad_batches_and_files_are_refused(tmp_path):
    w = IndexWriter(tmp_path / "x.bin", np.uint16)
    with pytest.raises(ValueError, match="lengths add up to 5"):
        w.add_documents(np.zeros(4, np.uint16), [2, 3])
    with pytest.raises(ValueError, match="uint16"):
        w.add_documents(np.zeros(4, np.int32), [4])
    w.abort()
    assert not (tmp_path / "x.bin").exists()
    (tmp_path / "bad.idx").write_bytes(b"NOTANIDX" + bytes(40))
    with pytest.raises(ValueError, match="not a Megatron .idx"):
        read_index(tmp_path / "bad.idx")

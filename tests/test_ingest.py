"""Ingest: every supported format is read, ids are stable, and every bad line becomes a BadRecord."""

from __future__ import annotations

import gzip
import json
import os
import zipfile
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import zstandard

from megatron_mmed.common.errors import UserError
from preprocessing.document import Doc
from preprocessing.ingest import BadRecord, IngestConfig, discover, plan_shards, read_shard

CFG = IngestConfig()


def _read_all(paths, cfg=CFG, max_chars=None):
    files, skipped = discover(paths)
    out = []
    for shard in plan_shards(files, cfg):
        out.extend(read_shard(shard, cfg, max_chars))
    return out, skipped


def _jsonl_bytes(records) -> bytes:
    return "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records).encode()


RECORDS = [
    {"id": "a", "text": "Aspirin inhibits cyclooxygenase."},
    {"id": "b", "text": "高血压是常见的慢性病。", "lang": "zh", "source": "src-b"},
    {"text": "No id here: the id comes from path and line."},
]


@pytest.mark.parametrize("suffix", [".jsonl", ".jsonl.gz", ".jsonl.zst"])
def test_jsonl_variants(tmp_path: Path, suffix: str):
    data = _jsonl_bytes(RECORDS)
    p = tmp_path / f"docs{suffix}"
    if suffix.endswith(".gz"):
        data = gzip.compress(data)
    elif suffix.endswith(".zst"):
        data = zstandard.ZstdCompressor().compress(data)
    p.write_bytes(data)
    items, skipped = _read_all([p])
    assert skipped == []
    assert [type(i) for i in items] == [Doc, Doc, Doc]
    assert [d.id for d in items] == ["a", "b", f"docs{suffix}:3"]
    assert items[1].lang == "zh" and items[1].source == "src-b"
    assert items[0].source == f"docs{suffix}"
    assert items[1].text == RECORDS[1]["text"]


def test_parquet_txt_zip_and_folder_ids(tmp_path: Path):
    root = tmp_path / "corpus"
    (root / "sub").mkdir(parents=True)
    pq.write_table(
        pa.table({"id": ["p1", None], "text": ["Insulin lowers glucose.", "Row without id."]}),
        root / "t.parquet",
        row_group_size=1,
    )
    (root / "sub" / "note.txt").write_text("Один документ на файл.", encoding="utf-8")
    with zipfile.ZipFile(root / "mmedc.zip", "w") as zf:
        zf.writestr("b.txt", "second member")
        zf.writestr("a.txt", "first member")
        zf.writestr("readme.md", "not a txt member")
    (root / "ignored.csv").write_text("x,y\n")
    items, skipped = _read_all([root])
    by_id = {i.id: i for i in items}
    assert skipped == [str(root / "ignored.csv")]
    assert by_id["p1"].text == "Insulin lowers glucose."
    assert by_id["corpus/t.parquet:2"].text == "Row without id."
    assert by_id["corpus/sub/note.txt"].text == "Один документ на файл."
    assert [i.id for i in items if i.id.startswith("corpus/mmedc.zip")] == [
        "corpus/mmedc.zip:a.txt",
        "corpus/mmedc.zip:b.txt",
        "corpus/mmedc.zip:readme.md",
    ]
    bad = by_id["corpus/mmedc.zip:readme.md"]
    assert isinstance(bad, BadRecord) and bad.reason == "parse"


def test_bad_lines_become_records(tmp_path: Path):
    p = tmp_path / "bad.jsonl"
    lines = [
        b'{"id": "ok", "text": "fine"}',
        b'{"id": "trunc", "text": "no end',
        b'["a list"]',
        b'{"id": "notext"}',
        b'{"id": "num", "text": 42}',
        b'{"id": "latin1", "text": "caf\xe9"}',
        b'{"id": "nul", "text": "a\x00b"}',
        b"",
        b'{"id": "big", "text": "' + b"x" * 5000 + b'"}',
    ]
    p.write_bytes(b"\n".join(lines) + b"\n")
    items, _ = _read_all([p], max_chars=1000)
    got = [(i.id, i.reason if isinstance(i, BadRecord) else "doc") for i in items]
    assert got == [
        ("ok", "doc"),
        ("bad.jsonl:2", "parse"),
        ("bad.jsonl:3", "parse"),
        ("notext", "parse"),
        ("num", "parse"),
        ("bad.jsonl:6", "encoding"),
        ("bad.jsonl:7", "encoding"),
        ("bad.jsonl:8", "empty"),
        ("big", "quality:max_length"),
    ]
    assert "caf\\xe9" in items[5].raw  # quarantined with its bytes visible, not silently lost


def test_byte_range_shards_cover_every_line_once(tmp_path: Path):
    p = tmp_path / "big.jsonl"
    records = [{"text": f"document number {i} " + "w" * (i % 50)} for i in range(500)]
    p.write_bytes(_jsonl_bytes(records))
    cfg = IngestConfig(shard_bytes=2048)
    files, _ = discover([p])
    shards = plan_shards(files, cfg)
    assert len(shards) > 5
    assert plan_shards(files, cfg) == shards  # cut points depend only on the file
    docs = [d for s in shards for d in read_shard(s, cfg)]
    assert [d.text for d in docs] == [r["text"] for r in records]
    assert [d.id for d in docs] == [f"big.jsonl:{i + 1}" for i in range(500)]


def test_corrupt_and_unreadable_files_are_recorded(tmp_path: Path):
    gz = tmp_path / "broken.jsonl.gz"
    gz.write_bytes(gzip.compress(_jsonl_bytes(RECORDS))[:-12] + b"garbage!")
    pq_bad = tmp_path / "broken.parquet"
    pq_bad.write_bytes(b"PAR1 this is not parquet")
    items, _ = _read_all([gz, pq_bad])
    reasons = [i.reason for i in items if isinstance(i, BadRecord)]
    assert reasons.count("unreadable") == 2
    if os.geteuid() != 0:  # root can read a chmod-000 file
        locked = tmp_path / "locked.jsonl"
        locked.write_text('{"text": "x"}\n')
        locked.chmod(0)
        items, _ = _read_all([locked])
        assert items[0].reason == "unreadable"


def test_missing_input_and_empty_folder(tmp_path: Path):
    with pytest.raises(UserError, match="does not exist"):
        discover([tmp_path / "nope"])
    (tmp_path / "empty").mkdir()
    with pytest.raises(UserError, match="no supported input files"):
        discover([tmp_path / "empty"])


@pytest.mark.parametrize("frames", [1, 3])
def test_truncated_zstd_input_keeps_the_readable_part_and_records_the_rest(tmp_path: Path, frames: int):
    records = [{"id": f"d{i}", "text": f"Patient {i} has hypertension. " * (1 + i % 30)} for i in range(3000)]
    data = _jsonl_bytes(records)
    step = len(data) // frames
    cuts = [data.index(b"\n", k * step) + 1 for k in range(1, frames)] + [len(data)]
    chunks = [data[a:b] for a, b in zip([0, *cuts[:-1]], cuts)]
    parts = [zstandard.ZstdCompressor().compress(c) for c in chunks]
    blob = b"".join(parts)
    p = tmp_path / "raw.jsonl.zst"
    p.write_bytes(blob[: len(blob) - len(parts[-1]) // 2])  # the last frame cut in half
    items, _ = _read_all([p])
    docs = [i for i in items if isinstance(i, Doc)]
    bad = [i for i in items if isinstance(i, BadRecord)]
    assert 0 < len(docs) < len(records)
    assert [d.id for d in docs] == [r["id"] for r in records[: len(docs)]]
    assert len(bad) == 1 and bad[0].reason == "unreadable"
    assert "raw.jsonl.zst" in bad[0].detail and f"byte {len(blob) - len(parts[-1])}" in bad[0].detail
    assert f"after {len(docs)} records" in bad[0].detail


@pytest.mark.parametrize("suffix", [".jsonl", ".jsonl.gz", ".jsonl.zst", ".txt"])
def test_utf8_bom_is_stripped(tmp_path: Path, suffix: str):
    data = "\ufeff".encode() + (_jsonl_bytes(RECORDS) if suffix != ".txt" else "Один документ.".encode())
    if suffix.endswith(".gz"):
        data = gzip.compress(data)
    elif suffix.endswith(".zst"):
        data = zstandard.ZstdCompressor().compress(data)
    (tmp_path / f"bom{suffix}").write_bytes(data)
    items, _ = _read_all([tmp_path / f"bom{suffix}"])
    assert all(isinstance(i, Doc) for i in items), items[0]
    assert items[0].text == (RECORDS[0]["text"] if suffix != ".txt" else "Один документ.")


def test_symlinked_folders_are_followed_once_and_loops_listed(tmp_path: Path):
    root, elsewhere = tmp_path / "corpus", tmp_path / "elsewhere"
    (root / "real").mkdir(parents=True)
    elsewhere.mkdir()
    (root / "real" / "a.jsonl").write_bytes(_jsonl_bytes(RECORDS[:1]))
    (elsewhere / "b.jsonl").write_bytes(_jsonl_bytes(RECORDS[1:2]))
    (root / "linked").symlink_to(elsewhere)  # a folder kept elsewhere: its documents count
    (root / "alias").symlink_to(root / "real")  # the same folder twice: read once
    (root / "real" / "loop").symlink_to(root)  # a loop: never followed
    (root / "dangling.jsonl").symlink_to(tmp_path / "missing.jsonl")  # a broken link: listed
    items, skipped = _read_all([root])
    assert sorted(i.id for i in items) == ["a", "b"]
    assert [name for _, name in discover([root])[0]] == ["corpus/linked/b.jsonl", "corpus/real/a.jsonl"]
    assert sorted(Path(s.split(" ")[0]).name for s in skipped) == ["alias", "dangling.jsonl", "loop"]
    assert all("(" in s for s in skipped)  # each says why


def test_file_names_that_are_not_utf8_are_read(tmp_path: Path):
    root = tmp_path / "corpus"
    root.mkdir()
    name = os.fsdecode(b"caf\xe9.jsonl")  # a Latin-1 file name on a UTF-8 system
    (root / name).write_bytes(_jsonl_bytes(RECORDS[2:]))
    (root / os.fsdecode(b"notes\xff.csv")).write_text("x")
    files, skipped = discover([root])
    (shard,) = plan_shards(files, CFG)
    (doc,) = read_shard(shard, CFG)
    assert doc.id == "corpus/caf\\xe9.jsonl:1" and doc.source == "corpus/caf\\xe9.jsonl"
    json.dumps([shard.describe(), skipped], ensure_ascii=False).encode(
        "utf-8"
    )  # markers and report can hold them
    assert skipped == [str(root / "notes\\xff.csv")]

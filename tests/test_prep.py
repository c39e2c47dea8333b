"""`mmed prep` end to end on real multilingual text: nothing lost, every reason, resume, determinism."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from megatron_mmed.common.config import load_config
from megatron_mmed.common.io import read_jsonl_zst
from preprocessing.document import LANGS
from preprocessing.layout import iter_kept, iter_rejected, kept_files
from preprocessing.prep import PrepConfig, run_prep

MMED = [sys.executable, "-m", "megatron_mmed.cli"]

BAD_LINES = [
    b'{"id": "bad-json", "text": "truncated',
    b'["not", "an", "object"]',
    b'{"id": "no-text"}',
    b'{"id": "empty-text", "text": "   "}',
    b'{"id": "bad-utf8", "text": "m\xe9dical"}',
    b'{"id": "nul-byte", "text": "a\x00b"}',
    b'{"id": "german", "text": "Der Patient klagt seit drei Tagen \\u00fcber starke Kopfschmerzen und Fieber. '
    b'Die Blutuntersuchung zeigt erh\\u00f6hte Entz\\u00fcndungswerte, deshalb wird ein Antibiotikum verordnet."}',
    b'{"id": "spam", "text": "'
    + (
        b"The patient with type 2 diabetes mellitus and hypertension was treated with metformin and an ACE "
        b"inhibitor; HbA1c, creatinine and blood pressure were monitored in the clinic. "
    )
    * 40
    + b'"}',
]


def _corpus_input(shared_data: Path, root: Path) -> dict[str, int]:
    """A raw-input folder: the real shared corpus (six languages) plus bad lines. Returns line count per file."""
    root.mkdir(parents=True)
    counts = {}
    for lang in LANGS:
        src = shared_data / "corpus" / f"{lang}.jsonl"
        # the shared corpus has a `domain` label and ids; keep only what a raw source would have
        lines = [
            json.dumps({"id": r["id"], "text": r["text"]}, ensure_ascii=False)
            for r in map(json.loads, src.read_text(encoding="utf-8").splitlines())
        ]
        (root / f"{lang}.jsonl").write_text("\n".join(lines) + "\n", encoding="utf-8")
        counts[f"{lang}.jsonl"] = len(lines)
    (root / "bad.jsonl").write_bytes(b"\n".join(BAD_LINES) + b"\n")
    counts["bad.jsonl"] = len(BAD_LINES)
    return counts


def _prep_cli(inp: Path, out: Path, *extra: str) -> subprocess.CompletedProcess:
    """``mmed prep --input INP --output OUT EXTRA...`` in a subprocess (exit code and stderr as a user sees)."""
    return subprocess.run(
        [*MMED, "prep", "--input", str(inp), "--output", str(out), *extra],
        capture_output=True,
        text=True,
        timeout=300,
    )


def _outputs(out: Path) -> dict[str, list]:
    kept = [r for fs in kept_files(out).values() for f in fs for r in read_jsonl_zst(f)]
    return {
        "kept": sorted(json.dumps(r, sort_keys=True) for r in kept),
        "rejected": sorted(json.dumps(r, sort_keys=True) for r in iter_rejected(out)),
    }


@pytest.fixture(scope="module")
def prep_run(shared_data, tmp_path_factory):
    base = tmp_path_factory.mktemp("prep")
    counts = _corpus_input(shared_data, base / "raw")
    cfg = load_config(PrepConfig, None, ["ingest.shard_bytes=65536"])
    result = run_prep([base / "raw"], base / "out", cfg, show_progress=False)
    return base, counts, result


def test_every_line_is_kept_or_rejected_once(prep_run, shared_data):
    base, counts, result = prep_run
    kept = list(iter_kept(base / "out"))
    rejected = list(iter_rejected(base / "out"))
    assert len(kept) + len(rejected) == sum(counts.values())
    for r in kept:
        assert set(r) >= {"id", "lang", "text", "source", "scores"} and r["lang"] in LANGS and r["text"]
    for r in rejected:
        assert r["reason"] and "id" in r and "lang" in r
    ids = [r["id"] for r in kept + rejected]
    assert len(ids) == len(set(ids))
    input_ids = {
        json.loads(x)["id"]
        for lang in LANGS
        for x in (shared_data / "corpus" / f"{lang}.jsonl").read_text(encoding="utf-8").splitlines()
    }
    assert input_ids <= set(ids)  # input ids are kept as they are
    # kept files sit under their detected language, and that language is the file's language
    for lang, files in kept_files(base / "out").items():
        for f in files:
            assert all(r["lang"] == lang for r in read_jsonl_zst(f))
    wrong = [r["id"] for r in kept if not r["id"].startswith(r["lang"] + "-")]
    assert len(wrong) <= 2, wrong


def test_every_reason_and_report(prep_run):
    base, counts, result = prep_run
    rejected = {r["id"]: r for r in iter_rejected(base / "out")}
    assert rejected["raw/bad.jsonl:1"]["reason"] == "parse"
    assert rejected["raw/bad.jsonl:2"]["reason"] == "parse"
    assert rejected["no-text"]["reason"] == "parse"
    assert rejected["empty-text"]["reason"] == "empty"
    assert rejected["raw/bad.jsonl:5"]["reason"] == "encoding"
    assert rejected["raw/bad.jsonl:6"]["reason"] == "encoding"
    assert rejected["german"]["reason"] == "lang"
    assert rejected["spam"]["reason"].startswith("quality:")
    reasons = {r["reason"] for r in rejected.values()}
    assert "medical" in reasons  # the general-domain documents
    report = json.loads((base / "out" / "report.json").read_text())
    assert report["stage"] == "prep"
    assert report["totals"]["docs_in"] == sum(counts.values())
    assert report["totals"]["docs_out"] + sum(report["totals"]["drops"].values()) == sum(counts.values())
    assert list(report["stages"]) == ["ingest", "clean", "langid", "medical", "quality"]
    for stage in report["stages"].values():
        t = stage["totals"]
        assert t["docs_in"] == t["docs_out"] + sum(t["drops"].values())
    assert report["stages"]["quality"]["totals"]["docs_out"] == report["totals"]["docs_out"]
    for lang in LANGS:
        assert report["languages"][lang]["docs_out"] > 0
    md = (base / "out" / "report.md").read_text()
    assert "| en |" in md and "medical" in md
    for png in report["charts"].values():
        assert (base / "out" / png).stat().st_size > 1000
    assert (base / "out" / "config.yaml").is_file()


def test_quality_rules_produce_their_reason(tmp_path: Path, shared_data: Path):
    raw = tmp_path / "raw"
    raw.mkdir()
    real = next(
        r for r in map(json.loads, (shared_data / "corpus" / "en.jsonl").open()) if r["domain"] == "medical"
    )
    med = (
        "The patient with type 2 diabetes mellitus and hypertension was treated with metformin and an ACE "
        "inhibitor; HbA1c, creatinine and blood pressure were monitored in the clinic."
    )
    docs = [{"id": "ok", "text": real["text"]}, {"id": "repeated", "text": "\n".join([med] * 30)}]
    (raw / "q.jsonl").write_text("\n".join(json.dumps(d) for d in docs) + "\n")
    run_prep([raw], tmp_path / "out", load_config(PrepConfig), show_progress=False)
    got = {r["id"]: r["reason"] for r in iter_rejected(tmp_path / "out")}
    assert got["repeated"] == "quality:dup_lines"
    assert [r["id"] for r in iter_kept(tmp_path / "out")] == ["ok"]
    # the same repeated document passes once its rule (and the other repetition rules) are switched off
    off = load_config(PrepConfig, None, ["quality.disabled=[dup_lines,dup_paragraphs,top_ngram,dup_ngram]"])
    run_prep([raw], tmp_path / "out_off", off, show_progress=False)
    assert "repeated" in {r["id"] for r in iter_kept(tmp_path / "out_off")}


def test_huge_document_is_rejected_not_crashing(tmp_path: Path):
    raw = tmp_path / "raw"
    raw.mkdir()
    big = "Hypertension. " * (50 * 2**20 // 14)  # a 50 MB single document
    with open(raw / "big.jsonl", "w") as fh:
        fh.write(json.dumps({"id": "huge", "text": big}) + "\n")
        fh.write(json.dumps({"id": "small", "text": "hello"}) + "\n")
    del big
    run_prep([raw], tmp_path / "out", load_config(PrepConfig), show_progress=False)
    got = {r["id"]: r["reason"] for r in iter_rejected(tmp_path / "out")}
    assert got["huge"] == "quality:max_length"


@pytest.mark.slow  # a process pool
def test_workers_do_not_change_output(prep_run, tmp_path: Path):
    base, _, _ = prep_run
    cfg = load_config(PrepConfig, None, ["ingest.shard_bytes=65536", "workers=2"])
    run_prep([base / "raw"], tmp_path / "out2", cfg, show_progress=False)
    assert _outputs(tmp_path / "out2") == _outputs(base / "out")
    for f in sorted((base / "out" / "kept").rglob("*.zst")):
        assert f.read_bytes() == (tmp_path / "out2" / f.relative_to(base / "out")).read_bytes()


def _n_done(out: Path) -> int:
    return sum(1 for p in (out / ".done" / "prep").glob("*.json") if p.name != "_run.json")


@pytest.mark.slow  # CLI processes killed mid-run
def test_resume_after_kill_9_gives_identical_output(prep_run, tmp_path: Path):
    base, _, _ = prep_run
    out = tmp_path / "killed"
    cmd = [
        *MMED,
        "prep",
        "--input",
        str(base / "raw"),
        "--output",
        str(out),
        "--no-progress",
        "ingest.shard_bytes=16384",
    ]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 120
    while time.time() < deadline and _n_done(out) < 3:
        time.sleep(0.05)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    done_before = _n_done(out)
    assert done_before >= 3
    assert not (out / "report.json").exists()  # it really was interrupted
    rerun = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert rerun.returncode == 0, rerun.stderr
    assert f"resumed: {done_before}/" in rerun.stderr
    full = tmp_path / "full"
    subprocess.run(
        [*cmd[:-4], "--output", str(full), "--no-progress", "ingest.shard_bytes=16384"],
        check=True,
        capture_output=True,
        timeout=300,
    )
    assert _outputs(out) == _outputs(full)
    assert not list(out.rglob("*.tmp"))


def test_cli_contract_mmedc_preset(tmp_path: Path, shared_data: Path):
    raw = tmp_path / "raw"
    _corpus_input(shared_data, raw)
    mmed = shutil.which("mmed", path=str(Path(sys.executable).parent)) or "mmed"
    res = subprocess.run(
        [
            mmed,
            "prep",
            "--input",
            str(raw),
            "--output",
            str(tmp_path / "o"),
            "--preset",
            "mmedc",
            "--keywords",
            str(shared_data / "mmedc_keywords.json"),
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert res.returncode == 0, res.stderr
    assert "mmed prep" in res.stderr and "dropped by reason" in res.stderr
    kept = list(iter_kept(tmp_path / "o"))
    assert kept and all({"id", "lang", "text"} <= set(r) for r in kept)
    assert (tmp_path / "o" / "config.yaml").read_text().count("preset: mmedc") == 1


def test_cli_errors(tmp_path: Path):
    f = tmp_path / "file"
    f.write_text("x")
    (tmp_path / "raw").mkdir()
    (tmp_path / "raw" / "a.jsonl").write_text('{"text": "x"}\n')
    res = _prep_cli(tmp_path / "raw", f / "sub")
    assert res.returncode == 2 and "not writable" in res.stderr and "Traceback" not in res.stderr
    res = _prep_cli(tmp_path / "raw", tmp_path / "o", "--preset", "mmedc")
    assert res.returncode == 2 and "--keywords" in res.stderr and "Traceback" not in res.stderr
    bad_kw = tmp_path / "kw.json"
    bad_kw.write_text("{not json")
    res = _prep_cli(tmp_path / "raw", tmp_path / "o", "--preset", "mmedc", "--keywords", str(bad_kw))
    assert res.returncode == 2 and "Traceback" not in res.stderr


def test_array_tasks_equal_one_run(prep_run, tmp_path: Path, monkeypatch):
    base, _, _ = prep_run
    out = tmp_path / "arr"
    cfg = load_config(PrepConfig, None, ["ingest.shard_bytes=65536"])
    first = run_prep([base / "raw"], out, cfg, show_progress=False, rank=1, world_size=2)
    assert first.report == {} and not (out / "report.json").exists()  # the other task is not done yet
    monkeypatch.setenv("SLURM_ARRAY_TASK_ID", "0")
    monkeypatch.setenv("SLURM_ARRAY_TASK_COUNT", "2")
    res = subprocess.run(
        [
            *MMED,
            "prep",
            "--input",
            str(base / "raw"),
            "--output",
            str(out),
            "--no-progress",
            "ingest.shard_bytes=65536",
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert res.returncode == 0, res.stderr
    assert _outputs(out) == _outputs(base / "out")
    assert (
        json.loads((out / "report.json").read_text())["totals"]
        == json.loads((base / "out" / "report.json").read_text())["totals"]
    )


def test_resume_with_other_settings_is_refused(prep_run, tmp_path: Path, shared_data: Path):
    base, _, _ = prep_run
    config_before = (base / "out" / "config.yaml").read_text()
    res = subprocess.run(
        [
            *MMED,
            "prep",
            "--input",
            str(base / "raw"),
            "--output",
            str(base / "out"),
            "--no-progress",
            "--preset",
            "mmedc",
            "--keywords",
            str(shared_data / "mmedc_keywords.json"),
            "ingest.shard_bytes=65536",
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert res.returncode == 2 and "made with another config" in res.stderr, res.stderr
    assert (base / "out" / "config.yaml").read_text() == config_before  # the refused run left it as it was


def test_input_file_names_that_are_not_utf8(tmp_path: Path, shared_data: Path):
    raw = tmp_path / "raw"
    raw.mkdir()
    doc = json.loads((shared_data / "corpus" / "en.jsonl").read_text(encoding="utf-8").splitlines()[0])
    (raw / os.fsdecode(b"m\xe9d.jsonl")).write_text(json.dumps({"text": doc["text"]}) + "\n")
    (raw / os.fsdecode(b"\xff.csv")).write_text("x")
    res = _prep_cli(raw, tmp_path / "o", "--no-progress")
    assert res.returncode == 0 and "Traceback" not in res.stderr, res.stderr
    (rec,) = list(iter_kept(tmp_path / "o")) or list(iter_rejected(tmp_path / "o"))
    assert rec["id"] == "raw/m\\xe9d.jsonl:1"
    report = json.loads((tmp_path / "o" / "report.json").read_text())
    assert report["skipped_files"] == [str(raw / "\\xff.csv")]


def test_output_equal_to_or_inside_the_input_is_refused_up_front(tmp_path: Path):
    raw = tmp_path / "raw"
    raw.mkdir()
    (raw / "a.jsonl").write_text('{"text": "x"}\n')
    for out in (raw, raw / "out", raw / "." / "deeper" / "out"):
        res = _prep_cli(raw, out, "--no-progress")
        assert res.returncode == 2 and "inside the input" in res.stderr and "Traceback" not in res.stderr
        assert len(res.stderr.strip().splitlines()) == 1, res.stderr
    assert sorted(p.name for p in raw.iterdir()) == ["a.jsonl"]  # nothing written


def test_resume_after_the_raw_input_changed_is_refused(tmp_path: Path, shared_data: Path):
    raw = tmp_path / "raw"
    raw.mkdir()
    lines = (shared_data / "corpus" / "en.jsonl").read_text(encoding="utf-8").splitlines()
    (raw / "en.jsonl").write_text("\n".join(lines[:5]) + "\n")
    assert _prep_cli(raw, tmp_path / "o", "--no-progress").returncode == 0
    (raw / "en.jsonl").write_text("\n".join(lines[:6]) + "\n")  # same file name, one more document
    res = _prep_cli(raw, tmp_path / "o", "--no-progress")
    assert res.returncode == 2 and "other input: 1 files of" in res.stderr, res.stderr


@pytest.mark.slow  # two CLI processes at once
def test_a_second_run_on_a_folder_in_use_is_refused(prep_run, tmp_path: Path):
    base, _, _ = prep_run
    out = tmp_path / "busy"
    args = ["--no-progress", "ingest.shard_bytes=16384"]
    first = subprocess.Popen(
        [*MMED, "prep", "--input", str(base / "raw"), "--output", str(out), *args],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    deadline = time.time() + 120
    while time.time() < deadline and _n_done(out) < 1 and first.poll() is None:
        time.sleep(0.02)
    second = _prep_cli(base / "raw", out, *args)
    still_running = first.poll() is None
    _, err = first.communicate(timeout=300)
    assert first.returncode == 0, err
    if not still_running:
        pytest.skip("the first run ended before the second started (machine too fast to overlap them)")
    assert second.returncode == 2 and "is in use by mmed prep (pid" in second.stderr, second.stderr
    assert len(second.stderr.strip().splitlines()) == 1
    assert _outputs(out) == _outputs(base / "out") and not list(out.rglob("*.tmp"))


def _done_shards_are_whole(out: Path) -> int:
    """Every shard marked done has all its files, each a complete zstd stream; returns how many are done."""
    done = [p for p in (out / ".done" / "prep").glob("*.json") if p.name != "_run.json"]
    for marker in done:
        sid = marker.stem
        files = [*out.glob(f"kept/*/{sid}.jsonl.zst"), *out.glob(f"rejected/{sid}.jsonl.zst")]
        assert files, sid
        for f in files:
            list(read_jsonl_zst(f))  # raises on a cut file
    return len(done)


@pytest.mark.slow  # two CLI runs on a tmpfs
def test_full_disk_is_a_one_line_error_and_a_rerun_completes(prep_run, tmp_path: Path):
    from fault_helpers import grow, small_disk

    base, _, _ = prep_run
    with small_disk(tmp_path / "disk", "400k") as disk:
        out = disk / "out"
        res = _prep_cli(base / "raw", out, "--no-progress", "ingest.shard_bytes=16384")
        assert res.returncode == 2, res.stderr[-2000:]
        assert "No space left on device" in res.stderr and "Traceback" not in res.stderr
        assert len(res.stderr.strip().splitlines()) == 1, res.stderr
        assert not (out / "report.json").exists() and not list(out.rglob("*.tmp"))
        assert _done_shards_are_whole(out) > 0  # work done before the disk filled is kept
        grow(disk, "16m")
        res = _prep_cli(base / "raw", out, "--no-progress", "ingest.shard_bytes=16384")
        assert res.returncode == 0, res.stderr
        assert _outputs(out) == _outputs(base / "out")


def test_read_only_output_subfolder_is_a_one_line_error(tmp_path: Path, shared_data: Path):
    from fault_helpers import read_only

    raw = tmp_path / "raw"
    raw.mkdir()
    lines = (shared_data / "corpus" / "en.jsonl").read_text(encoding="utf-8").splitlines()
    (raw / "en.jsonl").write_text("\n".join(lines[:5]) + "\n")
    out = tmp_path / "out"
    with read_only(out / "kept" / "en"):
        res = _prep_cli(raw, out, "--no-progress")
        assert res.returncode == 2 and "Traceback" not in res.stderr, res.stderr[-2000:]
        assert str(out / "kept" / "en") in res.stderr and len(res.stderr.strip().splitlines()) == 1
        assert _done_shards_are_whole(out) == 0
    assert _prep_cli(raw, out, "--no-progress").returncode == 0  # writable again: the rerun completes

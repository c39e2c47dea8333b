"""`mmed extract` as a stage: the CLI contract, `mmed prep` reading its docs unchanged, zip and folder inputs,
kill -9 resume, any number of workers or array tasks, `mmed pipeline` with an extract section, launch script."""

from __future__ import annotations

import json
import os
import shlex
import signal
import subprocess
import sys
import time
import zipfile
from pathlib import Path

import pytest
from extract_helpers import corpus_paragraphs, html_page, make_book, scan_pages

from megatron_mmed.common.config import ConfigError, load_config
from megatron_mmed.common.io import read_jsonl_zst
from preprocessing.extract import ExtractConfig, run_extract
from preprocessing.layout import iter_kept, iter_rejected
from preprocessing.pipeline import PipelineConfig

REPO = Path(__file__).resolve().parents[1]
MMED = [sys.executable, "-m", "megatron_mmed.cli"]


def _outputs(out: Path) -> dict[str, list[str]]:
    """Every record of docs/ and rejected/, sorted (what must not depend on workers or interruptions)."""
    return {
        sub: sorted(
            json.dumps(r, sort_keys=True) for f in (out / sub).glob("*.jsonl.zst") for r in read_jsonl_zst(f)
        )
        for sub in ("docs", "rejected")
    }


@pytest.fixture(scope="module")
def raw(shared_data, tmp_path_factory) -> Path:
    """A folder of mixed inputs: two books, a zip (a book, pages, an unsupported member), 24 loose pages."""
    base = tmp_path_factory.mktemp("raw")
    root = base / "raw"
    make_book(root / "books" / "en.pdf", shared_data, "en")
    make_book(root / "books" / "zh.pdf", shared_data, "zh", outline=False)
    make_book(base / "es.pdf", shared_data, "es", front_back=False, chapters=2)
    with zipfile.ZipFile(root / "bundle.zip", "w") as zf:
        zf.write(base / "es.pdf", "shelf/es.pdf")
        zf.writestr("notes.txt", "not a page")
        for lang in ("fr", "ru"):
            paras = corpus_paragraphs(shared_data, lang)
            zf.writestr(
                f"site/{lang}.html",
                html_page(lang, f"T {lang}", paras[:2], f"https://z.org/{lang}", "2024-01-02"),
            )
    for lang in ("en", "fr", "es", "ru", "zh", "ja"):
        paras = corpus_paragraphs(shared_data, lang)
        for i in range(4):
            page = html_page(
                lang,
                f"{lang} {i}",
                paras[4 * i : 4 * i + 2],
                f"https://x.org/{lang}/{i}",
                "2024-03-04",
                i % 2,
            )
            (root / "site" / lang).mkdir(parents=True, exist_ok=True)
            (root / "site" / lang / f"{i}.html").write_text(page, encoding="utf-8")
    (root / "site" / "README.md").write_text("not an input")
    return root


@pytest.fixture(scope="module")
def full(raw, tmp_path_factory):
    out = tmp_path_factory.mktemp("full") / "out"
    cfg = load_config(ExtractConfig, None, ["html_per_shard=5"])
    return out, run_extract([raw], out, cfg, show_progress=False)


@pytest.mark.slow
def test_cli_contract_and_prep_reads_docs_unchanged(raw, full, tmp_path: Path):
    out = tmp_path / "ext"
    res = subprocess.run(
        [
            *MMED,
            "extract",
            "--input",
            str(raw),
            "--output",
            str(out),
            "--workers",
            "2",
            "--ocr",
            "never",
            "--lang-hint",
            "en",
        ],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert res.returncode == 0, res.stderr
    assert "mmed extract" in res.stderr and "rejected by reason" in res.stderr
    for name in (
        "config.yaml",
        "report.json",
        "report.md",
        "pages_per_source.png",
        "chars_per_lang_hint.png",
    ):
        assert (out / name).is_file(), name
    cfg = (out / "config.yaml").read_text()
    assert "ocr: never" in cfg and "lang_hint: en" in cfg and "workers: 2" in cfg
    docs = [r for f in sorted((out / "docs").glob("*.jsonl.zst")) for r in read_jsonl_zst(f)]
    assert docs and all(set(r) == {"id", "text", "source", "meta"} for r in docs)
    assert all(r["meta"]["lang_hint"] == "en" for r in docs)  # the hint wins over detection
    ids = {r["id"] for r in docs}
    assert {"raw/bundle.zip:shelf/es.pdf#ch01", "raw/bundle.zip:site/fr.html", "raw/books/en.pdf#ch03"} <= ids
    rej = {r["id"]: r for f in (out / "rejected").glob("*.jsonl.zst") for r in read_jsonl_zst(f)}
    assert rej["raw/bundle.zip:notes.txt"]["reason"] == "unsupported"
    report = json.loads((out / "report.json").read_text())
    assert report["skipped_files"] == [str(raw / "site" / "README.md")]
    assert report["totals"]["docs_out"] == len(docs)
    # mmed prep reads the folder as it is: every record comes out kept or rejected under its own id
    prep = subprocess.run(
        [*MMED, "prep", "--input", str(out / "docs"), "--output", str(tmp_path / "prep"), "--no-progress"],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert prep.returncode == 0, prep.stderr
    kept = list(iter_kept(tmp_path / "prep"))
    assert {r["id"] for r in kept} | {r["id"] for r in iter_rejected(tmp_path / "prep")} == ids
    assert len(kept) >= 0.8 * len(ids)  # medical text in the six languages: nearly all kept
    by_id = {r["id"]: r for r in docs}
    assert all(r["source"] == by_id[r["id"]]["source"] for r in kept)


@pytest.mark.slow
def test_workers_do_not_change_output(raw, full, tmp_path: Path):
    out, _ = full
    cfg = load_config(ExtractConfig, None, ["html_per_shard=5", "workers=2"])
    run_extract([raw], tmp_path / "two", cfg, show_progress=False)
    assert _outputs(tmp_path / "two") == _outputs(out)
    for f in sorted((out / "docs").glob("*.zst")):
        assert f.read_bytes() == (tmp_path / "two" / "docs" / f.name).read_bytes()
    a = json.loads((out / "report.json").read_text())
    b = json.loads((tmp_path / "two" / "report.json").read_text())
    for key in ("totals", "sources", "pages", "lang_hint", "structure"):
        assert a[key] == b[key], key


def _n_done(out: Path) -> int:
    return sum(1 for p in (out / ".done" / "extract").glob("*.json") if p.name != "_run.json")


@pytest.mark.slow
def test_resume_after_kill_9_gives_identical_output(raw, full, tmp_path: Path):
    out, _ = full
    killed = tmp_path / "killed"
    cmd = [
        *MMED,
        "extract",
        "--input",
        str(raw),
        "--output",
        str(killed),
        "--no-progress",
        "html_per_shard=5",
    ]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 300
    while time.time() < deadline and _n_done(killed) < 3:
        time.sleep(0.05)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    done_before = _n_done(killed)
    assert done_before >= 3
    assert not (killed / "report.json").exists()  # it really was interrupted
    rerun = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    assert rerun.returncode == 0, rerun.stderr
    assert f"resumed: {done_before}/" in rerun.stderr
    assert _outputs(killed) == _outputs(out)
    assert not list(killed.rglob("*.tmp"))


@pytest.mark.slow
def test_array_tasks_equal_one_run(raw, full, tmp_path: Path, monkeypatch):
    out, _ = full
    arr = tmp_path / "arr"
    cfg = load_config(ExtractConfig, None, ["html_per_shard=5"])
    first = run_extract([raw], arr, cfg, show_progress=False, rank=1, world_size=2)
    assert first.report == {} and not (arr / "report.json").exists()  # the other task is not done yet
    monkeypatch.setenv("SLURM_ARRAY_TASK_ID", "0")
    monkeypatch.setenv("SLURM_ARRAY_TASK_COUNT", "2")
    res = subprocess.run(
        [*MMED, "extract", "--input", str(raw), "--output", str(arr), "--no-progress", "html_per_shard=5"],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert res.returncode == 0, res.stderr
    assert _outputs(arr) == _outputs(out)
    assert (
        json.loads((arr / "report.json").read_text())["totals"]
        == json.loads((out / "report.json").read_text())["totals"]
    )


def _cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([*MMED, "extract", *args], capture_output=True, text=True, timeout=300)


@pytest.mark.slow
def test_cli_errors_are_one_line(raw, full, tmp_path: Path, shared_data):
    out, _ = full
    f = tmp_path / "file"
    f.write_text("x")
    cases = [
        (["--input", str(tmp_path / "missing"), "--output", str(tmp_path / "o")], "does not exist"),
        (["--input", str(f), "--output", str(tmp_path / "o")], "no supported input files"),
        (["--input", str(raw), "--output", str(f / "sub")], "not writable"),
        (["--input", str(raw), "--output", str(raw / "o")], "inside the input"),
        (["--input", str(raw), "--output", str(tmp_path / "o"), "--lang-hint", "de"], "lang_hint"),
        (["--input", str(raw), "--output", str(tmp_path / "o"), "tesseract.dpi=5"], "tesseract.dpi"),
        (
            ["--input", str(raw), "--output", str(out), "--ocr", "never", "html_per_shard=5"],
            "made with another config",
        ),
    ]
    config_before = (out / "config.yaml").read_text()
    for args, msg in cases:
        res = _cli(*args)
        assert res.returncode == 2 and msg in res.stderr and "Traceback" not in res.stderr, (args, res.stderr)
        assert res.stderr.startswith("mmed extract: error:"), res.stderr
    assert (out / "config.yaml").read_text() == config_before  # the refused run left the folder as it was
    # a scanned page and no Tesseract: one line saying what to install, nothing half-written
    make_book(tmp_path / "b.pdf", shared_data, "en", chapters=1, front_back=False, chars_per_chapter=300)
    scan_pages(tmp_path / "b.pdf", tmp_path / "scans" / "scan.pdf", [1], dpi=100)
    res = _cli(
        "--input",
        str(tmp_path / "scans"),
        "--output",
        str(tmp_path / "o2"),
        "tesseract.command=no-such-tesseract",
    )
    assert (
        res.returncode == 2
        and "apt-get install tesseract-ocr" in res.stderr
        and "Traceback" not in res.stderr
    )
    assert not list((tmp_path / "o2").rglob("*.zst")) and not (tmp_path / "o2" / "report.json").exists()


@pytest.mark.slow
def test_pipeline_runs_extract_then_prep(raw, tmp_path: Path, shared_data):
    out = tmp_path / "pipe"
    raw_text = tmp_path / "text"
    raw_text.mkdir()
    lines = [
        json.dumps({"id": f"j{i}", "text": p}, ensure_ascii=False)
        for i, p in enumerate(corpus_paragraphs(shared_data, "en")[:5])
    ]
    (raw_text / "en.jsonl").write_text("\n".join(lines) + "\n", encoding="utf-8")
    res = subprocess.run(
        [
            *MMED,
            "pipeline",
            "--config",
            str(REPO / "configs" / "prep" / "mmedc.yaml"),
            f"output={out}",
            f"inputs=[{raw_text}]",
            f"extract_inputs=[{raw / 'books'}]",
            "stages=[extract,prep]",
            "extract.ocr=never",
            "--no-progress",
        ],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert res.returncode == 0, res.stderr
    summary = json.loads((out / "pipeline.json").read_text())
    assert list(summary["stages"]) == ["extract", "prep"]
    extracted = {r["id"] for f in (out / "extract" / "docs").glob("*.zst") for r in read_jsonl_zst(f)}
    kept = {r["id"] for r in iter_kept(out / "prep")}
    assert len(extracted) == 6 and extracted <= kept | {r["id"] for r in iter_rejected(out / "prep")}
    assert {f"j{i}" for i in range(5)} & kept and extracted & kept
    assert (out / "extract" / "config.yaml").read_text().count("ocr: never") == 1
    with pytest.raises(ConfigError, match="extract_inputs"):
        load_config(
            PipelineConfig,
            REPO / "configs" / "prep" / "mmedc.yaml",
            [f"output={out}", "benchmark=q", "stages=[extract,prep]"],
        )


@pytest.mark.slow  # extracts two books, then preps their docs
def test_pipeline_runs_extract_whenever_extract_inputs_are_given(raw, tmp_path: Path):
    """A recipe's extract_inputs are never silently ignored: extract runs before prep even when ``stages``
    (the recipe's default included) leaves it out."""
    from preprocessing.pipeline import run_pipeline

    recipe = REPO / "configs" / "prep" / "mmedc.yaml"
    out = tmp_path / "pipe"
    args = [f"output={out}", f"extract_inputs=[{raw / 'books'}]", "extract.ocr=never", "benchmark=q"]
    summary = run_pipeline(load_config(PipelineConfig, recipe, [*args, "stages=[prep]"]), show_progress=False)
    assert list(summary["stages"]) == ["extract", "prep"]
    extracted = {r["id"] for f in (out / "extract" / "docs").glob("*.zst") for r in read_jsonl_zst(f)}
    prepped = {r["id"] for r in iter_kept(out / "prep")} | {r["id"] for r in iter_rejected(out / "prep")}
    assert extracted and extracted <= prepped
    assert load_config(PipelineConfig, recipe, args).planned()[:2] == ("extract", "prep")  # default stages


def test_launch_runs_extract_array_before_prep(tmp_path: Path):
    res = subprocess.run(
        ["bash", "launch/prep_mmedc.sh", "--dry-run"],
        cwd=REPO,
        env={
            **os.environ,
            "EXTRACT_INPUTS": "/books /crawl",
            "OUT": str(tmp_path),
            "BENCHMARK": "/qa",
            "TOKENIZER": "/t",
        },
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert res.returncode == 0, res.stderr
    lines = [x for x in res.stdout.splitlines() if x.startswith("sbatch")]
    assert len(lines) == 8  # extract, prep, 4 dedup stages, decontam, tokenize
    assert "--job-name=mmed-extract" in lines[0] and "--array=0-63" in lines[0]
    wrapped = [shlex.split(shlex.split(x)[-1]) for x in lines]
    ext, prep = wrapped[0], wrapped[1]
    assert (
        ext[3:6] == ["extract", "--input", "/books"]
        and ext[ext.index("--output") + 1] == f"{tmp_path}/extract"
    )
    assert prep[prep.index("--input") + 1] == f"{tmp_path}/extract/docs"  # prep reads what extract wrote
    assert "--dependency=afterok:" in lines[1]
    res = subprocess.run(
        ["bash", "launch/prep_mmedc.sh", "--dry-run"],
        cwd=REPO,
        env={**os.environ, "OUT": str(tmp_path), "BENCHMARK": "/qa", "INPUTS": "", "EXTRACT_INPUTS": ""},
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert res.returncode == 2 and "EXTRACT_INPUTS" in res.stderr

"""``mmed decontam`` on real data: MMedBench-format questions from shared/data/qa planted into the real corpus."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from megatron_mmed.common.config import ConfigError, load_config
from megatron_mmed.common.errors import UserError
from megatron_mmed.common.io import JsonlZstWriter, read_jsonl_zst
from preprocessing.decontam import DecontamConfig, load_benchmark, run_decontam, text_units
from preprocessing.document import CJK_LANGS, LANGS, LANGUAGE_NAMES

#: Clean-corpus documents that really do contain test questions: the CasiMedicos training split repeats four
#: MIR exam questions of its test split (checked by hand: same clinical case, 67-100% of the 13-grams).
KNOWN_CONTAMINATED = {
    "es-med-casimedicos-train-0028": ["Spanish:0"],
    "es-med-casimedicos-train-0054": ["Spanish:17"],
    "es-med-casimedicos-train-0140": ["Spanish:33"],
    "es-med-casimedicos-train-0143": ["Spanish:34"],
}


def _read_qa(shared: Path) -> dict[str, list[dict]]:
    out = {}
    for lang in LANGS:
        name = LANGUAGE_NAMES[lang]
        lines = (shared / "qa" / f"{name}.jsonl").read_text(encoding="utf-8").splitlines()
        out[lang] = [dict(json.loads(line), _id=f"{name}:{i}") for i, line in enumerate(lines)]
    return out


def _read_corpus(shared: Path) -> dict[str, list[dict]]:
    out = {}
    for lang in LANGS:
        lines = (shared / "corpus" / f"{lang}.jsonl").read_text(encoding="utf-8").splitlines()
        out[lang] = [dict(json.loads(line), lang=lang) for line in lines]
    return out


def _options_block(item: dict) -> str:
    return "\n".join(f"{k}. {v}" for k, v in sorted(item["options"].items()))


def _long_options(item: dict, lang: str) -> bool:
    opts = " ".join(item["options"].values())
    return len(opts.replace(" ", "")) >= 15 if lang in CJK_LANGS else len(opts.split()) >= 8


def _write_input(root: Path, docs_by_lang: dict[str, list[dict]], files_per_lang: int = 2) -> Path:
    """A folder laid out like ``mmed prep``'s output."""
    for lang, docs in docs_by_lang.items():
        for f in range(files_per_lang):
            with JsonlZstWriter(root / "kept" / lang / f"shard-{f:04d}.jsonl.zst") as w:
                for d in docs[f::files_per_lang]:
                    w.write(d)
    return root


def _records(root: Path, sub: str) -> dict[str, list[dict]]:
    return {
        str(p.relative_to(root)): list(read_jsonl_zst(p)) for p in sorted((root / sub).rglob("*.jsonl.zst"))
    }


@pytest.fixture(scope="module")
def planted(shared_data):
    """The whole dev corpus plus, per language, a question planted verbatim, one embedded inside a real
    document, one options block (not for Russian: its options are just да/нет), and two cross-language plants."""
    qa, corpus = _read_qa(shared_data), _read_corpus(shared_data)
    docs = {lang: list(corpus[lang]) for lang in LANGS}
    expected: dict[str, list[str]] = {}

    def plant(lang: str, pid: str, text: str, item: dict) -> None:
        docs[lang].insert(
            len(docs[lang]) // 3 + len(expected), {"id": pid, "text": text, "lang": lang, "source": "t"}
        )
        expected[pid] = [item["_id"]]

    for lang in LANGS:
        host = corpus[lang][7]["text"]
        half = len(host) // 2
        verbatim, embedded = qa[lang][5], qa[lang][12]
        plant(
            lang, f"plant-{lang}-verbatim", verbatim["question"] + "\n" + _options_block(verbatim), verbatim
        )
        plant(
            lang,
            f"plant-{lang}-embedded",
            host[:half] + "\n" + embedded["question"] + "\n" + _options_block(embedded) + "\n" + host[half:],
            embedded,
        )
        if lang != "ru":
            opt = next(it for it in qa[lang][40:] if _long_options(it, lang))
            plant(lang, f"plant-{lang}-options", host[:half] + "\n" + _options_block(opt), opt)
    # a document may quote a question of another language
    plant("zh", "plant-zh-quotes-en", corpus["zh"][3]["text"] + "\n" + qa["en"][50]["question"], qa["en"][50])
    plant("en", "plant-en-quotes-ja", corpus["en"][3]["text"] + " " + qa["ja"][60]["question"], qa["ja"][60])
    return docs, expected


@pytest.fixture(scope="module")
def decontam_run(planted, shared_data, tmp_path_factory):
    docs, expected = planted
    base = tmp_path_factory.mktemp("decontam")
    inp = _write_input(base / "in", docs)
    res = run_decontam(inp, shared_data / "qa", base / "out", DecontamConfig(), show_progress=False)
    return inp, base / "out", res, docs, expected


def test_removes_exactly_the_planted_questions(decontam_run, shared_data):
    _, out, res, docs, expected = decontam_run
    rejected = [r for recs in _records(out, "rejected").values() for r in recs]
    got = {r["id"]: r["matches"] for r in rejected}
    assert all(r["reason"] == "contaminated" for r in rejected)
    # every planted document, in all six languages, with exactly its question; nothing else but the 4 known
    assert got == {**expected, **KNOWN_CONTAMINATED}
    for r in rejected:
        assert r["lang"] == next(lang for lang, ds in docs.items() if any(d["id"] == r["id"] for d in ds))
        detail = r["match_details"][0]
        assert detail["fraction"] >= 0.5 and detail["shared"] >= 1
    by_id = {r["id"]: r for r in rejected}
    assert by_id["plant-fr-options"]["match_details"][0]["segment"] == "options"
    ja5 = json.loads((shared_data / "qa" / "Japanese.jsonl").read_text(encoding="utf-8").splitlines()[5])
    assert by_id["plant-ja-verbatim"]["match_details"][0]["source_id"] == ja5["source_id"]
    per_lang = res.contaminated_per_language
    planted_per_lang = {lang: sum(p.startswith(f"plant-{lang}-") for p in expected) for lang in LANGS}
    planted_per_lang["es"] += len(KNOWN_CONTAMINATED)
    assert per_lang == planted_per_lang


def test_survivors_unchanged_and_report(decontam_run):
    inp, out, res, docs, expected = decontam_run
    removed = set(expected) | set(KNOWN_CONTAMINATED)
    for lang in LANGS:
        got = [r for f in sorted((out / "kept" / lang).glob("*.jsonl.zst")) for r in read_jsonl_zst(f)]
        want = [r for f in sorted((inp / "kept" / lang).glob("*.jsonl.zst")) for r in read_jsonl_zst(f)]
        assert got == [r for r in want if r["id"] not in removed]  # all fields, same order
    report = json.loads((out / "report.json").read_text())
    assert report["stage"] == "decontam"
    assert report["totals"]["docs_in"] == sum(len(d) for d in docs.values())
    assert report["totals"]["docs_out"] == report["totals"]["docs_in"] - len(removed)
    assert report["contaminated_per_language"]["es"] == 2 + 1 + len(KNOWN_CONTAMINATED)
    assert report["benchmark"]["items"] == 6 * 80 and report["benchmark"]["malformed_lines"] == 0
    assert "Spanish:34" in report["matched_items"]
    assert "| es |" in (out / "report.md").read_text()
    assert load_config(DecontamConfig, out / "config.yaml") == DecontamConfig()


def test_text_units_normalise_labels_case_and_scripts():
    assert text_units("A. Hemofilia A.\n(b) Enfermedad de Von-Willebrand") == [
        "hemofilia",
        "enfermedad",
        "de",
        "von",
        "willebrand",
    ]
    assert text_units("A．最易引起　HBV（　　）") == ["最", "易", "引", "起", "hbv"]
    assert text_units("vacu\xadnal") == ["vacunal"]  # soft hyphen inside a word
    assert text_units("ＡＢＣ１２") == ["abc12"]  # full width -> ASCII


def test_workers_and_resume_give_identical_output(planted, shared_data, tmp_path):
    docs, _ = planted
    small = {lang: d[:40] + [x for x in d if x["id"].startswith("plant-")] for lang, d in docs.items()}
    inp = _write_input(tmp_path / "in", small, files_per_lang=3)
    cfg = DecontamConfig()
    ref = run_decontam(inp, shared_data / "qa", tmp_path / "one", cfg, show_progress=False)
    two = run_decontam(
        inp, shared_data / "qa", tmp_path / "two", DecontamConfig(workers=2), show_progress=False
    )
    assert two.contaminated_per_language == ref.contaminated_per_language
    for sub in ("kept", "rejected"):
        assert _records(tmp_path / "two", sub) == _records(tmp_path / "one", sub)
    # simulate a kill: one shard's marker and outputs gone, a stray temp file left behind
    out = tmp_path / "one"
    (out / ".done" / "decontam" / "ja-shard-0001.json").unlink()
    (out / "kept" / "ja" / "shard-0001.jsonl.zst").rename(out / "kept" / "ja" / "shard-0001.jsonl.zst.tmp")
    (out / "rejected" / "ja-shard-0001.jsonl.zst").unlink(missing_ok=True)
    before = {p: p.read_bytes() for p in (tmp_path / "two").rglob("*.jsonl.zst")}
    again = run_decontam(inp, shared_data / "qa", out, cfg, show_progress=False)
    assert again.files_skipped == again.files_total - 1
    for p, data in before.items():
        assert (out / p.relative_to(tmp_path / "two")).read_bytes() == data
    assert not list(out.rglob("*.tmp"))
    # resuming with another rule would mix two runs
    with pytest.raises(UserError, match="another config"):
        run_decontam(inp, shared_data / "qa", out, DecontamConfig(min_fraction=0.2), show_progress=False)


def test_bad_input(shared_data, tmp_path, planted):
    docs, _ = planted
    inp = _write_input(tmp_path / "in", {"en": docs["en"][:5]}, files_per_lang=1)
    with pytest.raises(UserError, match="does not exist"):
        run_decontam(inp, tmp_path / "nope", tmp_path / "o1", DecontamConfig(), show_progress=False)
    (tmp_path / "empty_qa").mkdir()
    with pytest.raises(UserError, match="no MMedBench language file"):
        run_decontam(inp, tmp_path / "empty_qa", tmp_path / "o2", DecontamConfig(), show_progress=False)
    with pytest.raises(UserError, match="not a preprocessing output"):
        run_decontam(tmp_path / "empty_qa", shared_data / "qa", tmp_path / "o3", DecontamConfig())
    with pytest.raises(ConfigError, match="min_fraction"):
        load_config(DecontamConfig, None, ["min_fraction=1.5"])
    with pytest.raises(ConfigError, match="min_tokens"):
        load_config(DecontamConfig, None, ["char.min_tokens=30"])
    # malformed benchmark lines are counted and skipped; ids keep the file's line numbers
    qa = tmp_path / "qa"
    qa.mkdir()
    good = (shared_data / "qa" / "English.jsonl").read_text(encoding="utf-8").splitlines()[:3]
    bad = [
        "{not json",
        json.dumps({"question": "", "options": {}}),
        json.dumps({"question": "q", "options": 3}),
    ]
    (qa / "English.jsonl").write_text("\n".join([bad[0], good[0], bad[1], good[1], bad[2], good[2]]) + "\n")
    bench = load_benchmark(qa)
    assert [it.id for it in bench.items] == ["English:1", "English:3", "English:5"]
    assert [m["line"] for m in bench.malformed] == [0, 2, 4]
    res = run_decontam(inp, qa, tmp_path / "o4", DecontamConfig(), show_progress=False)
    assert res.report["benchmark"]["malformed_lines"] == 3


def test_cli_contract(planted, shared_data, tmp_path):
    docs, expected = planted
    small = {lang: d[:10] + [x for x in d if x["id"].startswith("plant-")] for lang, d in docs.items()}
    inp = _write_input(tmp_path / "in", small, files_per_lang=1)
    # MMedBench's own layout: QA_DIR/Test/<Language>.jsonl
    qa = tmp_path / "MMedBench"
    shutil.copytree(shared_data / "qa", qa / "Test")
    mmed = Path(sys.executable).with_name("mmed")
    cmd = [
        str(mmed),
        "decontam",
        "--input",
        str(inp),
        "--benchmark",
        str(qa),
        "--output",
        str(tmp_path / "out"),
    ]
    proc = subprocess.run([*cmd, "--no-progress"], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert "contaminated" in proc.stderr
    rejected = [r for recs in _records(tmp_path / "out", "rejected").values() for r in recs]
    assert {r["id"] for r in rejected} == set(expected)
    assert all(r["reason"] == "contaminated" and r["id"] and r["lang"] for r in rejected)
    assert (tmp_path / "out" / "kept" / "ru" / "shard-0000.jsonl.zst").is_file()
    bad = subprocess.run(
        [
            str(mmed),
            "decontam",
            "--input",
            str(inp),
            "--benchmark",
            str(tmp_path / "missing"),
            "--output",
            "x",
        ],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert bad.returncode == 2
    assert bad.stderr.strip().count("\n") == 0 and "benchmark folder does not exist" in bad.stderr


def test_benchmark_loader_is_evals_and_keeps_a_bom_first_item(shared_data, tmp_path, planted):
    """decontam reads MMedBench through eval.data (one loader): a BOM no longer hides item 0 (which leaked)."""
    import eval.data

    qa = tmp_path / "qa"
    qa.mkdir()
    raw = (shared_data / "qa" / "Spanish.jsonl").read_bytes()
    (qa / "Spanish.jsonl").write_bytes(b"\xef\xbb\xbf" + raw)
    bench = load_benchmark(qa)
    assert [it.id for it in bench.items][:2] == ["Spanish:0", "Spanish:1"] and not bench.malformed
    ev = eval.data.load_benchmark(qa)["Spanish"].items
    assert [(it.qid, it.question) for it in ev] == [(it.id, it.question) for it in bench.items]
    docs, _ = planted
    item0 = json.loads(raw.decode().splitlines()[0])
    leak = {"id": "leak", "text": item0["question"], "lang": "es", "source": "t"}
    inp = _write_input(tmp_path / "in", {"es": docs["es"][:5] + [leak]}, files_per_lang=1)
    res = run_decontam(inp, qa, tmp_path / "out", DecontamConfig(), show_progress=False)
    assert res.matched_items == {"Spanish:0": 1}
    # MMedBench's own list-valued options are read the same way by both
    (qa / "Spanish.jsonl").write_text(
        json.dumps({**item0, "options": list(item0["options"].values())}) + "\n"
    )
    assert load_benchmark(qa).items[0].options == tuple(item0["options"][k] for k in sorted(item0["options"]))


def test_truncated_input_file_keeps_the_readable_part_and_records_the_rest(shared_data, tmp_path):
    docs = _read_corpus(shared_data)["en"]
    inp = _write_input(tmp_path / "in", {"en": docs}, files_per_lang=1)
    f = inp / "kept" / "en" / "shard-0000.jsonl.zst"
    f.write_bytes(f.read_bytes()[: f.stat().st_size * 2 // 3])
    res = run_decontam(inp, shared_data / "qa", tmp_path / "out", DecontamConfig(), show_progress=False)
    kept = [r for recs in _records(tmp_path / "out", "kept").values() for r in recs]
    rejected = [r for recs in _records(tmp_path / "out", "rejected").values() for r in recs]
    assert 0 < len(kept) < len(docs) and kept == docs[: len(kept)]
    assert [r["reason"] for r in rejected] == ["unreadable"]
    assert "shard-0000.jsonl.zst" in rejected[0]["detail"] and "byte 0" in rejected[0]["detail"]
    assert res.stats.drops["en"] == {"unreadable": 1}


def test_output_inside_the_input_is_refused(shared_data, tmp_path):
    inp = _write_input(tmp_path / "in", {"en": _read_corpus(shared_data)["en"][:3]}, files_per_lang=1)
    for out in (inp, inp / "clean"):
        with pytest.raises(UserError, match="inside the input"):
            run_decontam(inp, shared_data / "qa", out, DecontamConfig(), show_progress=False)
    assert not (inp / "clean").exists()


def test_a_changed_input_is_refused_not_mixed(shared_data, tmp_path):
    corpus = _read_corpus(shared_data)
    a = _write_input(tmp_path / "a", {"en": corpus["en"][:20], "es": corpus["es"][:20]})
    b = _write_input(tmp_path / "b", {"en": corpus["en"][20:40]})
    run_decontam(a, shared_data / "qa", tmp_path / "out", DecontamConfig(), show_progress=False)
    with pytest.raises(UserError, match="another config or input.*other input"):
        run_decontam(b, shared_data / "qa", tmp_path / "out", DecontamConfig(), show_progress=False)


def test_a_folder_in_use_is_refused(shared_data, tmp_path):
    from megatron_mmed.common.lock import FileLock, LockBusyError

    inp = _write_input(tmp_path / "in", {"en": _read_corpus(shared_data)["en"][:3]}, files_per_lang=1)
    (tmp_path / "o").mkdir()
    with (
        FileLock(tmp_path / "o" / ".lock").acquire("mmed decontam"),
        pytest.raises(LockBusyError, match="in use"),
    ):
        run_decontam(inp, shared_data / "qa", tmp_path / "o", DecontamConfig(), show_progress=False)
    assert sorted(p.name for p in (tmp_path / "o").iterdir()) == [".lock"]

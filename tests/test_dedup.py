"""mmed dedup on real text of all six languages: exact and near duplicates, no false merges, restartability.

The input is a prep-layout folder built from ``shared_data/corpus`` plus planted exact copies and near copies
(a few % of tokens edited by ``synthetic.near_copy``).
"""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from datasketch import MinHash, MinHashLSH

from megatron_mmed.common.config import ConfigError, load_config
from megatron_mmed.common.errors import UserError
from megatron_mmed.common.io import JsonlZstWriter, read_jsonl_zst
from megatron_mmed.common.slurm import array_rank_world
from preprocessing.dedup import SUBSTAGES, DedupConfig, run_dedup
from preprocessing.dedup.clusters import choose_kept, connected_components
from preprocessing.dedup.lsh import bucket_pairs, choose_banding
from preprocessing.dedup.minhash import agreement, signatures_datasketch, signatures_numpy
from preprocessing.dedup.shingles import hash_batch
from preprocessing.dedup.synthetic import near_copy, tokens_of
from preprocessing.document import LANGS
from preprocessing.layout import iter_kept, iter_rejected

QUIET = {"show_progress": False, "log": lambda s: None}
#: the one true near-duplicate pair of the shared corpus (same clinical case; the explanation of 0157 is
#: nearly contained in 0158's; exact word-bigram Jaccard 0.573, just under the 0.6 threshold)
CORPUS_NEAR_DUPS = {"fr-med-casimedicos-train-0157", "fr-med-casimedicos-train-0158"}
SHARDS_PER_LANG = 8


def _corpus(shared_data: Path, lang: str) -> list[dict]:
    with open(shared_data / "corpus" / f"{lang}.jsonl", encoding="utf-8") as fh:
        return [json.loads(line) for line in fh if line.strip()]


def _write_prep_layout(root: Path, recs_by_lang: dict[str, list[dict]], shards: int) -> None:
    for lang, recs in recs_by_lang.items():
        for s in range(shards):
            with JsonlZstWriter(root / "kept" / lang / f"{s:05d}.jsonl.zst", create_empty=True) as w:
                for r in recs[s::shards]:
                    w.write(r)


def _expected_kept(group: list[dict]) -> str:
    return sorted(group, key=lambda r: (-len(r["text"]), r["id"]))[0]["id"]


def _tree_bytes(root: Path) -> dict[str, bytes]:
    files = sorted(
        [*root.glob("kept/*/*.jsonl.zst"), *root.glob("rejected/*.jsonl.zst"), root / "report.json"]
    )
    return {str(f.relative_to(root)): f.read_bytes() for f in files}


@pytest.fixture(scope="module")
def planted(shared_data: Path, tmp_path_factory) -> dict:
    """Input folder: the whole corpus + exact copies + near copies, 8 shards per language, odd docs."""
    rng = random.Random(7)
    root = tmp_path_factory.mktemp("dedup_in")
    recs_by_lang, groups = {}, []
    for lang in LANGS:
        docs = _corpus(shared_data, lang)
        vocab = [t for d in docs for t in tokens_of(d["text"], lang)]
        recs = [{"id": d["id"], "text": d["text"], "lang": lang, "source": d["source"]} for d in docs]
        recs[0]["scores"] = {"medical": 0.9, "quality": {"ok": True}}  # extra fields survive unchanged
        for k, d in enumerate(rng.sample(docs, 6)):
            orig = {"id": d["id"], "text": d["text"]}
            if k < 2:  # exact: identical, or differing only in case and whitespace
                text = d["text"] if k == 0 else "  " + d["text"].upper().replace(" ", "  ")
                copy = {"id": d["id"] + "~exact", "text": text, "lang": lang, "source": "copy"}
                groups.append(("dup:exact", lang, [orig, copy]))
            else:
                kind = ("del", "sub", "swap", "typo")[k - 2]
                text = near_copy(d["text"], lang, 0.03, kind, rng, vocab)
                copy = {"id": d["id"] + f"~{kind}", "text": text, "lang": lang, "source": "copy"}
                groups.append(("dup:near", lang, [orig, copy]))
            recs.append(copy)
        recs += [
            {"id": f"{lang}-odd-empty", "text": "", "lang": lang, "source": "odd"},
            {"id": f"{lang}-odd-one-token", "text": "Hypertension", "lang": lang, "source": "odd"},
            {"id": f"{lang}-odd-punct", "text": "!!! ... ???", "lang": lang, "source": "odd"},
        ]
        recs_by_lang[lang] = recs
    _write_prep_layout(root, recs_by_lang, SHARDS_PER_LANG)
    return {"input": root, "groups": groups, "records": recs_by_lang}


@pytest.fixture(scope="module")
def reference(planted: dict, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("dedup_ref")
    result = run_dedup(planted["input"], out, DedupConfig(workers=1), **QUIET)
    assert result.complete and not (out / ".work").exists()  # work folder dropped by default
    return out


# --------------------------------------------------------------------------------------------- components
def test_signatures_are_datasketch_minhashes():
    texts = ["The patient, aged 54, had fever for 3 days.", "病人发热三天，伴咳嗽。", "", "word"]
    _, h, off = hash_batch(texts, 2, cjk=False)
    ours = signatures_numpy(h, off, 128, 1)
    assert np.array_equal(ours, signatures_datasketch(h, off, 128, 1))
    for i in range(len(texts)):  # one datasketch MinHash per document, fed our shingle hashes
        m = MinHash(num_perm=128, seed=1, hashfunc=int)
        m.update_batch(h[off[i] : off[i + 1]].tolist())
        assert np.array_equal(ours[i], m.hashvalues)


def test_shingles_normalise_case_punctuation_digits_and_width():
    ex, h, off = hash_batch(["Dose: 10 mg, twice!", "dose 5 MG twice", "ＤＯＳＥ　１０ｍｇ"], 2, cjk=False)
    first, second = set(h[off[0] : off[1]]), set(h[off[1] : off[2]])
    assert first == second and len(first) == 3  # "dose 0", "0 mg", "mg twice"
    assert not np.array_equal(ex[0], ex[1])  # exact keys keep digits
    _, h2, off2 = hash_batch(["病人發熱", "病人 发热", "x"], 2, cjk=True)
    assert list(np.diff(off2)) == [3, 3, 1]  # character bigrams; whitespace ignored; 1 char -> 1 shingle
    _, h3, off3 = hash_batch(["", "!!!", "one"], 3, cjk=False)
    assert list(np.diff(off3)) == [0, 0, 1]  # no tokens -> no shingle; fewer than n -> whole text


def test_banding_follows_datasketch_rule():
    for threshold in (0.5, 0.7, 0.8):
        lsh = MinHashLSH(threshold=threshold, num_perm=128)
        b = choose_banding(threshold, 128, 0.5, 0.5)
        assert (b.bands, b.rows) == (lsh.b, lsh.r)
    default = choose_banding(0.6, 128, DedupConfig().fp_weight, DedupConfig().fn_weight)
    assert default.probability(0.6) > 0.8 and default.probability(0.3) < 0.1


def test_bucket_pairs_and_clusters():
    keys = np.array([5, 5, 5, 1, 2, 2, 9, 9, 9, 9], dtype=np.uint64)
    docs = np.arange(10, dtype=np.uint64)
    a, b = bucket_pairs(keys, docs, max_all_pairs=3)
    pairs = set(zip(a.tolist(), b.tolist()))
    assert pairs == {(0, 1), (0, 2), (1, 2), (4, 5), (6, 7), (6, 8), (6, 9), (7, 8), (8, 9)}
    nodes, labels = connected_components(np.array([1, 2, 7], np.uint64), np.array([2, 3, 8], np.uint64))
    assert labels.tolist() == [0, 0, 0, 3, 3]
    kept = choose_kept(labels, np.array([5, 9, 9, 1, 1]), np.array(["a", "c", "b", "y", "x"]), nodes)
    assert kept.tolist() == [2, 2, 2, 4, 4]  # longest, then smallest id


def test_config_validation_and_slurm_env(monkeypatch):
    with pytest.raises(ConfigError, match="threshold"):
        load_config(DedupConfig, None, ["threshold=1.5"])
    with pytest.raises(ConfigError, match="bands and rows"):
        load_config(DedupConfig, None, ["bands=10"])
    with pytest.raises(ConfigError, match="workers must be >= 1"):  # a config field, as in every stage
        load_config(DedupConfig, None, ["workers=0"])
    monkeypatch.setenv("SLURM_ARRAY_TASK_ID", "5")
    monkeypatch.setenv("SLURM_ARRAY_TASK_MIN", "4")
    monkeypatch.setenv("SLURM_ARRAY_TASK_COUNT", "3")
    assert array_rank_world(None, None) == (1, 3)
    assert array_rank_world(2, 4) == (2, 4)  # flags win over the environment


# ------------------------------------------------------------------------------------------------ results
def test_exact_and_near_dups_found_in_all_languages(planted: dict, reference: Path):
    rejected = {r["id"]: r for r in iter_rejected(reference)}
    found_langs = {"dup:exact": set(), "dup:near": set()}
    for reason, lang, group in planted["groups"]:
        kept_id = _expected_kept(group)
        removed = [g for g in group if g["id"] != kept_id]
        for g in removed:
            rec = rejected.get(g["id"])
            assert rec is not None, f"{reason} copy not found: {g['id']}"
            assert (rec["reason"], rec["kept_id"], rec["lang"]) == (reason, kept_id, lang), rec
            if reason == "dup:near":
                assert 0.6 <= rec["jaccard"] < 1.0
            found_langs[reason].add(lang)
    assert found_langs["dup:exact"] == found_langs["dup:near"] == set(LANGS)


def test_no_false_merges_and_survivors_unchanged(planted: dict, reference: Path):
    planted_ids = {g["id"] for _, _, group in planted["groups"] for g in group}
    for r in iter_rejected(reference):
        pair = {r["id"], r["kept_id"]}
        assert pair <= planted_ids or pair <= CORPUS_NEAR_DUPS, f"false merge: {r}"
    kept = {r["id"]: r for r in iter_kept(reference)}
    n_rejected = sum(1 for _ in iter_rejected(reference))
    for recs in planted["records"].values():
        for rec in recs:
            if rec["id"] in kept:
                assert kept[rec["id"]] == rec  # every field, including scores
    assert len(kept) + n_rejected == sum(len(v) for v in planted["records"].values())
    for lang in LANGS:  # empty, one-token and punctuation-only documents pass through
        assert {f"{lang}-odd-empty", f"{lang}-odd-one-token", f"{lang}-odd-punct"} <= kept.keys()
    report = json.loads((reference / "report.json").read_text())
    assert report["stage"] == "dedup" and report["dedup"]["bands"] * report["dedup"]["rows"] <= 128
    assert report["totals"]["docs_out"] == len(kept)
    assert set(report["dedup"]["languages"]) == set(LANGS)
    assert (reference / "config.yaml").is_file() and (reference / "report.md").is_file()


def test_no_false_merges_on_the_shared_corpus(shared_data: Path, tmp_path: Path):
    recs = {
        lg: [
            {"id": d["id"], "text": d["text"], "lang": lg, "source": d["source"]}
            for d in _corpus(shared_data, lg)
        ]
        for lg in LANGS
    }
    recs["de"] = []  # a language folder without documents is fine
    _write_prep_layout(tmp_path / "in", recs, 2)
    run_dedup(tmp_path / "in", tmp_path / "out", DedupConfig(), **QUIET)
    merged = {r["id"] for r in iter_rejected(tmp_path / "out")}
    assert merged <= CORPUS_NEAR_DUPS, f"distinct corpus documents merged: {sorted(merged)}"
    assert sum(1 for _ in iter_kept(tmp_path / "out")) == sum(len(v) for v in recs.values()) - len(merged)


@pytest.mark.slow  # a process pool, then 3 ranks x 4 stages
def test_same_output_for_workers_and_rank_splits(planted: dict, reference: Path, tmp_path: Path):
    want = _tree_bytes(reference)
    run_dedup(planted["input"], tmp_path / "w2", DedupConfig(workers=2), **QUIET)
    assert _tree_bytes(tmp_path / "w2") == want
    assert "workers: 2" in (tmp_path / "w2" / "config.yaml").read_text()
    for stage in SUBSTAGES:  # as a slurm array of 3 tasks per stage, each stage after the previous one
        for rank in range(3):
            run_dedup(
                planted["input"],
                tmp_path / "r3",
                DedupConfig(),
                stage=stage,
                rank=rank,
                world_size=3,
                **QUIET,
            )
    assert _tree_bytes(tmp_path / "r3") == want


def test_resumed_run_must_use_the_same_settings(planted: dict, tmp_path: Path):
    run_dedup(planted["input"], tmp_path / "o", DedupConfig(), stage="signatures", **QUIET)
    with pytest.raises(UserError, match="other settings"):
        run_dedup(planted["input"], tmp_path / "o", DedupConfig(threshold=0.7), **QUIET)
    with pytest.raises(UserError, match="signature task"):
        run_dedup(planted["input"], tmp_path / "o2", DedupConfig(), stage="buckets", **QUIET)


def _mmed(*args: str) -> list[str]:
    exe = Path(sys.executable).with_name("mmed")
    return [str(exe), *args] if exe.exists() else [sys.executable, "-m", "megatron_mmed.cli", *args]


@pytest.mark.slow  # a CLI process killed mid-run
def test_cli_kill9_resume_is_identical(planted: dict, reference: Path, tmp_path: Path):
    out = tmp_path / "out"
    cmd = _mmed("dedup", "--input", str(planted["input"]), "--output", str(out), "--no-progress")
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    sig_markers = out / ".work" / ".done" / "signatures"
    deadline = time.monotonic() + 60
    while not any(sig_markers.glob("*.json")) and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.005)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    if proc.returncode != -signal.SIGKILL:
        pytest.fail(f"dedup ended before it could be killed (rc {proc.returncode}): {proc.stderr.read()!r}")
    done = len(list(sig_markers.glob("*.json")))
    assert 0 < done < len(LANGS) * SHARDS_PER_LANG and not (out / "report.json").exists()
    rerun = subprocess.run(cmd, capture_output=True, text=True)
    assert rerun.returncode == 0, rerun.stderr
    assert f"{len(LANGS) * SHARDS_PER_LANG - done} to run" in rerun.stdout  # finished tasks were skipped
    assert _tree_bytes(out) == _tree_bytes(reference)
    assert not list(out.rglob("*.tmp"))
    for r in read_jsonl_zst(next((out / "rejected").glob("*.jsonl.zst"))):
        assert r["reason"] in ("dup:exact", "dup:near") and r["id"] and r["kept_id"]


def test_cli_rejects_input_that_is_not_a_prep_output(tmp_path: Path):
    (tmp_path / "raw").mkdir()
    res = subprocess.run(
        _mmed("dedup", "--input", str(tmp_path / "raw"), "--output", str(tmp_path / "o")),
        capture_output=True,
        text=True,
    )
    assert res.returncode == 2 and "not a preprocessing output" in res.stderr
    assert len(res.stderr.strip().splitlines()) == 1


def test_near_copy_edits_are_detectable_by_estimate():
    rng = random.Random(0)
    text = " ".join("".join(rng.choice("abcdefghij") for _ in range(6)) for _ in range(400))
    est = []
    for kind in ("del", "ins", "sub", "swap", "typo", "boiler"):
        copy = near_copy(text, "en", 0.05, kind, rng, ["zz"])
        assert copy != text
        _, h, off = hash_batch([text, copy], 2, cjk=False)
        sig = signatures_numpy(h, off, 128, 1)
        est.append(float(agreement(sig[0], sig[1])))
    assert min(est) > 0.7, est


def test_truncated_input_file_keeps_the_readable_part_and_records_the_rest(shared_data: Path, tmp_path: Path):
    recs = {
        lg: [{"id": d["id"], "text": d["text"], "lang": lg} for d in _corpus(shared_data, lg)]
        for lg in ("en", "ru")
    }
    _write_prep_layout(tmp_path / "in", recs, 1)
    f = tmp_path / "in" / "kept" / "en" / "00000.jsonl.zst"
    f.write_bytes(f.read_bytes()[: f.stat().st_size * 2 // 3])  # cut inside its single frame
    run_dedup(tmp_path / "in", tmp_path / "out", DedupConfig(), **QUIET)
    kept = [r for r in iter_kept(tmp_path / "out", "en")]
    bad = [r for r in iter_rejected(tmp_path / "out") if r["reason"] == "unreadable"]
    assert 0 < len(kept) < len(recs["en"]) and kept == recs["en"][: len(kept)]  # nothing in en is a dup
    assert len(bad) == 1 and bad[0]["lang"] == "en" and "00000.jsonl.zst" in bad[0]["detail"]
    assert "byte 0" in bad[0]["detail"] and f"after {len(kept)} complete lines" in bad[0]["detail"]
    assert len(list(iter_kept(tmp_path / "out", "ru"))) == len(recs["ru"])
    report = json.loads((tmp_path / "out" / "report.json").read_text())
    assert report["languages"]["en"]["drops"] == {"unreadable": 1}


def test_output_inside_the_input_is_refused(planted: dict):
    for out in (planted["input"], planted["input"] / "dedup"):
        with pytest.raises(UserError, match="inside the input"):
            run_dedup(planted["input"], out, DedupConfig(), **QUIET)
    assert not (planted["input"] / "dedup").exists()


def test_a_changed_input_is_refused_not_mixed(shared_data: Path, tmp_path: Path):
    recs = {
        lg: [{"id": d["id"], "text": d["text"], "lang": lg} for d in _corpus(shared_data, lg)] for lg in LANGS
    }
    _write_prep_layout(tmp_path / "a", recs, 2)
    _write_prep_layout(tmp_path / "b", {lg: r[:50] for lg, r in recs.items()}, 3)
    run_dedup(tmp_path / "a", tmp_path / "out", DedupConfig(), **QUIET)
    for other in ("b", "a"):
        if other == "a":  # the same folder, one file rewritten since
            time.sleep(0.01)
            _write_prep_layout(tmp_path / "a", {"en": recs["en"][:10]}, 2)
        with pytest.raises(UserError, match="another config or input.*other input"):
            run_dedup(tmp_path / other, tmp_path / "out", DedupConfig(), **QUIET)
    # a sub-stage of an array on a finished folder is refused the same way
    with pytest.raises(UserError, match="other input"):
        run_dedup(
            tmp_path / "b", tmp_path / "out", DedupConfig(), stage="filter", rank=1, world_size=2, **QUIET
        )


def test_an_incomplete_input_is_refused(planted: dict, tmp_path: Path):
    import shutil

    inp = tmp_path / "prep"
    shutil.copytree(planted["input"], inp)
    (inp / ".done" / "prep").mkdir(parents=True)  # a prep output whose report is not written yet
    with pytest.raises(UserError, match="not complete"):
        run_dedup(inp, tmp_path / "out", DedupConfig(), **QUIET)


def test_a_stage_refuses_to_run_before_the_stage_it_reads(planted: dict, tmp_path: Path):
    out = tmp_path / "o"
    run_dedup(planted["input"], out, DedupConfig(), stage="signatures", **QUIET)
    with pytest.raises(UserError, match="clusters: .*bucket task.*--stage buckets"):
        run_dedup(planted["input"], out, DedupConfig(), stage="clusters", rank=1, world_size=2, **QUIET)
    run_dedup(planted["input"], out, DedupConfig(), stage="buckets", **QUIET)
    with pytest.raises(UserError, match="filter: .*cluster task.*--stage clusters"):
        run_dedup(planted["input"], out, DedupConfig(), stage="filter", **QUIET)
    assert not (out / "report.json").exists() and not list((out / ".done").glob("dedup-filter/*-*.json"))


@pytest.mark.slow  # three CLI processes, two at once
def test_all_stages_over_two_concurrent_ranks_and_a_dead_peer(planted: dict, reference: Path, tmp_path: Path):
    def rank(r: int, out: Path, *extra: str) -> subprocess.Popen:
        cmd = _mmed("dedup", "--input", str(planted["input"]), "--output", str(out), "--no-progress")
        return subprocess.Popen(
            [*cmd, "--rank", str(r), "--world-size", "2", *extra],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
        )

    # rank 1 never runs: rank 0 does its share, then says so instead of waiting forever
    alone = rank(0, tmp_path / "alone", "peer_timeout_s=1")
    _, err = alone.communicate(timeout=300)
    assert alone.returncode == 2 and "rank 1/2 has" in err and "not been running" in err, err
    assert len(err.strip().splitlines()) == 1 and not (tmp_path / "alone" / "report.json").exists()
    # both ranks at once (each waits for the other between stages): the same output as one process
    procs = [rank(r, tmp_path / "both") for r in (0, 1)]
    for p in procs:
        _, err = p.communicate(timeout=600)
        assert p.returncode == 0, err
    assert _tree_bytes(tmp_path / "both") == _tree_bytes(reference)


@pytest.mark.slow  # two CLI runs on a tmpfs
def test_full_disk_is_a_one_line_error_and_a_rerun_completes(planted: dict, reference: Path, tmp_path: Path):
    from fault_helpers import grow, small_disk

    with small_disk(tmp_path / "disk", "300k") as disk:
        cmd = _mmed("dedup", "--input", str(planted["input"]), "--output", str(disk / "out"), "--no-progress")
        res = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
        assert res.returncode == 2 and "No space left on device" in res.stderr, res.stderr[-2000:]
        assert len(res.stderr.strip().splitlines()) == 1 and not list(disk.rglob("*.tmp"))
        assert not (disk / "out" / "report.json").exists()
        grow(disk, "32m")
        res = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
        assert res.returncode == 0, res.stderr
        assert _tree_bytes(disk / "out") == _tree_bytes(reference)


def test_a_folder_in_use_is_refused(planted: dict, tmp_path: Path):
    from megatron_mmed.common.lock import FileLock, LockBusyError

    (tmp_path / "o").mkdir()
    with (
        FileLock(tmp_path / "o" / ".lock").acquire("mmed dedup"),
        pytest.raises(LockBusyError, match="in use"),
    ):
        run_dedup(planted["input"], tmp_path / "o", DedupConfig(), **QUIET)
    assert sorted(p.name for p in (tmp_path / "o").iterdir()) == [".lock"]


def test_a_full_disk_while_saving_an_array_carries_its_errno(tmp_path: Path):
    """numpy's own ``tofile`` reports a full disk as a bare "N requested and M written" (no errno), which the
    stages could not tell from a bug; the work arrays are written so that ENOSPC reaches output_errors."""
    import errno

    from fault_helpers import small_disk

    from preprocessing.dedup.stages import _save

    with small_disk(tmp_path / "disk", "64k") as disk:
        with pytest.raises(OSError) as info:
            _save(disk / "big.npy", np.arange(1 << 16, dtype=np.uint32))
        assert info.value.errno == errno.ENOSPC
        assert not list(disk.iterdir())  # the temp file is gone too

"""The peer benchmarks' instruments (``benchmarks/*_peers.py``, ``benchmarks/peers/``) on tiny input.

No peers venv is needed: the scripts run with ``--ours-only``; the shared pieces (the planted-cluster input,
the one scoring function, the strings fed to the peers as "our shingles", the process-tree meter and the
phase profile) are checked against what they claim, so a benchmark number cannot rest on a broken meter.
"""

from __future__ import annotations

import json
import subprocess
import sys
from collections import Counter
from pathlib import Path

import numpy as np
import pytest

from benchmarks.peers.dedup_data import build_input, read_truth, score
from benchmarks.peers.measure import run_measured
from benchmarks.peers.profiling import phase_table, profile_call
from benchmarks.peers.shingles import ngrams, shingle_set
from megatron_mmed.common.io import read_jsonl_zst
from preprocessing.dedup.shingles import hash_batch

REPO = Path(__file__).resolve().parents[1]


# ------------------------------------------------------------------------------------------- shingles
def test_peer_shingles_are_ours(shared_data: Path) -> None:
    """The strings handed to rensa/datatrove are our shingles: per document, the same number of n-gram
    positions and of distinct n-grams as ours hashes (on every corpus document of every language)."""
    checked = Counter()
    for f in sorted((shared_data / "corpus").glob("*.jsonl")):
        lang = f.stem
        texts = [json.loads(x)["text"] for x in f.read_text(encoding="utf-8").splitlines() if x.strip()]
        texts += ["", "!!", "a", "Tension artérielle 120/80 mmHg, 37.5 ℃.", "一"]
        cjk = lang in ("zh", "ja")
        _, h, off = hash_batch(texts, 2, cjk)
        for i, t in enumerate(texts):
            mine = h[off[i] : off[i + 1]]
            grams = ngrams(t, lang)
            assert len(grams) == len(mine), (lang, i, t[:80])
            assert len(shingle_set(t, lang)) == len(np.unique(mine)), (lang, i, t[:80])
            checked[lang] += 1
    assert set(checked) == {"en", "es", "fr", "ja", "ru", "zh"}


def test_peer_shingles_fold_as_ours() -> None:
    """Case, digits and punctuation fold away; an edit changes the n-grams (the view is not trivial)."""
    assert ngrams("The BP was 120/80, then 95.", "en") == [
        "the bp",
        "bp was",
        "was 0",
        "0 0",
        "0 then",
        "then 0",
    ]
    assert ngrams("血压１２０。正常", "zh") == ["血压", "压0", "0正", "正常"]
    assert ngrams("one two", "en") == ["one two"] and ngrams("x", "en") == ["x"] and ngrams("...", "fr") == []


# --------------------------------------------------------------------------------------- input + score
def test_dedup_input_records_its_clusters(tmp_path: Path) -> None:
    """Every written document is in the truth, copies point at an original of their language, the files are
    in prep's layout, and a second call reuses the cache instead of rebuilding."""
    inp = build_input(240, seed=3, dup_rate=0.3, cache=tmp_path, shard_docs=25, log=lambda s: None)
    truth = read_truth(inp.truth)
    written = {}
    for f in sorted(inp.kept.glob("*/*.jsonl.zst")):
        for r in read_jsonl_zst(f):
            assert r["lang"] == f.parent.name
            written[r["id"]] = r
    assert len(written) == inp.docs == 240 == len(truth)
    assert set(written) == set(truth)
    sizes = Counter(truth.values())
    copies = [i for i, (lang, c) in truth.items() if c != i]
    assert len(copies) > 30 and all(truth[truth[i][1]] == (truth[i][0], truth[i][1]) for i in copies)
    assert max(sizes.values()) >= 2 and {lg for lg, _ in sizes} == {"en", "es", "fr", "ja", "ru", "zh"}
    labels = {line.split("\t")[3].strip() for line in inp.truth.read_text().splitlines()}
    assert "exact" in labels and any(lb.startswith("del") for lb in labels) and "original" in labels
    stamp = (inp.root / "meta.json").stat().st_mtime_ns
    again = build_input(240, seed=3, dup_rate=0.3, cache=tmp_path, shard_docs=25, log=pytest.fail)
    assert again == inp and (inp.root / "meta.json").stat().st_mtime_ns == stamp


def test_dedup_input_gives_two_workers_files_in_every_language(tmp_path: Path) -> None:
    """datatrove's tasks are the files of one language: each language gets >= 4 files, so 2 workers share
    the work in every stage of every method (one 10,000-document file per language would idle one)."""
    inp = build_input(1200, cache=tmp_path, log=lambda s: None)
    files = Counter(f.parent.name for f in inp.kept.glob("*/*.jsonl.zst"))
    assert len(files) == 6 and min(files.values()) >= 4


def test_score_counts_each_cluster_once() -> None:
    """A k-cluster should lose k-1 members (any of them); over-removal and unknown ids are false positives."""
    truth = {
        "a": ("en", "a"),
        "a1": ("en", "a"),
        "a2": ("en", "a"),
        "b": ("en", "b"),
        "c": ("zh", "c"),
        "c1": ("zh", "c"),
    }
    perfect = score(truth, ["a", "a2", "c1"])  # removing the original instead of a copy is fine
    assert perfect["en"]["f1"] == perfect["zh"]["f1"] == 1.0
    s = score(truth, ["a1", "b", "x"])
    assert (s["en"]["tp"], s["en"]["fp"], s["en"]["fn"]) == (1, 1, 1)
    assert s["zh"]["fn"] == 1 and s["zh"]["f1"] == 0.0 and s["?"]["fp"] == 1
    over = score(truth, ["a", "a1", "a2"])
    assert (over["en"]["tp"], over["en"]["fp"]) == (2, 1) and over["en"]["precision"] == pytest.approx(2 / 3)
    assert score(truth, [])["en"] == {"tp": 0, "fp": 0, "fn": 2, "precision": 1.0, "recall": 0.0, "f1": 0.0}


# ------------------------------------------------------------------------------------------- measuring
_TREE = """
import subprocess, sys, tempfile, time
barrier = tempfile.mkdtemp()
# each child touches 300 MB, says so, and holds it until both have: on a loaded box one child's start-up can
# outlast the other's whole life, and the tree peak must see both at once whatever the load
code = (
    "import os, sys, time; b = bytearray(300 * 2**20); b[::4096] = b'x' * len(b[::4096]); d = sys.argv[1]; "
    "open(os.path.join(d, sys.argv[2]), 'w').close(); "
    "[time.sleep(0.02) for _ in iter(lambda: len(os.listdir(d)) >= 2, True)]; time.sleep(1.0)"
)
kids = [subprocess.Popen([sys.executable, "-c", code, barrier, str(i)]) for i in range(2)]
t = time.process_time()
while time.process_time() - t < 0.4:
    pass
sys.exit(sum(k.wait() for k in kids) + 3)
"""


def test_measure_sees_the_whole_process_tree(tmp_path: Path) -> None:
    """Two grandchildren touching 300 MB each: the tree peak holds both, the largest process one; CPU seconds
    include the busy loop; the exit status and the logs come back."""
    m = run_measured([sys.executable, "-c", _TREE], log_dir=tmp_path / "logs")
    assert m.returncode == 3 and not m.ok
    assert m.peak_tree_rss_mb > 600 and m.peak_tree_pss_mb > 500
    assert 300 < m.max_process_rss_mb < 500
    assert m.cpu_s >= 0.4 and m.wall_s >= 1.0 and m.samples > 5
    assert (tmp_path / "logs" / "stderr.txt").is_file()
    at_peak = m.peak_processes  # the peak sample, process by process: the two 300 MB grandchildren
    assert sum(p["rss_mb"] for p in at_peak) == pytest.approx(m.peak_tree_rss_mb)
    big = [p for p in at_peak if p["rss_mb"] > 300]
    assert len(big) == 2 and {p["ppid"] for p in big} == {at_peak[0]["pid"]}, at_peak
    assert all(p["cmd"].startswith("python") for p in at_peak), at_peak
    ok = run_measured([sys.executable, "-c", "print('hi')"])
    assert ok.ok and ok.stdout.strip() == "hi"


_ORPHANS = """
import os, sys, tempfile, time
done = tempfile.mkdtemp()
for i in range(2):
    if os.fork() == 0:  # a worker its parent never waits for (as datatrove's pool workers at --workers 2)
        t = time.process_time()
        while time.process_time() - t < 0.6:
            pass
        open(os.path.join(done, str(i)), "w").close()
        time.sleep(1.0)  # alive (then a zombie nobody reaps) while the wrapper samples its final CPU time
        os._exit(0)
while len(os.listdir(done)) < 2:  # on a loaded box the workers' 0.6 CPU s can take many seconds of wall
    time.sleep(0.02)
time.sleep(0.5)
os._exit(0)
"""


def test_measure_counts_cpu_of_workers_nobody_waited_for() -> None:
    """getrusage(RUSAGE_CHILDREN) only sees reaped descendants: workers left to init vanish from it (datatrove
    at 2 workers read 1.1 CPU s for a 290 s run). Sampled per-process CPU times catch them."""
    m = run_measured([sys.executable, "-c", _ORPHANS], interval=0.05)
    assert m.ok and m.cpu_s >= 1.0, m
    assert m.extra["cpu_s_rusage"] < 0.6 <= 1.0 <= m.extra["cpu_s_sampled"]


def _phase_a(n: int) -> int:
    return sum(sorted(range(n)))


def _phase_b(n: int) -> int:
    return sum(x * x for x in range(n))


def _unnamed_helper(n: int) -> int:
    return _phase_b(n) + sum(sorted(range(n, 0, -1)))


def test_profile_groups_time_by_phase() -> None:
    """Own time of unnamed callees (``sorted``, the helper) goes to the named phase that called them."""
    here = Path(__file__).name
    rules = [("phase A", here, r"^_phase_a$"), ("phase B", here, r"^_phase_b|<genexpr>$")]
    lines: list[str] = []
    table = profile_call(lambda: (_phase_a(400_000), _unnamed_helper(400_000)), rules, "t", lines.append)
    assert table["phase A"]["seconds"] > 0 and table["phase B"]["seconds"] > 0
    assert "other" in table  # _unnamed_helper's own sorted() reaches no named function
    assert any("phase A" in line for line in lines) and lines[0].startswith("\nprofile: t")


def test_profile_puts_lazy_imports_in_their_own_phase() -> None:
    """A module imported inside the profiled call (as mmed tokenize imports megatron-core and matplotlib)
    is start-up, not "other": its body and the import system's own work land in the imports phase."""
    sys.modules.pop("json.tool", None)
    table = profile_call(lambda: __import__("json.tool"), [], "t", lambda s: None)
    assert table["imports (lazy, inside the call)"]["seconds"] > 0
    assert (
        "other" not in table
        or table["other"]["seconds"] < table["imports (lazy, inside the call)"]["seconds"]
    )


def test_profile_table_is_fast_on_a_wide_call_graph() -> None:
    """Imports and plotting make call graphs where paths multiply (here 3**30 from the leaves up): the phase
    table visits each function once, and splits a leaf's time by the time spent per caller."""
    import time
    from types import SimpleNamespace

    def fn(layer: int, k: int) -> tuple[str, int, str]:
        return ("lib/x.py", layer, f"f{k}")

    raw = {("t.py", 0, "named"): (1, 1, 0.0, 3.0, {})}
    for k in range(3):
        raw[fn(0, k)] = (1, 1, 0.0, 1.0, {("t.py", 0, "named"): (1, 1, 0.0, 1.0)})
    for layer in range(1, 31):
        for k in range(3):
            callers = {fn(layer - 1, j): (1, 1, 0.0, 0.1) for j in range(3)}
            raw[fn(layer, k)] = (3, 3, 0.0, 0.3, callers)
    raw[("leaf.py", 1, "leaf")] = (
        2,
        2,
        2.0,
        2.0,
        {fn(30, 0): (1, 1, 1.5, 1.5), ("t.py", 9, "other_root"): (1, 1, 0.5, 0.5)},
    )
    t0 = time.perf_counter()
    table = phase_table(SimpleNamespace(stats=raw), [("named", "t.py", r"^named$")])
    assert time.perf_counter() - t0 < 5
    assert table["named"]["seconds"] == pytest.approx(1.5) and table["other"]["seconds"] == pytest.approx(0.5)


def test_profile_follows_a_cycle_to_where_it_was_entered() -> None:
    """exec runs a module body, which builds a dataclass, which calls exec again: the inner exec's time and
    the body's belong to whatever imported the module, not to "other"."""
    from types import SimpleNamespace

    imp = ("<frozen importlib._bootstrap>", 1, "_load")
    exe = ("~", 0, "<built-in method builtins.exec>")
    body = ("pkg/mod.py", 1, "<module>")
    make = ("dataclasses.py", 1, "_create_fn")
    raw = {
        imp: (1, 1, 0.1, 4.0, {}),
        exe: (2, 2, 2.0, 3.9, {imp: (1, 1, 1.0, 3.9), make: (1, 1, 1.0, 1.0)}),
        body: (1, 1, 1.0, 3.0, {exe: (1, 1, 1.0, 3.0)}),
        make: (1, 1, 0.5, 1.5, {body: (1, 1, 0.5, 1.5)}),
    }
    table = phase_table(SimpleNamespace(stats=raw), [("imports", "<frozen importlib", "")])
    assert set(table) == {"imports"} and table["imports"]["seconds"] == pytest.approx(3.6)


# -------------------------------------------------------------------------------- the scripts, ours-only
def _script(name: str, *args: str, tmp: Path) -> str:
    cmd = [sys.executable, "-m", f"benchmarks.{name}", "--ours-only", "--workers", "1", "--tmp", str(tmp)]
    proc = subprocess.run([*cmd, *args], cwd=REPO, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
    return proc.stdout


@pytest.mark.slow
def test_dedup_peers_ours_only(tmp_path: Path) -> None:
    out = _script(
        "dedup_peers",
        "--sizes",
        "300",
        "--cache",
        str(tmp_path / "c"),
        "--json",
        str(tmp_path / "r.json"),
        tmp=tmp_path,
    )
    rows = json.loads((tmp_path / "r.json").read_text())
    assert [(r["method"], r["workers"], r["docs"]) for r in rows] == [("ours", 1, 300)]
    r = rows[0]
    assert r["removed"] > 0 and r["wall_s"] > 0 and r["cpu_s"] > 0 and r["peak_tree_rss_mb"] > 50
    assert r["cpu_s"] == max(r["cpu_s_parts"].values()) and r["cpu_s_parts"]["cpu_s_sampled"] > 0
    assert (
        set(r["f1"]) == {"en", "es", "fr", "ja", "ru", "zh"} and min(v["f1"] for v in r["f1"].values()) >= 0.9
    )
    assert (
        "F1 >= 0.95 in every language" in out and "load average" in out and "rensa: the same shingles" in out
    )


@pytest.mark.slow
def test_prep_peers_ours_only(tmp_path: Path) -> None:
    _script(
        "prep_peers", "--docs", "200", "--files", "2", "--cache", str(tmp_path / "c"),
        "--json", str(tmp_path / "r.json"), tmp=tmp_path,
    )  # fmt: skip
    rows = json.loads((tmp_path / "r.json").read_text())
    assert [(r["method"], r["workers"], r["docs"]) for r in rows] == [("ours", 1, 200)]
    assert 0 < rows[0]["kept"] < 200 and rows[0]["docs_per_cpu_s"] > 0


@pytest.mark.slow
def test_tokenize_peers_ours_only(tmp_path: Path) -> None:
    out = _script(
        "tokenize_peers", "--docs", "120", "--files", "2", "--cache", str(tmp_path / "c"),
        "--json", str(tmp_path / "r.json"), tmp=tmp_path,
    )  # fmt: skip
    rows = json.loads((tmp_path / "r.json").read_text())
    assert [r["method"] for r in rows] == ["raw encode (CPU s)", "ours"]
    assert all(r["docs_per_s"] > 0 for r in rows) and "megatron" not in out.lower().split("raw encode")[0]
    # docs per CPU second: the rate a loaded shared machine distorts least (wall includes waiting for a core)
    assert (
        rows[0]["docs_per_cpu_s"] == pytest.approx(120 / rows[0]["cpu_s"]) and rows[1]["docs_per_cpu_s"] > 0
    )
    assert "/CPU s" in out


def test_tokenize_peers_needs_a_checkout_unless_ours_only(tmp_path: Path) -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "benchmarks.tokenize_peers", "--docs", "10", "--cache", str(tmp_path)],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode != 0 and "--megatron-lm DIR" in proc.stderr


def test_list_schedule_hands_tasks_in_order_to_the_first_free_core() -> None:
    from benchmarks.dedup_peers import list_schedule

    assert list_schedule([3.0, 1.0, 1.0, 1.0], 2) == 3.0  # core 2 takes the three short ones
    assert list_schedule([1.0, 1.0, 3.0], 2) == 4.0  # the long last one waits for a free core
    assert list_schedule([2.0, 2.0], 1) == 4.0 and list_schedule([], 3) == 0.0

"""Dedup against the peers a data engineer would pick instead: rensa and datatrove's MinHash pipeline.

    .venv/bin/python -m benchmarks.dedup_peers [--sizes 100000 1000000] [--workers 1 2] [--methods ...]
    .venv/bin/python -m benchmarks.dedup_peers --ours-only --sizes 3000      # no peers venv needed
    .venv/bin/python -m benchmarks.dedup_peers --profile --sizes 100000      # where ours spends its time
    .venv/bin/python -m benchmarks.dedup_peers --scaling --sizes 100000      # ours' N-worker speed-up, idle box

Input: ``benchmarks/peers/dedup_data.py`` (sentences of ../shared/data/corpus, planted exact and edited copies,
known clusters), built once per size under ``benchmarks/.cache``. Methods, each its own subprocess measured by
``benchmarks/peers/measure.py`` (wall and CPU seconds, peak RSS and PSS of the whole process tree):

- ``ours``: ``mmed dedup --input IN --output OUT --workers N`` (its defaults: threshold 0.6, 128 permutations,
  the bands x rows it chooses, word/character bigrams), start-up included;
- ``rensa``, ``datatrove-default``, ``datatrove-ours``: ``benchmarks/peers/dedup_runners.py`` in the peers'
  venv (``benchmarks/.peers-venv``, made on first use from ``benchmarks/peers/requirements.txt``).

Every method reads the same files and writes its survivors; F1 per language comes from what each removed,
through one scoring function (``dedup_data.score``). docs/s per core = docs / (wall x workers).

``--scaling``: on a box that other jobs share, wall clock says little about N workers. Ours then runs in this
process with each ``--workers`` value; every task's marker holds its CPU seconds, which are scheduled on N
idle cores in plan order, one stage after the other (as the pool hands them out), plus this process's own
CPU (start-up, planning, markers, report): the wall an idle N-core box would take.
"""

from __future__ import annotations

import argparse
import heapq
import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from benchmarks.peers.dedup_data import CACHE, build_input, read_truth, score
from benchmarks.peers.measure import Measured, machine_load, run_measured
from benchmarks.peers.peers_venv import DEFAULT_VENV, REPO, peers_python

PEERS = ("rensa", "datatrove-default", "datatrove-ours")
METHODS = ("ours", *PEERS)
RUNNER = REPO / "benchmarks" / "peers" / "dedup_runners.py"

#: --profile: the phases named in issue 16, by function (see benchmarks/peers/profiling.py)
PROFILE_RULES = [
    ("read zstd + parse JSON", "common/io.py", r"^(__iter__|loads|_fail|read)$"),
    ("read zstd + parse JSON", "dedup/stages.py", r"^(_raw_lines|_records|_text)$"),
    ("normalise (fold, classes)", "dedup/shingles.py", r"^(_normalised|lookup|_fill)$"),
    (
        "shingle + hash n-grams",
        "dedup/shingles.py",
        r"^(hash_batch|_tokens|_exact_keys|_run_hash|_ngram_hash|_powers)$",
    ),
    ("MinHash signatures", "dedup/minhash.py", r"^(signatures_numpy|signatures_datasketch)$"),
    ("band hashes, sort, write", "dedup/lsh.py", r"^band_hashes$"),
    ("band hashes, sort, write", "dedup/stages.py", r"^(signatures_task|_save)$"),
    ("candidate pairs (buckets)", "dedup/lsh.py", r"^(bucket_pairs|partition_bounds)$"),
    ("candidate pairs (buckets)", "dedup/stages.py", r"^_row_pairs$"),
    ("pair verification", "dedup/lsh.py", r"^verify_pairs$"),
    ("pair verification", "dedup/stages.py", r"^bucket_task$"),
    ("pair verification", "dedup/work.py", r"gather"),
    ("clusters", "dedup/clusters.py", r""),
    ("clusters", "dedup/stages.py", r"^cluster_task$"),
    ("filter: write survivors/rejected", "dedup/stages.py", r"^(filter_task|write|close|abort)$"),
    ("filter: write survivors/rejected", "common/io.py", r"^(write|close|_open)$"),
    ("markers, report, config, cleanup", "dedup/run.py", r"^(finalize|_check_same_run|make_context)$"),
    ("markers, report, config, cleanup", "dedup/report.py", r""),
    ("markers, report, config, cleanup", "preprocessing/layout.py", r""),
    ("markers, report, config, cleanup", "common/config.py", r""),
    (
        "markers, report, config, cleanup",
        "common/io.py",
        r"^(mark|atomic_write_\w+|check_same_run|files_digest)$",
    ),
]


def settings() -> dict:
    """Our defaults, handed to the peers so they use the same threshold, bands x rows, seed and n-grams."""
    from preprocessing.dedup import DedupConfig
    from preprocessing.dedup.run import banding_for

    cfg = DedupConfig()
    band = banding_for(cfg)
    return {
        "threshold": cfg.threshold,
        "num_perm": cfg.num_perm,
        "bands": band.bands,
        "rows": band.rows,
        "seed": cfg.seed,
        "word_ngram": cfg.word_ngram,
        "cjk_ngram": cfg.cjk_ngram,
    }


def fairness(s: dict) -> list[str]:
    return [
        f"ours: mmed dedup defaults: threshold {s['threshold']}, {s['num_perm']} permutations, "
        f"{s['bands']} bands x {s['rows']} rows, word {s['word_ngram']}-grams (en/fr/es/ru) and character "
        f"{s['cjk_ngram']}-grams (zh/ja) of the NFKC+casefold view; candidates verified by estimated Jaccard",
        f"rensa: the same shingles (our view and n-grams as strings, benchmarks/peers/shingles.py), the same "
        f"bands x rows (its LSH needs num_perm = bands x rows: {s['bands'] * s['rows']} values), candidates "
        f"verified by RMinHash.jaccard >= {s['threshold']}; N workers = a pool over languages",
        "datatrove-default: MinhashConfig() (its word tokenizer per language, 5-grams, 14 buckets x 8 hashes, "
        "64-bit xxhash), no verification (every bucket collision merges)",
        f"datatrove-ours: the same pipeline with our shingles and {s['bands']} x {s['rows']}; datatrove: "
        "LocalPipelineExecutor per stage and language, tasks = input files, workers = N, writers zstd",
        "every method: each language deduplicated on its own, survivors written (zstd JSONL), start-up included",
        "peak RSS = max over 50 ms samples of the summed RSS of the whole process tree (psutil; forked "
        "workers' shared pages counted per process); PSS splits shared pages; CPU s = max(getrusage("
        "RUSAGE_CHILDREN), summed per-process CPU from the samples: unreaped pool workers count)",
    ]


def removed_ids(method: str, out: Path) -> list[str]:
    """What a method removed, read from its output after the clock stopped."""
    if method == "ours":
        from preprocessing.layout import iter_rejected

        return [str(r["id"]) for r in iter_rejected(out) if str(r.get("reason", "")).startswith("dup")]
    if method == "rensa":
        return [i for f in sorted((out / "removed").glob("*.txt")) for i in f.read_text().split("\n") if i]
    from megatron_mmed.common.io import read_jsonl_zst

    return [str(r["id"]) for f in sorted((out / "removed").rglob("*.jsonl.zst")) for r in read_jsonl_zst(f)]


def command(method: str, in_dir: Path, out: Path, workers: int, s: dict, venv: Path) -> list[str]:
    if method == "ours":
        mmed = Path(sys.executable).with_name("mmed")
        head = [str(mmed)] if mmed.exists() else [sys.executable, "-m", "megatron_mmed.cli"]
        return [*head, "dedup", "--input", str(in_dir), "--output", str(out), "--workers", str(workers)] + [
            "--no-progress"
        ]
    py = peers_python(venv)
    return [str(py), str(RUNNER), method, "--input", str(in_dir), "--output", str(out)] + [
        "--workers",
        str(workers),
        "--settings",
        json.dumps(s),
    ]


def run_one(method: str, workers: int, inp, s: dict, tmp: Path, venv: Path) -> dict:
    out = tmp / f"{method}-w{workers}"
    shutil.rmtree(out, ignore_errors=True)
    load0 = machine_load()
    m: Measured = run_measured(
        command(method, inp.root, out, workers, s, venv), log_dir=tmp / f"{out.name}-logs"
    )
    if not m.ok:
        tail = (m.stderr or m.stdout)[-3000:]
        raise SystemExit(f"{method} x{workers} failed (exit {m.returncode}):\n{tail}")
    f1 = score(read_truth(inp.truth), removed_ids(method, out))
    shutil.rmtree(out, ignore_errors=True)
    return {
        "method": method,
        "workers": workers,
        "docs": inp.docs,
        "wall_s": m.wall_s,
        "cpu_s": m.cpu_s,
        "cpu_s_parts": m.extra,  # the waited-for (rusage) and sampled bounds behind cpu_s
        "docs_per_s": inp.docs / m.wall_s,
        "docs_per_s_per_core": inp.docs / (m.wall_s * workers),
        "docs_per_cpu_s": inp.docs / m.cpu_s if m.cpu_s else 0.0,
        "peak_tree_rss_mb": m.peak_tree_rss_mb,
        "peak_tree_pss_mb": m.peak_tree_pss_mb,
        "max_process_rss_mb": m.max_process_rss_mb,
        "removed": sum(v["tp"] + v["fp"] for v in f1.values()),
        "f1": f1,
        "load_before": load0,
        "load_after": machine_load(),
    }


def print_head(langs: list[str]) -> None:
    head = f"{'method':>18} {'w':>2} {'wall s':>7} {'CPU s':>7} {'docs/s':>7} {'/core':>7} {'/CPU s':>7}"
    head += f" {'RSS MB':>7} {'PSS MB':>7} {'removed':>7}  " + " ".join(f"{'F1 ' + lg:>6}" for lg in langs)
    print(head, flush=True)


def print_row(r: dict, langs: list[str]) -> None:
    """One method's line, printed as soon as it is measured (a long peer run must not hide the others)."""
    line = (
        f"{r['method']:>18} {r['workers']:>2} {r['wall_s']:>7.1f} {r['cpu_s']:>7.1f} {r['docs_per_s']:>7.0f}"
    )
    line += f" {r['docs_per_s_per_core']:>7.0f} {r['docs_per_cpu_s']:>7.0f} {r['peak_tree_rss_mb']:>7.0f}"
    line += f" {r['peak_tree_pss_mb']:>7.0f} {r['removed']:>7}  "
    line += " ".join(f"{r['f1'].get(lg, {}).get('f1', float('nan')):>6.3f}" for lg in langs)
    print(line, f"  ({r['load_after']})", flush=True)


def goals(rows: list[dict], size: int) -> list[str]:
    """Issue 16's dedup goals, checked on these rows (a goal whose rows are missing says so)."""
    out = []
    ours = {r["workers"]: r for r in rows if r["method"] == "ours"}
    for w, r in sorted(ours.items()):
        peers = [p for p in rows if p["method"] != "ours" and p["workers"] == w]
        if peers:
            best = max(peers, key=lambda p: p["docs_per_s_per_core"])
            x = r["docs_per_s_per_core"] / best["docs_per_s_per_core"]
            out.append(
                f"[{'ok' if x >= 2 else 'MISSED'}] {w} worker(s): ours {x:.2f}x the fastest peer per core "
                f"({best['method']}, {best['docs_per_s_per_core']:.0f} docs/s/core); goal >= 2x"
            )
    if 1 in ours and 2 in ours:
        x = ours[2]["docs_per_s"] / ours[1]["docs_per_s"]
        out.append(f"[{'ok' if x >= 1.7 else 'MISSED'}] ours 2 workers = {x:.2f}x 1 worker; goal >= 1.7x")
    if size >= 1_000_000:
        for w, r in sorted(ours.items()):
            ok = r["peak_tree_rss_mb"] <= 2048
            out.append(
                f"[{'ok' if ok else 'MISSED'}] ours x{w} peak tree RSS {r['peak_tree_rss_mb']:.0f} MB; goal <= 2 GB"
            )
    for w, r in sorted(ours.items()):
        low = {lg: v["f1"] for lg, v in r["f1"].items() if v["f1"] < 0.95}
        out.append(
            f"[{'MISSED' if low else 'ok'}] ours x{w} F1 >= 0.95 in every language"
            + (f": {low}" if low else "")
        )
    return out


def profile(inp, tmp: Path) -> None:
    from benchmarks.peers.profiling import profile_call
    from preprocessing.dedup import DedupConfig, run_dedup

    out = tmp / "profile-out"
    title = f"ours, mmed dedup library call on {inp.docs:,} documents, 1 worker"
    profile_call(
        lambda: run_dedup(inp.root, out, DedupConfig(), show_progress=False, log=lambda s: None),
        PROFILE_RULES,
        title,
    )


def list_schedule(costs: list[float], workers: int) -> float:
    """Finish time of ``costs`` handed in order to whichever of ``workers`` idle cores is free first."""
    free = [0.0] * workers
    for c in costs:
        heapq.heapreplace(free, free[0] + c)
    return max(free)


def scaling(inp, tmp: Path, workers: list[int]) -> None:
    """Per worker count: wall and CPU under the current load, and the wall an idle box would take."""
    from preprocessing.dedup import SUBSTAGES, DedupConfig, run_dedup
    from preprocessing.dedup.run import make_context, plan

    # the CLI's start-up (interpreter, imports) happens before the call measured below: a serial part too
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    subprocess.run([sys.executable, "-c", "import megatron_mmed.cli, preprocessing.dedup.run"], check=True)
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    start = after.ru_utime + after.ru_stime - before.ru_utime - before.ru_stime
    print(
        f"\nscaling: ours on {inp.docs:,} documents; start-up {start:.2f} CPU s (counted as serial); {machine_load()}"
    )
    print(
        f"{'w':>2} {'wall s':>7} {'CPU s':>7} {'tasks':>7} {'serial':>7} {'idle wall':>9} {'speed-up':>8}  per stage"
    )
    first = None
    for w in workers:
        cfg = DedupConfig(workers=w, keep_work=True)
        out = tmp / f"scaling-w{w}"
        shutil.rmtree(out, ignore_errors=True)
        c0, t0 = os.times(), time.perf_counter()
        run_dedup(inp.root, out, cfg, show_progress=False, log=lambda s: None)
        wall, c1 = time.perf_counter() - t0, os.times()
        own = c1.user + c1.system - c0.user - c0.system
        cpu = own + c1.children_user + c1.children_system - c0.children_user - c0.children_system
        ctx, _ = make_context(inp.root, out, cfg)
        stages = {}
        for st in SUBSTAGES:
            done = ctx.markers(st)
            costs = [done.read(t.id)["cpu_s"] for t in plan(st, ctx)]
            stages[st] = (sum(costs), list_schedule(costs, w))
        tasks = sum(c for c, _ in stages.values())
        serial = start + (own - tasks if w == 1 else own)  # with a pool, this process runs no task
        idle = serial + sum(m for _, m in stages.values())
        first = first or idle
        per = ", ".join(f"{st} {m:.1f}" for st, (_, m) in stages.items())
        print(
            f"{w:>2} {wall:>7.1f} {cpu:>7.1f} {tasks:>7.1f} {serial:>7.1f} {idle:>9.1f} {first / idle:>7.2f}x  {per}"
        )
        shutil.rmtree(out, ignore_errors=True)
    print(f"  {machine_load()}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument(
        "--sizes", type=int, nargs="+", default=[100_000], help="documents (1000000 for the 1M run)"
    )
    ap.add_argument("--workers", type=int, nargs="+", default=[1, 2])
    ap.add_argument("--methods", nargs="+", choices=METHODS, default=list(METHODS))
    ap.add_argument("--ours-only", action="store_true", help="only ours (no peers venv needed)")
    ap.add_argument("--max-datatrove-docs", type=int, default=200_000, help="skip datatrove above this size")
    ap.add_argument(
        "--dup-rate", type=float, default=0.05, help="fraction of documents that are planted copies"
    )
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--cache", type=Path, default=CACHE, help="where inputs are built once per size")
    ap.add_argument("--peers-venv", type=Path, default=DEFAULT_VENV)
    ap.add_argument(
        "--tmp", type=Path, default=None, help="scratch folder for outputs (default: system temp)"
    )
    ap.add_argument(
        "--profile", action="store_true", help="instead of comparing: ours under cProfile, by phase"
    )
    ap.add_argument(
        "--scaling", action="store_true", help="instead of comparing: ours' idle-box speed-up per --workers"
    )
    ap.add_argument("--json", type=Path, help="also write every row here")
    args = ap.parse_args()
    methods = ["ours"] if args.ours_only else args.methods
    s = settings()
    all_rows = []
    with tempfile.TemporaryDirectory(prefix="dedup_peers_", dir=args.tmp) as tmp:
        tmp = Path(tmp)
        for size in args.sizes:
            inp = build_input(size, args.seed, args.dup_rate, args.cache)
            if args.profile:
                profile(inp, tmp)
                continue
            if args.scaling:
                scaling(inp, tmp, args.workers)
                continue
            print(f"\n{size:,} documents ({inp.root}); {machine_load()}")
            for line in fairness(s):
                print("  " + line)
            rows = []
            langs = sorted({lg for lg, _ in read_truth(inp.truth).values()})
            print_head(langs)
            for method in methods:
                if method.startswith("datatrove") and size > args.max_datatrove_docs:
                    print(f"  {method}: skipped above --max-datatrove-docs {args.max_datatrove_docs:,}")
                    continue
                for w in args.workers:
                    rows.append(run_one(method, w, inp, s, tmp, args.peers_venv))
                    print_row(rows[-1], langs)
                    if args.json:  # rewritten after every run: an interrupted sweep keeps what it measured
                        args.json.write_text(json.dumps(all_rows + rows, indent=1))
            for line in goals(rows, size):
                print("  " + line)
            print(f"  {machine_load()}")
            all_rows += rows


if __name__ == "__main__":
    main()

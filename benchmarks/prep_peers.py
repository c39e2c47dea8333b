"""``mmed prep`` against datatrove's JsonlReader -> GopherQualityFilter -> JsonlWriter on the same input.

    .venv/bin/python -m benchmarks.prep_peers [--docs 100000] [--files 8] [--workers 1 2]
    .venv/bin/python -m benchmarks.prep_peers --ours-only --docs 2000      # no peers venv needed
    .venv/bin/python -m benchmarks.prep_peers --profile --docs 20000       # where ours spends its time

Input: ``benchmarks.prep.build_input`` (real documents of ../shared/data/corpus sampled at random, six
languages, medical and general), cached under ``benchmarks/.cache`` and split into ``--files`` plain JSONL
files so both sides can spread files over workers. The work each side does is printed with the numbers: ours
ingests, repairs text (ftfy), identifies the language, filters medical text, applies its quality rules and
writes kept documents per language plus a rejected record with the reason for every other one; datatrove
reads, applies the Gopher quality rules (its defaults: English, to every document) and writes what passes.
Each run is its own subprocess measured by ``benchmarks/peers/measure.py``; docs/s per core = docs / (wall x
workers).
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
from pathlib import Path

from benchmarks.peers.measure import machine_load, run_measured
from benchmarks.peers.peers_venv import DEFAULT_VENV, REPO, peers_python
from benchmarks.prep import build_input

CACHE = REPO / "benchmarks" / ".cache"
SHARED = REPO.parent / "shared" / "data"
RUNNER = REPO / "benchmarks" / "peers" / "prep_runner.py"

WORK = {
    "ours": "ingest + ftfy clean + language ID + medical filter + quality rules; writes kept per language and "
    "a rejected record (id, reason) for every other document",
    "datatrove": "read + Gopher quality rules (English defaults, every document) + write what passes",
}

PROFILE_RULES = [
    ("ingest: read + parse", "preprocessing/ingest.py", r""),
    ("clean (ftfy)", "preprocessing/clean.py", r""),
    ("language ID", "preprocessing/langid.py", r""),
    ("medical filter", "preprocessing/medical.py", r""),
    ("quality rules", "preprocessing/quality.py", r""),
    ("write kept / rejected", "common/io.py", r"^(write|close|_open|dumps|abort|__exit__)$"),
    ("counters, markers, report", "preprocessing/prep_report.py", r""),
    ("counters, markers, report", "preprocessing/layout.py", r""),
    ("counters, markers, report", "common/io.py", r"^(mark|atomic_write_\w+|check_same_run|files_digest)$"),
    ("per-document glue (prep.py)", "preprocessing/prep.py", r""),
]


def prep_input(docs: int, files: int, cache: Path) -> tuple[Path, int]:
    """``docs`` documents in ``files`` JSONL files (cached); returns (folder, bytes)."""
    root = cache / f"prep-n{docs}-f{files}"
    done = root / "done.json"
    if done.is_file():
        return root / "in", json.loads(done.read_text())["bytes"]
    shutil.rmtree(root, ignore_errors=True)
    (root / "in").mkdir(parents=True)
    size = build_input(SHARED, docs, root / "all.jsonl")
    with open(root / "all.jsonl", encoding="utf-8") as src:
        outs = [open(root / "in" / f"part-{k:03d}.jsonl", "w", encoding="utf-8") for k in range(files)]  # noqa: SIM115
        for i, line in enumerate(src):
            outs[i * files // docs].write(line)
        for o in outs:
            o.close()
    (root / "all.jsonl").unlink()
    done.write_text(json.dumps({"docs": docs, "bytes": size}))
    return root / "in", size


def count_kept(method: str, out: Path) -> int:
    from megatron_mmed.common.io import read_jsonl_zst

    base = out / "kept"
    return sum(1 for f in sorted(base.rglob("*.jsonl.zst")) for _ in read_jsonl_zst(f))


def command(method: str, inp: Path, out: Path, workers: int, venv: Path) -> list[str]:
    if method == "ours":
        mmed = Path(sys.executable).with_name("mmed")
        head = [str(mmed)] if mmed.exists() else [sys.executable, "-m", "megatron_mmed.cli"]
        return [
            *head,
            "prep",
            "--input",
            str(inp),
            "--output",
            str(out),
            "--workers",
            str(workers),
            "--no-progress",
        ]
    py = peers_python(venv)
    return [str(py), str(RUNNER), "--input", str(inp), "--output", str(out), "--workers", str(workers)]


def profile(inp: Path, tmp: Path, docs: int) -> None:
    from benchmarks.peers.profiling import profile_call
    from preprocessing.prep import PrepConfig, run_prep

    title = f"ours, mmed prep library call on {docs:,} documents, 1 worker"
    profile_call(
        lambda: run_prep([inp], tmp / "profile-out", PrepConfig(), show_progress=False), PROFILE_RULES, title
    )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--docs", type=int, default=100_000)
    ap.add_argument("--files", type=int, default=8, help="input files (both sides spread files over workers)")
    ap.add_argument("--workers", type=int, nargs="+", default=[1, 2])
    ap.add_argument("--ours-only", action="store_true", help="only ours (no peers venv needed)")
    ap.add_argument("--cache", type=Path, default=CACHE)
    ap.add_argument("--peers-venv", type=Path, default=DEFAULT_VENV)
    ap.add_argument("--tmp", type=Path, default=None)
    ap.add_argument(
        "--profile", action="store_true", help="instead of comparing: ours under cProfile, by phase"
    )
    ap.add_argument("--json", type=Path, help="also write every row here")
    args = ap.parse_args()
    inp, size = prep_input(args.docs, args.files, args.cache)
    methods = ["ours"] if args.ours_only else ["ours", "datatrove"]
    rows = []
    with tempfile.TemporaryDirectory(prefix="prep_peers_", dir=args.tmp) as tmp:
        tmp = Path(tmp)
        if args.profile:
            profile(inp, tmp, args.docs)
            return
        print(f"{args.docs:,} documents, {size / 1e6:.1f} MB in {args.files} files ({inp}); {machine_load()}")
        for m in methods:
            print(f"  {m}: {WORK[m]}")
        print(
            f"{'method':>10} {'w':>2} {'wall s':>7} {'CPU s':>7} {'docs/s':>7} {'/core':>7} {'/CPU s':>7} "
            f"{'RSS MB':>7} {'PSS MB':>7} {'kept':>7}"
        )
        for m in methods:
            for w in args.workers:
                out = tmp / f"{m}-w{w}"
                res = run_measured(command(m, inp, out, w, args.peers_venv), log_dir=tmp / f"{m}-w{w}-logs")
                if not res.ok:
                    raise SystemExit(
                        f"{m} x{w} failed (exit {res.returncode}):\n{(res.stderr or res.stdout)[-3000:]}"
                    )
                r = {
                    "method": m,
                    "workers": w,
                    "docs": args.docs,
                    "wall_s": res.wall_s,
                    "cpu_s": res.cpu_s,
                    "cpu_s_parts": res.extra,
                    "docs_per_s": args.docs / res.wall_s,
                    "docs_per_s_per_core": args.docs / (res.wall_s * w),
                    "docs_per_cpu_s": args.docs / res.cpu_s if res.cpu_s else 0.0,
                    "peak_tree_rss_mb": res.peak_tree_rss_mb,
                    "peak_tree_pss_mb": res.peak_tree_pss_mb,
                    "kept": count_kept(m, out),
                    "load_after": machine_load(),
                }
                shutil.rmtree(out, ignore_errors=True)
                rows.append(r)
                print(
                    f"{m:>10} {w:>2} {r['wall_s']:>7.1f} {r['cpu_s']:>7.1f} {r['docs_per_s']:>7.0f} "
                    f"{r['docs_per_s_per_core']:>7.0f} {r['docs_per_cpu_s']:>7.0f} {r['peak_tree_rss_mb']:>7.0f} "
                    f"{r['peak_tree_pss_mb']:>7.0f} {r['kept']:>7}",
                    flush=True,
                )
    for w in args.workers:
        ours = next((r for r in rows if r["method"] == "ours" and r["workers"] == w), None)
        dt = next((r for r in rows if r["method"] == "datatrove" and r["workers"] == w), None)
        if ours and dt:
            x = ours["docs_per_s_per_core"] / dt["docs_per_s_per_core"]
            print(
                f"  [{'ok' if x >= 1 else 'MISSED'}] {w} worker(s): ours {x:.2f}x datatrove's docs/s per core "
                "while doing more; goal >= 1x"
            )
    print(f"  {machine_load()}")
    if args.json:
        args.json.write_text(json.dumps(rows, indent=1))


if __name__ == "__main__":
    main()

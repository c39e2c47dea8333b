"""Throughput and peak memory of `mmed prep` as the input grows (memory must stay flat: streaming).

Builds JSONL inputs of N documents by sampling the real documents of ../shared/data/corpus (six languages,
medical and general), runs `mmed prep` on each in a fresh subprocess and prints docs/s, MB/s and peak RSS.

    .venv/bin/python benchmarks/prep.py [--sizes 2000 20000] [--workers 1 2] [--data ../shared/data]
"""

from __future__ import annotations

import argparse
import json
import random
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def build_input(data: Path, n: int, path: Path) -> int:
    docs = []
    for f in sorted((data / "corpus").glob("*.jsonl")):
        docs += [json.loads(line)["text"] for line in f.read_text(encoding="utf-8").splitlines()]
    rng = random.Random(0)
    size = 0
    with open(path, "w", encoding="utf-8") as fh:
        for i in range(n):
            line = json.dumps({"id": f"doc-{i}", "text": rng.choice(docs)}, ensure_ascii=False) + "\n"
            size += len(line.encode())
            fh.write(line)
    return size


def run_one(inp: Path, out: Path, workers: int) -> tuple[float, float]:
    """(seconds, peak RSS in MB of the prep process tree) for one run in a fresh process."""
    code = (
        "import sys; from megatron_mmed.cli import main; "
        f"sys.exit(main(['prep','--input',{str(inp)!r},'--output',{str(out)!r},'--no-progress',"
        f"'--workers','{workers}','ingest.shard_bytes=4000000']))"
    )
    t0 = time.time()
    subprocess.run([sys.executable, "-c", code], check=True, capture_output=True, cwd=REPO)
    seconds = time.time() - t0
    peak_kb = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss  # max over finished children
    return seconds, peak_kb / 1024


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sizes", type=int, nargs="+", default=[2000, 20000])
    ap.add_argument("--workers", type=int, nargs="+", default=[1])
    ap.add_argument("--data", type=Path, default=REPO.parent / "shared" / "data")
    args = ap.parse_args()
    print(
        f"{'docs':>8} {'MB':>7} {'workers':>7} {'seconds':>8} {'docs/s':>8} {'MB/s':>6} {'peak RSS MB':>11}"
    )
    with tempfile.TemporaryDirectory() as tmp:
        for n in args.sizes:
            inp = Path(tmp) / f"in-{n}.jsonl"
            size = build_input(args.data, n, inp)
            for w in args.workers:
                seconds, rss = run_one(inp, Path(tmp) / f"out-{n}-{w}", w)
                print(
                    f"{n:>8} {size / 1e6:>7.1f} {w:>7} {seconds:>8.1f} {n / seconds:>8.0f} "
                    f"{size / 1e6 / seconds:>6.2f} {rss:>11.0f}"
                )


if __name__ == "__main__":
    main()

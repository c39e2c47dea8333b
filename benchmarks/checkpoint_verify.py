"""Benchmark checkpoint manifest checksums: seconds per GB to write and to verify a manifest, by thread count.

    .venv/bin/python -m benchmarks.checkpoint_verify [--gb 2] [--files 2] [--threads 1 2 4 8] [--work DIR]

Writes ``--files`` random files totalling ``--gb`` GB (the shape of one rank's torch_dist output: a few large
``.distcp`` files), then times :func:`megatron_mmed.common.integrity.file_digests` (64 MiB blocks on a thread
pool) per thread count, first read of each pass from the page cache (run with a cold cache, e.g. after
``echo 3 > /proc/sys/vm/drop_caches``, to see the disk). In a job every rank hashes only its share of the
files, so a checkpoint of S GB on R ranks costs about S / R times the per-GB figure.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import tempfile
import time
from pathlib import Path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--gb", type=float, default=2.0)
    parser.add_argument("--files", type=int, default=2)
    parser.add_argument("--threads", type=int, nargs="+", default=[1, 2, 4, 8])
    parser.add_argument("--work", type=Path, default=None)
    args = parser.parse_args()

    from megatron_mmed.common.integrity import file_digests

    work = Path(tempfile.mkdtemp(dir=args.work, prefix="ckpt-verify-"))
    try:
        per_file = int(args.gb * 1024**3 / args.files)
        names = []
        chunk = os.urandom(64 * 1024**2)
        for i in range(args.files):
            name = f"__0_{i}.distcp"
            with open(work / name, "wb") as fh:
                left = per_file
                while left > 0:
                    fh.write(chunk[: min(left, len(chunk))])
                    left -= len(chunk)
            names.append(name)
        total = sum((work / n).stat().st_size for n in names) / 1024**3
        file_digests(work, names, threads=1)  # warm the page cache
        rows = []
        for threads in args.threads:
            start = time.perf_counter()
            file_digests(work, names, threads=threads)
            secs = time.perf_counter() - start
            rows.append({"threads": threads, "gb": round(total, 2), "s_per_gb": round(secs / total, 3)})
            print(
                f"threads={threads:2d}: {secs:6.2f} s for {total:.2f} GB = {secs / total:.3f} s/GB",
                flush=True,
            )
        print(json.dumps(rows))
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()

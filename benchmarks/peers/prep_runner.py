"""datatrove's quality pipeline for the prep benchmark, executed by the peers' venv.

    python prep_runner.py --input DIR --output OUT --workers N

``JsonlReader(DIR, *.jsonl) -> GopherQualityFilter() -> JsonlWriter(OUT/kept, zstd)`` under one
``LocalPipelineExecutor`` with ``tasks`` = input files and ``workers`` = N: datatrove's defaults (the Gopher
rules for English, on every document: this pipeline has no language ID step). Stdlib + the peers only.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--input", type=Path, required=True)
    p.add_argument("--output", type=Path, required=True)
    p.add_argument("--workers", type=int, default=1)
    args = p.parse_args()
    t0 = time.perf_counter()
    from datatrove.executor import LocalPipelineExecutor
    from datatrove.pipeline.filters import GopherQualityFilter
    from datatrove.pipeline.readers import JsonlReader
    from datatrove.pipeline.writers import JsonlWriter

    files = sorted(args.input.glob("*.jsonl"))
    LocalPipelineExecutor(
        pipeline=[
            JsonlReader(str(args.input), glob_pattern="*.jsonl", text_key="text", id_key="id"),
            GopherQualityFilter(),
            JsonlWriter(str(args.output / "kept"), compression="zstd"),
        ],
        tasks=len(files),
        workers=args.workers,
        logging_dir=str(args.output / "logs"),
    ).run()
    print(json.dumps({"inner_s": time.perf_counter() - t0, "tasks": len(files)}))


if __name__ == "__main__":
    main()

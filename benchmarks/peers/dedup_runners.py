"""The peers' dedup runs, executed by the peers' venv (``python dedup_runners.py METHOD ...``).

Reads the benchmark input (prep layout, ``IN/kept/<lang>/*.jsonl.zst``), dedups each language on its own (as
ours does) and writes survivors to ``OUT/kept/<lang>/`` and removed ids to ``OUT/removed/<lang>*``:

- ``rensa``: per language, documents shingled by ``shingles.py`` (our view and n-grams), signatures by
  ``RMinHash.from_token_sets`` (Rust, batched), then streamed through ``RMinHashLSH``: a document whose LSH
  candidates include one with estimated Jaccard >= threshold is removed, otherwise inserted. rensa's LSH needs
  ``num_perm = bands x rows``, so its signatures have ``bands*rows`` values (ours: ``num_perm``, of which
  ``bands*rows`` are banded). N workers = a process pool over languages (rensa has no multi-process mode).
- ``datatrove-default``: datatrove's four MinHash steps (signature, buckets, cluster, filter), each a
  ``LocalPipelineExecutor`` with ``tasks`` = input files (buckets: one per bucket) and ``workers`` = N, with
  ``MinhashConfig()`` (5-grams of its word tokenizer for the language, 14 buckets x 8 hashes) and its
  per-language tokenizer (spaCy; zh via jieba, ja via SudachiPy).
- ``datatrove-ours``: the same pipeline with our shingles (``get_shingles`` of the signature step returns our
  n-grams hashed by datatrove's own hash function) and our bands x rows.

Stdlib + the peers only: this file never imports the repo's packages.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from multiprocessing import get_context
from pathlib import Path

import orjson
import zstandard

sys.path.insert(0, str(Path(__file__).resolve().parent))
from shingles import ngrams, shingle_set  # noqa: E402

#: datatrove's language codes (ISO 639-3 + script: the keys its tokenizer table assigns spaCy tokenizers to)
DATATROVE_LANG = {
    "en": "eng_Latn",
    "fr": "fra_Latn",
    "es": "spa_Latn",
    "ru": "rus_Cyrl",
    "zh": "cmn_Hani",
    "ja": "jpn_Jpan",
}


def lang_files(in_dir: Path) -> dict[str, list[Path]]:
    kept = in_dir / "kept"
    return {d.name: sorted(d.glob("*.jsonl.zst")) for d in sorted(kept.iterdir()) if d.is_dir()}


def read_lines(path: Path):
    """Non-blank lines (bytes, newline kept) of a .jsonl.zst file."""
    with open(path, "rb") as fh, zstandard.ZstdDecompressor().stream_reader(fh) as raw:
        import io

        for line in io.BufferedReader(raw, 1 << 20):
            if line.strip():
                yield line if line.endswith(b"\n") else line + b"\n"


# ------------------------------------------------------------------------------------------------- rensa
def _rensa_language(job: tuple) -> dict:
    lang, files, out, a = job
    from rensa import RMinHash, RMinHashLSH

    num_perm = a["bands"] * a["rows"]
    lsh = RMinHashLSH(a["threshold"], num_perm, a["bands"])
    kept_mh: list = []
    removed: list[set[int]] = []
    removed_ids: list[str] = []
    for f in files:
        ids, sets = [], []
        for line in read_lines(f):
            rec = orjson.loads(line)
            ids.append(str(rec.get("id")))
            sets.append(ngrams(rec.get("text") or "", lang, a["word_ngram"], a["cjk_ngram"]))
        mhs = RMinHash.from_token_sets(sets, num_perm, a["seed"])
        gone = set()
        for j, m in enumerate(mhs):
            if not sets[j]:
                continue  # no shingles: kept, never compared (as ours)
            if any(m.jaccard(kept_mh[c]) >= a["threshold"] for c in lsh.query(m)):
                gone.add(j)
                removed_ids.append(ids[j])
            else:
                lsh.insert(len(kept_mh), m)
                kept_mh.append(m)
        removed.append(gone)
    cctx = zstandard.ZstdCompressor(level=3)
    for f, gone in zip(files, removed):
        dest = out / "kept" / lang / f.name
        dest.parent.mkdir(parents=True, exist_ok=True)
        with open(dest, "wb") as fh, cctx.stream_writer(fh) as w:
            for j, line in enumerate(read_lines(f)):
                if j not in gone:
                    w.write(line)
    (out / "removed").mkdir(parents=True, exist_ok=True)
    (out / "removed" / f"{lang}.txt").write_text("".join(i + "\n" for i in removed_ids), encoding="utf-8")
    return {"lang": lang, "removed": len(removed_ids)}


def run_rensa(in_dir: Path, out: Path, workers: int, a: dict) -> list[dict]:
    jobs = [(lang, fs, out, a) for lang, fs in lang_files(in_dir).items()]
    if workers <= 1:
        return [_rensa_language(j) for j in jobs]
    with get_context("fork").Pool(workers) as pool:
        return pool.map(_rensa_language, jobs, chunksize=1)


# --------------------------------------------------------------------------------------------- datatrove
def _our_shingles_step(base, a: dict, lang: str):
    """datatrove's signature step with our shingles: our n-grams, hashed by its own hash function."""

    class OurShinglesSignature(base):
        def get_shingles(self, text: str):
            import numpy as np

            grams = shingle_set(text, lang, a["word_ngram"], a["cjk_ngram"])
            return np.fromiter((self._hash_func(g) for g in grams), dtype=np.uint64).reshape((-1, 1))

    return OurShinglesSignature


def run_datatrove(in_dir: Path, out: Path, workers: int, a: dict, ours: bool) -> list[dict]:
    from datatrove.executor import LocalPipelineExecutor
    from datatrove.pipeline.dedup.minhash import (
        MinhashConfig,
        MinhashDedupBuckets,
        MinhashDedupCluster,
        MinhashDedupFilter,
        MinhashDedupSignature,
    )
    from datatrove.pipeline.readers import JsonlReader
    from datatrove.pipeline.writers import JsonlWriter

    work = out / "work"
    info = []
    for lang, files in lang_files(in_dir).items():
        if ours:
            cfg = MinhashConfig(
                n_grams=a["word_ngram"], num_buckets=a["bands"], hashes_per_bucket=a["rows"], seed=a["seed"]
            )
            sig_cls = _our_shingles_step(MinhashDedupSignature, a, lang)
        else:
            cfg, sig_cls = MinhashConfig(), MinhashDedupSignature
        w = work / lang
        src = in_dir / "kept" / lang
        tasks = len(files)

        def reader(src=src):
            return JsonlReader(str(src), glob_pattern="*.jsonl.zst", text_key="text", id_key="id")

        def run(pipeline, n_tasks, stage, w=w):
            LocalPipelineExecutor(
                pipeline=pipeline, tasks=n_tasks, workers=workers, logging_dir=str(w / "logs" / stage)
            ).run()

        run(
            [reader(), sig_cls(output_folder=str(w / "sigs"), config=cfg, language=DATATROVE_LANG[lang])],
            tasks,
            "1-signatures",
        )
        run(
            [MinhashDedupBuckets(input_folder=str(w / "sigs"), output_folder=str(w / "buckets"), config=cfg)],
            cfg.num_buckets,
            "2-buckets",
        )
        run(
            [MinhashDedupCluster(input_folder=str(w / "buckets"), output_folder=str(w / "ids"), config=cfg)],
            1,
            "3-clusters",
        )
        run(
            [
                reader(),
                MinhashDedupFilter(
                    input_folder=str(w / "ids"),
                    exclusion_writer=JsonlWriter(str(out / "removed" / lang), compression="zstd"),
                ),
                JsonlWriter(str(out / "kept" / lang), compression="zstd"),
            ],
            tasks,
            "4-filter",
        )
        info.append({"lang": lang, "tasks": tasks})
    return info


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("method", choices=["rensa", "datatrove-default", "datatrove-ours"])
    p.add_argument("--input", type=Path, required=True)
    p.add_argument("--output", type=Path, required=True)
    p.add_argument("--workers", type=int, default=1)
    p.add_argument(
        "--settings", required=True, help="JSON: threshold, bands, rows, seed, word_ngram, cjk_ngram"
    )
    args = p.parse_args()
    a = json.loads(args.settings)
    t0 = time.perf_counter()
    if args.method == "rensa":
        info = run_rensa(args.input, args.output, args.workers, a)
    else:
        info = run_datatrove(args.input, args.output, args.workers, a, ours=args.method == "datatrove-ours")
    print(json.dumps({"method": args.method, "inner_s": time.perf_counter() - t0, "info": info}))


if __name__ == "__main__":
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    main()

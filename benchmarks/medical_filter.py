"""Benchmark the medical filter presets on the shared corpus: kept rates per domain and throughput.

Usage: ``.venv/bin/python benchmarks/medical_filter.py [--data DIR] [--seconds S]``. ``DIR`` holds
``corpus/<lang>.jsonl`` and ``mmedc_keywords.json`` (default: ``../shared/data`` beside the repo). Each language
is scored repeatedly for at least ``S`` seconds on one core; docs/s is documents scored per second.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

from preprocessing.document import LANGS
from preprocessing.medical import MedicalConfig, MedicalFilter

DEFAULT_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"


def _load(data: Path, lang: str) -> list[dict]:
    path = data / "corpus" / f"{lang}.jsonl"
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


def bench(f: MedicalFilter, docs: list[dict], lang: str, seconds: float) -> tuple[float, float, float, float]:
    """(medical kept, general kept, docs/s, MB/s) for one preset and language."""
    kept = {"medical": 0, "general": 0}
    total = {"medical": 0, "general": 0}
    for d in docs:
        total[d["domain"]] += 1
        kept[d["domain"]] += f.score(d["text"], lang)[0]
    texts = [d["text"] for d in docs]
    nbytes = sum(len(t.encode("utf-8")) for t in texts)
    rounds, start = 0, time.perf_counter()
    while True:
        for t in texts:
            f.score(t, lang)
        rounds += 1
        elapsed = time.perf_counter() - start
        if elapsed >= seconds:
            break
    med = kept["medical"] / max(1, total["medical"])
    gen = kept["general"] / max(1, total["general"])
    return med, gen, rounds * len(texts) / elapsed, rounds * nbytes / elapsed / 1e6


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument(
        "--data", type=Path, default=DEFAULT_DATA, help="shared data folder (corpus/, mmedc_keywords.json)"
    )
    ap.add_argument("--seconds", type=float, default=1.0, help="minimum timing per preset and language")
    args = ap.parse_args(argv)
    keywords = args.data / "mmedc_keywords.json"
    if not (args.data / "corpus").is_dir() or not keywords.is_file():
        print(
            f"error: {args.data} has no corpus/ folder or mmedc_keywords.json (use --data)", file=sys.stderr
        )
        return 2
    docs = {lang: _load(args.data, lang) for lang in LANGS}
    presets = {
        "default": MedicalConfig(),
        "mmedc": MedicalConfig(preset="mmedc", keywords_file=str(keywords)),
    }
    print(f"data: {args.data}")
    print(
        f"{'preset':8} {'lang':4} {'docs':>5} {'medical kept':>13} {'general kept':>13} {'docs/s':>9} {'MB/s':>6}"
    )
    for name, cfg in presets.items():
        start = time.perf_counter()
        f = MedicalFilter(cfg)
        setup = time.perf_counter() - start
        for lang in LANGS:
            med, gen, dps, mbps = bench(f, docs[lang], lang, args.seconds)
            print(f"{name:8} {lang:4} {len(docs[lang]):5d} {med:13.1%} {gen:13.1%} {dps:9,.0f} {mbps:6.2f}")
        print(f"{name:8} (lists loaded and compiled in {setup * 1000:.0f} ms)")
    return 0


if __name__ == "__main__":
    sys.exit(main())

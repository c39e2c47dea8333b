"""Language ID and quality filters of ``mmed prep`` on the shared corpus: the figures their defaults rest on.

    .venv/bin/python -m benchmarks.filters [langid|quality|decontam|all] [--data ../shared/data]

langid: per language, accuracy of ``LanguageIdentifier.detect`` with the defaults, the lowest confidence of
a correct label, the labels of wrong answers, and ms per document.
quality: per language and domain (``medical``/``general`` of each corpus record), the share of documents
that pass ``QualityFilter`` with the defaults after ``clean_text`` (as in ``mmed prep``), the rules that
reject the others, and the seconds for the whole corpus.
decontam: per language, how many corpus documents share at least one n-gram with a benchmark item of
``qa/`` (GPT-3's "any shared n-gram") for zh/ja character n-grams of 13 and 20 units (word n-grams: the
default 13), the largest shared fraction of an item's n-grams, and what the default rule
(``min_fraction``) removes.
"""

from __future__ import annotations

import argparse
import json
import time
from collections import Counter, defaultdict
from dataclasses import replace
from pathlib import Path

from preprocessing.clean import CleanConfig, clean_text
from preprocessing.decontam import DecontamConfig, NgramIndex, load_benchmark
from preprocessing.document import LANGS
from preprocessing.langid import LangIdConfig, LanguageIdentifier
from preprocessing.quality import QualityConfig, QualityFilter

DEFAULT_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"


def corpus(data: Path) -> dict[str, list[dict]]:
    out = {}
    for lang in LANGS:
        text = (data / "corpus" / f"{lang}.jsonl").read_text(encoding="utf-8")
        out[lang] = [json.loads(line) for line in text.splitlines() if line.strip()]
    return out


def langid(docs: dict[str, list[dict]]) -> None:
    ident = LanguageIdentifier(LangIdConfig())
    print(f"{'lang':>4} {'docs':>5} {'accuracy':>8} {'min conf':>8} {'ms/doc':>7}  wrong labels")
    for lang, recs in docs.items():
        t0 = time.perf_counter()
        got = [ident.detect(r["text"]) for r in recs]
        ms = (time.perf_counter() - t0) * 1000 / max(len(recs), 1)
        right = [conf for label, conf in got if label == lang]
        wrong = Counter(str(label) for label, _ in got if label != lang)
        low = min(right) if right else float("nan")
        acc = len(right) / max(len(recs), 1)
        print(f"{lang:>4} {len(recs):>5} {acc:>8.3f} {low:>8.2f} {ms:>7.2f}  {dict(wrong) or ''}")


def quality(docs: dict[str, list[dict]]) -> None:
    filt, clean = QualityFilter(QualityConfig()), CleanConfig()
    passed: dict[tuple[str, str], list[int]] = defaultdict(lambda: [0, 0])
    reasons: dict[tuple[str, str], Counter] = defaultdict(Counter)
    seconds = 0.0
    for lang, recs in docs.items():
        for r in recs:
            text = clean_text(r["text"], clean)
            t0 = time.perf_counter()
            _, rule, _ = filt.apply(text, lang)
            seconds += time.perf_counter() - t0
            key = (lang, r.get("domain", "?"))
            passed[key][0] += rule is None
            passed[key][1] += 1
            if rule is not None:
                reasons[key][rule] += 1
    print(f"{'lang':>4} {'domain':>8} {'pass':>6} {'docs':>5}  rejected by")
    for (lang, domain), (ok, n) in sorted(passed.items()):
        print(f"{lang:>4} {domain:>8} {ok / n:>6.3f} {n:>5}  {dict(reasons[(lang, domain)]) or ''}")
    print(f"quality filter: {sum(n for _, n in passed.values())} docs in {seconds:.2f} s")


def decontam(docs: dict[str, list[dict]], qa: Path) -> None:
    bench, default = load_benchmark(qa), DecontamConfig()
    print(f"{'lang':>4} {'docs':>5} {'char n':>6} {'any shared':>10} {'max fraction':>12} {'removed':>7}")
    for n in (13, 20):
        anyone = replace(default, min_fraction=0.0, char=replace(default.char, n=n))
        index, rule = NgramIndex(bench, anyone), NgramIndex(bench, replace(default, char=anyone.char))
        for lang, recs in docs.items():
            hits = [index.match(r["text"]) for r in recs]
            top = max((m["fraction"] for h in hits for m in h), default=0.0)
            removed = sum(1 for r in recs if rule.match(r["text"]))
            shared = sum(1 for h in hits if h)
            print(f"{lang:>4} {len(recs):>5} {n:>6} {shared:>10} {top:>12.2f} {removed:>7}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("what", nargs="?", choices=["langid", "quality", "decontam", "all"], default="all")
    ap.add_argument("--data", type=Path, default=DEFAULT_DATA, help="folder holding corpus/<lang>.jsonl")
    args = ap.parse_args()
    docs = corpus(args.data)
    if args.what in ("langid", "all"):
        langid(docs)
    if args.what in ("quality", "all"):
        quality(docs)
    if args.what in ("decontam", "all"):
        decontam(docs, args.data / "qa")


if __name__ == "__main__":
    main()

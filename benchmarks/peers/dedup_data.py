"""The dedup benchmark's input: documents with planted near-duplicate clusters, cached per size, and the one
scoring function every method's output goes through.

Documents are built from ``../shared/data/corpus``: an original is sentences drawn at random from one
language's corpus documents up to ~2,000 characters (~1,000 for zh/ja); with probability ``dup_rate`` a
document is instead a copy of an earlier original of its language, exact or edited by
``preprocessing.dedup.synthetic.near_copy`` (kinds del/ins/sub/swap/typo/boiler, 2/5/10% of tokens, round
robin). An original and its copies form one true cluster; ``truth.tsv`` records every document's cluster.
Written once per (size, seed, dup_rate) under ``benchmarks/.cache`` in prep's layout (``kept/<lang>/*.jsonl.zst``,
at least 4 files per language and at most 10,000 documents a file, so 2 workers have files to share in every
language for each method); ``meta.json`` is written last and marks the cache complete.
"""

from __future__ import annotations

import json
import random
import re
import shutil
from collections import Counter, defaultdict
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from benchmarks.dedup import corpus
from benchmarks.peers.peers_venv import REPO
from megatron_mmed.common.io import JsonlZstWriter
from preprocessing.dedup.synthetic import KINDS, near_copy, tokens_of
from preprocessing.document import CJK_LANGS, LANGS

CACHE = REPO / "benchmarks" / ".cache"
EDITS: tuple[str, ...] = (*KINDS, "exact")
RATES: tuple[float, ...] = (0.02, 0.05, 0.10)
_SENT = re.compile(r"(?<=[.!?。！？])\s*")
_VERSION = 1  # bump when the generator changes (old caches are then ignored)


@dataclass(frozen=True)
class DedupInput:
    root: Path  # prep layout: root/kept/<lang>/*.jsonl.zst
    docs: int
    truth: Path  # id \t lang \t cluster \t edit

    @property
    def kept(self) -> Path:
        return self.root / "kept"


def build_input(
    size: int,
    seed: int = 0,
    dup_rate: float = 0.05,
    cache: Path = CACHE,
    shard_docs: int | None = None,
    target_chars: int = 2000,
    log=print,
) -> DedupInput:
    """The cached input of ``size`` documents (built when missing; ~2 min and ~0.7 GB for 1M)."""
    if shard_docs is None:  # datatrove's tasks are files per language: give each language >= 4
        shard_docs = max(1, min(10_000, -(-size // (4 * len(LANGS)))))
    root = Path(cache) / f"dedup-n{size}-s{seed}-d{dup_rate:g}-f{shard_docs}-v{_VERSION}"
    meta = root / "meta.json"
    if meta.is_file():
        return DedupInput(root, json.loads(meta.read_text())["docs"], root / "truth.tsv")
    shutil.rmtree(root, ignore_errors=True)
    log(f"dedup input: building {size:,} documents in {root} (once; cached)")
    rng = random.Random(seed)
    counts: Counter = Counter()
    root.mkdir(parents=True)
    with open(root / "truth.tsv", "w", encoding="utf-8") as truth:
        for k, lang in enumerate(LANGS):
            n_lang = size // len(LANGS) + (1 if k < size % len(LANGS) else 0)
            counts += _write_language(root, lang, n_lang, rng, dup_rate, shard_docs, target_chars, truth)
    meta.write_text(json.dumps({"docs": size, "seed": seed, "dup_rate": dup_rate, "edits": dict(counts)}))
    return DedupInput(root, size, root / "truth.tsv")


def _write_language(
    root: Path,
    lang: str,
    n: int,
    rng: random.Random,
    dup_rate: float,
    shard_docs: int,
    target_chars: int,
    truth,
) -> Counter:
    docs = corpus(lang)
    sents = [s for d in docs for s in _SENT.split(d["text"]) if len(s) > 10]
    vocab = [t for s in sents[:500] for t in tokens_of(s, lang)]
    want = target_chars // 2 if lang in CJK_LANGS else target_chars
    sep = "" if lang in CJK_LANGS else " "
    originals: list[tuple[str, str]] = []  # (id, text)
    counts: Counter = Counter()
    writer = None
    for i in range(n):
        if i % shard_docs == 0:
            if writer is not None:
                writer.close()
            writer = JsonlZstWriter(root / "kept" / lang / f"{i // shard_docs:05d}.jsonl.zst")
        did = f"{lang}-{i:08d}"
        if originals and rng.random() < dup_rate:
            cluster, src = rng.choice(originals)
            edit = EDITS[counts["copies"] % len(EDITS)]
            rate = RATES[(counts["copies"] // len(EDITS)) % len(RATES)]
            text = src if edit == "exact" else near_copy(src, lang, rate, edit, rng, vocab)
            label = edit if edit == "exact" else f"{edit}{rate:g}"
            counts["copies"] += 1
        else:
            parts, size = [], 0
            while size < want:
                s = rng.choice(sents)
                parts.append(s)
                size += len(s)
            text, cluster, label = sep.join(parts), did, "original"
            originals.append((did, text))
        counts[label] += 1
        writer.write({"id": did, "text": text, "lang": lang, "source": "synthetic"})
        truth.write(f"{did}\t{lang}\t{cluster}\t{label}\n")
    if writer is not None:
        writer.close()
    return counts


def read_truth(path: Path) -> dict[str, tuple[str, str]]:
    """``id -> (lang, cluster)``."""
    out = {}
    with open(path, encoding="utf-8") as fh:
        for line in fh:
            did, lang, cluster, _ = line.rstrip("\n").split("\t")
            out[did] = (lang, cluster)
    return out


def score(truth: dict[str, tuple[str, str]], removed: Iterable[str]) -> dict[str, dict[str, float]]:
    """Precision, recall and F1 of the removals per language, from what a method removed (ids) alone.

    A true cluster of k documents should lose exactly k - 1 of them, whichever. Per cluster with r removed:
    min(r, k-1) are true positives, r - (k-1) beyond that are false positives (a unique text lost: for a
    singleton every removal), and (k-1) - r below it are false negatives (a duplicate left in). Scoring the
    outcome works the same for a method that reports only what it removed (datatrove) as for one that says
    why (ours). An id not in the truth is a false positive.
    """
    size: Counter = Counter(truth.values())
    got: Counter = Counter()
    unknown: Counter = Counter()
    for rid in removed:
        key = truth.get(rid)
        if key is None:
            unknown["?"] += 1
        else:
            got[key] += 1
    per = defaultdict(lambda: {"tp": 0, "fp": 0, "fn": 0})
    for (lang, cluster), k in size.items():
        r = got.get((lang, cluster), 0)
        c = per[lang]
        c["tp"] += min(r, k - 1)
        c["fp"] += max(0, r - (k - 1))
        c["fn"] += max(0, (k - 1) - r)
    if unknown:
        per["?"]["fp"] += sum(unknown.values())
    out = {}
    for lang in sorted(per):
        c = per[lang]
        p = c["tp"] / (c["tp"] + c["fp"]) if c["tp"] + c["fp"] else 1.0
        rc = c["tp"] / (c["tp"] + c["fn"]) if c["tp"] + c["fn"] else 1.0
        f1 = 2 * p * rc / (p + rc) if p + rc else 0.0
        out[lang] = {**c, "precision": p, "recall": rc, "f1": f1}
    return out

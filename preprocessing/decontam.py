"""``mmed decontam``: drop training documents that contain MMedBench test items (n-gram overlap).

Text on both sides is normalised the same way (NFKC, format characters removed, casefolded, punctuation
dropped) and cut into units: a word for Latin/Cyrillic text, one character for Han/kana. Each benchmark item
gives up to three segments (its question, its options in key order, and both together); a segment of a
word-script language is indexed by its word ``word.n``-grams, a zh/ja one by its character ``char.n``-grams,
and a segment shorter than ``n`` (but at least ``min_tokens`` long) as one whole n-gram. A document is
contaminated by an item when, for one of the item's segments, it shares at least ``min_matches`` of the
segment's distinct n-grams and at least ``min_fraction`` of them. Every document is checked against the items
of all languages. n-grams are 64-bit polynomial hashes computed with numpy (prefix sums), so the index of
the whole benchmark stays small and the lookup per document is a handful of vectorised operations.
"""

from __future__ import annotations

import re
import time
import unicodedata
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import xxhash

from eval import data as qa
from megatron_mmed.common.config import ConfigError, to_dict
from megatron_mmed.common.errors import UserError
from megatron_mmed.common.io import DoneMarkers, JsonlZstWriter, atomic_write_text, iter_jsonl_zst_records
from megatron_mmed.common.tasks import resume_tasks
from preprocessing.document import CJK_LANGS, LANGUAGE_NAMES
from preprocessing.layout import (
    StageStats,
    input_digest,
    kept_file,
    kept_files,
    rejected_file,
    require_stage_output,
    unreadable_record,
    write_stage_report,
)
from preprocessing.stage import open_stage

STAGE = "decontam"
REASON = "contaminated"
SEGMENTS: tuple[str, ...] = ("question", "options", "full")

_CJK = "\u3040-\u30ff\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff\uff66-\uff9f"
#: one unit = one Han/kana character, or a run of other letters/digits (a word)
_UNIT = re.compile(f"[{_CJK}]|[^\\W_{_CJK}]+")
#: invisible format characters (soft hyphen, zero-width, bidi marks, BOM) that split words when kept
_FORMAT = re.compile("[\u00ad\u061c\u180e\u200b-\u200f\u202a-\u202e\u2060-\u2064\ufeff]")


@dataclass(frozen=True)
class NgramRule:
    """Word n-grams (en/fr/es/ru): size ``n``, and the shortest segment still used (as one whole n-gram)."""

    n: int = 13
    min_tokens: int = 6

    def validate(self) -> None:
        if self.n < 1:
            raise ConfigError(f"n-gram size must be >= 1, got {self.n}")
        if not 1 <= self.min_tokens <= self.n:
            raise ConfigError(f"min_tokens must be in [1, n={self.n}], got {self.min_tokens}")


@dataclass(frozen=True)
class CharNgramRule(NgramRule):
    """Character n-grams (zh/ja)."""

    n: int = 20
    min_tokens: int = 10


@dataclass(frozen=True)
class DecontamConfig:
    """The overlap rule of ``mmed decontam``; saved as ``OUT/config.yaml``.

    Why ``char.n = 20``: 13 English words are ~70 characters; 20 zh/ja characters are about 10-13 words.
    Clean Japanese documents share 13- and even 20-character n-grams with IgakuQA items (boilerplate such
    as 心音と呼吸音とに異常を認めない), but only a small fraction of an item's n-grams, so GPT-3's "any
    shared n-gram" (``min_fraction: 0``) over-removes; ``min_fraction: 0.5`` keeps every clean document and
    still finds the CasiMedicos training texts that repeat MIR test questions. The counts on the shared
    corpus: ``python -m benchmarks.filters decontam``.
    """

    #: en/fr/es/ru segments: word n-grams (13 as in GPT-3)
    word: NgramRule = field(default_factory=NgramRule)
    #: zh/ja segments: character n-grams
    char: CharNgramRule = field(default_factory=CharNgramRule)
    #: a segment matches when the document holds >= min_matches of its distinct n-grams ...
    min_matches: int = 1
    #: ... and >= this fraction of them (0 = GPT-3's "any shared n-gram")
    min_fraction: float = 0.5
    #: index the options (alone and after the question) as well as the question
    use_options: bool = True
    #: keep the text of removed documents in ``rejected/``
    keep_rejected_text: bool = True
    workers: int = 1

    def validate(self) -> None:
        if self.min_matches < 1:
            raise ConfigError(f"min_matches must be >= 1, got {self.min_matches}")
        if not 0.0 <= self.min_fraction <= 1.0:
            raise ConfigError(f"min_fraction must be in [0, 1], got {self.min_fraction}")
        if self.workers < 1:
            raise ConfigError(f"workers must be >= 1, got {self.workers}")


def text_units(text: str) -> list[str]:
    """Normalised units of ``text``: words, or single Han/kana characters.

    Single ASCII letters/digits are dropped on both sides, so option labels ("A.", "(b)", "1-") never break
    an n-gram.
    """
    text = unicodedata.normalize("NFKC", text)
    text = _FORMAT.sub("", text).casefold()
    return [u for u in _UNIT.findall(text) if not (len(u) == 1 and u.isascii())]


# ---- 64-bit polynomial n-gram hashes: window(i, L) = sum_j t[i+j] * P^j (mod 2^64) ----
_P = 0x9E3779B97F4A7C15  # odd, so invertible mod 2^64
_P_INV = pow(_P, -1, 1 << 64)
_pows = np.ones(1, dtype=np.uint64)
_inv_pows = np.ones(1, dtype=np.uint64)


def _powers(m: int) -> tuple[np.ndarray, np.ndarray]:
    global _pows, _inv_pows
    if len(_pows) < m:
        size = max(m, 2 * len(_pows))
        _pows = np.full(size, _P, dtype=np.uint64)
        _pows[0] = 1
        _pows = np.cumprod(_pows, dtype=np.uint64)
        _inv_pows = np.full(size, _P_INV, dtype=np.uint64)
        _inv_pows[0] = 1
        _inv_pows = np.cumprod(_inv_pows, dtype=np.uint64)
    return _pows[:m], _inv_pows[:m]


def unit_hashes(units: list[str]) -> np.ndarray:
    h = xxhash.xxh3_64_intdigest
    return np.fromiter((h(u.encode()) for u in units), dtype=np.uint64, count=len(units))


def _prefix(hashes: np.ndarray) -> np.ndarray:
    pw, _ = _powers(len(hashes))
    out = np.zeros(len(hashes) + 1, dtype=np.uint64)
    np.cumsum(hashes * pw, dtype=np.uint64, out=out[1:])
    return out


def _windows(prefix: np.ndarray, length: int) -> np.ndarray:
    """Hashes of every window of ``length`` units (independent of where the window starts)."""
    m = len(prefix) - 1
    _, inv = _powers(m)
    return (prefix[length:] - prefix[:-length]) * inv[: m - length + 1]


@dataclass(frozen=True)
class BenchmarkItem:
    id: str  # "<Language>:<0-based line index>"
    language: str
    source_id: str | None
    question: str
    options: tuple[str, ...]


@dataclass
class Benchmark:
    items: list[BenchmarkItem]
    files: dict[str, str]  # Language -> path
    malformed: list[dict[str, Any]]  # {"file", "line", "reason"}


def load_benchmark(qa_dir: str | Path) -> Benchmark:
    """Items of every ``<Language>.jsonl`` in ``qa_dir`` (or MMedBench's ``qa_dir/Test/``); bad lines counted.

    Read through ``eval.data`` (the one MMedBench loader) in its lenient mode: a question with string options
    is indexed even when its answer is malformed, since it must not leak into training either way.
    """
    qa_dir = Path(qa_dir)
    if not qa_dir.is_dir():
        raise UserError(f"benchmark folder does not exist: {qa_dir}")
    folder = qa.split_dir(qa_dir, "Test")
    names = qa.available_languages(folder)
    if not names:
        raise UserError(
            f"no MMedBench language file ({', '.join(n + '.jsonl' for n in qa.LANGUAGES)}) in {qa_dir} or {qa_dir}/Test"
        )
    bench = Benchmark([], {}, [])
    for name in names:
        ls = qa.load_language(folder / f"{name}.jsonl", name, strict=False)
        bench.files[name] = str(ls.path)
        bench.malformed += [{"file": str(ls.path), "line": b.index, "reason": b.reason} for b in ls.bad]
        for it in ls.items:
            options = tuple(it.options[k] for k in sorted(it.options))
            bench.items.append(BenchmarkItem(it.qid, name, it.source_id, it.question, options))
    return bench


_CJK_NAMES = {LANGUAGE_NAMES[lang] for lang in CJK_LANGS}


class NgramIndex:
    """Hashed n-grams of every benchmark segment, grouped by n-gram length, in sorted numpy arrays."""

    def __init__(self, bench: Benchmark, cfg: DecontamConfig):
        self.cfg = cfg
        self.items = bench.items
        self.seg_item: list[int] = []
        self.seg_name: list[str] = []
        self.seg_ngrams: list[int] = []
        self.unusable: list[str] = []  # items with no segment long enough
        pairs: dict[int, list[tuple[np.ndarray, int]]] = {}
        for k, item in enumerate(bench.items):
            rule = self.cfg.char if item.language in _CJK_NAMES else self.cfg.word
            q = text_units(item.question)
            o = [u for opt in item.options for u in text_units(opt)] if cfg.use_options else []
            segs = {"question": q, "options": o, "full": q + o} if o else {"question": q}
            used = 0
            for name, units in segs.items():
                if len(units) < rule.min_tokens:
                    continue
                length = min(rule.n, len(units))
                grams = np.unique(_windows(_prefix(unit_hashes(units)), length))
                pairs.setdefault(length, []).append((grams, len(self.seg_item)))
                self.seg_item.append(k)
                self.seg_name.append(name)
                self.seg_ngrams.append(len(grams))
                used += 1
            if not used:
                self.unusable.append(item.id)
        self.tables: dict[int, tuple[np.ndarray, np.ndarray, np.ndarray]] = {}
        for length, plist in sorted(pairs.items()):
            hashes = np.concatenate([g for g, _ in plist])
            segs = np.concatenate([np.full(len(g), s, dtype=np.int32) for g, s in plist])
            order = np.argsort(hashes, kind="stable")
            hashes, segs = hashes[order], segs[order]
            keys, starts = np.unique(hashes, return_index=True)
            self.tables[length] = (keys, np.append(starts, len(hashes)), segs)
        self.n_ngrams = sum(len(t[2]) for t in self.tables.values())

    def match(self, text: str) -> list[dict[str, Any]]:
        """Items that ``text`` contains under the overlap rule, with their best segment (empty if clean)."""
        units = text_units(text)
        if not units:
            return []
        prefix = _prefix(unit_hashes(units))
        found: list[np.ndarray] = []
        for length, (keys, starts, segs) in self.tables.items():
            if length > len(units):
                continue
            w = _windows(prefix, length)
            pos = np.searchsorted(keys, w)
            pos[pos == len(keys)] = 0
            hit = np.unique(pos[keys[pos] == w])
            found.extend(segs[starts[p] : starts[p + 1]] for p in hit)
        if not found:
            return []
        seg_ids, shared = np.unique(np.concatenate(found), return_counts=True)
        best: dict[int, dict[str, Any]] = {}
        for s, c in zip(seg_ids.tolist(), shared.tolist(), strict=True):
            frac = c / self.seg_ngrams[s]
            if c < self.cfg.min_matches or frac < self.cfg.min_fraction:
                continue
            k = self.seg_item[s]
            if k not in best or frac > best[k]["fraction"]:
                item = self.items[k]
                best[k] = {
                    "item": item.id,
                    "source_id": item.source_id,
                    "segment": self.seg_name[s],
                    "shared": c,
                    "fraction": round(frac, 4),
                }
        return [best[k] for k in sorted(best)]


# ---- the stage ----
_INDEX: NgramIndex | None = None


def _shard_id(lang: str, path: Path) -> str:
    return f"{lang}-{path.name.removesuffix('.jsonl.zst')}"


def _process_file(lang: str, path: Path, out: Path, keep_text: bool) -> dict[str, Any]:
    """Split one kept file into survivors and contaminated documents; returns the marker payload."""
    assert _INDEX is not None
    stats = StageStats()
    kept = JsonlZstWriter(kept_file(out, lang, path.name.removesuffix(".jsonl.zst")))
    rejected = JsonlZstWriter(rejected_file(out, _shard_id(lang, path)))
    matched_items: dict[str, int] = {}
    records = iter_jsonl_zst_records(path)
    try:
        for i, rec in records:
            text = rec.get("text") if rec is not None else None
            if not isinstance(text, str):
                stats.seen(lang, 0)
                stats.dropped(lang, "parse")
                rejected.write({"id": f"{path.name}:{i}", "lang": lang, "reason": "parse"})
                continue
            doc_lang = rec.get("lang") or lang
            stats.seen(doc_lang, len(text))
            matches = _INDEX.match(text)
            if not matches:
                kept.write(rec)
                stats.kept(doc_lang, len(text))
                continue
            stats.dropped(doc_lang, REASON)
            out_rec = {
                "id": rec.get("id"),
                "lang": doc_lang,
                "reason": REASON,
                "matches": [m["item"] for m in matches],
                "match_details": matches,
                "source": rec.get("source", ""),
            }
            if keep_text:
                out_rec["text"] = text
            rejected.write(out_rec)
            for m in matches:
                matched_items[m["item"]] = matched_items.get(m["item"], 0) + 1
        if records.unreadable is not None:  # a cut input file: its readable part is kept, the rest recorded
            stats.seen(lang, 0)
            stats.dropped(lang, "unreadable")
            rejected.write(unreadable_record(lang, records.unreadable))
        kept.close()
        rejected.close()
    except BaseException:
        kept.abort()
        rejected.abort()
        raise
    return {"file": str(path), "stats": stats.to_dict(), "matched_items": matched_items}


def _work(task: tuple[str, str, str, bool]) -> tuple[str, dict[str, Any]]:
    lang, path, out, keep_text = task
    return _shard_id(lang, Path(path)), _process_file(lang, Path(path), Path(out), keep_text)


@dataclass
class DecontamResult:
    out_dir: Path
    stats: StageStats
    contaminated_per_language: dict[str, int]
    matched_items: dict[str, int]  # benchmark item id -> documents that contain it
    files_total: int
    files_skipped: int
    seconds: float
    report: dict[str, Any]


def run_decontam(
    input_dir: str | Path,
    benchmark_dir: str | Path,
    out_dir: str | Path,
    cfg: DecontamConfig,
    show_progress: bool = True,
) -> DecontamResult:
    """Copy ``input_dir``'s kept documents to ``out_dir`` minus those containing benchmark items (resumable)."""
    global _INDEX
    t0 = time.time()
    inp = require_stage_output(input_dir)
    bench = load_benchmark(benchmark_dir)
    files_fp = {
        n: [Path(p).stat().st_size, xxhash.xxh3_64_hexdigest(Path(p).read_bytes())]
        for n, p in bench.files.items()
    }
    with open_stage(STAGE, out_dir, cfg, reads=[inp], input=input_digest(inp), benchmark=files_fp) as out:
        _INDEX = NgramIndex(bench, cfg)
        tasks = {
            _shard_id(lang, f): (lang, str(f), str(out), cfg.keep_rejected_text)
            for lang, files in kept_files(inp).items()
            for f in files
        }
        # forked workers share the index built above
        done = resume_tasks(
            "decontam",
            tasks,
            _work,
            DoneMarkers(out, STAGE),
            unit="files",
            workers=cfg.workers,
            show_progress=show_progress,
        )
        results = done.results
        stats = StageStats()
        matched: dict[str, int] = {}
        for sid in sorted(results):
            stats.merge(StageStats.from_dict(results[sid]["stats"]))
            for item, c in results[sid]["matched_items"].items():
                matched[item] = matched.get(item, 0) + c
        per_lang = {lang: stats.drops[lang][REASON] for lang in stats.languages()}
        bench_info = {
            "path": str(Path(benchmark_dir).resolve()),
            "files": bench.files,
            "items": len(bench.items),
            "items_per_language": {n: sum(it.language == n for it in bench.items) for n in bench.files},
            "malformed_lines": len(bench.malformed),
            "malformed": bench.malformed[:100],
            "unusable_short_items": _INDEX.unusable,
            "indexed_ngrams": _INDEX.n_ngrams,
        }
        matched = dict(sorted(matched.items(), key=lambda kv: (-kv[1], kv[0])))
        report = write_stage_report(
            out,
            STAGE,
            stats,
            input_dir=inp,
            contaminated_per_language=per_lang,
            matched_items=matched,
            benchmark=bench_info,
            config=to_dict(cfg),
        )
        atomic_write_text(out / "report.md", render_report_md(report))
        return DecontamResult(
            out, stats, per_lang, matched, len(tasks), done.skipped, time.time() - t0, report
        )


def render_report_md(report: dict[str, Any]) -> str:
    """The decontam report as Markdown tables."""
    b = report["benchmark"]
    lines = [
        "# mmed decontam",
        "",
        f"Benchmark: `{b['path']}`: {b['items']} items ({', '.join(f'{k} {v}' for k, v in b['items_per_language'].items())}),"
        f" {b['malformed_lines']} malformed lines skipped, {len(b['unusable_short_items'])} items too short to match.",
        "",
        "| language | docs in | docs out | contaminated | other drops |",
        "|---|---:|---:|---:|---:|",
    ]
    rows = [*report["languages"].items(), ("**all**", report["totals"])]
    for lang, v in rows:
        other = sum(c for r, c in v["drops"].items() if r != REASON)
        lines.append(
            f"| {lang} | {v['docs_in']:,} | {v['docs_out']:,} | {v['drops'].get(REASON, 0):,} | {other:,} |"
        )
    if report["matched_items"]:
        lines += [
            "",
            "Benchmark items found in training documents:",
            "",
            "| item | documents |",
            "|---|---:|",
        ]
        lines += [f"| {k} | {v} |" for k, v in list(report["matched_items"].items())[:50]]
    return "\n".join(lines) + "\n"

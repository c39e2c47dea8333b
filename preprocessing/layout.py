"""The folder layout shared by prep, dedup and decontam (the interface between stages).

::

    OUT/config.yaml                      the config that made this folder
    OUT/kept/<lang>/<shard>.jsonl.zst    kept documents: id, text, lang, source (+ scores)
    OUT/rejected/<shard>.jsonl.zst       dropped documents: id, lang, reason (+ detail, text, ...)
    OUT/report.json|md, OUT/*.png        per-stage, per-language counts; ``chain`` holds earlier stages
    OUT/.done/<stage>/<shard>.json       completion markers (a rerun skips finished shards)

``StageStats`` is the counter every stage keeps; ``write_stage_report`` appends a stage to the chain
inherited from the input folder's ``report.json``.
"""

from __future__ import annotations

import json
from collections import Counter, defaultdict
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from megatron_mmed.common.errors import UserError
from megatron_mmed.common.io import Unreadable, atomic_write_json, files_digest, read_jsonl_zst

KEPT = "kept"
REJECTED = "rejected"
REPORT = "report.json"
UNKNOWN_LANG = "unknown"


def kept_file(root: str | Path, lang: str, shard_id: str) -> Path:
    return Path(root) / KEPT / lang / f"{shard_id}.jsonl.zst"


def rejected_file(root: str | Path, shard_id: str) -> Path:
    return Path(root) / REJECTED / f"{shard_id}.jsonl.zst"


def require_stage_output(root: str | Path) -> Path:
    """Raise ``UserError`` unless ``root`` looks like a prep/dedup/decontam output folder."""
    root = Path(root)
    if not root.exists():
        raise UserError(f"input folder does not exist: {root}")
    if not (root / KEPT).is_dir():
        raise UserError(
            f"{root} is not a preprocessing output: expected {root}/{KEPT}/<lang>/*.jsonl.zst (run `mmed prep` first)"
        )
    if (root / ".done").is_dir() and not (root / REPORT).is_file():
        raise UserError(
            f"{root} is not complete (it has no {REPORT}: the stage that writes it is still running or was "
            "interrupted; rerun that stage first)"
        )
    return root


def input_digest(root: str | Path) -> dict[str, Any]:
    """What a stage records of its input folder (``files_digest`` of the kept files): a rerun on a changed
    input is refused instead of mixing two runs."""
    return files_digest((f"{lang}/{f.name}", f) for lang, fs in kept_files(root).items() for f in fs)


def kept_files(root: str | Path) -> dict[str, list[Path]]:
    """``lang -> sorted .jsonl.zst files`` under ``root/kept`` (languages in sorted order)."""
    base = Path(root) / KEPT
    out: dict[str, list[Path]] = {}
    if not base.is_dir():
        return out
    for lang_dir in sorted(p for p in base.iterdir() if p.is_dir()):
        files = sorted(lang_dir.glob("*.jsonl.zst"))
        if files:
            out[lang_dir.name] = files
    return out


def rejected_files(root: str | Path) -> list[Path]:
    return sorted((Path(root) / REJECTED).glob("*.jsonl.zst"))


def iter_kept(root: str | Path, lang: str | None = None) -> Iterator[dict[str, Any]]:
    """Every kept record (optionally of one language), in a deterministic order."""
    for lg, files in kept_files(root).items():
        if lang is not None and lg != lang:
            continue
        for f in files:
            yield from read_jsonl_zst(f)


def iter_rejected(root: str | Path) -> Iterator[dict[str, Any]]:
    for f in rejected_files(root):
        yield from read_jsonl_zst(f)


def unreadable_record(lang: str, bad: Unreadable) -> dict[str, Any]:
    """The ``rejected/`` record of the unreadable rest of an input file (a cut or corrupt zstd stream)."""
    name = bad.path.rsplit("/", 1)[-1]
    return {"id": f"{lang}/{name}#unreadable", "lang": lang, "reason": "unreadable", "detail": str(bad)}


class StageStats:
    """Per-language documents/characters in and out, and drops by reason."""

    def __init__(self) -> None:
        self.docs_in: Counter[str] = Counter()
        self.chars_in: Counter[str] = Counter()
        self.docs_out: Counter[str] = Counter()
        self.chars_out: Counter[str] = Counter()
        self.drops: defaultdict[str, Counter[str]] = defaultdict(Counter)

    def seen(self, lang: str | None, chars: int) -> None:
        lang = lang or UNKNOWN_LANG
        self.docs_in[lang] += 1
        self.chars_in[lang] += chars

    def kept(self, lang: str | None, chars: int) -> None:
        lang = lang or UNKNOWN_LANG
        self.docs_out[lang] += 1
        self.chars_out[lang] += chars

    def dropped(self, lang: str | None, reason: str) -> None:
        self.drops[lang or UNKNOWN_LANG][reason] += 1

    def merge(self, other: StageStats) -> StageStats:
        for mine, theirs in (
            (self.docs_in, other.docs_in),
            (self.chars_in, other.chars_in),
            (self.docs_out, other.docs_out),
            (self.chars_out, other.chars_out),
        ):
            mine.update(theirs)
        for lang, c in other.drops.items():
            self.drops[lang].update(c)
        return self

    def languages(self) -> list[str]:
        langs = set(self.docs_in) | set(self.docs_out) | set(self.drops)
        return sorted(langs, key=lambda x: (x == UNKNOWN_LANG, x))

    def to_dict(self) -> dict[str, Any]:
        per_lang = {}
        for lang in self.languages():
            per_lang[lang] = {
                "docs_in": self.docs_in[lang],
                "chars_in": self.chars_in[lang],
                "docs_out": self.docs_out[lang],
                "chars_out": self.chars_out[lang],
                "drops": dict(sorted(self.drops[lang].items())),
            }
        totals_drops: Counter[str] = Counter()
        for c in self.drops.values():
            totals_drops.update(c)
        return {
            "languages": per_lang,
            "totals": {
                "docs_in": sum(self.docs_in.values()),
                "chars_in": sum(self.chars_in.values()),
                "docs_out": sum(self.docs_out.values()),
                "chars_out": sum(self.chars_out.values()),
                "drops": dict(sorted(totals_drops.items())),
            },
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> StageStats:
        s = cls()
        for lang, v in d.get("languages", {}).items():
            s.docs_in[lang] = v["docs_in"]
            s.chars_in[lang] = v["chars_in"]
            s.docs_out[lang] = v["docs_out"]
            s.chars_out[lang] = v["chars_out"]
            s.drops[lang].update(v.get("drops", {}))
        return s


def read_report(root: str | Path) -> dict[str, Any] | None:
    p = Path(root) / REPORT
    if not p.is_file():
        return None
    try:
        return json.loads(p.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError):
        return None


def write_stage_report(
    out_dir: str | Path, stage: str, stats: StageStats, input_dir: str | Path | None = None, **extra: Any
) -> dict[str, Any]:
    """Write ``out_dir/report.json`` for ``stage``; ``chain`` = the input's chain + its own stage."""
    chain: list[dict[str, Any]] = []
    if input_dir is not None:
        prev = read_report(input_dir)
        if prev:
            chain = list(prev.get("chain", []))
            chain.append({k: v for k, v in prev.items() if k != "chain"})
    report = {"stage": stage, **stats.to_dict(), **extra, "chain": chain}
    atomic_write_json(Path(out_dir) / REPORT, report)
    return report

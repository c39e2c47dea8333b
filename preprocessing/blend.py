"""What ``mmed tokenize`` leaves beside its binaries: the blend training reads (``OUT/blend.json``, ``blend.yaml``)
and the report (``report.json|md``, token histograms), both computed from the written ``.idx`` files.

Sampling weights by temperature over token counts, as multilingual pretraining does: p_i ∝ m_i · n_i^(1/T)
(T = 1: proportional to tokens; larger T flattens towards uniform), with optional per-language multipliers
m_i. The file's format and its one reader/writer: :mod:`megatron_mmed.common.blend_file`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from megatron_mmed.common.blend_file import BLEND_JSON, BlendDataset, BlendFile, BlendTokenizer
from megatron_mmed.common.config import ConfigError
from megatron_mmed.common.errors import UserError
from megatron_mmed.common.io import atomic_write_text
from preprocessing.document import LANGS
from preprocessing.layout import StageStats, write_stage_report
from preprocessing.tokenize_index import read_index


@dataclass(frozen=True)
class BlendConfig:
    """Temperature sampling over token counts, with per-language multipliers (``blend.weights.ru=2``)."""

    temperature: float = 1.0
    weights: dict[str, float] = field(default_factory=dict)

    def validate(self) -> None:
        if not (self.temperature > 0 and math.isfinite(self.temperature)):
            raise ConfigError(f"blend.temperature must be a positive number, got {self.temperature}")
        for lang, w in self.weights.items():
            if lang not in LANGS:
                raise ConfigError(f"blend.weights.{lang}: unknown language (one of {', '.join(LANGS)})")
            if not (w >= 0 and math.isfinite(w)):
                raise ConfigError(f"blend.weights.{lang} must be >= 0, got {w}")


def temperature_weights(
    tokens: dict[str, int], temperature: float, multipliers: dict[str, float] | None = None
) -> dict[str, float]:
    """Normalised p_i ∝ m_i · n_i^(1/T), computed in log space (no overflow for small T)."""
    multipliers = multipliers or {}
    logs = {}
    for lang, n in tokens.items():
        m = multipliers.get(lang, 1.0)
        if n > 0 and m > 0:
            logs[lang] = math.log(m) + math.log(n) / temperature
    if not logs:
        raise UserError("no dataset has a positive sampling weight (all empty or multiplier 0)")
    top = max(logs.values())
    raw = {lang: math.exp(v - top) for lang, v in logs.items()}
    total = sum(raw.values())
    return {lang: raw.get(lang, 0.0) / total for lang in tokens}


def _lang_order(lang: str) -> tuple[int, str]:
    return (LANGS.index(lang) if lang in LANGS else len(LANGS), lang)


def build_blend(
    root: str | Path, counts: dict[str, dict[str, int]], cfg: BlendConfig, tokenizer: dict[str, Any]
) -> dict[str, Any]:
    """The blend document for ``counts`` = ``{lang: {"tokens": n, "documents": d}}`` under ``root``."""
    root = Path(root).resolve()
    langs = sorted((lang for lang, c in counts.items() if c["documents"] > 0), key=_lang_order)
    weights = temperature_weights(
        {lang: counts[lang]["tokens"] for lang in langs}, cfg.temperature, cfg.weights
    )
    datasets = tuple(
        BlendDataset(
            lang=lang,
            prefix=str(root / f"{lang}_text_document"),
            name=f"{lang}_text_document",
            tokens=int(counts[lang]["tokens"]),
            documents=int(counts[lang]["documents"]),
            multiplier=float(cfg.weights.get(lang, 1.0)),
            weight=weights[lang],
        )
        for lang in langs
    )
    return BlendFile(
        root=str(root),
        temperature=cfg.temperature,
        multipliers={d.lang: d.multiplier for d in datasets},
        tokenizer=BlendTokenizer(**tokenizer),
        datasets=datasets,
    ).to_dict()


def write_blend(out_dir: str | Path, blend: dict[str, Any]) -> Path:
    """Write ``blend.json`` and ``blend.yaml`` through :class:`BlendFile` (which refuses a malformed one)."""
    return BlendFile.from_dict(blend, str(Path(out_dir) / BLEND_JSON)).write(out_dir)


def read_blend(path: str | Path) -> tuple[list[str], list[float]]:
    """``(prefixes, weights)`` for megatron-core's ``blend`` from a ``blend.json`` (or its folder); a moved
    folder's datasets are found beside the file."""
    blend = BlendFile.read(path)
    used = [d for d in blend.datasets if d.weight > 0]
    return [blend.prefix_on_disk(d) for d in used], [d.weight for d in used]


# ---- the tokenize report: read back from the .idx files ----
def _length_stats(lengths: np.ndarray) -> dict[str, float]:
    q = np.percentile(lengths, [5, 50, 95])
    return {
        "mean": round(float(lengths.mean()), 2),
        "p5": float(q[0]),
        "median": float(q[1]),
        "p95": float(q[2]),
        "min": int(lengths.min()),
        "max": int(lengths.max()),
    }


def _histograms(path: Path, lengths: dict[str, np.ndarray]) -> None:
    """Tokens per document per language, log-spaced bins.

    Drawn as one step artist per panel over log10(length) with ticks placed by hand and a fixed layout: a log
    axis's tick search and ``tight_layout``'s extra draw made this chart ~1.5 CPU s of every tokenize run.
    """
    from matplotlib.figure import Figure  # not pyplot: its import and global state cost ~0.5 s per run

    n = len(lengths)
    cols = min(3, n)
    rows = (n + cols - 1) // cols
    fig = Figure(figsize=(4 * cols, 2.8 * rows), dpi=100)
    fig.subplots_adjust(left=0.07, right=0.98, bottom=0.5 / (2.8 * rows), top=1 - 0.35 / (2.8 * rows))
    fig.subplots_adjust(hspace=0.75, wspace=0.3)
    axes = fig.subplots(rows, cols, squeeze=False)
    for ax, (lang, lens) in zip(axes.flat, lengths.items(), strict=False):
        logs = np.log10(np.maximum(lens, 1))
        lo, hi = float(logs.min()), max(float(logs.max()), float(logs.min()) + np.log10(2))
        edges = np.linspace(lo, hi, 41)
        counts, _ = np.histogram(logs, edges)
        ax.stairs(counts, edges, fill=True, color="#3b75af")
        ax.set_xlim(lo, hi)
        values = [m * 10**e for e in range(math.floor(lo), math.ceil(hi) + 1) for m in (1, 2, 5)]
        values = [v for v in values if lo <= math.log10(v) <= hi] or [round(10**lo), round(10**hi)]
        ax.set_xticks([math.log10(v) for v in values], [f"{v:,}" for v in values], fontsize=8)
        ax.set_yticks([0, int(counts.max())], ["0", f"{int(counts.max()):,}"], fontsize=8)
        ax.set_title(f"{lang}: {len(lens):,} docs, median {int(np.median(lens)):,} tokens", fontsize=9)
        ax.set_xlabel("tokens per document (incl. EOD; log scale)", fontsize=8)
    for ax in list(axes.flat)[n:]:
        ax.axis("off")
    fig.savefig(path)


def write_tokenize_report(
    out: Path,
    inp: Path,
    stats: StageStats,
    counts: dict[str, dict[str, int]],
    blend: dict[str, Any],
    cfg_dict: dict[str, Any],
) -> dict[str, Any]:
    """``report.json`` (chained to the input's), ``report.md`` and the PNG charts, read back from the .idx files."""
    from megatron_mmed.common.plots import bar_chart

    lengths: dict[str, np.ndarray] = {}
    datasets: dict[str, dict[str, Any]] = {}
    for d in blend["datasets"]:
        lens = read_index(d["prefix"] + ".idx").sequence_lengths.astype(np.int64)
        lengths[d["lang"]] = lens
        datasets[d["lang"]] = {
            "documents": d["documents"],
            "tokens": d["tokens"],
            "weight": d["weight"],
            "tokens_per_doc": _length_stats(lens),
            "bin_bytes": Path(d["prefix"] + ".bin").stat().st_size,
        }
    plots = []
    if lengths:
        _histograms(out / "tokens_per_doc.png", lengths)
        langs = list(lengths)
        bar_chart(
            out / "tokens_per_language.png", langs, [counts[x]["tokens"] for x in langs], "tokens", "tokens"
        )
        plots = ["tokens_per_doc.png", "tokens_per_language.png"]
    report = write_stage_report(
        out,
        "tokenize",
        stats,
        input_dir=inp,
        tokens_per_language={lang: c["tokens"] for lang, c in counts.items()},
        datasets=datasets,
        tokenizer=blend["tokenizer"],
        blend={
            "temperature": blend["temperature"],
            "weights": {d["lang"]: d["weight"] for d in blend["datasets"]},
        },
        config=cfg_dict,
        plots=plots,
    )
    atomic_write_text(out / "report.md", _render_md(report))
    return report


def _render_md(report: dict[str, Any]) -> str:
    tk = report["tokenizer"]
    lines = [
        "# mmed tokenize",
        "",
        f"Tokenizer: {tk['kind']} `{tk['path']}` (vocabulary {tk['vocab_size']:,}, EOD {tk['eod_id']}, "
        f"BOS {tk['bos_id']}, tokens stored as {tk['dtype']}). Blend temperature {report['blend']['temperature']}.",
        "",
        "| language | docs in | documents | tokens | weight | tokens/doc mean | median | p95 | rejected |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---|",
    ]
    for lang, v in report["languages"].items():
        d = report["datasets"].get(lang)
        drops = ", ".join(f"{r} {c}" for r, c in v["drops"].items()) or "-"
        if d is None:
            lines.append(f"| {lang} | {v['docs_in']:,} | 0 | 0 | - | - | - | - | {drops} |")
            continue
        s = d["tokens_per_doc"]
        lines.append(
            f"| {lang} | {v['docs_in']:,} | {d['documents']:,} | {d['tokens']:,} | {d['weight']:.4f} | "
            f"{s['mean']:,.1f} | {s['median']:,.0f} | {s['p95']:,.0f} | {drops} |"
        )
    lines += ["", *[f"![{p}]({p})" for p in report["plots"]]]
    if report["chain"]:
        lines += [
            "",
            "Earlier stages: " + " -> ".join(c.get("stage", "?") for c in report["chain"]) + " -> tokenize",
        ]
    return "\n".join(lines) + "\n"

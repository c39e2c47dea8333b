"""The dedup part of ``report.json`` (settings, clusters, removals) and ``report.md``."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from megatron_mmed.common.io import atomic_write_text
from preprocessing.dedup.config import DedupConfig
from preprocessing.dedup.lsh import Banding


def build_extra(
    cfg: DedupConfig,
    banding: Banding,
    clusters: dict[str, dict[str, Any]],
    no_shingles: dict[str, int],
    cjk_langs: frozenset[str],
) -> dict[str, Any]:
    """Settings and per-language cluster figures for ``write_stage_report`` (deterministic: no timings)."""
    per_lang = {}
    for lang, c in clusters.items():
        per_lang[lang] = {
            "shingles": f"{cfg.cjk_ngram}-char" if lang in cjk_langs else f"{cfg.word_ngram}-word",
            "clusters": c["clusters"],
            "docs_in_clusters": c["docs_in_clusters"],
            "removed_exact": c["removed_exact"],
            "removed_near": c["removed_near"],
            "verified_pairs": c["edges"],
            "cluster_sizes": c["cluster_sizes"],
            "docs_without_shingles": no_shingles.get(lang, 0),
        }
    return {
        "dedup": {
            "threshold": cfg.threshold,
            "num_perm": cfg.num_perm,
            "bands": banding.bands,
            "rows": banding.rows,
            "s_curve": {f"{j:.1f}": round(banding.probability(j), 4) for j in (0.3, 0.5, 0.6, 0.7, 0.8, 0.9)},
            "word_ngram": cfg.word_ngram,
            "cjk_ngram": cfg.cjk_ngram,
            "scope": "within each language (documents of different languages are never duplicates)",
            "languages": per_lang,
        }
    }


def write_markdown(path: Path, report: dict[str, Any]) -> None:
    d = report["dedup"]
    lines = [
        "# dedup report",
        "",
        f"Threshold {d['threshold']} (estimated Jaccard of shingle sets), {d['num_perm']} permutations, "
        f"LSH {d['bands']} bands x {d['rows']} rows. Duplicates are searched within each language.",
        "",
        "| lang | shingles | docs in | kept | dup:exact | dup:near | clusters | cluster sizes |",
        "|---|---|---:|---:|---:|---:|---:|---|",
    ]
    for lang, v in report["languages"].items():
        c = d["languages"].get(lang, {})
        sizes = ", ".join(f"{k}: {n}" for k, n in c.get("cluster_sizes", {}).items()) or "-"
        lines.append(
            f"| {lang} | {c.get('shingles', '-')} | {v['docs_in']} | {v['docs_out']} | "
            f"{v['drops'].get('dup:exact', 0)} | {v['drops'].get('dup:near', 0)} | {c.get('clusters', 0)} | {sizes} |"
        )
    t = report["totals"]
    lines += ["", f"Total: {t['docs_in']} documents in, {t['docs_out']} kept.", ""]
    atomic_write_text(path, "\n".join(lines))


def summary(report: dict[str, Any], seconds: dict[str, float]) -> str:
    """The one-screen summary the CLI prints."""
    t = report["totals"]
    drops = t["drops"]
    timing = ", ".join(f"{k} {v:.1f}s" for k, v in seconds.items())
    return (
        f"dedup: {t['docs_in']} documents -> {t['docs_out']} kept, "
        f"{drops.get('dup:exact', 0)} exact and {drops.get('dup:near', 0)} near duplicates removed"
        + (f" ({timing})" if timing else "")
    )

"""The data report of ``mmed prep``: ``report.json``, ``report.md`` and PNG charts, plus the console summary."""

from __future__ import annotations

from collections import Counter
from pathlib import Path
from typing import Any

from megatron_mmed.common.io import atomic_write_text
from megatron_mmed.common.plots import bar_chart
from preprocessing.layout import StageStats, write_stage_report

CHARTS = {
    "kept_docs": "kept_docs_per_language.png",
    "kept_chars": "kept_chars_per_language.png",
    "drops": "drops_per_reason.png",
}


def _pct(a: int, b: int) -> str:
    return f"{100.0 * a / b:.1f}%" if b else "-"


def _markdown(report: dict[str, Any]) -> str:
    lines = ["# mmed prep report", ""]
    tot = report["totals"]
    lines += [
        f"Documents in: **{tot['docs_in']:,}**, kept: **{tot['docs_out']:,}** ({_pct(tot['docs_out'], tot['docs_in'])}); "
        f"characters in: {tot['chars_in']:,}, kept: {tot['chars_out']:,}. Shards: {report['shards']}.",
        "",
        "## Per language",
        "",
        "| language | docs in | docs kept | kept % | chars in | chars kept |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for lang, v in report["languages"].items():
        lines.append(
            f"| {lang} | {v['docs_in']:,} | {v['docs_out']:,} | {_pct(v['docs_out'], v['docs_in'])} | "
            f"{v['chars_in']:,} | {v['chars_out']:,} |"
        )
    reasons = sorted(tot["drops"])
    lines += ["", "## Drops by reason", ""]
    if reasons:
        lines += ["| language | " + " | ".join(reasons) + " |", "|---|" + "---:|" * len(reasons)]
        for lang, v in report["languages"].items():
            lines.append(f"| {lang} | " + " | ".join(f"{v['drops'].get(r, 0):,}" for r in reasons) + " |")
        lines.append("| **all** | " + " | ".join(f"**{tot['drops'][r]:,}**" for r in reasons) + " |")
    else:
        lines.append("No document was dropped.")
    lines += [
        "",
        "## Per stage",
        "",
        "| stage | docs in | docs out | dropped | chars in | chars out |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for stage, st in report["stages"].items():
        t = st["totals"]
        lines.append(
            f"| {stage} | {t['docs_in']:,} | {t['docs_out']:,} | {t['docs_in'] - t['docs_out']:,} | "
            f"{t['chars_in']:,} | {t['chars_out']:,} |"
        )
    if report.get("skipped_files"):
        lines += ["", f"Skipped {len(report['skipped_files'])} file(s) with unsupported extensions:", ""]
        lines += [f"- `{f}`" for f in report["skipped_files"][:50]]
    lines += ["", "Charts: " + ", ".join(f"![{k}]({v})" for k, v in CHARTS.items()), ""]
    return "\n".join(lines)


def write_prep_report(
    out: Path,
    cfg_dict: dict[str, Any],
    overall: StageStats,
    stages: dict[str, StageStats],
    skipped_files: list[str],
    n_shards: int,
) -> dict[str, Any]:
    """Write report.json/report.md/PNGs for a prep output folder and return the report."""
    report = write_stage_report(
        out,
        "prep",
        overall,
        stages={s: st.to_dict() for s, st in stages.items()},
        skipped_files=skipped_files,
        shards=n_shards,
        medical_preset=cfg_dict["medical"]["preset"],
        charts=CHARTS,
    )
    atomic_write_text(out / "report.md", _markdown(report))
    langs = [lang for lang in report["languages"] if report["languages"][lang]["docs_out"]]
    bar_chart(
        out / CHARTS["kept_docs"],
        langs,
        [report["languages"][x]["docs_out"] for x in langs],
        "Kept documents per language",
        "documents",
    )
    bar_chart(
        out / CHARTS["kept_chars"],
        langs,
        [report["languages"][x]["chars_out"] for x in langs],
        "Kept characters per language",
        "characters",
    )
    drops = Counter(report["totals"]["drops"])
    reasons = [r for r, _ in drops.most_common()]
    bar_chart(
        out / CHARTS["drops"],
        reasons,
        [drops[r] for r in reasons],
        "Dropped documents by reason",
        "documents",
    )
    return report


def print_prep_summary(result) -> None:
    """One screen: per-language kept documents/characters, drops by reason, where the outputs are."""
    from rich.table import Table

    from megatron_mmed.common.progress import console

    rep = result.report
    table = Table(title=f"mmed prep: {result.out_dir}", title_justify="left")
    for col in ("language", "docs in", "kept", "kept %", "chars kept"):
        table.add_column(col, justify="left" if col == "language" else "right")
    for lang, v in rep["languages"].items():
        table.add_row(
            lang,
            f"{v['docs_in']:,}",
            f"{v['docs_out']:,}",
            _pct(v["docs_out"], v["docs_in"]),
            f"{v['chars_out']:,}",
        )
    tot = rep["totals"]
    table.add_row(
        "[bold]all",
        f"{tot['docs_in']:,}",
        f"{tot['docs_out']:,}",
        _pct(tot["docs_out"], tot["docs_in"]),
        f"{tot['chars_out']:,}",
    )
    console.print(table)
    drops = ", ".join(f"{r}={n:,}" for r, n in sorted(tot["drops"].items(), key=lambda x: -x[1])) or "none"
    console.print(f"dropped by reason: {drops}")
    bad = sum(n for r, n in tot["drops"].items() if r in ("parse", "encoding", "unreadable"))
    if bad:
        console.print(
            f"[yellow]{bad:,} malformed input record(s) quarantined in {result.out_dir}/rejected/[/]"
        )
    if result.skipped_files:
        console.print(
            f"[yellow]{len(result.skipped_files)} file(s) skipped (unsupported extension), listed in report.md[/]"
        )
    if result.shards_skipped:
        console.print(f"resumed: {result.shards_skipped}/{result.shards_total} shard(s) were already done")
    console.print(f"report: {result.out_dir}/report.md  ({result.seconds:.1f} s)")

"""The report of ``mmed extract``: ``report.json``, ``report.md`` and PNG charts, plus the console summary."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from megatron_mmed.common.io import atomic_write_json, atomic_write_text
from megatron_mmed.common.plots import bar_chart
from preprocessing.extract.stats import ExtractStats

CHARTS = {
    "pages": "pages_per_source.png",
    "chars": "chars_per_lang_hint.png",
    "rejected": "rejected_per_reason.png",
    "seconds": "seconds_per_page.png",
}
SOURCE_TYPES = ("pdf", "html", "warc")


def _nonzero(d: dict[str, int]) -> dict[str, int]:
    return {k: v for k, v in d.items() if v}


def build_report(stats: ExtractStats, n_shards: int, skipped_files: list[str]) -> dict[str, Any]:
    c = stats.counts
    pdf = c.get("pdf", {})
    pages = {
        "pdf_text": pdf.get("pages_text", 0),
        "pdf_ocr": pdf.get("pages_ocr", 0),
        "pdf_blank": pdf.get("pages_blank", 0),
        "pdf_scanned_not_ocrd": pdf.get("pages_scanned_skipped", 0),
        "pdf_ocr_failed": pdf.get("pages_ocr_failed", 0),
        "pdf_unreadable": pdf.get("pages_failed", 0),
        "html": c.get("html", {}).get("pages", 0),
        "warc": c.get("warc", {}).get("pages", 0),
    }
    tried_ocr = pages["pdf_ocr"] + pages["pdf_ocr_failed"]
    seconds = {
        "pdf_text": (stats.seconds["pdf_text"], pages["pdf_text"]),
        "pdf_ocr": (stats.seconds["pdf_ocr"], tried_ocr),
        "html": (stats.seconds["html"], pages["html"]),
        "warc": (stats.seconds["warc"], pages["warc"]),
    }
    drops = _nonzero(dict(c.get("drops", {})))
    sources = {t: _nonzero(dict(c.get(t, {}))) for t in SOURCE_TYPES}
    return {
        "stage": "extract",
        "totals": {
            # a WARC file is a container: its response records are the inputs
            "docs_in": sum(c.get("inputs", {}).values())
            - c.get("inputs", {}).get("warc", 0)
            + sources["warc"].get("responses", 0),
            "docs_out": sum(s.get("docs", 0) for s in sources.values()),
            "chars_out": sum(s.get("chars", 0) for s in sources.values()),
            "rejected": sum(drops.values()),
            "drops": dict(sorted(drops.items())),
        },
        "sources": sources,
        "pages": pages,
        "ocr_share": round(pages["pdf_ocr"] / max(pages["pdf_ocr"] + pages["pdf_text"], 1), 4),
        "ocr_packs": dict(c.get("ocr_packs", {})),
        "structure": dict(c.get("structure", {})),
        "lang_hint": {
            lang: {"docs": stats.lang_docs[lang], "chars": stats.lang_chars[lang]}
            for lang in sorted(stats.lang_docs)
            if stats.lang_docs[lang]
        },
        "seconds_per_page": {k: round(s / n, 4) for k, (s, n) in seconds.items() if n},
        "warc_skipped_records": dict(c.get("warc_skipped", {})),
        "inputs": dict(c.get("inputs", {})),
        "skipped_files": skipped_files,
        "shards": n_shards,
        "charts": CHARTS,
        "chain": [],
    }


def _markdown(r: dict[str, Any]) -> str:
    t = r["totals"]
    lines = [
        "# mmed extract report",
        "",
        f"Inputs: **{t['docs_in']:,}** (PDF and HTML files, WARC responses); documents written: "
        f"**{t['docs_out']:,}** ({t['chars_out']:,} characters); rejected records: **{t['rejected']:,}**. "
        f"Shards: {r['shards']}.",
        "",
        "## Per source type",
        "",
        "| source | files | pages | documents | characters |",
        "|---|---:|---:|---:|---:|",
    ]
    for st in SOURCE_TYPES:
        v = r["sources"].get(st, {})
        lines.append(
            f"| {st} | {v.get('files', 0):,} | {v.get('pages', 0):,} | {v.get('docs', 0):,} | {v.get('chars', 0):,} |"
        )
    p = r["pages"]
    lines += [
        "",
        f"PDF pages: {p['pdf_text']:,} from the text layer, {p['pdf_ocr']:,} by OCR (OCR share "
        f"{100 * r['ocr_share']:.1f}%), {p['pdf_blank']:,} blank, {p['pdf_ocr_failed']:,} OCR failed, "
        f"{p['pdf_scanned_not_ocrd']:,} scanned but not OCR'd (--ocr never). Pages cut as front/back matter: "
        f"{r['sources'].get('pdf', {}).get('pages_cut', 0):,}; running header/footer lines removed: "
        f"{r['sources'].get('pdf', {}).get('running_lines_removed', 0):,}.",
        f"Book structure: {', '.join(f'{k} {v}' for k, v in r['structure'].items()) or '-'}; "
        f"OCR language packs: {', '.join(f'{k} {v}' for k, v in r['ocr_packs'].items()) or '-'}.",
        "",
        "## Per language hint",
        "",
        "| language hint | documents | characters |",
        "|---|---:|---:|",
    ]
    lines += [f"| {lang} | {v['docs']:,} | {v['chars']:,} |" for lang, v in r["lang_hint"].items()]
    lines += ["", "## Time per page", "", "| kind | seconds per page |", "|---|---:|"]
    lines += [f"| {k} | {v:.4f} |" for k, v in r["seconds_per_page"].items()]
    lines += ["", "## Rejected records by reason", ""]
    if t["drops"]:
        lines += ["| reason | records |", "|---|---:|"] + [f"| {k} | {v:,} |" for k, v in t["drops"].items()]
    else:
        lines.append("Nothing was rejected.")
    if r["warc_skipped_records"]:
        skipped = ", ".join(f"{k} {v:,}" for k, v in sorted(r["warc_skipped_records"].items()))
        lines += ["", f"WARC records that are not responses (counted, not documents): {skipped}."]
    if r["skipped_files"]:
        lines += ["", f"Skipped {len(r['skipped_files'])} file(s) with unsupported extensions:", ""]
        lines += [f"- `{f}`" for f in r["skipped_files"][:50]]
    lines += ["", "Charts: " + ", ".join(f"![{k}]({v})" for k, v in CHARTS.items()), ""]
    return "\n".join(lines)


def write_extract_report(
    out: Path, stats: ExtractStats, n_shards: int, skipped_files: list[str]
) -> dict[str, Any]:
    """Write report.json/report.md/PNGs of an extract output folder and return the report."""
    report = build_report(stats, n_shards, skipped_files)
    atomic_write_json(out / "report.json", report)
    atomic_write_text(out / "report.md", _markdown(report))
    p = report["pages"]
    kinds = ["pdf_text", "pdf_ocr", "html", "warc"]
    bar_chart(out / CHARTS["pages"], kinds, [p[k] for k in kinds], "Pages per source type", "pages")
    langs = list(report["lang_hint"])
    bar_chart(
        out / CHARTS["chars"],
        langs,
        [report["lang_hint"][x]["chars"] for x in langs],
        "Characters per language hint",
        "characters",
    )
    drops = report["totals"]["drops"]
    reasons = sorted(drops, key=lambda k: -drops[k])
    bar_chart(
        out / CHARTS["rejected"],
        reasons,
        [drops[k] for k in reasons],
        "Rejected records by reason",
        "records",
    )
    sp = report["seconds_per_page"]
    bar_chart(
        out / CHARTS["seconds"], list(sp), [1000 * v for v in sp.values()], "Time per page", "milliseconds"
    )
    return report


def print_extract_summary(result) -> None:
    """One screen: per source type, rejections by reason, where the outputs are."""
    from rich.table import Table

    from megatron_mmed.common.progress import console

    rep = result.report
    table = Table(title=f"mmed extract: {result.out_dir}", title_justify="left")
    for col in ("source", "files", "pages", "documents", "characters"):
        table.add_column(col, justify="left" if col == "source" else "right")
    for st in SOURCE_TYPES:
        v = rep["sources"].get(st, {})
        if v:
            table.add_row(st, *(f"{v.get(k, 0):,}" for k in ("files", "pages", "docs", "chars")))
    console.print(table)
    p = rep["pages"]
    console.print(
        f"PDF pages: {p['pdf_text']:,} text layer, {p['pdf_ocr']:,} OCR ({100 * rep['ocr_share']:.1f}%)"
    )
    drops = rep["totals"]["drops"]
    console.print("rejected by reason: " + (", ".join(f"{k}={v:,}" for k, v in drops.items()) or "none"))
    if result.skipped_files:
        console.print(
            f"[yellow]{len(result.skipped_files)} file(s) skipped (unsupported extension), listed in report.md[/]"
        )
    if result.shards_skipped:
        console.print(f"resumed: {result.shards_skipped}/{result.shards_total} shard(s) were already done")
    console.print(f"documents: {result.out_dir}/docs (mmed prep --input {result.out_dir}/docs)")
    console.print(f"report: {result.out_dir}/report.md  ({result.seconds:.1f} s)")

"""results.json / results.md / results.png for an evaluation, with the paper's reference rows for comparison."""

from __future__ import annotations

import json
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from eval.data import LANGUAGES
from megatron_mmed.common.io import atomic_write_json, atomic_write_text, ensure_writable_dir

#: Paper Table (MMedBench accuracy, %), languages in LANGUAGES order, then Avg. GPT-4 only has its average.
PAPER_ROWS: dict[str, tuple[float | None, ...]] = {
    "MMedLM 2-7B (paper)": (61.74, 80.01, 61.81, 52.09, 80.47, 67.65, 67.30),
    "InternLM2-7B (paper)": (57.27, 77.55, 47.74, 41.00, 68.36, 59.59, 58.59),
    "GPT-4 zero-shot (paper)": (None, None, None, None, None, None, 74.27),
}
RATIONALE_KEYS = (
    "bleu1", "bleu2", "bleu3", "bleu4", "rouge1", "rouge2", "rougeL", "paper_bleu", "paper_rouge", "bertscore_f1",
)  # fmt: skip


def write_jsonl(path: str | Path, records: Iterable[dict[str, Any]]) -> Path:
    """Atomically write records as JSON lines."""
    lines = [json.dumps(r, ensure_ascii=False) + "\n" for r in records]
    return atomic_write_text(path, "".join(lines))


def _pct(v: float | None) -> str:
    return "–" if v is None else f"{v:.2f}"


def accuracy_row(results: dict[str, Any]) -> tuple[float | None, ...]:
    """This run's accuracy (%) per language in table order, then the average."""
    acc = results["accuracy"]
    avg = results.get("average")
    return (
        *(100 * acc[lang] if lang in acc else None for lang in LANGUAGES),
        None if avg is None else 100 * avg,
    )


def _with_paper_rows(results: dict[str, Any]) -> bool:
    """The paper's rows stand next to ours only for the paper's protocol (greedy generation, its prompt)."""
    return results.get("protocol", "paper") == "paper"


def render_markdown(results: dict[str, Any], title: str = "MMedBench") -> str:
    """The paper-layout accuracy table (this run + reference rows), counts, rationale metrics, problems."""
    head = "| Model | " + " | ".join(LANGUAGES) + " | Avg. |"
    sep = "|---" * (len(LANGUAGES) + 2) + "|"
    rows = ["| **this run** | " + " | ".join(_pct(v) for v in accuracy_row(results)) + " |"]
    if _with_paper_rows(results):
        rows += [
            f"| {name} | " + " | ".join(_pct(v) for v in vals) + " |" for name, vals in PAPER_ROWS.items()
        ]
    scored = ", ".join(results["accuracy"]) or "none"
    lines = [
        f"# {title} results",
        "",
        f"Accuracy (%). Avg. = unweighted mean over the scored languages ({scored}).",
        "",
    ]
    lines += [head, sep, *rows, ""]
    protocol = results.get("protocol", "paper")
    if not _with_paper_rows(results):
        lines += [
            f"Protocol `{protocol}`: not comparable with the paper's rows (those need protocol `paper`).",
            "",
        ]
    lines += [
        "## Counts",
        "",
        "| Language | items | predicted | correct | unparsed | multi-answer (correct) | bad items |",
    ]
    lines += ["|---|---|---|---|---|---|---|"]
    for lang, c in results["counts"].items():
        lines.append(
            f"| {lang} | {c['items']} | {c['predicted']} | {c['correct']} | {c['unparsed']} | "
            f"{c['multi_answer_items']} ({c['multi_answer_correct']}) | {c['bad_items']} |"
        )
    rat = results.get("rationale") or {}
    if any(m.get("n") for m in rat.values()):
        keys = [k for k in RATIONALE_KEYS if any(k in m for m in rat.values())]
        lines += ["", "## Rationale (×100)", "", "| Language | n | subset | " + " | ".join(keys) + " |"]
        lines.append("|---" * (len(keys) + 3) + "|")
        for lang, m in rat.items():
            vals = " | ".join(_pct(m.get(k)) for k in keys)
            lines.append(f"| {lang} | {m.get('n', 0)} | {m.get('subset', '')} | {vals} |")
    shown = [(lang, u) for lang, us in (results.get("unparsed_examples") or {}).items() for u in us[:3]]
    if shown:
        lines += ["", "## Unparsed outputs (first 3 per language; all in results.json)", ""]
        for lang, u in shown:
            text = " ".join(u["output"].split())[:160].replace("|", "\\|")
            lines.append(f"- {lang} #{u['index']}: `{text}`")
    problems = results.get("prediction_problems") or []
    if problems:
        lines += [
            "",
            f"{len(problems)} prediction line(s) were not used (see results.json `prediction_problems`).",
        ]
    lines += ["", "Policy: " + "; ".join(f"{k}: {v}" for k, v in results.get("policy", {}).items()), ""]
    return "\n".join(lines)


def summary_text(results: dict[str, Any]) -> str:
    """The accuracy table (this run + the paper's rows) and a one-line problem count, for terminals."""
    table = render_markdown(results).split("## Counts")[0].strip()
    unparsed = sum(c["unparsed"] for c in results["counts"].values())
    missing = sum(c["missing"] for c in results["counts"].values())
    bad = sum(c["bad_items"] for c in results["counts"].values())
    protocol = results.get("protocol", "paper")
    return (
        f"{table}\nprotocol: {protocol}; unparsed outputs: {unparsed}; missing predictions: {missing}; "
        f"bad data items: {bad}"
    )


def plot_results(results: dict[str, Any], path: str | Path) -> Path:
    """Grouped bar chart: accuracy per language and Avg. for this run and the paper's reference rows."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    labels = [*LANGUAGES, "Avg."]
    series = {"this run": accuracy_row(results), **(PAPER_ROWS if _with_paper_rows(results) else {})}
    width = 0.8 / len(series)
    fig, ax = plt.subplots(figsize=(9, 3.6), dpi=110)
    for s, (name, vals) in enumerate(series.items()):
        xs = [i + (s - (len(series) - 1) / 2) * width for i in range(len(labels))]
        bars = ax.bar(xs, [float("nan") if v is None else v for v in vals], width, label=name)
        if s == 0:
            ax.bar_label(bars, labels=["" if v is None else f"{v:.1f}" for v in vals], fontsize=6)
    ax.set_xticks(range(len(labels)), labels)
    ax.set_ylabel("accuracy (%)")
    ax.set_ylim(0, 100)
    ax.set_title("MMedBench accuracy")
    ax.legend(fontsize=7, ncol=len(series), loc="upper center", bbox_to_anchor=(0.5, -0.1), frameon=False)
    ax.spines[["top", "right"]].set_visible(False)
    fig.tight_layout()
    path = Path(path)
    fig.savefig(path)
    plt.close(fig)
    return path


def write_reports(
    results: dict[str, Any], records: list[dict[str, Any]], out: str | Path, records_name: str
) -> dict[str, Path]:
    """results.json, results.md, results.png and the per-item records file in ``out``."""
    out = ensure_writable_dir(out)
    paths = {
        "records": write_jsonl(out / records_name, records),
        "json": atomic_write_json(out / "results.json", results),
        "md": atomic_write_text(out / "results.md", render_markdown(results)),
    }
    paths["png"] = plot_results(results, out / "results.png")
    return paths

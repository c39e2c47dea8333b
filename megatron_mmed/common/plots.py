"""Small matplotlib helpers for the PNG charts in stage reports (Agg backend, no display needed)."""

from __future__ import annotations

from pathlib import Path


def bar_chart(path: str | Path, labels: list[str], values: list[float], title: str, ylabel: str) -> Path:
    """Write a labelled bar chart to ``path``."""
    from matplotlib.figure import Figure  # not pyplot: no global figure state, ~0.5 s less to import

    fig = Figure(figsize=(max(4.0, 0.7 * len(labels) + 2), 3.2), dpi=110)
    ax = fig.subplots()
    bars = ax.bar(range(len(labels)), values, color="#3b75af")
    ax.set_xticks(
        range(len(labels)),
        labels,
        rotation=30 if len(labels) > 6 else 0,
        ha="right" if len(labels) > 6 else "center",
    )
    ax.set_title(title)
    ax.set_ylabel(ylabel)
    ax.bar_label(bars, labels=[f"{v:,.0f}" for v in values], fontsize=7)
    ax.spines[["top", "right"]].set_visible(False)
    fig.tight_layout()
    path = Path(path)
    fig.savefig(path)
    return path

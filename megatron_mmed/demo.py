"""``mmed demo``: every pipeline arrow on the embedded sample (``examples/sample``), on a CPU, in minutes.

Stages that exist so far: preprocessing (prep -> dedup -> decontam -> tokenize with a SentencePiece model
trained on the sample). Each stage resumes, so a second ``make demo`` is quick.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from megatron_mmed.common.config import load_config
from megatron_mmed.common.errors import UserError
from megatron_mmed.common.progress import console

REPO = Path(__file__).resolve().parents[1]
SAMPLE = REPO / "examples" / "sample"
DEMO_RECIPE = REPO / "configs" / "prep" / "demo.yaml"


def run_demo(out_dir: str | Path, sample: str | Path = SAMPLE, show_progress: bool = True) -> dict[str, Any]:
    """Run the demo into ``out_dir``; returns a summary of every stage."""
    from preprocessing.pipeline import PipelineConfig, run_pipeline

    sample, out = Path(sample), Path(out_dir)
    if not (sample / "raw").is_dir() or not (sample / "qa").is_dir():
        raise UserError(f"sample not found: expected {sample}/raw and {sample}/qa")
    cfg = load_config(
        PipelineConfig,
        DEMO_RECIPE,
        [f"inputs=[{sample / 'raw'}]", f"output={out / 'data'}", f"benchmark={sample / 'qa'}"],
    )
    summary = {"data": run_pipeline(cfg, show_progress=show_progress)}
    _print_summary(summary)
    return summary


def _print_summary(summary: dict[str, Any]) -> None:
    from rich.table import Table

    table = Table(title="mmed demo", title_justify="left")
    for col in ("stage", "docs in", "docs out", "seconds", "output"):
        table.add_column(col, justify="right" if col in ("docs in", "docs out", "seconds") else "left")
    data = summary["data"]
    for stage, info in data["stages"].items():
        table.add_row(
            stage,
            f"{info.get('docs_in', '')}",
            f"{info.get('docs_out', '')}",
            f"{info['seconds']:.1f}",
            data["dirs"][stage],
        )
    console.print(table)

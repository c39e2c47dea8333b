"""Run metrics: console lines, ``RUN/metrics.jsonl`` (one JSON object per record) and optional W&B.

Only the last rank logs (it holds the loss on the last pipeline stage). W&B is optional: it is imported
only when ``logging.wandb_project`` is set, in offline mode by default.
"""

from __future__ import annotations

import json
import math
import os
import secrets
import sys
from pathlib import Path
from typing import Any

from megatron_mmed.common.errors import UserError


class MetricsLogger:
    """Appends records to ``metrics.jsonl`` and prints a short line for each."""

    def __init__(self, run_dir: Path, enabled: bool, wandb_cfg: dict[str, Any] | None = None) -> None:
        self.enabled = enabled
        self.path = Path(run_dir) / "metrics.jsonl"
        self._wandb = None
        if enabled and wandb_cfg and wandb_cfg.get("project"):
            import wandb  # optional dependency; training.setup.preflight checked it is importable

            id_file = Path(run_dir) / "wandb_run_id"  # a resumed job continues the same W&B run
            if id_file.is_file():
                run_id = id_file.read_text(encoding="utf-8").strip()
            else:
                run_id = secrets.token_hex(4)
                id_file.write_text(run_id + "\n", encoding="utf-8")
            self._wandb = wandb.init(
                project=wandb_cfg["project"],
                name=wandb_cfg.get("name"),
                mode=wandb_cfg.get("mode", "offline"),
                dir=str(run_dir),
                config=wandb_cfg.get("config"),
                id=run_id,
                resume="allow",
            )

    @classmethod
    def for_run(cls, run_dir: Path, enabled: bool, cfg: Any) -> MetricsLogger:
        """The logger of a run whose config has a ``logging`` section (W&B project, mode and run name); the
        whole config goes to W&B with the run."""
        from megatron_mmed.common.config import to_dict

        log = cfg.logging
        wandb_cfg = {
            "project": log.wandb_project,
            "mode": log.wandb_mode,
            "name": log.wandb_run_name,
            "config": to_dict(cfg),
        }
        return cls(run_dir, enabled, wandb_cfg)

    def log(self, record: dict[str, Any]) -> None:
        if not self.enabled:
            return
        clean = {k: (None if isinstance(v, float) and not math.isfinite(v) else v) for k, v in record.items()}
        with self.path.open("a", encoding="utf-8") as f:
            f.write(json.dumps(clean) + "\n")
        print(" ".join(_fmt(k, v) for k, v in record.items()), flush=True)
        if self._wandb is not None:
            flat = {}
            for k, v in record.items():
                if isinstance(v, dict):  # val_loss_per_lang -> val_loss_per_lang/en, ...
                    flat.update({f"{k}/{sub}": x for sub, x in v.items()})
                elif isinstance(v, int | float) and k != "step":
                    flat[k] = v
            self._wandb.log(flat, step=record.get("step"))

    def close(self) -> None:
        if self._wandb is not None:
            self._wandb.finish()


def _fmt(key: str, value: Any) -> str:
    if isinstance(value, float):
        return f"{key}={value:.4g}"
    if isinstance(value, dict):
        return f"{key}={{{', '.join(f'{k}: {v:.4g}' for k, v in value.items())}}}"
    return f"{key}={value}"


def _parse_records(path: Path) -> tuple[list[dict[str, Any]], int]:
    """The JSON records of a metrics file and how many lines were not one (a line cut short by a kill)."""
    records, bad = [], 0
    for line in path.read_bytes().decode("utf-8", errors="replace").splitlines():
        if not line.strip():
            continue
        try:
            rec = json.loads(line)
        except json.JSONDecodeError:
            bad += 1
            continue
        if isinstance(rec, dict):
            records.append(rec)
        else:
            bad += 1
    return records, bad


def read_metrics(run_dir: str | Path) -> list[dict[str, Any]]:
    """The records of ``RUN/metrics.jsonl`` in order (a partial line left by a kill is skipped, with a warning)."""
    path = Path(run_dir) / "metrics.jsonl"
    if not path.is_file():
        raise UserError(f"{path} not found (no logged steps yet)")
    records, bad = _parse_records(path)
    if bad:
        print(f"warning: {path}: skipped {bad} partial or unreadable line(s)", file=sys.stderr)
    return records


def truncate_metrics(path: Path, step: int) -> None:
    """On resume, keep only the records up to the checkpoint's ``step`` so metrics.jsonl reads as one run.

    A line cut short by a kill mid-write cannot be parsed: it is dropped (with a warning), not fatal.
    """
    records, bad = _parse_records(path)
    if bad:
        print(f"warning: {path}: dropped {bad} unreadable (partial) line(s) on resume", file=sys.stderr)
    keep = [r for r in records if r.get("step", 0) <= step]
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text("".join(json.dumps(r) + "\n" for r in keep), encoding="utf-8")
    os.replace(tmp, path)


def plot_loss_curve(run_dir: str | Path, out: str | Path | None = None) -> Path:
    """Training loss and per-language validation loss against step, as ``RUN/loss_curve.png``."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    records = read_metrics(run_dir)
    out = Path(out) if out else Path(run_dir) / "loss_curve.png"
    fig, ax = plt.subplots(figsize=(7, 4))
    train = [(r["step"], r["loss"]) for r in records if r.get("loss") is not None]
    ax.plot([s for s, _ in train], [v for _, v in train], label="train", color="black")
    val = [r for r in records if r.get("val_loss_per_lang")]
    for lang in sorted({k for r in val for k in r["val_loss_per_lang"]}):
        pts = [(r["step"], r["val_loss_per_lang"][lang]) for r in val if lang in r["val_loss_per_lang"]]
        ax.plot([s for s, _ in pts], [v for _, v in pts], marker="o", linestyle="--", label=f"valid {lang}")
    ax.set_xlabel("step")
    ax.set_ylabel("loss (nats/token)")
    ax.set_title(f"{Path(run_dir).name}: training and per-language validation loss")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(out, dpi=120)
    plt.close(fig)
    return out

"""``mmed demo``: every pipeline arrow on the embedded sample (``examples/sample``), on a CPU, in minutes.

    data/   prep -> dedup -> decontam -> tokenize (SentencePiece model trained on the sample)
    run/    `mmed train` of the tiny InternLM2 preset (metrics.jsonl, loss_curve.png, torch_dist checkpoint)
    ft/     `mmed finetune` of run/ for a few steps on the sample's MMedBench-format questions (the paper's
            prompt, loss on the answer only); the sample has no separate train split, so the eval below sees
            the questions it was tuned on: the demo shows the arrows, not a held-out score
    hf/     `mmed convert mcore-to-hf --layout llama` of ft/, loaded back with transformers to generate a few tokens
    eval/   `mmed eval mmedbench --protocol loglik` on the sample's MMedBench-format questions: a model this
            small cannot write the paper's answer format, so free generation would score 0.00 everywhere;
            answer-letter log-likelihood gives a real (near-chance) number per language

Every stage resumes, so a second ``make demo`` is quick.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from megatron_mmed.common.config import load_config
from megatron_mmed.common.errors import UserError
from megatron_mmed.common.progress import console

REPO = Path(__file__).resolve().parents[1]
SAMPLE = REPO / "examples" / "sample"
DEMO_RECIPE = REPO / "configs" / "prep" / "demo.yaml"
TRAIN_CONFIG = REPO / "configs" / "train" / "tiny_cpu.yaml"
TRAIN_STEPS = 40
FINETUNE_CONFIG = REPO / "configs" / "finetune" / "tiny_cpu.yaml"
FINETUNE_STEPS = 8


def run_demo(out_dir: str | Path, sample: str | Path = SAMPLE, show_progress: bool = True) -> dict[str, Any]:
    """Run the demo into ``out_dir``; returns a summary of every stage (also ``out_dir/demo.json``)."""
    from preprocessing.pipeline import PipelineConfig, run_pipeline

    sample, out = Path(sample), Path(out_dir)
    if not (sample / "raw").is_dir() or not (sample / "qa").is_dir():
        raise UserError(f"sample not found: expected {sample}/raw and {sample}/qa")
    cfg = load_config(
        PipelineConfig,
        DEMO_RECIPE,
        [f"inputs=[{sample / 'raw'}]", f"output={out / 'data'}", f"benchmark={sample / 'qa'}"],
    )
    summary: dict[str, Any] = {"data": run_pipeline(cfg, show_progress=show_progress)}
    blend = out / "data" / "tok" / "blend.json"
    summary["train"] = _train(blend, out / "run")
    summary["finetune"] = _finetune(out / "run", blend, sample / "qa", out / "ft")
    summary["convert"] = _convert(out / "ft", out / "hf")
    summary["eval"] = _evaluate(out / "hf", sample / "qa", out / "eval", show_progress)
    (out / "demo.json").write_text(json.dumps(summary, indent=2, ensure_ascii=False, default=str) + "\n")
    _print_summary(summary)
    return summary


def _train(blend: Path, run_dir: Path) -> dict[str, Any]:
    """A short CPU run of the tiny preset, in a subprocess (torch.distributed stays out of this process)."""
    console.rule("[bold]train")
    t0 = time.time()
    cmd = [
        sys.executable,
        "-m",
        "megatron_mmed.cli",
        "train",
        "--config",
        str(TRAIN_CONFIG),
        f"data.blend={blend}",
        f"train.steps={TRAIN_STEPS}",
        f"checkpoint.dir={run_dir}",
    ]
    res = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    losses = [line for line in res.stdout.splitlines() if line.startswith(("step=", "mmed train"))]
    for line in losses:
        console.print(line, highlight=False)
    if res.returncode != 0:
        raise UserError(f"demo training failed (exit {res.returncode}):\n{res.stdout[-3000:]}")
    from megatron_mmed.training.metrics import plot_loss_curve, read_metrics

    metrics = [m for m in read_metrics(run_dir) if "loss" in m]
    curve = plot_loss_curve(run_dir)
    console.print(f"loss curve: {curve}")
    return {
        "seconds": round(time.time() - t0, 1),
        "first_loss": metrics[0]["loss"],
        "last_loss": metrics[-1]["loss"],
        "steps": metrics[-1]["step"],
        "loss_curve": str(curve),
        "dir": str(run_dir),
    }


def _finetune(run_dir: Path, blend: Path, qa: Path, ft_dir: Path) -> dict[str, Any]:
    """A few steps of `mmed finetune` (tiny, CPU) from the pretraining run, with the blend's tokenizer."""
    console.rule("[bold]finetune")
    t0 = time.time()
    tokenizer = json.loads(blend.read_text())["tokenizer"]["path"]
    cmd = [
        sys.executable,
        "-m",
        "megatron_mmed.cli",
        "finetune",
        "--config",
        str(FINETUNE_CONFIG),
        f"data.train={qa}",
        f"data.tokenizer={tokenizer}",
        f"checkpoint.init_from={run_dir}",
        f"checkpoint.dir={ft_dir}",
        "model.preset=from_init",
        f"train.steps={FINETUNE_STEPS}",
        "schedule.warmup_steps=1",
        "logging.log_interval=2",
    ]
    res = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    for line in res.stdout.splitlines():
        if line.startswith(("step=", "mmed finetune")):
            console.print(line, highlight=False)
    if res.returncode != 0:
        raise UserError(f"demo fine-tuning failed (exit {res.returncode}):\n{res.stdout[-3000:]}")
    from megatron_mmed.training.metrics import read_metrics

    metrics = [m for m in read_metrics(ft_dir) if "loss" in m]
    return {
        "seconds": round(time.time() - t0, 1),
        "first_loss": metrics[0]["loss"],
        "last_loss": metrics[-1]["loss"],
        "steps": metrics[-1]["step"],
        "non_padding_share": metrics[-1]["non_padding_share"],
        "dir": str(ft_dir),
    }


def _convert(run_dir: Path, hf_dir: Path) -> dict[str, Any]:
    """Megatron checkpoint -> HF Llama folder (validated by logits), then generate a few tokens with it."""
    from conversion import mcore_to_hf

    console.rule("[bold]convert")
    t0 = time.time()
    report = mcore_to_hf(run_dir, hf_dir, family="llama", dtype="fp32", force=True)
    console.print(report.summary())
    import torch
    from transformers import AutoTokenizer, LlamaForCausalLM
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()  # no "Loading weights" bars in the demo's output
    tok = AutoTokenizer.from_pretrained(hf_dir)
    model = LlamaForCausalLM.from_pretrained(hf_dir)
    ids = tok("Hypertension is", return_tensors="pt")
    with torch.no_grad():
        gen = model.generate(**ids, max_new_tokens=8, do_sample=False)
    text = tok.decode(gen[0], skip_special_tokens=True)
    console.print(f"transformers generate: {text!r}")
    return {"seconds": round(time.time() - t0, 1), "dir": str(hf_dir), "generated": text}


def _evaluate(hf_dir: Path, qa: Path, out: Path, show_progress: bool) -> dict[str, Any]:
    """Answer-letter log-likelihood on the sample questions (protocol ``loglik``): near chance for a tiny model."""
    from eval import EvalConfig, run_mmedbench
    from eval.report import summary_text

    console.rule("[bold]eval")
    t0 = time.time()
    results = run_mmedbench(
        EvalConfig(model=str(hf_dir), data=str(qa), out=str(out), mode="loglik"), progress=show_progress
    )
    console.print(summary_text(results), markup=False)
    return {
        "seconds": round(time.time() - t0, 1),
        "dir": str(out),
        "protocol": results["protocol"],
        "average": results["average"],
    }


def _print_summary(summary: dict[str, Any]) -> None:
    from rich.table import Table

    table = Table(title="mmed demo", title_justify="left")
    for col in ("stage", "result", "seconds", "output"):
        table.add_column(col, justify="right" if col == "seconds" else "left")
    data = summary["data"]
    for stage, info in data["stages"].items():
        table.add_row(
            stage,
            f"docs {info.get('docs_in', '')} -> {info.get('docs_out', '')}",
            f"{info['seconds']:.1f}",
            data["dirs"][stage],
        )
    tr = summary["train"]
    table.add_row(
        "train",
        f"{tr['steps']} steps, loss {tr['first_loss']:.2f} -> {tr['last_loss']:.2f}",
        f"{tr['seconds']:.1f}",
        tr["loss_curve"],
    )
    ft = summary["finetune"]
    table.add_row(
        "finetune",
        f"{ft['steps']} steps, target-token loss {ft['first_loss']:.2f} -> {ft['last_loss']:.2f}",
        f"{ft['seconds']:.1f}",
        ft["dir"],
    )
    cv = summary["convert"]
    table.add_row(
        "convert", "fine-tuned run -> HF Llama layout, logits validated", f"{cv['seconds']:.1f}", cv["dir"]
    )
    ev = summary["eval"]
    table.add_row(
        "eval",
        f"MMedBench sample avg {100 * ev['average']:.1f}% ({ev['protocol']})",
        f"{ev['seconds']:.1f}",
        ev["dir"],
    )
    console.print(table)

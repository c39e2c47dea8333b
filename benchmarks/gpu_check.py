"""The Python half of ``benchmarks/gpu_check.sh``: synthetic data, the verdict of each check, the summary table.

    python -m benchmarks.gpu_check data DIR --vocab 257 --tokens 200000
    python -m benchmarks.gpu_check resume FULL_RUN SPLIT_RUN --exit-at 15 --out OUT
    python -m benchmarks.gpu_check throughput RUN --out OUT --check "2 ..." --label "..."
    python -m benchmarks.gpu_check fp8 BF16_RUN FP8_RUN --out OUT
    python -m benchmarks.gpu_check convert HF_DIR --out OUT
    python -m benchmarks.gpu_check record --out OUT --check NAME --status SKIP --detail "..."
    python -m benchmarks.gpu_check table --out OUT          # results.md + results.json; exit 1 on any FAIL

Each verdict is one JSON line appended to ``OUT/checks.jsonl``; ``table`` collects them. Numbers come from the
runs' own ``metrics.jsonl`` (the trainer's flops accounting, megatron_mmed/training/flops.py) and the
converter's ``conversion_report.json``; nothing here times or computes a model itself.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from pathlib import Path
from typing import Any

#: dense BF16 peak TFLOP/s per GPU by the vendor's datasheet (SXM parts); H200 has the H100's arithmetic.
BF16_PEAK_TFLOPS = {"H100": 989.0, "H200": 989.0}
#: steps at the start of a run left out of throughput medians (CUDA warm-up, allocator growth)
WARMUP_STEPS = 3
#: FP8 loss after 20 steps must be within this relative distance of the BF16 loss
FP8_LOSS_RTOL = 0.02
CHECKS = "checks.jsonl"
TE_MISSING = "TE not available: FP8 not checked"


def bf16_peak(device_name: str) -> float | None:
    """The dense BF16 peak of an SXM GPU named like ``NVIDIA H100 80GB HBM3`` / ``NVIDIA H200``; None if
    unknown (PCIe and NVL parts run at lower clocks and power: their peak is not guessed)."""
    words = device_name.split()
    if any(w in ("PCIe", "NVL") for w in words):
        return None
    return next((peak for model, peak in BF16_PEAK_TFLOPS.items() if model in words), None)


def write_synthetic_blend(out: Path, vocab: int, tokens: int, seed: int = 0) -> Path:
    """Learnable token ids as one IndexedDataset plus ``blend.json``: each 497-token document repeats a random
    16-token motif, so a model's loss falls within a few steps (a sign the GPU path learns, not only runs).
    EOD is ``vocab - 1``."""
    import numpy as np
    import torch
    from megatron.core.datasets.indexed_dataset import IndexedDatasetBuilder

    from megatron_mmed.common.blend_file import BlendDataset, BlendFile, BlendTokenizer

    out.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    prefix = out.resolve() / "xx_text_document"
    builder = IndexedDatasetBuilder(str(prefix) + ".bin", dtype=np.int32)
    docs, n_tokens = max(8, tokens // 512), 0
    for _ in range(docs):
        motif = rng.integers(0, vocab - 1, 16, dtype=np.int64)
        doc = np.append(np.tile(motif, 31), vocab - 1)  # 496 motif tokens + EOD
        builder.add_document(torch.from_numpy(doc), [len(doc)])
        n_tokens += len(doc)
    builder.finalize(str(prefix) + ".idx")
    return BlendFile(
        root=str(out.resolve()),
        temperature=None,
        multipliers={"xx": 1.0},
        tokenizer=BlendTokenizer("synthetic", None, vocab - 1, None, vocab, "int32"),
        datasets=(BlendDataset("xx", str(prefix), prefix.name, n_tokens, docs, 1.0, 1.0),),
    ).write(out)


def _losses(run: Path) -> dict[int, float]:
    from megatron_mmed.training.metrics import read_metrics

    return {r["step"]: r["loss"] for r in read_metrics(run) if r.get("loss") is not None}


def _record(out: Path, check: str, status: str, detail: str, **numbers: Any) -> dict[str, Any]:
    rec = {"check": check, "status": status, "detail": detail, "numbers": numbers}
    with (out / CHECKS).open("a", encoding="utf-8") as f:
        f.write(json.dumps(rec) + "\n")
    print(f"[{status}] {check}: {detail}", flush=True)
    return rec


def check_resume(out: Path, full: Path, split: Path, exit_at: int) -> dict[str, Any]:
    """Check 1: the run stopped at ``exit_at`` (its checkpoint is there) and, resumed, reproduced the
    uninterrupted run's losses bit for bit; the loss fell."""
    from megatron_mmed.training.checkpoint import iter_dir_name

    a, b = _losses(full), _losses(split)
    last = max(a)
    common = sorted(set(a) & set(b))
    diff = max(abs(a[s] - b[s]) for s in common)
    stopped = (split / iter_dir_name(exit_at)).is_dir() and not (full / iter_dir_name(exit_at)).is_dir()
    ok = stopped and common == sorted(a) and diff == 0.0 and a[last] < a[min(a)]
    detail = (
        f"final loss {a[last]:.6f} uninterrupted vs {b.get(last, float('nan')):.6f} stopped at step "
        f"{exit_at}{'' if stopped else ' (NO checkpoint there: not interrupted)'} and resumed (step {last}; "
        f"max abs diff over {len(common)} steps {diff:.3g}); first loss {a[min(a)]:.4f}"
    )
    return _record(
        out,
        "1 train+resume",
        "PASS" if ok else "FAIL",
        detail,
        final_loss=a[last],
        resumed_final_loss=b.get(last),
        max_abs_diff=diff,
        first_loss=a[min(a)],
    )


def throughput(run: Path, device_name: str) -> dict[str, Any]:
    """Medians of the logged steps after warm-up: tokens/s, TFLOP/s per GPU (the trainer's accounting), MFU."""
    from megatron_mmed.training.metrics import read_metrics

    recs = [r for r in read_metrics(run) if r.get("tokens_per_s")]
    steady = recs[WARMUP_STEPS:] or recs
    tflops = statistics.median(r["tflops_per_gpu"] for r in steady)
    peak = bf16_peak(device_name)
    return {
        "tokens_per_s": statistics.median(r["tokens_per_s"] for r in steady),
        "tflops_per_gpu": tflops,
        "mfu": tflops / peak if peak else None,
        "peak_tflops": peak,
        "final_loss": recs[-1]["loss"],
        "steps": recs[-1]["step"],
    }


def _describe(t: dict[str, Any]) -> str:
    mfu = f"MFU {t['mfu']:.1%} of {t['peak_tflops']:g}" if t["mfu"] is not None else "MFU: unknown peak"
    return (
        f"{t['tokens_per_s']:.0f} tokens/s, {t['tflops_per_gpu']:.4g} TFLOP/s/GPU, {mfu}; "
        f"loss {t['final_loss']:.4f} after {t['steps']} steps"
    )


def check_throughput(out: Path, run: Path, check: str, label: str, device_name: str) -> dict[str, Any]:
    """Check 2: the run trained (finite, falling loss) and its throughput numbers."""
    t = throughput(run, device_name)
    first = next(iter(_losses(run).values()))
    ok = t["final_loss"] == t["final_loss"] and t["final_loss"] < first and t["tflops_per_gpu"] > 0
    return _record(out, check, "PASS" if ok else "FAIL", f"{label}: {_describe(t)}", **t)


def check_fp8(out: Path, bf16: Path, fp8: Path, device_name: str) -> dict[str, Any]:
    """Check 3: FP8 hybrid against the TE BF16 run: loss within 2% after the same steps; TFLOP/s of both."""
    a, b = throughput(bf16, device_name), throughput(fp8, device_name)
    rel = abs(b["final_loss"] - a["final_loss"]) / abs(a["final_loss"])
    detail = (
        f"TE bf16 {a['tflops_per_gpu']:.4g} TFLOP/s/GPU loss {a['final_loss']:.4f}; fp8 hybrid "
        f"{b['tflops_per_gpu']:.4g} TFLOP/s/GPU ({b['tflops_per_gpu'] / a['tflops_per_gpu']:.2f}x) loss "
        f"{b['final_loss']:.4f} ({rel:.2%} from bf16, limit {FP8_LOSS_RTOL:.0%})"
    )
    return _record(
        out,
        "3 TE fp8",
        "PASS" if rel <= FP8_LOSS_RTOL else "FAIL",
        detail,
        bf16=a,
        fp8=b,
        loss_rel_diff=rel,
    )


def check_convert(out: Path, hf: Path) -> dict[str, Any]:
    """Check 4: the converter's own logits validation, as its ``conversion_report.json`` records it."""
    v = json.loads((hf / "conversion_report.json").read_text(encoding="utf-8"))["validation"]
    detail = (
        f"max abs logit diff {v['max_abs_diff']:.3g} (tolerance {v['atol']:g}), top-1 agreement "
        f"{v['top1_agreement']:.1%} over {v['num_tokens']} tokens ({v['prompt']})"
    )
    return _record(out, "4 convert mcore-to-hf", "PASS" if v["ok"] else "FAIL", detail, **v)


def table(out: Path) -> int:
    """Print the summary table, write ``results.md`` and ``results.json``; 1 when any check FAILed."""
    path = out / CHECKS
    recs = [json.loads(x) for x in path.read_text(encoding="utf-8").splitlines()] if path.exists() else []
    env = json.loads((out / "env.json").read_text(encoding="utf-8")) if (out / "env.json").exists() else {}
    lines = [
        f"# gpu_check on {env.get('device_name', '?')} ({env.get('mode', '?')})",
        "",
        f"torch {env.get('torch', '?')}, megatron-core {env.get('megatron_core', '?')}, "
        f"Transformer Engine {env.get('transformer_engine') or 'not available'}, python {env.get('python', '?')}",
        "",
        "| check | result | numbers |",
        "| --- | --- | --- |",
        *(f"| {r['check']} | {r['status']} | {r['detail'].replace('|', '/')} |" for r in recs),
    ]
    text = "\n".join(lines) + "\n"
    (out / "results.md").write_text(text, encoding="utf-8")
    (out / "results.json").write_text(json.dumps({"env": env, "checks": recs}, indent=2), encoding="utf-8")
    print(text, end="")
    failed = [r["check"] for r in recs if r["status"] == "FAIL"]
    print(f"results: {out / 'results.md'}; {'FAILED: ' + ', '.join(failed) if failed else 'no failures'}")
    return 1 if failed or not recs else 0


def environment(out: Path, mode: str) -> dict[str, Any]:
    """What the checks run on (``env.json``); prints the device name for the shell script."""
    import platform
    import warnings

    from megatron_mmed.cli import QUIET_WARNINGS

    for pattern in QUIET_WARNINGS:  # the same known megatron-core notices `mmed` hides
        warnings.filterwarnings("ignore", message=pattern)
    import megatron.core
    import torch

    from megatron_mmed.models.builder import te_available

    te = None
    if te_available():
        import transformer_engine

        te = getattr(transformer_engine, "__version__", "importable")
    if mode == "cuda" and not torch.cuda.is_available():
        raise SystemExit(
            f"gpu_check: DEVICE=cuda but torch {torch.__version__} ({sys.executable}) sees no CUDA device; "
            "set PYTHON to a CUDA build's python, or DEVICE=cpu for the dry mode"
        )
    name = torch.cuda.get_device_name() if mode == "cuda" else "CPU"
    env = {
        "mode": mode,
        "device_name": name,
        "torch": torch.__version__,
        "megatron_core": megatron.core.__version__,
        "transformer_engine": te,
        "python": platform.python_version(),
    }
    out.mkdir(parents=True, exist_ok=True)
    (out / "env.json").write_text(json.dumps(env, indent=2), encoding="utf-8")
    return env


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="cmd", required=True)
    d = sub.add_parser("data")
    d.add_argument("dir", type=Path)
    d.add_argument("--vocab", type=int, required=True)
    d.add_argument("--tokens", type=int, required=True)
    e = sub.add_parser("env", help="write OUT/env.json; print device_name=... and transformer_engine=...")
    e.add_argument("--mode", choices=["cuda", "cpu"], required=True)
    e.add_argument("--out", type=Path, required=True)
    for name, runs in (("resume", 2), ("throughput", 1), ("fp8", 2), ("convert", 1), ("record", 0)):
        s = sub.add_parser(name)
        if runs:
            s.add_argument("runs", type=Path, nargs=runs)
        if name in ("throughput", "record"):
            s.add_argument("--check", required=True)
        if name == "resume":
            s.add_argument("--exit-at", type=int, required=True, help="the step the split run stopped at")
        s.add_argument("--label", default="")
        s.add_argument("--status", choices=["PASS", "FAIL", "SKIP"], default="FAIL")
        s.add_argument("--detail", default="")
        s.add_argument("--out", type=Path, required=True)
    sub.add_parser("table").add_argument("--out", type=Path, required=True)
    a = p.parse_args(argv)

    if a.cmd == "data":
        print(write_synthetic_blend(a.dir, a.vocab, a.tokens))
    elif a.cmd == "env":
        env = environment(a.out, a.mode)
        print(f"device_name={env['device_name']}\ntransformer_engine={env['transformer_engine'] or ''}")
    elif a.cmd == "table":
        return table(a.out)
    elif a.cmd == "record":
        _record(a.out, a.check, a.status, a.detail)
    else:
        device = json.loads((a.out / "env.json").read_text(encoding="utf-8"))["device_name"]
        try:
            if a.cmd == "resume":
                check_resume(a.out, *a.runs, a.exit_at)
            elif a.cmd == "throughput":
                check_throughput(a.out, a.runs[0], a.check, a.label, device)
            elif a.cmd == "fp8":
                check_fp8(a.out, *a.runs, device)
            else:
                check_convert(a.out, a.runs[0])
        except Exception as err:  # a run that left no (or broken) results is this check's FAIL, not a crash
            names = {"resume": "1 train+resume", "fp8": "3 TE fp8", "convert": "4 convert mcore-to-hf"}
            _record(a.out, names.get(a.cmd, getattr(a, "check", a.cmd)), "FAIL", f"no result: {err!r}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

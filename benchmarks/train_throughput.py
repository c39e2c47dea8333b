"""Training throughput of the InternLM2 presets: tokens/s/GPU, TFLOP/s/GPU and MFU.

    python -P benchmarks/train_throughput.py              # CPU: the tiny preset (under a minute)
    python -P benchmarks/train_throughput.py              # one H100: InternLM2-7B width, 4 layers,
                                                          #   BF16 and FP8, seq 4096 and 8192 (< 8 min)
    torchrun --nproc_per_node 8 --no-python python -P benchmarks/train_throughput.py --full   # 7B, TP=2

(-P keeps benchmarks/ off sys.path, so a script there can never shadow a stdlib module.)

Runs `megatron_mmed.training.loop.train` on random tokens (throughput does not depend on the text) and
reports the median of the logged steps after warm-up. Anchor: Megatron-LM Llama3-8B FP8 on 8xH100,
13,812 tokens/s/GPU and 800 TFLOP/s/GPU.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import time
from pathlib import Path


def _random_tokens(out: Path, vocab: int, tokens: int) -> Path:
    """One language of random token ids as an IndexedDataset plus a blend.json."""
    import numpy as np
    import torch
    from megatron.core.datasets.indexed_dataset import IndexedDatasetBuilder

    from megatron_mmed.common.blend_file import BlendDataset, BlendFile, BlendTokenizer

    rng = np.random.default_rng(0)
    builder = IndexedDatasetBuilder(str(out / "xx_text_document.bin"), dtype=np.int32)
    for _ in range(max(1, tokens // 8192)):
        builder.add_document(torch.from_numpy(rng.integers(0, vocab, 8192, dtype=np.int64)), [8192])
    builder.finalize(str(out / "xx_text_document.idx"))
    prefix = out.resolve() / "xx_text_document"
    n = max(1, tokens // 8192)
    return BlendFile(
        root=str(out.resolve()),
        temperature=None,
        multipliers={"xx": 1.0},
        tokenizer=BlendTokenizer("random", None, 0, None, vocab, "int32"),
        datasets=(BlendDataset("xx", str(prefix), prefix.name, n * 8192, n, 1.0, 1.0),),
    ).write(out)


def _cases(args, on_gpu: bool) -> list[tuple[str, list[str]]]:
    if not on_gpu:
        return [("tiny fp32 seq 128", ["model.preset=tiny", "model.seq_length=128", "precision.dtype=fp32"])]
    base = ["model.preset=internlm2-7b"]
    if not args.full:
        base.append(f"model.num_layers={args.layers}")
    else:
        base += [
            "parallel.tp=2",
            "parallel.sequence_parallel=true",
            "parallel.use_distributed_optimizer=true",
        ]
    cases = []
    for seq in args.seq:
        for fp8 in (None, "hybrid"):
            name = f"internlm2-7b{'' if args.full else f' x{args.layers} layers'} {'fp8' if fp8 else 'bf16'} seq {seq}"
            cases.append(
                (
                    name,
                    [
                        *base,
                        f"model.seq_length={seq}",
                        "precision.dtype=bf16",
                        f"precision.fp8={fp8 or 'null'}",
                    ],
                )
            )
    return cases


def _run_case(name: str, overrides: list[str], blend: Path, run: Path, steps: int, world: int, on_gpu: bool):
    """Train ``steps`` steps of one case; the medians of its logged steps after two warm-up steps."""
    from megatron_mmed.common.config import load_config
    from megatron_mmed.training.config import TrainConfig
    from megatron_mmed.training.loop import train

    cfg = load_config(
        TrainConfig,
        None,
        [
            *overrides,
            f"data.blend={blend}",
            f"checkpoint.dir={run}",
            f"train.steps={steps}",
            "train.micro_batch_size=1",
            f"train.global_batch_size={(8 if on_gpu else 4) * world}",
            "schedule.warmup_steps=1",
            "logging.log_interval=1",
            f"logging.eval_interval={steps * 10}",
            "logging.eval_iters=0",
            "checkpoint.save=false",
            "data.split=100,0,0",
        ],
    )
    train(cfg)
    metrics = run / "metrics.jsonl"
    if not metrics.exists():  # only the last rank logs
        return None
    recs = [json.loads(x) for x in metrics.read_text().splitlines()][2:]
    return {
        "case": name,
        "tokens_per_s_per_gpu": statistics.median(r["tokens_per_s"] for r in recs) / world,
        "tflops_per_gpu": statistics.median(r["tflops_per_gpu"] for r in recs),
        "mfu": statistics.median(r["mfu"] for r in recs),
        "loss": recs[-1]["loss"],
    }


def main() -> int:
    import torch

    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--seq", type=int, nargs="+", default=[4096, 8192])
    parser.add_argument("--layers", type=int, default=4, help="7B-width layers on one GPU")
    parser.add_argument("--full", action="store_true", help="the whole 7B model (several GPUs, torchrun)")
    parser.add_argument("--steps", type=int, default=None, help="steps per case (default 12 GPU, 8 CPU)")
    parser.add_argument("--no-fp8", action="store_true", help="skip the FP8 cases")
    parser.add_argument(
        "--workdir", default="/tmp/mmed-train-bench", help="scratch folder (random data, runs)"
    )
    args = parser.parse_args()

    on_gpu = torch.cuda.is_available()
    steps = args.steps or (12 if on_gpu else 8)
    world = int(os.environ.get("WORLD_SIZE", "1"))
    last_rank = int(os.environ.get("RANK", "0")) == world - 1
    work = Path(args.workdir)
    ready = work / f"READY-{os.getppid()}"  # one marker per launch (local ranks share the launcher's pid)
    if int(os.environ.get("RANK", "0")) == 0:
        shutil.rmtree(work, ignore_errors=True)
        work.mkdir(parents=True)
        _random_tokens(work, 92544, tokens=(2_000_000 if on_gpu else 300_000))
        ready.touch()
    while not ready.exists():  # the other local ranks wait for rank 0's data
        time.sleep(0.5)
    rows = []
    for i, (name, overrides) in enumerate(_cases(args, on_gpu)):
        if args.no_fp8 and "fp8" in name:
            continue
        row = _run_case(name, overrides, work / "blend.json", work / f"run{i}", steps, world, on_gpu)
        if last_rank:
            rows.append(row)
    if last_rank:
        device = torch.cuda.get_device_name() if on_gpu else "CPU"
        print(f"\n# train throughput on {world} x {device}")
        print(f"{'case':44s} {'tokens/s/GPU':>13s} {'TFLOP/s/GPU':>12s} {'MFU':>8s}")
        for r in rows:
            print(
                f"{r['case']:44s} {r['tokens_per_s_per_gpu']:13.1f} {r['tflops_per_gpu']:12.4g} {r['mfu']:8.3%}"
            )
        print(json.dumps(rows))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

"""Benchmark ``mmed convert`` both ways on a randomly initialised InternLM2 model on CPU: wall time, peak RSS.

    .venv/bin/python -m benchmarks.convert [--preset internlm2-1.8b] [--work DIR] [--validate]

Writes a random HF folder in the InternLM2 layout (bf16, streamed), then runs ``hf-to-mcore`` and
``mcore-to-hf --layout llama --dtype bf16`` each in its own process and prints the wall time and the peak
resident memory of that process (plus its helper processes), against the goal: peak RSS <= 1.3 x the
model's size in the output dtype. Validation is skipped unless ``--validate`` (it runs fp32 models).
"""

from __future__ import annotations

import argparse
import json
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def make_random_hf(preset_name: str, out: Path, num_layers: int | None) -> int:
    """A random InternLM2-layout HF folder (bf16), written tensor by tensor; returns the parameter count."""
    import dataclasses

    import torch

    from conversion.arch import hf_config
    from conversion.families import INTERNLM2, hf_names_in_order, hf_shapes
    from conversion.hf_io import ShardedSafetensorsWriter, write_json
    from megatron_mmed.models.internlm2 import get_preset
    from megatron_mmed.training.flops import parameter_count

    preset = get_preset(preset_name)
    if num_layers:
        preset = dataclasses.replace(preset, num_layers=num_layers)
    arch = dataclasses.replace(preset, token_ids={"bos_token_id": 1, "eos_token_id": 2})
    out.mkdir(parents=True)
    shapes = hf_shapes(INTERNLM2, arch)
    writer = ShardedSafetensorsWriter(
        out, [(n, shapes[n]) for n in hf_names_in_order(INTERNLM2, arch)], torch.bfloat16
    )
    gen = torch.Generator().manual_seed(0)
    for name in hf_names_in_order(INTERNLM2, arch):
        if name.endswith("norm.weight"):
            t = torch.ones(shapes[name])
        else:
            t = torch.randn(shapes[name], generator=gen, dtype=torch.float32).mul_(0.02)
        writer.write(name, t)
        del t
    writer.close()
    write_json(out / "config.json", hf_config("internlm2", arch, "bf16"))
    return parameter_count(arch, arch.vocab_size)


def _child(argv: list[str]) -> None:
    """Run one ``mmed`` command in this process, then print its peak RSS (self and helpers) as JSON."""
    from megatron_mmed.cli import main

    rc = main(argv)
    self_kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    kids_kb = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    print(
        "BENCH "
        + json.dumps({"rc": rc, "peak_rss_gb": self_kb / 1024**2, "helper_peak_rss_gb": kids_kb / 1024**2})
    )


def _measure(argv: list[str]) -> dict:
    start = time.time()
    res = subprocess.run(
        [sys.executable, "-m", "benchmarks.convert", "--child", *argv],
        capture_output=True,
        text=True,
        cwd=REPO,
    )
    wall = time.time() - start
    line = [x for x in res.stdout.splitlines() if x.startswith("BENCH ")]
    if res.returncode != 0 or not line:
        raise SystemExit(f"{' '.join(argv)} failed:\n{res.stdout[-3000:]}\n{res.stderr[-3000:]}")
    return {"wall_s": wall, **json.loads(line[-1][6:]), "summary": res.stdout}


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] == "--child":
        _child(sys.argv[2:])
        return
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--preset", default="internlm2-1.8b")
    ap.add_argument("--layers", type=int, default=None, help="override the depth (quick runs)")
    ap.add_argument("--work", default=None, help="scratch folder (default: a temp dir, removed at the end)")
    ap.add_argument("--validate", action="store_true", help="also compare logits (fp32 models; more memory)")
    args = ap.parse_args()
    work = Path(args.work or tempfile.mkdtemp(prefix="mmed-convert-bench-"))
    hf, mc, back = work / "hf", work / "mcore", work / "hf_back"
    try:
        t = time.time()
        params = make_random_hf(args.preset, hf, args.layers)
        print(
            f"random {args.preset} ({params / 1e9:.2f}B parameters, bf16) written in {time.time() - t:.1f} s"
        )
        size_gb = params * 2 / 1024**3
        skip = [] if args.validate else ["--skip-validation"]
        runs = {
            "hf-to-mcore": ["convert", "hf-to-mcore", "--hf", str(hf), "--out", str(mc), *skip],
            "mcore-to-hf": ["convert", "mcore-to-hf", "--ckpt", str(mc), "--out", str(back), "--layout", "llama",
                            "--dtype", "bf16", *skip],
        }  # fmt: skip
        print(f"model size in bf16: {size_gb:.2f} GiB; goal: peak RSS <= {1.3 * size_gb:.2f} GiB (1.3x)")
        for name, argv in runs.items():
            r = _measure(argv)
            ratio = r["peak_rss_gb"] / size_gb
            print(
                f"{name}: wall {r['wall_s']:.1f} s, peak RSS {r['peak_rss_gb']:.2f} GiB ({ratio:.2f}x model size; "
                f"{'meets' if ratio <= 1.3 else 'misses'} 1.3x), helper processes peak {r['helper_peak_rss_gb']:.2f} GiB"
            )
    finally:
        if args.work is None:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()

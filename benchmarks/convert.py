"""Benchmark ``mmed convert`` both ways on a randomly initialised InternLM2 model on CPU: wall time, peak RSS.

    .venv/bin/python -m benchmarks.convert [--preset internlm2-1.8b] [--work DIR] [--validate]

Writes a random HF folder in the InternLM2 layout (bf16, streamed), then runs ``mmed convert hf-to-mcore`` and
``mcore-to-hf --layout llama --dtype bf16`` each as its own process tree (``benchmarks.peers.measure``) and
prints MB/s = weight bytes / wall seconds of the command (start-up included) and the peak RSS summed over the
whole tree (each process's resident pages, shared or not: the skeptic's number; PSS beside it), broken down per
process at the peak, against issue 16's goals: >= 200 MB/s each way, peak RSS <= 1.3 x the model's bf16 size.
The timed runs skip the logits validation; ``--validate`` times a second run of each with it and reports the
difference apart.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
import time
from pathlib import Path

from benchmarks.peers.measure import Measured, machine_load, run_measured

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


def _mmed() -> list[str]:
    mmed = Path(sys.executable).with_name("mmed")
    return [str(mmed)] if mmed.exists() else [sys.executable, "-m", "megatron_mmed.cli"]


def _measure(argv: list[str]) -> Measured:
    """One ``mmed`` command in its own process tree: wall (start-up included), CPU, peak tree RSS."""
    res = run_measured([*_mmed(), *argv], cwd=REPO)
    if not res.ok:
        raise SystemExit(f"{' '.join(argv)} failed:\n{res.stdout[-3000:]}\n{res.stderr[-3000:]}")
    return res


def _report(name: str, r: Measured, size: int) -> list[str]:
    """The result line of one direction, its two goal lines (MB/s; summed tree RSS, the skeptic's number:
    copy-on-write pages of any child count once per process) and the processes at the RSS peak."""
    gib = 1024**3
    rss, pss = r.peak_tree_rss_mb * 2**20, r.peak_tree_pss_mb * 2**20
    rate = size / 1e6 / r.wall_s
    procs = r.peak_processes
    lines = [
        f"{name}: wall {r.wall_s:.1f} s = {rate:.0f} MB/s, CPU {r.cpu_s:.1f} s, peak tree RSS {rss / gib:.2f} GiB "
        f"({rss / size:.2f}x model) over {len(procs)} process(es), PSS {pss / gib:.2f} GiB ({pss / size:.2f}x)",
        f"  [{'ok' if rate >= 200 else 'MISSED'}] {name} {rate:.0f} MB/s; goal >= 200 MB/s",
        f"  [{'ok' if rss <= 1.3 * size else 'MISSED'}] {name} peak tree RSS (summed over processes) "
        f"{rss / size:.2f}x one model copy; goal <= 1.3x",
    ]
    for p in procs:
        lines.append(
            f"    at the peak: pid {p['pid']} (parent {p['ppid']}) {p['cmd']}: RSS {p['rss_mb'] / 1024:.2f} GiB, "
            f"PSS {p['pss_mb'] / 1024:.2f} GiB"
        )
    return lines


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--preset", default="internlm2-1.8b")
    ap.add_argument("--layers", type=int, default=None, help="override the depth (quick runs)")
    ap.add_argument(
        "--work",
        default=None,
        help="scratch folder, kept (its random hf/ reused); default: a temp dir, removed",
    )
    ap.add_argument(
        "--validate", action="store_true", help="also time each direction with validation (reported apart)"
    )
    args = ap.parse_args()
    work = Path(args.work or tempfile.mkdtemp(prefix="mmed-convert-bench-"))
    hf, mc, back = work / "hf", work / "mcore", work / "hf_back"
    try:
        if (hf / "config.json").is_file() and (work / "params.json").is_file():
            params = json.loads((work / "params.json").read_text())["params"]
            print(f"random {args.preset} reused from {hf}")
        else:
            shutil.rmtree(hf, ignore_errors=True)
            t = time.time()
            params = make_random_hf(args.preset, hf, args.layers)
            (work / "params.json").write_text(json.dumps({"params": params}))
            print(
                f"random {args.preset} ({params / 1e9:.2f}B parameters, bf16) written in {time.time() - t:.1f} s"
            )
        size = params * 2
        size_gb = size / 1024**3
        print(
            f"weights in bf16: {size / 1e6:,.0f} MB ({size_gb:.2f} GiB); goals: >= 200 MB/s, peak tree RSS <= "
            f"{1.3 * size_gb:.2f} GiB (1.3x); page cache warm (the input was just written or converted); "
            f"{machine_load()}"
        )
        runs = {
            "hf-to-mcore": ["convert", "hf-to-mcore", "--hf", str(hf), "--out", str(mc), "--force"],
            "mcore-to-hf": ["convert", "mcore-to-hf", "--ckpt", str(mc), "--out", str(back), "--layout", "llama",
                            "--dtype", "bf16", "--force"],
        }  # fmt: skip
        for name, argv in runs.items():
            r = _measure([*argv, "--skip-validation"])
            print("\n".join(_report(name, r, size)))
            if args.validate:
                v = _measure(argv)
                print(
                    f"  with logits validation: wall {v.wall_s:.1f} s (validation ~{v.wall_s - r.wall_s:.1f} s, "
                    f"not in MB/s), peak tree RSS {v.peak_tree_rss_mb / 1024:.2f} GiB"
                )
        print(f"  {machine_load()}")
    finally:
        if args.work is None:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()

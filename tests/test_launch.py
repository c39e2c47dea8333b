"""Launch scripts: dry runs for every size, and real runs under a local slurm (launch/local-slurm).

The slurm tests start the single-node slurm with launch/local-slurm/start.sh when the machine allows it
(root, Debian packages reachable) and are skipped with the reason otherwise.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import subprocess
import time
from pathlib import Path

import pytest

from megatron_mmed.demo import SAMPLE
from preprocessing.layout import iter_kept

REPO = Path(__file__).resolve().parents[1]
SIZES = {"1_8b": "internlm2-1.8b", "7b": "internlm2-7b", "20b": "internlm2-20b"}
SLURM_DIR = Path(os.environ.get("MMED_SLURM_DIR", "/tmp/mmed-slurm"))


def _run(cmd, env=None, timeout=120, **kw):
    return subprocess.run(
        cmd,
        cwd=REPO,
        env={**os.environ, **(env or {})},
        capture_output=True,
        text=True,
        timeout=timeout,
        **kw,
    )


@pytest.mark.parametrize("size", sorted(SIZES))
def test_pretrain_dry_run_8_nodes(size: str, tmp_path: Path):
    res = _run(
        ["bash", f"launch/pretrain_internlm2_{size}.sh", "--dry-run"],
        env={"NODES": "8", "SAVE": str(tmp_path / "run"), "DATA": "/data/tok/blend.json"},
    )
    assert res.returncode == 0, res.stderr + res.stdout
    out = res.stdout
    assert "world_size=64" in out
    assert re.search(r"sbatch .*--nodes=8 .*--ntasks-per-node=8 .*--gpus-per-node=8", out)
    assert "srun --ntasks=64 --ntasks-per-node=8" in out
    assert "data.blend=/data/tok/blend.json" in out and "precision.fp8=hybrid" in out
    layout = re.search(r"layout: TP=(\d+) x PP=(\d+) x CP=(\d+) x DP=(\d+) = (\d+) ranks", out)
    assert layout, out
    tp, pp, cp, dp, world = map(int, layout.groups())
    assert tp * pp * cp * dp == world == 64
    assert SIZES[size] in out


def test_dry_run_rejects_bad_layout_and_args(tmp_path: Path):
    res = _run(
        ["bash", "launch/pretrain_internlm2_20b.sh", "--dry-run"], env={"NODES": "1", "TASKS_PER_NODE": "3"}
    )
    assert res.returncode != 0 and "not a multiple" in res.stderr
    res = _run(["bash", "launch/pretrain_internlm2_7b.sh", "--bogus"])
    assert res.returncode == 2 and "unknown argument" in res.stderr
    res = _run(["bash", "launch/pretrain_internlm2_7b.sh", "--dry-run"], env={"DEVICE": "tpu"})
    assert res.returncode == 2 and "DEVICE must be" in res.stderr


def test_secrets_never_echoed(tmp_path: Path):
    res = _run(["bash", "launch/pretrain_internlm2_7b.sh", "--dry-run"], env={"WANDB_API_KEY": "sekrit-123"})
    assert res.returncode == 0
    assert "sekrit-123" not in res.stdout + res.stderr


def test_prep_dry_run_chains_arrays(tmp_path: Path):
    res = _run(
        ["bash", "launch/prep_mmedc.sh", "--dry-run"],
        env={"INPUTS": "/raw/en /raw/zh", "OUT": str(tmp_path), "BENCHMARK": "/qa", "TOKENIZER": "/t.model"},
    )
    assert res.returncode == 0, res.stderr
    lines = [x for x in res.stdout.splitlines() if x.startswith("sbatch")]
    assert len(lines) == 7  # prep, 4 dedup stages, decontam, tokenize
    assert "--array=0-63" in lines[0] and "--array=0-15" in lines[1]
    assert all("--dependency=afterok:" in x for x in lines[1:])
    wrapped = [shlex.split(shlex.split(x)[-1]) for x in lines]  # the command each job runs
    stages = [w[w.index("--stage") + 1] for w in wrapped if "--stage" in w]
    assert stages == ["signatures", "buckets", "clusters", "filter"]
    assert all(w[:3] == [w[0], "-m", "megatron_mmed.cli"] for w in wrapped)


def test_convert_and_eval_dry_runs(tmp_path: Path):
    res = _run(
        ["bash", "launch/convert_to_hf.sh", "--dry-run"],
        env={"RUN": "/r", "OUT": "/h", "LAYOUT": "internlm2"},
    )
    assert res.returncode == 0, res.stderr
    assert "convert mcore-to-hf --ckpt /r --out /h --layout internlm2 --dtype bf16" in res.stdout
    res = _run(
        ["bash", "launch/eval_mmedbench.sh", "--dry-run"], env={"MODEL": "/h", "DATA": "/d", "OUT": "/e"}
    )
    assert res.returncode == 0, res.stderr
    assert "eval mmedbench --model /h --data /d --out /e --mode generate" in res.stdout
    res = _run(["bash", "launch/eval_mmedbench.sh", "--dry-run"], env={"MODEL": "/h"})
    assert res.returncode != 0 and "DATA" in res.stderr


def test_dockerfile_pins_base_and_requirements():
    text = (REPO / "Dockerfile").read_text()
    base = re.search(r"^FROM\s+(\S+)", text, re.M).group(1)
    assert base.startswith("nvcr.io/nvidia/pytorch:") and re.search(r":\d\d\.\d\d-py3$", base)
    assert "requirements.txt" in text and "constraints" in text
    assert "pip install" in text and "-e ." not in text.split("requirements.txt")[0]


# ---------------------------------------------------------------- under a real (local) slurm


@pytest.fixture(scope="module")
def slurm():
    if os.geteuid() != 0:
        pytest.skip("local slurm needs root (launch/local-slurm/start.sh starts munged/slurmctld/slurmd)")
    was_up = (
        (SLURM_DIR / "slurmctld.pid").is_file() and _run(["sinfo", "-h"], timeout=20).returncode == 0
        if _which("sinfo")
        else False
    )
    res = _run(["bash", "launch/local-slurm/start.sh"], timeout=600)
    if res.returncode != 0:
        pytest.skip(f"local slurm could not start here: {res.stderr.strip()[-300:]}")
    yield
    if not was_up:
        _run(["bash", "launch/local-slurm/stop.sh"], timeout=60)


def _which(name: str) -> bool:
    from shutil import which

    return which(name) is not None


@pytest.fixture(scope="module")
def demo_tok(tmp_path_factory) -> Path:
    from megatron_mmed.common.config import load_config
    from megatron_mmed.demo import DEMO_RECIPE
    from preprocessing.pipeline import PipelineConfig, run_pipeline

    out = tmp_path_factory.mktemp("demo_data")
    cfg = load_config(
        PipelineConfig,
        DEMO_RECIPE,
        [f"inputs=[{SAMPLE / 'raw'}]", f"output={out}", f"benchmark={SAMPLE / 'qa'}"],
    )
    run_pipeline(cfg, show_progress=False)
    return out


def _cpu_env(tok: Path, save: Path, steps: int) -> dict[str, str]:
    return {
        "DEVICE": "cpu",
        "TASKS_PER_NODE": "2",
        "CONFIG": "configs/train/tiny_cpu.yaml",
        "SAVE": str(save),
        "OVERRIDES": f"data.blend={tok / 'tok' / 'blend.json'} train.steps={steps} logging.log_interval=1 "
        "checkpoint.save_interval=1000 logging.eval_interval=1000",
    }


def _metrics(save: Path) -> list[dict]:
    return [json.loads(x) for x in (save / "metrics.jsonl").read_text().splitlines() if x.strip()]


def _wait_gone(job: str, timeout: float) -> None:
    deadline = time.time() + timeout
    while time.time() < deadline:
        if not _run(["squeue", "-h", "-j", job], timeout=30).stdout.strip():
            return
        time.sleep(1)
    _run(["scancel", job])
    pytest.fail(f"job {job} still queued after {timeout} s")


@pytest.mark.slurm
@pytest.mark.timeout(900)
def test_sbatch_wait_cpu_run_and_preemption(slurm, demo_tok: Path, tmp_path: Path):
    steps = 24
    full = tmp_path / "full"
    res = _run(
        ["sbatch", "--wait", "-o", str(tmp_path / "full.log"), "launch/pretrain_internlm2_7b.sh"],
        env=_cpu_env(demo_tok, full, steps),
        timeout=600,
    )
    log = (tmp_path / "full.log").read_text() if (tmp_path / "full.log").exists() else ""
    assert res.returncode == 0, res.stderr + log[-3000:]
    assert (full / "latest").is_file() and (full / f"iter_{steps:07d}").is_dir()
    assert [m["step"] for m in _metrics(full) if "loss" in m][-1] == steps

    # the last two steps of a run, as slurm jobs: export to HF, then evaluate
    hf, ev = tmp_path / "hf", tmp_path / "eval"
    env = {"RUN": str(full), "OUT": str(hf), "DTYPE": "fp32", "WAIT": "1", "GPUS_PER_NODE": "0"}
    res = _run(["bash", "launch/convert_to_hf.sh"], env=env, timeout=600)
    assert res.returncode == 0 and (hf / "config.json").is_file(), res.stderr[-2000:]
    env = {
        "MODEL": str(hf),
        "DATA": str(SAMPLE / "qa"),
        "OUT": str(ev),
        "WAIT": "1",
        "GPUS_PER_NODE": "0",
        "EXTRA": "--limit 2 --max-new-tokens 8",
    }
    res = _run(["bash", "launch/eval_mmedbench.sh"], env=env, timeout=600)
    assert res.returncode == 0, res.stderr[-2000:]
    assert len(json.loads((ev / "results.json").read_text())["accuracy"]) == 6

    # preemption: USR1 to the batch shell -> checkpoint, requeue, resume from latest, same final loss
    pre = tmp_path / "pre"
    res = _run(
        ["sbatch", "--parsable", "-o", str(tmp_path / "pre.log"), "launch/pretrain_internlm2_7b.sh"],
        env=_cpu_env(demo_tok, pre, steps),
        timeout=60,
    )
    assert res.returncode == 0, res.stderr
    job = res.stdout.strip().split(";")[0]
    deadline = time.time() + 300
    while time.time() < deadline and not ((pre / "metrics.jsonl").is_file() and len(_metrics(pre)) >= 4):
        time.sleep(0.5)
    assert _run(["scancel", "--signal=USR1", "--batch", job]).returncode == 0
    _wait_gone(job, 600)
    log = (tmp_path / "pre.log").read_text()
    assert "requeueing job" in log, log[-3000:]
    assert "training exited with code 0" in log
    steps_pre = [m["step"] for m in _metrics(pre) if "loss" in m]
    assert steps_pre[-1] == steps and "(restart 1)" in log  # the requeued start resumed and finished
    final = {m["step"]: m["loss"] for m in _metrics(full) if "loss" in m}
    resumed = {m["step"]: m["loss"] for m in _metrics(pre) if "loss" in m}
    assert resumed[steps] == final[steps]


@pytest.mark.slurm
@pytest.mark.timeout(900)
def test_prep_arrays_equal_local_pipeline(slurm, demo_tok: Path, tmp_path: Path):
    out = tmp_path / "arrays"
    env = {
        "INPUTS": str(SAMPLE / "raw"),
        "OUT": str(out),
        "BENCHMARK": str(SAMPLE / "qa"),
        "RECIPE": "configs/prep/demo.yaml",
        "PREP_TASKS": "3",
        "DEDUP_TASKS": "2",
        "WORKERS": "2",
        "CPUS_PER_TASK": "1",
        "WAIT": "1",
    }
    res = _run(["bash", "launch/prep_mmedc.sh"], env=env, timeout=800)
    assert res.returncode == 0, res.stderr[-3000:]
    for stage in ("prep", "dedup", "decontam"):
        a = sorted(json.dumps(r, sort_keys=True) for r in iter_kept(out / stage))
        b = sorted(json.dumps(r, sort_keys=True) for r in iter_kept(demo_tok / stage))
        assert a == b, stage
    for f in sorted((demo_tok / "tok").glob("*_text_document.*")):
        assert (out / "tok" / f.name).read_bytes() == f.read_bytes(), f.name

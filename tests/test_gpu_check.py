"""benchmarks/gpu_check.sh, the prepared GPU check (issue 16): its CPU dry mode end to end, its wheel list,
and the import path it relies on (`mmed train` and `mmed convert` without preprocessing-only packages)."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

#: In requirements.txt but absent from the device image and not carried by gpu_check_wheels.sh: training and
#: conversion must run without them (each is only needed by preprocessing, extraction or W&B logging).
NOT_ON_DEVICE = (
    "datasketch",
    "trafilatura",
    "ftfy",
    "py3langid",
    "pypdfium2",
    "warcio",
    "jieba",
    "janome",
    "wandb",
    "fpdf",
)


def _blocker(folder: Path, blocked: tuple[str, ...] = NOT_ON_DEVICE) -> dict[str, str]:
    """An environment whose Python finds none of ``blocked`` (a sitecustomize on PYTHONPATH)."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "sitecustomize.py").write_text(
        textwrap.dedent(
            f"""
            import importlib.machinery

            _find = importlib.machinery.PathFinder.find_spec

            def _find_unless_blocked(cls, name, path=None, target=None):
                if name.split(".")[0] in {blocked!r}:
                    return None  # as if not installed: importlib.util.find_spec says None, import fails
                return _find(name, path, target)

            importlib.machinery.PathFinder.find_spec = classmethod(_find_unless_blocked)
            """
        )
    )
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(folder), env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    return env


def test_train_and_convert_import_paths_need_no_preprocessing_packages(repo_root, tmp_path):
    code = textwrap.dedent(
        """
        import sys
        from megatron_mmed.cli import main
        assert main(["train", "--config", "configs/train/tiny_cpu.yaml", "--dry-run"]) == 0
        assert main(["convert", "mcore-to-hf", "--help"]) == 0
        """
    )
    code_run = "import megatron_mmed.training.loop, conversion.run, conversion.validate\n"
    for snippet in (code_run, code):
        out = subprocess.run(
            [sys.executable, "-c", snippet],
            cwd=repo_root,
            env=_blocker(tmp_path / "block"),
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert out.returncode == 0, out.stderr[-3000:]


def _pin(repo_root: Path, name: str) -> str:
    line = next(
        x for x in (repo_root / "requirements.txt").read_text().splitlines() if x.startswith(name + "==")
    )
    return line.split("#")[0].strip()


def test_scripts_parse_and_document_their_knobs(repo_root):
    for script in ("gpu_check.sh", "gpu_check_wheels.sh"):
        path = repo_root / "benchmarks" / script
        assert subprocess.run(["bash", "-n", str(path)], capture_output=True).returncode == 0
        out = subprocess.run([str(path), "--help"], capture_output=True, text=True, timeout=30)
        assert out.returncode == 0 and "WHEELS" in out.stdout, out.stderr
    out = subprocess.run(
        [str(repo_root / "benchmarks/gpu_check.sh"), "--help"], capture_output=True, text=True
    )
    for knob in (
        "DEVICE",
        "OUT",
        "RESULTS",
        "PYTHON",
        "SITE",
        "train+resume",
        "throughput",
        "TE fp8",
        "convert",
    ):
        assert knob in out.stdout
    bad = subprocess.run(
        [str(repo_root / "benchmarks/gpu_check.sh"), "--steps"], capture_output=True, text=True
    )
    assert bad.returncode == 2 and "unknown argument" in bad.stderr


def test_wheels_script_downloads_megatron_core_at_the_repo_pin_and_never_torch(repo_root):
    out = subprocess.run(
        [str(repo_root / "benchmarks/gpu_check_wheels.sh")],
        env={**os.environ, "DRY_RUN": "1", "WHEELS": "/tmp/w"},
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert out.returncode == 0, out.stderr
    words = out.stdout.split()
    assert _pin(repo_root, "megatron-core") in words
    assert _pin(repo_root, "orjson") in words and _pin(repo_root, "zstandard") in words
    assert (
        "--no-deps" in words
        and "--only-binary=:all:" in words
        and words[words.index("--python-version") + 1] == "3.12"
    )
    assert not any(w.startswith("torch") for w in words)
    # what gpu_check.sh tests importable before it installs wheels is what this script downloads
    check = (repo_root / "benchmarks/gpu_check.sh").read_text()
    assert '"import megatron.core, orjson, zstandard"' in check


def test_peak_is_known_only_for_sxm_h100_and_h200():
    from benchmarks.gpu_check import bf16_peak

    assert bf16_peak("NVIDIA H100 80GB HBM3") == 989.0
    assert bf16_peak("NVIDIA H200") == 989.0
    assert bf16_peak("NVIDIA H100 PCIe") is None
    assert bf16_peak("NVIDIA A100-SXM4-80GB") is None
    assert bf16_peak("CPU") is None


def test_table_exits_nonzero_on_a_failed_check(tmp_path, capsys):
    from benchmarks.gpu_check import main

    for status in ("PASS", "FAIL", "SKIP"):
        main(
            [
                "record",
                "--out",
                str(tmp_path),
                "--check",
                f"c {status}",
                "--status",
                status,
                "--detail",
                "a|b",
            ]
        )
    assert main(["table", "--out", str(tmp_path)]) == 1
    assert "FAILED: c FAIL" in capsys.readouterr().out
    saved = json.loads((tmp_path / "results.json").read_text())
    assert [c["status"] for c in saved["checks"]] == ["PASS", "FAIL", "SKIP"]
    assert "| c SKIP | SKIP | a/b |" in (tmp_path / "results.md").read_text()
    (tmp_path / "checks.jsonl").unlink()
    main(["record", "--out", str(tmp_path), "--check", "only", "--status", "PASS"])
    assert main(["table", "--out", str(tmp_path)]) == 0


@pytest.mark.slow
@pytest.mark.timeout(900)
def test_cpu_dry_mode_runs_all_four_checks_without_wheels(repo_root, tmp_path):
    """DEVICE=cpu end to end, megatron-core already installed (no wheels folder), with the preprocessing-only
    packages blocked as on the device: the table lists the four checks, each PASS or TE's honest SKIP."""
    env = _blocker(tmp_path / "block")
    env.update(
        DEVICE="cpu",
        OUT=str(tmp_path / "out"),
        RESULTS=str(tmp_path / "results"),
        WHEELS=str(tmp_path / "no-wheels"),
        PYTHON=sys.executable,
    )
    out = subprocess.run(
        [str(repo_root / "benchmarks/gpu_check.sh")], env=env, capture_output=True, text=True, timeout=840
    )
    assert out.returncode == 0, out.stdout[-4000:] + out.stderr[-3000:]
    assert "importable: no wheels installed" in out.stdout
    rows = {m[0]: (m[1], m[2]) for m in re.findall(r"^\| (\d [^|]+?) \| (\w+) \| (.*) \|$", out.stdout, re.M)}
    assert set(rows) == {"1 train+resume", "2 throughput", "3 TE fp8", "4 convert mcore-to-hf"}
    from megatron_mmed.models.builder import te_available

    for check, (status, detail) in rows.items():
        if check == "3 TE fp8" and not te_available():
            assert (status, detail) == ("SKIP", "TE not available: FP8 not checked")
        else:
            assert status == "PASS", (check, detail)
    assert "TE not available: FP8 not checked" in out.stdout.splitlines()
    saved = json.loads((tmp_path / "out/results.json").read_text())
    one = saved["checks"][0]["numbers"]
    assert one["final_loss"] == one["resumed_final_loss"] and one["max_abs_diff"] == 0.0
    assert saved["checks"][1]["numbers"]["tokens_per_s"] > 0 and saved["checks"][1]["numbers"]["mfu"] is None
    assert saved["env"]["device_name"] == "CPU"
    assert (tmp_path / "out/hf/config.json").is_file()
    assert (tmp_path / "results/results.md").read_text() == (tmp_path / "out/results.md").read_text()
    assert json.loads((tmp_path / "results/results.json").read_text()) == saved


@pytest.mark.slow  # two Python start-ups that import torch and megatron-core: ~10 s
def test_cuda_mode_refuses_a_torch_without_cuda(repo_root, tmp_path):
    import torch

    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA: DEVICE=cuda would run the whole check")
    out = subprocess.run(
        [str(repo_root / "benchmarks/gpu_check.sh")],
        env={**os.environ, "DEVICE": "cuda", "OUT": str(tmp_path / "out"), "PYTHON": sys.executable},
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert out.returncode == 2 and "sees no CUDA device" in out.stderr, out.stdout + out.stderr
    assert not (tmp_path / "out/runs").exists()


def test_without_megatron_core_or_wheels_it_stops_naming_the_wheels_script(repo_root, tmp_path):
    env = _blocker(tmp_path / "block", (*NOT_ON_DEVICE, "megatron"))
    env.update(DEVICE="cpu", OUT=str(tmp_path / "out"), WHEELS=str(tmp_path / "none"), PYTHON=sys.executable)
    out = subprocess.run(
        [str(repo_root / "benchmarks/gpu_check.sh")], env=env, capture_output=True, text=True, timeout=60
    )
    assert out.returncode == 2, out.stdout + out.stderr
    assert "no wheels in" in out.stderr and "gpu_check_wheels.sh" in out.stderr


def _fake_run(run: Path, losses: list[float], saved: list[int]) -> Path:
    run.mkdir(parents=True)
    lines = [json.dumps({"step": i + 1, "loss": x}) for i, x in enumerate(losses)]
    (run / "metrics.jsonl").write_text("\n".join(lines) + "\n")
    for step in saved:
        (run / f"iter_{step:07d}").mkdir()
    return run


@pytest.mark.parametrize(
    ("split_losses", "split_saves", "status"),
    [
        ([5.0, 4.0, 3.0, 2.5], [2, 4], "PASS"),
        ([5.0, 4.0, 3.0, 2.5000001], [2, 4], "FAIL"),  # resumed, but not bit for bit
        ([5.0, 4.0, 3.0, 2.5], [4], "FAIL"),  # never stopped at step 2: nothing was resumed
    ],
)
def test_resume_verdict_needs_the_stop_and_equal_losses(tmp_path, capsys, split_losses, split_saves, status):
    from benchmarks.gpu_check import check_resume

    full = _fake_run(tmp_path / "full", [5.0, 4.0, 3.0, 2.5], [4])
    split = _fake_run(tmp_path / "split", split_losses, split_saves)
    assert check_resume(tmp_path, full, split, exit_at=2)["status"] == status

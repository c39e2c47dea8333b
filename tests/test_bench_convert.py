"""benchmarks/convert.py end to end on the tiny preset: both directions measured, MB/s and tree RSS printed."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


@pytest.mark.slow  # four interpreter start-ups importing torch / megatron-core
def test_convert_benchmark_runs_on_the_tiny_preset(tmp_path):
    cmd = [sys.executable, "-m", "benchmarks.convert", "--preset", "tiny", "--work", str(tmp_path / "w")]
    res = subprocess.run(cmd, capture_output=True, text=True, cwd=REPO, timeout=600)
    assert res.returncode == 0, res.stderr[-3000:]
    for direction in ("hf-to-mcore", "mcore-to-hf"):
        line = next(x for x in res.stdout.splitlines() if x.startswith(f"{direction}: wall"))
        assert "MB/s" in line and "peak tree RSS" in line and "PSS" in line
        goals = [x for x in res.stdout.splitlines() if x.lstrip().startswith(("[ok]", "[MISSED]"))]
        assert any(f"{direction} " in g and "MB/s; goal >= 200 MB/s" in g for g in goals), goals
        assert any(
            f"{direction} peak tree RSS (summed over processes)" in g and "goal <= 1.3x" in g for g in goals
        ), goals
        assert f"{direction}: wall" in res.stdout and "    at the peak: pid " in res.stdout
    assert (tmp_path / "w" / "hf_back" / "model.safetensors.index.json").is_file()
    again = subprocess.run(cmd, capture_output=True, text=True, cwd=REPO, timeout=600)  # the model is reused
    assert again.returncode == 0 and "reused from" in again.stdout, again.stderr[-3000:]

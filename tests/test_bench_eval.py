"""``benchmarks/eval.py`` runs both ways, as a module and as a script (whose folder would otherwise shadow the repo's
``eval`` package), and reports batched outputs identical to the one-at-a-time loop on the tiny model."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


@pytest.mark.slow
@pytest.mark.parametrize("how", [["-m", "benchmarks.eval"], ["benchmarks/eval.py"]], ids=["module", "script"])
def test_bench_eval_runs_as_module_and_as_script(how, shared_data):
    args = ["--questions", "6", "--max-new-tokens", "3", "--rounds", "1"]
    res = subprocess.run([sys.executable, *how, *args], cwd=REPO, capture_output=True, text=True, timeout=300,
                         env={"MMED_SHARED_DATA": str(shared_data), "PATH": "/usr/bin:/bin"})  # fmt: skip
    assert res.returncode == 0, res.stderr[-2000:]
    out = json.loads(res.stdout[res.stdout.index("{") :])
    assert out["questions"] == 6
    assert [r["identical_outputs"] for r in out["runs"]] == ["6/6"]
    assert out["prefix_kv"] and out["own_forward"]  # the path the goal is measured on

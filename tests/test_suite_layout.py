"""The test suite's own contract: `make test` runs two processes, and each test module stays in one of them (its
module-scoped fixtures are built once; the slurm modules share one local cluster). xdist 3.8's `loadgroup` once
stopped grouping silently under pytest 9.2 and two processes drove slurm at once: this catches that class of change."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]

MODULE = """
import os, json, pathlib, pytest

@pytest.fixture(scope="module")
def where():
    return os.environ.get("PYTEST_XDIST_WORKER", "main")

@pytest.mark.parametrize("i", range(6))
def test_one(where, i):
    out = pathlib.Path(__file__).with_suffix(".%s.%d.json" % (where, i))
    out.write_text(json.dumps({"module": __name__, "worker": os.environ.get("PYTEST_XDIST_WORKER")}))
"""


def test_make_test_keeps_each_module_in_one_process(tmp_path: Path):
    xdist = re.search(r"^XDIST \?= (.+)$", (REPO / "Makefile").read_text(), re.M).group(1).split()
    for name in ("test_a", "test_b", "test_c"):
        (tmp_path / f"{name}.py").write_text(MODULE)
    (tmp_path / "pytest.ini").write_text("[pytest]\n")
    res = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", *xdist, str(tmp_path)],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert res.returncode == 0, res.stdout[-2000:] + res.stderr[-2000:]
    seen: dict[str, set[str]] = {}
    for f in tmp_path.glob("*.json"):
        row = json.loads(f.read_text())
        seen.setdefault(row["module"], set()).add(row["worker"])
    assert sorted(seen) == ["test_a", "test_b", "test_c"] and sum(1 for _ in tmp_path.glob("*.json")) == 18
    assert all(len(workers) == 1 and None not in workers for workers in seen.values()), seen
    assert len(set().union(*seen.values())) == 2, seen  # and the work was spread over both processes

"""The peers' own virtual environment, ``benchmarks/.peers-venv`` (git-ignored), made on first use.

Peers never enter the repo's requirements: this venv gets ``benchmarks/peers/requirements.txt`` through
``-c constraints.txt`` (torch stays the 2.13.0 CPU build). A stamp holding the hash of both files makes a
rerun free and an edited pin reinstall.
"""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
from pathlib import Path

PEERS = Path(__file__).resolve().parent
REPO = PEERS.parents[1]
REQUIREMENTS = PEERS / "requirements.txt"
CONSTRAINTS = REPO / "constraints.txt"
DEFAULT_VENV = Path(os.environ.get("MMED_PEERS_VENV", REPO / "benchmarks" / ".peers-venv"))


def _wanted() -> str:
    return hashlib.sha256(REQUIREMENTS.read_bytes() + b"\0" + CONSTRAINTS.read_bytes()).hexdigest()


def peers_python(venv: Path = DEFAULT_VENV, log=print) -> Path:
    """The peers venv's python, creating the venv and installing the pinned peers when needed (minutes)."""
    venv = Path(venv)
    python = venv / "bin" / "python"
    stamp = venv / ".installed"
    want = _wanted()
    if python.exists() and stamp.is_file() and stamp.read_text().strip() == want:
        return python
    if not python.exists():
        log(f"peers: creating {venv} (python3.11 -m venv)")
        base = getattr(sys, "_base_executable", sys.executable)
        subprocess.run([base, "-m", "venv", str(venv)], check=True)
    log(f"peers: installing {REQUIREMENTS.relative_to(REPO)} with -c constraints.txt (a few minutes, once)")
    pip = [str(python), "-m", "pip", "install", "-q", "--disable-pip-version-check"]
    subprocess.run([*pip, "-c", str(CONSTRAINTS), "-r", str(REQUIREMENTS)], check=True)
    stamp.write_text(want + "\n")
    return python

"""Run one command as a measured subprocess: wall and CPU seconds, peak memory of its whole process tree.

Every method of every peer benchmark (ours and the peers') is measured by the same wrapper process, so start-up,
imports and worker pools count alike. The wrapper (``python measure.py RESULT.json -- CMD...``) starts CMD and
samples its process tree with psutil every ``interval`` seconds: the peak of the summed RSS of all its
processes (shared copy-on-write pages of forked workers count once per process: an upper bound) and of the
summed PSS (shared pages split between sharers: the honest total). CPU seconds are the larger of two lower
bounds: user + system time of every descendant that was waited for (``getrusage(RUSAGE_CHILDREN)`` of the
wrapper, which runs nothing else), and the sum over every process seen in the samples of its last own CPU
time (catches pool workers that no one reaped, which rusage never sees; misses < one interval per process).
``max_process_rss_mb`` is the largest single process (``ru_maxrss``), which sampling cannot miss.
``peak_processes`` breaks the peak sample of summed RSS down per process (pid, parent, command,
RSS, PSS): which processes the peak counts, e.g. forked writers holding the parent's pages copy-on-write.
"""

from __future__ import annotations

import json
import os
import resource
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

_HERE = Path(__file__).resolve()


@dataclass
class Measured:
    """What one measured run cost (``returncode`` != 0: the command failed; see ``stderr``)."""

    wall_s: float
    cpu_s: float
    peak_tree_rss_mb: float
    peak_tree_pss_mb: float
    max_process_rss_mb: float
    samples: int
    returncode: int
    stdout: str = ""
    stderr: str = ""
    extra: dict = field(default_factory=dict)  # the CPU-second bounds behind cpu_s
    peak_processes: list = field(default_factory=list)  # {pid, ppid, cmd, rss_mb, pss_mb} at the RSS peak

    @property
    def ok(self) -> bool:
        return self.returncode == 0


def _tree_sample(proc, cpu: dict, each: list | None = None) -> tuple[int, int]:
    """(summed RSS, summed PSS) in bytes of ``proc`` and all its descendants (0 for any that vanished); updates
    ``cpu[(pid, start time)]`` with each one's own user + system seconds (zombies still report theirs) and
    appends ``(process, memory info)`` to ``each`` when given (described by :func:`_describe` only for a peak)."""
    import psutil

    rss = pss = 0
    try:
        procs = [proc, *proc.children(recursive=True)]
    except psutil.Error:
        return 0, 0
    for p in procs:
        try:
            with p.oneshot():
                t = p.cpu_times()
                cpu[(p.pid, p.create_time())] = t.user + t.system
        except psutil.Error:
            pass
        try:
            info = p.memory_full_info()
        except psutil.Error:
            continue
        rss += info.rss
        pss += getattr(info, "pss", info.rss)
        if each is not None:
            each.append((p, info))
    return rss, pss


def _describe(p, info) -> dict:
    """One process of a sample: pid, parent pid, a short command line, RSS and PSS in MB."""
    import psutil

    try:
        cmd = " ".join(Path(a).name if i == 0 else a for i, a in enumerate(p.cmdline()[:4]))
        ppid = p.ppid()
    except psutil.Error:
        cmd, ppid = "?", 0
    return {
        "pid": p.pid,
        "ppid": ppid,
        "cmd": cmd[:80],
        "rss_mb": info.rss / 2**20,
        "pss_mb": getattr(info, "pss", info.rss) / 2**20,
    }


def _wrapper(result: Path, cmd: list[str], interval: float) -> int:
    """Body of the wrapper process: run ``cmd`` (inheriting stdout/stderr), sample, write ``result``."""
    import psutil

    t0 = time.perf_counter()
    child = subprocess.Popen(cmd)
    proc = psutil.Process(child.pid)
    peak = [0, 0]
    peak_processes: list[dict] = []
    samples = [0]
    cpu: dict[tuple[int, float], float] = {}
    done = threading.Event()

    def sample() -> None:
        while not done.is_set():
            each: list = []
            rss, pss = _tree_sample(proc, cpu, each)
            if rss > peak[0]:  # command lines read only for a new peak, not at every sample
                peak_processes[:] = [_describe(p, info) for p, info in each]
            peak[0], peak[1] = max(peak[0], rss), max(peak[1], pss)
            samples[0] += 1
            done.wait(interval)

    th = threading.Thread(target=sample, daemon=True)
    th.start()
    rc = child.wait()
    wall = time.perf_counter() - t0
    done.set()
    th.join()
    ru = resource.getrusage(resource.RUSAGE_CHILDREN)
    waited, sampled = ru.ru_utime + ru.ru_stime, sum(cpu.values())
    rec = {
        "wall_s": wall,
        "cpu_s": max(waited, sampled),
        "peak_tree_rss_mb": peak[0] / 2**20,
        "peak_tree_pss_mb": peak[1] / 2**20,
        "max_process_rss_mb": ru.ru_maxrss / 1024,
        "samples": samples[0],
        "returncode": rc,
        "extra": {"cpu_s_rusage": waited, "cpu_s_sampled": sampled},
        "peak_processes": peak_processes,
    }
    result.write_text(json.dumps(rec))
    return 0


def run_measured(
    cmd: list[str],
    *,
    cwd: str | Path | None = None,
    env: dict[str, str] | None = None,
    interval: float = 0.05,
    log_dir: str | Path | None = None,
    timeout: float | None = None,
) -> Measured:
    """Run ``cmd`` under the wrapper; its stdout/stderr are kept (in ``log_dir`` when given, else temp files)."""
    import tempfile

    with tempfile.TemporaryDirectory(prefix="measure_") as tmp:
        logs = Path(log_dir) if log_dir else Path(tmp)
        logs.mkdir(parents=True, exist_ok=True)
        result = Path(tmp) / "result.json"
        out_path, err_path = logs / "stdout.txt", logs / "stderr.txt"
        wrapper = [sys.executable, str(_HERE), str(result), str(interval), "--", *map(str, cmd)]
        with open(out_path, "wb") as out, open(err_path, "wb") as err:
            proc = subprocess.run(wrapper, cwd=cwd, env=env, stdout=out, stderr=err, timeout=timeout)
        stdout = out_path.read_text(errors="replace")
        stderr = err_path.read_text(errors="replace")
        if not result.is_file():
            return Measured(0.0, 0.0, 0.0, 0.0, 0.0, 0, proc.returncode or 1, stdout, stderr)
        rec = json.loads(result.read_text())
    return Measured(**rec, stdout=stdout, stderr=stderr)


def machine_load() -> str:
    """``uptime``-style load averages and CPU count (the scripts print it before and after each run)."""
    one, five, fifteen = os.getloadavg()
    return f"load average {one:.2f} {five:.2f} {fifteen:.2f} on {os.cpu_count()} CPUs"


if __name__ == "__main__":
    # python measure.py RESULT.json INTERVAL -- CMD...
    sep = sys.argv.index("--")
    sys.exit(_wrapper(Path(sys.argv[1]), sys.argv[sep + 1 :], float(sys.argv[2])))

"""The stage protocol every preprocessing stage shares: ``common.tasks.resume_tasks`` (rank share, valid
markers, other ranks' results) and ``preprocessing.stage.open_stage`` (refuse, lock, same run, then config)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import pytest

from megatron_mmed.common.errors import UserError
from megatron_mmed.common.io import DoneMarkers, StaleOutputError
from megatron_mmed.common.lock import LockBusyError
from megatron_mmed.common.tasks import resume_tasks
from preprocessing.stage import fingerprint, open_stage


def _square(x: int) -> tuple[str, dict]:
    return f"t{x}", {"sq": x * x}


def test_resume_tasks_splits_by_rank_skips_valid_markers_and_collects_other_ranks(tmp_path: Path):
    markers = DoneMarkers(tmp_path, "s")
    tasks = {f"t{i}": i for i in range(5)}
    ran: list[int] = []

    def here(x: int) -> tuple[str, dict]:
        ran.append(x)
        return _square(x)

    markers.mark("t2", {"sq": -1})  # an earlier run's marker this run does not accept: redone
    r0 = resume_tasks(
        "s",
        tasks,
        _square,
        markers,
        rank=0,
        world_size=2,
        valid=lambda tid, m: m["sq"] >= 0,
        unit="x",
        show_progress=False,
        run_here=here,
    )
    assert ran == [0, 2, 4] and (r0.total, r0.mine, r0.skipped) == (5, 3, 0) and not r0.complete
    assert markers.read("t2") == {"sq": 4}
    r1 = resume_tasks("s", tasks, _square, markers, rank=1, world_size=2, unit="x", show_progress=False)
    assert r1.complete and r1.results == {f"t{i}": {"sq": i * i} for i in range(5)}  # rank 0's included
    ran.clear()
    again = resume_tasks("s", tasks, _square, markers, unit="x", show_progress=False, run_here=here)
    assert ran == [] and again.skipped == 5 and again.complete


@pytest.mark.slow  # a process pool
def test_resume_tasks_in_a_pool_gives_the_same_markers(tmp_path: Path):
    tasks = {f"t{i}": i for i in range(6)}
    one = resume_tasks("s", tasks, _square, DoneMarkers(tmp_path / "a", "s"), unit="x", show_progress=False)
    two = resume_tasks(
        "s", tasks, _square, DoneMarkers(tmp_path / "b", "s"), unit="x", workers=2, show_progress=False
    )
    assert one.results == two.results and len(one.results) == 6


@dataclass(frozen=True)
class _Cfg:
    n: int = 1
    workers: int = 1


def test_open_stage_checks_before_it_saves_the_config(tmp_path: Path):
    inp, out = tmp_path / "in", tmp_path / "out"
    inp.mkdir()
    digest = {"files": 1, "bytes": 3, "digest": "x"}
    with open_stage("s", out, _Cfg(), reads=[inp], input=digest) as folder:
        assert folder == out and (out / "config.yaml").is_file()
        # the folder lock is held for the whole run
        with pytest.raises(LockBusyError), open_stage("s", out, _Cfg(), reads=[inp], input=digest):
            pass
    saved = (out / "config.yaml").read_text()
    with open_stage("s", out, _Cfg(workers=4), reads=[inp], input=digest):  # workers: same run
        pass
    assert "workers: 4" in (out / "config.yaml").read_text()
    changed = _Cfg(n=2, workers=1)
    with (
        pytest.raises(StaleOutputError, match="other settings: n"),
        open_stage("s", out, changed, reads=[inp], input=digest),
    ):
        pass
    other = {**digest, "files": 2}
    with (
        pytest.raises(StaleOutputError, match="other input"),
        open_stage("s", out, _Cfg(workers=1), reads=[inp], input=other),
    ):
        pass
    assert (out / "config.yaml").read_text() == saved.replace("workers: 1", "workers: 4")  # left as it was
    with (
        pytest.raises(UserError, match="inside the input"),
        open_stage("s", inp / "o", _Cfg(), reads=[inp], input=digest),
    ):
        pass
    assert not (inp / "o").exists()


def test_fingerprint_leaves_out_what_never_changes_the_output():
    @dataclass(frozen=True)
    class Own:
        OUTPUT_NEUTRAL = frozenset({"workers", "batch"})
        n: int = 1
        batch: int = 8
        workers: int = 1

    assert fingerprint(_Cfg(n=3, workers=9), {"d": 1}) == {"settings": {"n": 3}, "input": {"d": 1}}
    assert fingerprint(Own(batch=2), {}, tokenizer="t")["settings"] == {"n": 1}
    assert fingerprint(Own(), {}, tokenizer="t")["tokenizer"] == "t"

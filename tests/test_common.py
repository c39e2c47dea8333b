"""Shared building blocks: typed configs with overrides, zstd JSONL writer read-back, markers, CLI errors."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import pytest

from megatron_mmed.cli import main
from megatron_mmed.common.config import ConfigError, load_config, replace_with, save_config, to_dict
from megatron_mmed.common.io import DoneMarkers, JsonlZstWriter, read_jsonl_zst, write_jsonl_zst


@dataclass(frozen=True)
class Inner:
    lr: float = 1e-3
    mode: Literal["a", "b"] = "a"
    langs: tuple[str, ...] = ("en", "zh")

    def validate(self) -> None:
        if self.lr <= 0:
            raise ConfigError("inner.lr must be positive")


@dataclass(frozen=True)
class Outer:
    inner: Inner = field(default_factory=Inner)
    steps: int = 10
    name: str | None = None


def test_yaml_overrides_and_roundtrip(tmp_path: Path):
    y = tmp_path / "c.yaml"
    y.write_text("steps: 5\ninner:\n  mode: b\n")
    cfg = load_config(Outer, y, ["inner.lr=0.5", "name=run1", "inner.langs=[ja]"])
    assert cfg == Outer(Inner(lr=0.5, mode="b", langs=("ja",)), steps=5, name="run1")
    saved = save_config(cfg, tmp_path / "out" / "config.yaml")
    assert load_config(Outer, saved) == cfg
    assert replace_with(cfg, ["steps=7"]).steps == 7
    assert to_dict(cfg)["inner"]["langs"] == ["ja"]


@pytest.mark.parametrize(
    "overrides, message",
    [
        (["inner.lrr=1"], "unknown config key.*inner.lrr"),
        (["steps=many"], "steps: expected an integer"),
        (["inner.mode=c"], "inner.mode: 'c' is not one of"),
        (["inner.lr=-1"], "inner.lr must be positive"),
        (["steps"], "must look like key.path=value"),
        (["steps.x=1"], "steps: expected an integer"),
    ],
)
def test_config_errors_are_clear(overrides, message):
    with pytest.raises(ConfigError, match=message):
        load_config(Outer, None, overrides)


def test_missing_and_bad_yaml(tmp_path: Path):
    with pytest.raises(ConfigError, match="not found"):
        load_config(Outer, tmp_path / "none.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("- a list\n")
    with pytest.raises(ConfigError, match="mapping"):
        load_config(Outer, bad)


def test_jsonl_zst_writer_read_back_and_abort(tmp_path: Path):
    recs = [{"id": str(i), "text": "中文 текст é " * i} for i in range(100)]
    assert write_jsonl_zst(tmp_path / "a.jsonl.zst", recs) == 100
    assert list(read_jsonl_zst(tmp_path / "a.jsonl.zst")) == recs
    w = JsonlZstWriter(tmp_path / "b.jsonl.zst")
    w.write(recs[0])
    w.abort()
    assert not (tmp_path / "b.jsonl.zst").exists() and not list(tmp_path.glob("b*.tmp"))
    with JsonlZstWriter(tmp_path / "c.jsonl.zst"):
        pass  # nothing written: no file
    assert not (tmp_path / "c.jsonl.zst").exists()


def test_done_markers(tmp_path: Path):
    m = DoneMarkers(tmp_path, "stage")
    assert not m.is_done("00001")
    m.mark("00001", {"n": 3})
    assert m.is_done("00001") and m.read("00001") == {"n": 3}


def test_cli_user_errors_exit_2(tmp_path: Path, capsys):
    rc = main(
        ["prep", "--input", str(tmp_path / "missing"), "--output", str(tmp_path / "o"), "--no-progress"]
    )
    err = capsys.readouterr().err
    assert rc == 2
    assert "input path does not exist" in err and "Traceback" not in err
    rc = main(["prep", "--input", str(tmp_path), "--output", str(tmp_path / "o"), "nosuch.key=1"])
    assert rc == 2 and "unknown config key" in capsys.readouterr().err


def test_section_of_a_recipe(tmp_path: Path):
    recipe = tmp_path / "r.yaml"
    recipe.write_text("inputs: [a]\nouter:\n  steps: 3\n")
    assert load_config(Outer, recipe, section="outer").steps == 3
    recipe.write_text("inputs: [a]\nother: {}\n")  # a recipe without this stage's section: defaults
    assert load_config(Outer, recipe, section="outer") == Outer()
    plain = tmp_path / "p.yaml"
    plain.write_text("steps: 4\n")  # the stage's own config file still works
    assert load_config(Outer, plain, section="outer").steps == 4


def test_tolerant_record_reader(tmp_path: Path):
    import zstandard

    from megatron_mmed.common.io import iter_jsonl_zst_records

    p = tmp_path / "x.jsonl.zst"
    p.write_bytes(zstandard.ZstdCompressor().compress(b'{"a": 1}\n\n[1, 2]\n{broken\n{"b": 2}\n'))
    assert list(iter_jsonl_zst_records(p)) == [(0, {"a": 1}), (2, None), (3, None), (4, {"b": 2})]


def test_loads_matches_json_module():
    import json
    import math

    from megatron_mmed.common.io import loads

    cases = ['{"a": 1, "b": [1.5, "é", null, true]}', '"\\ud800x"', "[]", "-9223372036854775808", "1e300"]
    cases += ['{"id": 12345678901234567890123}', '{"m": {"x": [18446744073709551616]}}', "-1.5e19"]
    for text in cases:
        assert loads(text) == loads(text.encode()) == json.loads(text), text  # orjson path and fallbacks
        assert type(loads(text)) is type(json.loads(text))
    assert loads('{"id": 12345678901234567890123}')["id"] == 12345678901234567890123  # not a float
    assert type(loads(b'{"m": {"x": [18446744073709551616]}}')["m"]["x"][0]) is int  # 2**64: == as a float
    assert math.isnan(loads(b'{"x": NaN}')["x"])  # the json module's grammar, which orjson refuses
    for bad in (b"{broken", b'{"a": "\xff\xfe"}', b""):
        with pytest.raises(ValueError):
            loads(bad)


def test_record_reader_quarantines_a_line_that_is_not_utf8(tmp_path: Path):
    import zstandard

    from megatron_mmed.common.io import iter_jsonl_zst_records

    p = tmp_path / "x.jsonl.zst"
    p.write_bytes(zstandard.ZstdCompressor().compress(b'{"a": 1}\n{"t": "\xff"}\n  \n{"b": "\xc3\xa9"}'))
    assert list(iter_jsonl_zst_records(p)) == [(0, {"a": 1}), (1, None), (3, {"b": "é"})]


def _square(task: int) -> tuple[str, dict]:
    return f"t{task}", {"sq": task * task, "where": "worker"}


def test_run_tasks_marks_each_result_in_process_and_in_a_pool(tmp_path: Path):
    from megatron_mmed.common.tasks import run_tasks

    def here(task: int) -> tuple[str, dict]:
        return f"t{task}", {"sq": task * task, "where": "here"}

    for workers, pending, where in ((1, [1, 2, 3], "here"), (2, [4, 5, 6], "worker"), (2, [7], "here")):
        markers, results = DoneMarkers(tmp_path / f"w{workers}-{len(pending)}", "s"), {}
        run_tasks(
            "t",
            pending,
            _square,
            markers,
            results,
            total=5,
            unit="x",
            workers=workers,
            run_here=here,
            show_progress=False,
        )
        assert results == {f"t{t}": {"sq": t * t, "where": where} for t in pending}
        assert all(markers.read(f"t{t}") == results[f"t{t}"] for t in pending)


# ---- truncated / multi-frame .jsonl.zst (zstandard's stream reader reports a cut frame as a clean EOF) ----
ZST_RECS = [{"id": i, "text": f"document {i} " + "word " * (i % 40)} for i in range(4000)]


def _zst_frames(records: list[dict], frames: int) -> list[bytes]:
    """``records`` as JSON lines split over ``frames`` independent zstd frames (as ``cat a.zst b.zst`` makes)."""
    import zstandard

    from megatron_mmed.common.io import dumps

    step = -(-len(records) // frames)
    return [
        zstandard.ZstdCompressor().compress("".join(dumps(r) + "\n" for r in records[k : k + step]).encode())
        for k in range(0, len(records), step)
    ]


def test_multi_frame_file_is_read_to_the_end(tmp_path: Path):
    from megatron_mmed.common.io import iter_jsonl_zst_records

    p = tmp_path / "multi.jsonl.zst"
    p.write_bytes(b"".join(_zst_frames(ZST_RECS, 3)))
    assert list(read_jsonl_zst(p)) == ZST_RECS
    records = iter_jsonl_zst_records(p)
    assert [r for _, r in records] == ZST_RECS and records.unreadable is None


@pytest.mark.parametrize(
    "frames, cut",
    [
        (1, lambda f: len(f[0]) // 2),  # mid-frame, single frame
        (1, lambda f: len(f[0]) - 1),  # the last byte missing
        (2, lambda f: len(f[0]) + len(f[1]) // 2),  # mid second frame
        (2, lambda f: len(f[0]) + 3),  # inside the second frame's header
        (3, lambda f: len(f[0]) + len(f[1]) + len(f[2]) - 5),  # near the end of the last frame
    ],
    ids=["single-mid", "single-last-byte", "second-mid", "second-header", "third-end"],
)
def test_truncated_zstd_keeps_what_was_readable_and_says_where(tmp_path: Path, frames, cut):
    from megatron_mmed.common.io import UnreadableError, iter_jsonl_zst_records

    parts = _zst_frames(ZST_RECS, frames)
    blob = b"".join(parts)[: cut(parts)]
    p = tmp_path / "cut.jsonl.zst"
    p.write_bytes(blob)
    records = iter_jsonl_zst_records(p)
    got = [r for _, r in records]
    assert got == ZST_RECS[: len(got)] and len(got) < len(ZST_RECS)  # a clean prefix, never a broken line
    bad = records.unreadable
    assert bad is not None, "a cut file read as complete"
    starts = [sum(len(x) for x in parts[:k]) for k in range(frames)]
    assert bad.offset in starts and bad.offset <= len(blob)  # the incomplete frame's first byte
    assert bad.offset == max(s for s in starts if s < len(blob))
    assert str(p) in str(bad) and f"byte {bad.offset}" in str(bad) and bad.lines == len(got)
    with pytest.raises(UnreadableError, match=f"byte {bad.offset}"):
        list(read_jsonl_zst(p))


def test_zstd_cut_exactly_between_frames_and_trailing_garbage(tmp_path: Path):
    from megatron_mmed.common.io import iter_jsonl_zst_records

    parts = _zst_frames(ZST_RECS, 2)
    p = tmp_path / "x.jsonl.zst"
    # a cut exactly at a frame boundary leaves a valid, complete zstd file: no reader can tell (documented)
    p.write_bytes(parts[0])
    records = iter_jsonl_zst_records(p)
    assert [r for _, r in records] == ZST_RECS[:2000] and records.unreadable is None
    p.write_bytes(parts[0] + b"this is not zstd")
    records = iter_jsonl_zst_records(p)
    assert [r for _, r in records] == ZST_RECS[:2000]
    assert records.unreadable is not None and records.unreadable.offset == len(parts[0])


def test_override_examples_in_the_help_are_valid():
    import argparse
    import shlex

    from megatron_mmed.cli import build_parser
    from preprocessing.decontam import DecontamConfig
    from preprocessing.dedup import DedupConfig
    from preprocessing.pipeline import PipelineConfig
    from preprocessing.prep import PrepConfig
    from preprocessing.tokenization import TokenizeConfig

    parser = build_parser()
    commands = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction)).choices
    configs = {
        "prep": (PrepConfig, []),
        "dedup": (DedupConfig, []),
        "decontam": (DecontamConfig, []),
        "tokenize": (TokenizeConfig, []),
        "pipeline": (PipelineConfig, ["benchmark=qa"]),
    }
    for name, (cls, required) in configs.items():
        action = next(a for a in commands[name]._actions if a.dest == "overrides")
        examples = shlex.split(action.help.split("e.g.", 1)[1])
        assert examples, name
        load_config(cls, None, examples + required)  # a user copying the example gets no error


# ---- folder locks: two runs never write into one folder ----
def test_file_lock_exclusive_shared_and_holder_in_the_message(tmp_path: Path):
    from megatron_mmed.common.lock import FileLock, LockBusyError, lock_is_held

    path = tmp_path / ".lock"
    assert not lock_is_held(path)
    with FileLock(path).acquire("mmed prep"):
        assert lock_is_held(path)
        with pytest.raises(LockBusyError, match=rf"in use by mmed prep \(pid {os.getpid()} on"):
            FileLock(path).acquire("mmed prep")
        with pytest.raises(LockBusyError):
            FileLock(path, shared=True).acquire()
    assert not lock_is_held(path)
    with (
        FileLock(path, shared=True).acquire(),
        FileLock(path, shared=True).acquire(),
        pytest.raises(LockBusyError, match="in use by another run"),
    ):
        FileLock(path).acquire()
    FileLock(path).acquire().release()


def _try_lock(folder: Path, what: str, **rank) -> None:
    from megatron_mmed.common.lock import folder_lock

    with folder_lock(folder, what, **rank):
        pass


def test_folder_lock_lets_sibling_ranks_share_a_folder(tmp_path: Path):
    from megatron_mmed.common.lock import LockBusyError, folder_lock

    with (
        folder_lock(tmp_path, "rank", rank=0, world_size=2),
        folder_lock(tmp_path, "rank", rank=1, world_size=2),
    ):
        with pytest.raises(LockBusyError, match="rank 0/2"):
            _try_lock(tmp_path, "rank", rank=0, world_size=2)
        with pytest.raises(LockBusyError):
            _try_lock(tmp_path, "whole run")
    with folder_lock(tmp_path, "whole run"), pytest.raises(LockBusyError, match="whole run"):
        _try_lock(tmp_path, "rank", rank=1, world_size=2)
    _try_lock(tmp_path, "rank", rank=1, world_size=2)


@pytest.mark.slow  # a killed process and a fork
def test_lock_dies_with_its_process_and_is_not_kept_by_forked_children(tmp_path: Path):
    import signal
    import subprocess
    import sys
    import time

    from megatron_mmed.common.lock import FileLock, lock_is_held

    path = tmp_path / ".lock"
    code = f"from megatron_mmed.common.lock import FileLock; import time; FileLock({str(path)!r}).acquire(); print(1, flush=True); time.sleep(60)"
    proc = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE)
    assert proc.stdout.readline().strip() == b"1" and lock_is_held(path)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert not lock_is_held(path)  # kill -9 leaves no stale lock
    lock = FileLock(path).acquire()
    ready_r, ready_w = os.pipe()
    pid = os.fork()
    if pid == 0:  # a forked worker: outlives the parent's lock without holding it
        os.write(ready_w, b"1")  # (the fork hooks have run by now)
        time.sleep(2)
        os._exit(0)
    try:
        assert os.read(ready_r, 1) == b"1"
        lock.release()
        assert not lock_is_held(path)
    finally:
        os.waitpid(pid, 0)


def test_cli_refuses_a_second_run_on_a_locked_folder(tmp_path: Path, capsys):
    from megatron_mmed.common.lock import FileLock

    (tmp_path / "raw").mkdir()
    (tmp_path / "raw" / "a.jsonl").write_text('{"text": "x"}\n')
    (tmp_path / "o").mkdir()
    with FileLock(tmp_path / "o" / ".lock").acquire("mmed prep"):
        rc = main(
            ["prep", "--input", str(tmp_path / "raw"), "--output", str(tmp_path / "o"), "--no-progress"]
        )
    err = capsys.readouterr().err
    assert rc == 2 and "is in use by mmed prep" in err and len(err.strip().splitlines()) == 1, err
    assert sorted(p.name for p in (tmp_path / "o").iterdir()) == [".lock"]  # nothing written


def _nap(task: int) -> tuple[str, dict]:
    import time

    time.sleep(60)
    return f"t{task}", {}


def _children(pid: int) -> list[int]:
    return [int(c) for t in Path(f"/proc/{pid}/task").iterdir() for c in (t / "children").read_text().split()]


def _alive(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except FileNotFoundError:
        return False


@pytest.mark.slow  # a process pool, killed
def test_pool_workers_die_with_a_killed_parent(tmp_path: Path):
    """A kill -9'd stage leaves no worker behind that could still write into the folder of its rerun."""
    import signal
    import subprocess
    import sys
    import time

    code = (
        "from pathlib import Path; import sys; sys.path.insert(0, 'tests')\n"
        "from megatron_mmed.common.io import DoneMarkers\n"
        "from megatron_mmed.common.tasks import run_tasks\n"
        "from test_common import _nap\n"
        f"run_tasks('t', [1, 2], _nap, DoneMarkers({str(tmp_path)!r}, 's'), {{}}, total=2, unit='x', workers=2,"
        " show_progress=False)\n"
    )
    proc = subprocess.Popen([sys.executable, "-c", code], cwd=Path(__file__).parents[1])
    deadline = time.time() + 60
    while time.time() < deadline and len(_children(proc.pid)) < 2:
        time.sleep(0.05)
    workers = _children(proc.pid)
    assert len(workers) == 2
    time.sleep(1)  # the workers are inside their tasks
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    deadline = time.time() + 10
    while time.time() < deadline and any(_alive(w) for w in workers):
        time.sleep(0.05)
    alive = [w for w in workers if _alive(w)]
    for w in alive:
        os.kill(w, signal.SIGKILL)
    assert not alive, "pool workers outlived their killed parent"

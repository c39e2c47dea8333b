"""The Trainer's checkpoint schedule and pruning (the loop itself runs in test_train_loop / test_finetune_run)."""

from __future__ import annotations

from pathlib import Path

import pytest

from megatron_mmed.common.config import ConfigError
from megatron_mmed.training.checkpoint import prune_checkpoints
from megatron_mmed.training.config import CheckpointConfig


def _run_with_checkpoints(run: Path, steps: list[int], latest: int) -> None:
    for s in steps:
        d = run / f"iter_{s:07d}"
        d.mkdir(parents=True)
        (d / "metadata.json").write_text("{}")
    (run / "latest").write_text(f"iter_{latest:07d}\n")


def test_prune_keeps_the_newest_k_and_the_one_latest_names(tmp_path):
    run = tmp_path / "run"
    _run_with_checkpoints(run, [2, 4, 6, 8, 10], latest=4)  # latest fell back to an older checkpoint
    removed = prune_checkpoints(run, keep=2)
    assert sorted(p.name for p in removed) == ["iter_0000002", "iter_0000006"]
    assert sorted(p.name for p in run.iterdir()) == ["iter_0000004", "iter_0000008", "iter_0000010", "latest"]


def test_prune_with_keep_0_keeps_everything(tmp_path):
    run = tmp_path / "run"
    _run_with_checkpoints(run, [1, 2, 3], latest=3)
    assert prune_checkpoints(run, keep=0) == []
    assert len(list(run.glob("iter_*"))) == 3


def test_keep_last_is_validated():
    with pytest.raises(ConfigError, match="checkpoint.keep_last"):
        CheckpointConfig(keep_last=-1).validate()


@pytest.mark.parametrize(
    "step, reason, due",
    [(3, None, False), (4, None, True), (10, None, True), (5, "signal", True), (7, None, False)],
)
def test_checkpointer_saves_on_the_interval_the_last_step_and_a_stop(step, reason, due):
    from megatron_mmed.training.trainer import Checkpointer

    c = Checkpointer("run", CheckpointConfig(save_interval=4), 10, parts=None, run_config=None)
    assert c.due(step, reason) is due
    off = Checkpointer("run", CheckpointConfig(save=False), 10, parts=None, run_config=None)
    assert off.due(10, "signal") is False

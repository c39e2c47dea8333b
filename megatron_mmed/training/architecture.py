"""The model a run trains, checked against the weights it starts from (init_from) or resumes (latest).

Weights carry their architecture in ``model_config.yaml`` (see :mod:`megatron_mmed.models.weights`). Loading
them into a model of another architecture either fails deep in ``dist_checkpointing`` or, worse, succeeds:
a different RoPE base or norm eps, or a vocabulary that pads to the same rows, loads silently and trains a
broken model. So a run refuses, in one line naming each differing field, before anything is written.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

from megatron_mmed.common.config import ConfigError
from megatron_mmed.common.errors import UserError
from megatron_mmed.models.internlm2 import ModelPreset
from megatron_mmed.models.weights import (
    MODEL_CONFIG,
    SavedModel,
    architecture_diffs,
    resolve_weights_dir,
    saved_model_of,
)


def init_saved_model(init_from: str | Path) -> SavedModel:
    """The architecture ``checkpoint.init_from`` holds (for ``model.preset=from_init``)."""
    saved = saved_model_of(resolve_weights_dir(init_from))
    if saved is None:
        raise ConfigError(
            f"model.preset=from_init: checkpoint.init_from {init_from} has no {MODEL_CONFIG} "
            "(written by `mmed convert hf-to-mcore` and by `mmed train` into every checkpoint)"
        )
    return saved


def _padding_diff(mine: int, theirs: int, theirs_is: str) -> list[str]:
    return [] if mine == theirs else [f"padded vocab {mine} (this run) vs {theirs} ({theirs_is})"]


def run_model(
    cfg,
    arch: ModelPreset,
    padded_vocab: int,
    resume_from: Path | None,
    tokenizer: str | None = None,
) -> SavedModel:
    """Check ``arch`` against the checkpoint being resumed, else against ``checkpoint.init_from``; return
    the ``model_config.yaml`` this run's checkpoints carry (``rope_scaling`` and token ids carried along).

    ``UserError`` naming every differing field; a checkpoint without ``model_config.yaml`` (an older run,
    or weights saved by hand) is not checked.
    """
    carried: dict[str, Any] = {"rope_scaling": None, "token_ids": {}}
    if resume_from is not None:
        saved = saved_model_of(resume_from)
        if saved is not None:
            diffs = architecture_diffs(arch, saved.preset, "this run", "checkpoint")
            diffs += _padding_diff(padded_vocab, saved.padded_vocab_size, "checkpoint")
            if diffs:
                raise UserError(
                    f"{resume_from}: cannot resume a different model: {'; '.join(diffs)} (resume with the "
                    "settings it was saved with, or start a new checkpoint.dir)"
                )
            carried = {"rope_scaling": saved.preset.rope_scaling, "token_ids": saved.preset.token_ids}
    elif cfg.checkpoint.init_from:
        saved = saved_model_of(resolve_weights_dir(cfg.checkpoint.init_from))
        if saved is not None:
            from megatron_mmed.training.config import FROM_INIT

            mine = f"model.preset {cfg.model.preset}" if cfg.model.preset != FROM_INIT else "this run"
            diffs = architecture_diffs(arch, saved.preset, mine, "init_from")
            diffs += _padding_diff(padded_vocab, saved.padded_vocab_size, "init_from")
            if diffs:
                hint = (
                    "set model.preset=from_init to train the weights as they are"
                    if cfg.model.preset != FROM_INIT
                    else "the data's vocabulary (blend.json, model.vocab_size) must be the weights'"
                )
                raise UserError(
                    f"checkpoint.init_from {cfg.checkpoint.init_from} holds a different model: "
                    f"{'; '.join(diffs)}; {hint}"
                )
            carried = {"rope_scaling": saved.preset.rope_scaling, "token_ids": saved.preset.token_ids}
    source = {
        "run": str(Path(cfg.checkpoint.dir).resolve()) if cfg.checkpoint.dir else None,
        "init_from": str(Path(cfg.checkpoint.init_from).resolve()) if cfg.checkpoint.init_from else None,
        "tokenizer": tokenizer,
    }
    return SavedModel(
        preset=dataclasses.replace(arch, **carried), padded_vocab_size=padded_vocab, source=source
    )

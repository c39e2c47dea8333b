"""A weights folder: megatron-core ``torch_dist`` model weights, ``model_config.yaml`` and ``manifest.json``.

``mmed convert hf-to-mcore`` writes one (the ``checkpoint.init_from`` format); ``mmed train`` writes the same
model part, ``model_config.yaml`` and manifest into every checkpoint (beside its optimizer state). Whoever
loads weights (``checkpoint.init_from``, fine-tuning, a resume, ``mmed convert mcore-to-hf``) resolves, checks
and reads them here: :func:`resolve_weights_dir` (a weights folder, a run's ``latest`` or ``--iteration``, an
``iter_*``), :func:`load_weights` / :func:`save_weights`, and ``model_config.yaml``, which names the model
the weights are: the preset numbers (RoPE base, norm eps, sizes, vocabulary before padding), the padded
vocabulary, and what the preset has no field for (``rope_scaling``, token ids), carried as written.

The torch_dist content is ``{"model": gpt_model.sharded_state_dict()}`` (``model0``, ``model1``, ... for the
chunks of an interleaved pipeline), so it loads at any TP/PP.
"""

from __future__ import annotations

import dataclasses
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from megatron_mmed.common import integrity
from megatron_mmed.common.errors import UserError
from megatron_mmed.models.internlm2 import ModelPreset

MODEL_CONFIG = "model_config.yaml"
MODEL_CONFIG_FORMAT = "megatron-mmed.converted-model/1"

#: (preset field, how a message names it): everything two checkpoints of one model must agree on.
ARCHITECTURE_FIELDS = (
    ("rotary_base", "RoPE base"),
    ("norm_epsilon", "norm eps"),
    ("num_attention_heads", "heads"),
    ("num_query_groups", "KV heads"),
    ("hidden_size", "hidden"),
    ("ffn_hidden_size", "FFN"),
    ("num_layers", "layers"),
    ("vocab_size", "vocab (before padding)"),
)


#: ``ModelPreset`` fields a ``model_config.yaml`` keeps beside ``preset`` rather than in it.
_CARRIED = ("rope_scaling", "token_ids")


@dataclass(frozen=True)
class SavedModel:
    """What ``model_config.yaml`` says about the weights beside it."""

    preset: ModelPreset  # with the rope_scaling and token ids the weights carry
    padded_vocab_size: int
    source: dict[str, Any] = field(default_factory=dict)


def write_model_config(folder: str | Path, saved: SavedModel) -> Path:
    """Write ``folder/model_config.yaml``."""
    preset = dataclasses.asdict(saved.preset)
    doc = {
        "format": MODEL_CONFIG_FORMAT,
        "preset": {k: v for k, v in preset.items() if k not in _CARRIED},
        "padded_vocab_size": saved.padded_vocab_size,
        "rope_scaling": saved.preset.rope_scaling,
        "token_ids": dict(saved.preset.token_ids),
        "source": dict(saved.source),
    }
    path = Path(folder) / MODEL_CONFIG
    path.write_text(yaml.safe_dump(doc, sort_keys=False, allow_unicode=True), encoding="utf-8")
    return path


def read_model_config(path: str | Path) -> SavedModel:
    """Read a ``model_config.yaml``; ``UserError`` naming the file when it is not one."""
    path = Path(path)
    try:
        doc = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except (OSError, UnicodeDecodeError, yaml.YAMLError) as e:
        raise UserError(f"{path}: unreadable ({e})") from None
    if not isinstance(doc, dict) or doc.get("format") != MODEL_CONFIG_FORMAT:
        raise UserError(f"{path}: not a {MODEL_CONFIG_FORMAT} file")
    try:
        preset = ModelPreset(
            **{k: v for k, v in doc["preset"].items() if k not in _CARRIED},
            rope_scaling=doc.get("rope_scaling") or None,
            token_ids=dict(doc.get("token_ids") or {}),
        )
        return SavedModel(
            preset=preset,
            padded_vocab_size=int(doc["padded_vocab_size"]),
            source=dict(doc.get("source") or {}),
        )
    except (KeyError, TypeError, ValueError) as e:
        raise UserError(f"{path}: malformed {MODEL_CONFIG} ({e})") from None


def find_model_config(folder: str | Path) -> Path | None:
    """``model_config.yaml`` in ``folder`` or, for an ``iter_*`` of a run, its parent."""
    for d in (Path(folder), Path(folder).parent):
        if (d / MODEL_CONFIG).is_file():
            return d / MODEL_CONFIG
    return None


def saved_model_of(folder: str | Path) -> SavedModel | None:
    """The ``model_config.yaml`` of a weights folder (or of its run), None when there is none."""
    found = find_model_config(folder)
    return read_model_config(found) if found is not None else None


def architecture_diffs(mine: ModelPreset, theirs: ModelPreset, mine_is: str, theirs_is: str) -> list[str]:
    """``"RoPE base 1000000 (mine_is) vs 10000 (theirs_is)"`` for every field in which the two differ."""
    out = []
    for name, label in ARCHITECTURE_FIELDS:
        a, b = getattr(mine, name), getattr(theirs, name)
        if a != b:
            out.append(f"{label} {_fmt(a)} ({mine_is}) vs {_fmt(b)} ({theirs_is})")
    return out


def _fmt(v: Any) -> str:
    return f"{v:g}" if isinstance(v, float) else str(v)


# --- the torch_dist weights -----------------------------------------------------------------------------


def model_key(i: int, n: int) -> str:
    """The state-dict key of model chunk ``i`` of ``n``: ``model``, or ``model0``, ``model1``, ... (VPP)."""
    return "model" if n == 1 else f"model{i}"


def resolve_weights_dir(
    path: str | Path, iteration: int | None = None, what: str = "checkpoint.init_from"
) -> Path:
    """The torch_dist folder behind ``path``: a weights folder, a run folder (its ``latest``, or
    ``iter_<iteration>``) or one of its ``iter_*``; ``UserError`` starting with ``what`` otherwise."""
    from megatron_mmed.training.checkpoint import LATEST, iter_dir_name, latest_checkpoint

    p = Path(path)
    if not p.is_dir():
        raise UserError(f"{what}: {p} is not a directory")
    if iteration is not None:
        p = p / iter_dir_name(iteration)
        if not p.is_dir():
            found = sorted(d.name for d in Path(path).glob("iter_*") if d.is_dir())
            raise UserError(
                f"{what} {path}: no checkpoint for iteration {iteration} (found: {', '.join(found) or 'none'})"
            )
    elif (p / LATEST).is_file():
        p = latest_checkpoint(p)  # type: ignore[assignment]
    if not (p / "metadata.json").is_file() or not (p / ".metadata").is_file():
        raise UserError(f"{what}: {p} is not a torch_dist checkpoint (no metadata.json / .metadata)")
    return p


def load_weights(
    path: str | Path, models: list, what: str = "checkpoint.init_from", verify: bool = True
) -> Path:
    """Load only the model weights of ``path`` into ``models`` (the optimizer stays fresh); returns the folder.

    Collective. The folder is verified against its manifest first (every rank its share; ``verify=False``
    when the caller checked it whole already) and its ``.metadata`` read with the restricted unpickler; a
    damaged one is a ``UserError``.
    """
    import torch
    from megatron.core import dist_checkpointing

    folder = resolve_weights_dir(path, what=what)
    if verify:
        problems, has_manifest = integrity.verify_on_all_ranks(folder)
        if problems:
            raise UserError(f"{what} {folder} is damaged: {'; '.join(problems[:5])}")
        if not has_manifest and torch.distributed.get_rank() == 0:
            print(
                f"mmed train: warning: {what} {folder} has no {integrity.MANIFEST}: loading it unverified",
                file=sys.stderr,
                flush=True,
            )
    integrity.check_metadata_pickle(folder)
    n = len(models)
    loaded = dist_checkpointing.load(
        {model_key(i, n): m.sharded_state_dict() for i, m in enumerate(models)}, str(folder)
    )
    for i, m in enumerate(models):
        m.load_state_dict(loaded[model_key(i, n)])
    return folder


def save_weights(path: str | Path, models: list, sharded: dict | None = None, manifest: bool = True) -> Path:
    """Write the weights-only torch_dist format into ``path`` (collective), then its ``manifest.json``.

    ``sharded`` replaces the models' own sharded state dicts (conversion passes one whose tensors own their
    storage); ``manifest=False`` when the caller adds files and writes the manifest itself. The files are
    written from threads of this process (no forked writer holding a copy of the weights).
    """
    import torch
    from megatron.core import dist_checkpointing

    from megatron_mmed.common.writers import in_process_save_strategy, writer_processes_safe

    path = Path(path)
    if torch.distributed.get_rank() == 0:
        path.mkdir(parents=True, exist_ok=True)
    torch.distributed.barrier()
    if sharded is None:
        sharded = {model_key(i, len(models)): m.sharded_state_dict() for i, m in enumerate(models)}
    with writer_processes_safe():
        dist_checkpointing.save(sharded, str(path), sharded_strategy=in_process_save_strategy())
    torch.distributed.barrier()
    if manifest:
        integrity.write_manifest_on_all_ranks(path)
    return path

"""``model_config.yaml``: the architecture a set of weights was made with, saved beside them.

``mmed convert hf-to-mcore`` writes it next to converted weights and ``mmed train`` into every checkpoint,
so whoever loads the weights (``checkpoint.init_from``, a resume, ``mmed convert mcore-to-hf``) knows the
model they are: the preset numbers (RoPE base, norm eps, sizes, vocabulary before padding), the padded
vocabulary, and what the preset has no field for (``rope_scaling``, token ids), carried as written.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

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


@dataclass(frozen=True)
class SavedModel:
    """What ``model_config.yaml`` says about the weights beside it."""

    preset: ModelPreset
    padded_vocab_size: int
    rope_scaling: dict[str, Any] | None = None
    token_ids: dict[str, Any] = field(default_factory=dict)
    source: dict[str, Any] = field(default_factory=dict)


def write_model_config(folder: str | Path, saved: SavedModel) -> Path:
    """Write ``folder/model_config.yaml``."""
    doc = {
        "format": MODEL_CONFIG_FORMAT,
        "preset": dataclasses.asdict(saved.preset),
        "padded_vocab_size": saved.padded_vocab_size,
        "rope_scaling": saved.rope_scaling,
        "token_ids": dict(saved.token_ids),
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
        preset = ModelPreset(**doc["preset"])
        return SavedModel(
            preset=preset,
            padded_vocab_size=int(doc["padded_vocab_size"]),
            rope_scaling=doc.get("rope_scaling") or None,
            token_ids=dict(doc.get("token_ids") or {}),
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

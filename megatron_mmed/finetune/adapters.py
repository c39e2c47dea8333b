"""LoRA checkpoints: adapter tensors only (torch_dist) plus ``adapter.yaml`` naming the LoRA settings and the base.

``adapter.yaml`` sits in the checkpoint directory (or the run directory above it); it is what tells
``mmed convert mcore-to-hf`` (merge) and ``mmed convert lora-to-peft`` that a checkpoint holds adapters and
where the frozen base weights are (``checkpoint.init_from``: a converted weights dir or a run dir).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import yaml

from megatron_mmed.common.config import from_dict, to_dict
from megatron_mmed.common.errors import UserError
from megatron_mmed.finetune.config import LoraConfig

META = "adapter.yaml"
META_FORMAT = "megatron-mmed.lora-adapter/1"


@dataclass(frozen=True)
class AdapterMeta:
    """What a LoRA checkpoint needs besides its tensors: the LoRA settings and the base it adapts."""

    lora: LoraConfig
    base: str  # the base weights (checkpoint.init_from), absolute
    seed: int = 0


def write_adapter_meta(folder: str | Path, lora: LoraConfig, base: str | Path, seed: int = 0) -> Path:
    """``folder/adapter.yaml`` (rank 0 writes it into every LoRA checkpoint dir and the run dir)."""
    doc = {"format": META_FORMAT, "lora": to_dict(lora), "base": str(Path(base).resolve()), "seed": seed}
    path = Path(folder) / META
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(yaml.safe_dump(doc, sort_keys=False), encoding="utf-8")
    tmp.replace(path)
    return path


def read_adapter_meta(ckpt: str | Path) -> AdapterMeta | None:
    """The ``adapter.yaml`` of a checkpoint dir (or of its run dir); None for a checkpoint without adapters."""
    for d in (Path(ckpt), Path(ckpt).parent):
        path = d / META
        if path.is_file():
            doc = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
            if doc.get("format") != META_FORMAT:
                raise UserError(f"{path}: not a {META_FORMAT} file")
            lora = from_dict(LoraConfig, doc["lora"], "lora")
            lora.validate()
            return AdapterMeta(lora=lora, base=str(doc["base"]), seed=int(doc.get("seed", 0)))
    return None


def save_adapters(path: str | Path, model, lora: LoraConfig, base: str | Path, seed: int = 0) -> Path:
    """Write the adapters of ``model`` (every rank calls this) as a torch_dist dir with its ``adapter.yaml``."""
    import torch
    from megatron.core import dist_checkpointing

    from megatron_mmed.finetune.lora import adapter_sharded_state_dict

    path = Path(path)
    if torch.distributed.get_rank() == 0:
        path.mkdir(parents=True, exist_ok=True)
    torch.distributed.barrier()
    dist_checkpointing.save({"model": adapter_sharded_state_dict(model)}, str(path))
    if torch.distributed.get_rank() == 0:
        write_adapter_meta(path, lora, base, seed)
    torch.distributed.barrier()
    return path


def load_adapters(path: str | Path, model) -> None:
    """Fill the adapters of ``model`` (built with ``apply_lora``) from a LoRA checkpoint, at any TP."""
    from megatron.core import dist_checkpointing

    from megatron_mmed.finetune.lora import adapter_sharded_state_dict

    loaded = dist_checkpointing.load({"model": adapter_sharded_state_dict(model)}, str(path))["model"]
    missing, unexpected = model.load_state_dict(loaded, strict=False)
    if unexpected or any("_lora." in k for k in missing):
        raise UserError(f"{path}: adapters do not match the model ({unexpected[:3] or missing[:3]})")

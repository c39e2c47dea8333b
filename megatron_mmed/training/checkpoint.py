"""torch_dist checkpoints of a run: ``RUN/iter_XXXXXXX/`` + ``RUN/latest`` (written last) + config.yaml.

A checkpoint holds the model (megatron-core ``sharded_state_dict``, so it reloads at another TP/PP), the
optimizer (model-shaped, so also any TP/PP; the distributed optimizer's state: see ``_optim_sharding``), the
LR scheduler, the step, consumed samples and per-rank RNG states (restored when TP/PP are unchanged). It is
written to ``iter_XXXXXXX.tmp`` and renamed, then ``latest`` is replaced atomically: a crash mid-save
leaves the previous checkpoint as ``latest``.

``checkpoint.init_from`` format (what ``mmed convert hf-to-mcore`` writes): a torch_dist directory saved by
``dist_checkpointing.save({"model": gpt_model.sharded_state_dict()}, DIR)``, no optimizer, where
``gpt_model`` is the unwrapped megatron-core ``GPTModel`` of the preset. A run directory (with ``latest``)
or one of its ``iter_*`` directories is accepted too; only the model weights are read.
"""

from __future__ import annotations

import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from megatron_mmed.common.config import save_config
from megatron_mmed.common.errors import UserError
from megatron_mmed.models.saved import SavedModel, write_model_config

LATEST = "latest"


def _optim_sharding() -> str:
    """Distributed-optimizer state format: TP/PP-reshardable with Apex/TE's fused Adam (GPU clusters);
    DP-reshardable with torch's Adam (CPU), whose per-parameter ``step`` the reshardable loader lacks.
    The non-distributed optimizer's state is always model-shaped and reloads at any TP/PP.
    """
    from megatron.core.optimizer import distrib_optimizer

    return "fully_reshardable" if distrib_optimizer.HAVE_APEX_OR_TE else "dp_reshardable"


def iter_dir_name(step: int) -> str:
    return f"iter_{step:07d}"


def latest_checkpoint(run_dir: str | Path) -> Path | None:
    """The checkpoint ``RUN/latest`` points at, or None when the run has none yet."""
    pointer = Path(run_dir) / LATEST
    if not pointer.is_file():
        return None
    path = Path(run_dir) / pointer.read_text(encoding="utf-8").strip()
    if not path.is_dir():
        raise UserError(f"{pointer} points at {path}, which does not exist")
    return path


@dataclass
class TrainState:
    """What besides model and optimizer a checkpoint restores."""

    step: int = 0
    consumed_samples: int = 0


def _model_key(i: int, n: int) -> str:
    return "model" if n == 1 else f"model{i}"


def _model_sharded(models: list) -> dict[str, Any]:
    return {_model_key(i, len(models)): m.sharded_state_dict() for i, m in enumerate(models)}


def _rng_object(is_loading: bool):
    from megatron.core import parallel_state as ps
    from megatron.core.dist_checkpointing.mapping import ShardedObject
    from megatron.core.tensor_parallel.random import get_cuda_rng_tracker

    state = None
    if not is_loading:
        state = {"torch": torch.get_rng_state(), "tracker": get_cuda_rng_tracker().get_states()}
        if torch.cuda.is_available():
            state["cuda"] = torch.cuda.get_rng_state()
    pp, tp = ps.get_pipeline_model_parallel_world_size(), ps.get_tensor_model_parallel_world_size()
    return ShardedObject(
        "rng_state",
        state,
        (pp, tp),
        (ps.get_pipeline_model_parallel_rank(), ps.get_tensor_model_parallel_rank()),
        replica_id=ps.get_data_parallel_rank(with_context_parallel=True),
    )


def _layout() -> dict[str, int]:
    from megatron.core import parallel_state as ps

    return {
        "tp": ps.get_tensor_model_parallel_world_size(),
        "pp": ps.get_pipeline_model_parallel_world_size(),
    }


def save_checkpoint(
    run_dir: str | Path,
    step: int,
    models: list,
    optimizer,
    scheduler,
    state: TrainState,
    cfg,
    model: SavedModel | None = None,
) -> Path:
    """Write ``RUN/iter_<step>`` on all ranks, then (rank 0) the config, ``model_config.yaml`` (the
    architecture, see :mod:`megatron_mmed.models.saved`) and the ``latest`` pointer."""
    from megatron.core import dist_checkpointing

    run_dir = Path(run_dir)
    final = run_dir / iter_dir_name(step)
    tmp = run_dir / (iter_dir_name(step) + ".tmp")
    rank = torch.distributed.get_rank()
    if rank == 0:
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
    torch.distributed.barrier()
    model_sd = _model_sharded(models)
    sharding = _optim_sharding()
    sharded = {
        **model_sd,
        "optimizer": optimizer.sharded_state_dict(
            model_sd, metadata={"distrib_optim_sharding_type": sharding}
        ),
        "rng_state": _rng_object(is_loading=False),
        "scheduler": scheduler.state_dict(),
        "step": step,
        "consumed_samples": state.consumed_samples,
        "layout": _layout(),
        "optim_sharding": sharding,
    }
    dist_checkpointing.save(sharded, str(tmp))
    torch.distributed.barrier()
    if rank == 0:
        save_config(cfg, tmp / "config.yaml")
        if model is not None:
            write_model_config(tmp, model)
        if final.exists():
            shutil.rmtree(final)
        os.replace(tmp, final)
        save_config(cfg, run_dir / "config.yaml")
        pointer_tmp = run_dir / (LATEST + ".tmp")
        pointer_tmp.write_text(final.name + "\n", encoding="utf-8")
        os.replace(pointer_tmp, run_dir / LATEST)
    torch.distributed.barrier()
    return final


def load_checkpoint(path: str | Path, models: list, optimizer, scheduler) -> TrainState:
    """Restore model, optimizer, scheduler (and RNG when the TP/PP layout is unchanged) from ``path``."""
    from megatron.core import dist_checkpointing

    path = str(path)
    _materialize_optimizer_state(optimizer)
    common = dist_checkpointing.load_common_state_dict(path)
    same_layout = common.get("layout") == _layout()
    model_sd = _model_sharded(models)
    metadata = {"distrib_optim_sharding_type": common.get("optim_sharding", _optim_sharding())}
    sharded = {
        **model_sd,
        "optimizer": optimizer.sharded_state_dict(model_sd, is_loading=True, metadata=metadata),
    }
    if same_layout:
        sharded["rng_state"] = _rng_object(is_loading=True)
    loaded = dist_checkpointing.load(sharded, path)
    with torch.no_grad():  # the optimizer copies into views of leaf parameters
        for i, m in enumerate(models):
            m.load_state_dict(loaded[_model_key(i, len(models))])
        optimizer.load_state_dict(loaded["optimizer"])
    _untie_adam_steps(optimizer, int(loaded["step"]))
    scheduler.load_state_dict(loaded["scheduler"])
    if same_layout:
        from megatron.core.tensor_parallel.random import get_cuda_rng_tracker

        rng = loaded["rng_state"]
        torch.set_rng_state(rng["torch"])
        get_cuda_rng_tracker().set_states(rng["tracker"])
        if "cuda" in rng and torch.cuda.is_available():
            torch.cuda.set_rng_state(rng["cuda"])
    return TrainState(step=int(loaded["step"]), consumed_samples=int(loaded["consumed_samples"]))


def _materialize_optimizer_state(optimizer) -> None:
    """Create the distributed optimizer's lazily-built Adam state so a loading state dict can describe it.

    torch's Adam allocates ``exp_avg``/``exp_avg_sq``/``step`` at its first step; megatron-core's own helper
    takes one zero-gradient step whose results the checkpoint then overwrites in place.
    """
    for opt in getattr(optimizer, "chained_optimizers", [optimizer]):
        if hasattr(opt, "_init_optimizer_states_with_dummy_values") and not opt.optimizer.state:
            opt._init_optimizer_states_with_dummy_values()


def _untie_adam_steps(optimizer, step: int) -> None:
    """Give every parameter its own Adam step counter after a distributed-optimizer load.

    megatron-core 0.16's distributed optimizer, with torch's Adam (no Apex/TE), restores ``step`` as one
    tensor shared by all parameters, which then advances once per parameter per step and skews Adam's bias
    correction. Our steps never skip (no fp16 loss scaling), so the counter equals the training step.
    """
    from megatron.core.optimizer.distrib_optimizer import DistributedOptimizer

    for opt in getattr(optimizer, "chained_optimizers", [optimizer]):
        if isinstance(opt, DistributedOptimizer):
            for state in opt.optimizer.state.values():
                if "step" in state:
                    state["step"] = torch.tensor(float(step), dtype=state["step"].dtype)


def resolve_init_dir(path: str | Path) -> Path:
    """The torch_dist directory behind ``checkpoint.init_from`` (a weights dir, a run dir or an iter dir)."""
    p = Path(path)
    if not p.is_dir():
        raise UserError(f"checkpoint.init_from: {p} is not a directory")
    if (p / LATEST).is_file():
        p = latest_checkpoint(p)  # type: ignore[assignment]
    if not (p / "metadata.json").is_file():
        raise UserError(f"checkpoint.init_from: {p} is not a torch_dist checkpoint (no metadata.json)")
    return p


def load_weights(path: str | Path, models: list) -> None:
    """Load only model weights (continued pretraining from converted HF weights); optimizer stays fresh."""
    from megatron.core import dist_checkpointing

    model_sd = _model_sharded(models)
    loaded = dist_checkpointing.load(model_sd, str(resolve_init_dir(path)))
    for i, m in enumerate(models):
        m.load_state_dict(loaded[_model_key(i, len(models))])


def save_weights(path: str | Path, models: list) -> Path:
    """Write the weights-only ``init_from`` format (used by tests; the converter writes the same)."""
    from megatron.core import dist_checkpointing

    path = Path(path)
    if torch.distributed.get_rank() == 0:
        path.mkdir(parents=True, exist_ok=True)
    torch.distributed.barrier()
    dist_checkpointing.save(_model_sharded(models), str(path))
    return path

"""torch_dist checkpoints of a run: ``RUN/iter_XXXXXXX/`` + ``RUN/latest`` (written last) + config.yaml.

A checkpoint holds the model (megatron-core ``sharded_state_dict``, so it reloads at another TP/PP), the
optimizer (model-shaped, so also any TP/PP; the distributed optimizer's state: see ``_optim_sharding``), the
LR scheduler, the step, consumed samples and per-rank RNG states (restored when TP/PP are unchanged). It is
written to ``iter_XXXXXXX.tmp`` with its ``config.yaml``, ``model_config.yaml`` and a ``manifest.json`` of
every file's size and checksum (see ``common/integrity.py``), renamed, then ``latest`` is replaced
atomically: a crash mid-save leaves the previous checkpoint as ``latest``. A resume verifies the checkpoint
against its manifest and falls back to the newest intact ``iter_*`` (with a warning) when ``latest`` or the
checkpoint it names is damaged.

The model part is the weights-only format of :mod:`megatron_mmed.models.weights` (what ``checkpoint.init_from``
loads and ``mmed convert`` reads and writes); this module adds the rest of a run's checkpoint.
"""

from __future__ import annotations

import os
import re
import shutil
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from megatron_mmed.common import integrity
from megatron_mmed.common.config import save_config
from megatron_mmed.common.distributed import agree
from megatron_mmed.common.errors import UserError
from megatron_mmed.common.writers import storage_failure, writer_processes_safe
from megatron_mmed.models.weights import SavedModel, model_key, write_model_config

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


_ITER = re.compile(r"iter_\d{7}")


def _pointer_target(run_dir: Path) -> tuple[Path | None, str | None]:
    """``(checkpoint, None)`` from ``RUN/latest``, or ``(None, what is wrong with it)``; ``(None, None)``
    when there is no pointer. A pointer that is empty, binary or names anything but an ``iter_*`` folder
    of this run (a file cut short by a full disk, a hand edit) is reported, never followed."""
    pointer = run_dir / LATEST
    if not pointer.is_file():
        return None, None
    raw = pointer.read_bytes()[:256]
    try:
        name = raw.decode("utf-8").strip()
    except UnicodeDecodeError:
        return None, f"{pointer} is not text"
    if not _ITER.fullmatch(name):
        return None, f"{pointer} holds {name!r}, not an iter_XXXXXXX name"
    if not (run_dir / name).is_dir():
        return None, f"{pointer} points at {run_dir / name}, which does not exist"
    return run_dir / name, None


def latest_checkpoint(run_dir: str | Path) -> Path | None:
    """The checkpoint ``RUN/latest`` points at, or None when the run has none yet (``UserError`` when the
    pointer is damaged: see :func:`find_resume_checkpoint` for the fallback a resume uses)."""
    path, problem = _pointer_target(Path(run_dir))
    if problem:
        intact = [d.name for d in iter_dirs(Path(run_dir))]
        raise UserError(f"{problem} (checkpoints there: {', '.join(intact) or 'none'})")
    return path


def iter_dirs(run_dir: Path) -> list[Path]:
    """The run's ``iter_*`` checkpoint folders, newest first (``.tmp`` leftovers excluded)."""
    found = [d for d in run_dir.glob("iter_*") if d.is_dir() and _ITER.fullmatch(d.name)]
    return sorted(found, key=lambda d: d.name, reverse=True)


def _warn(message: str) -> None:
    if torch.distributed.get_rank() == 0:
        print(f"mmed train: warning: {message}", file=sys.stderr, flush=True)


def find_resume_checkpoint(run_dir: str | Path) -> Path | None:
    """The checkpoint a run resumes from: ``latest`` when it verifies against its manifest, else the newest
    ``iter_*`` that does (with a warning naming what was wrong). Collective: every rank calls it.

    ``UserError`` when the run has checkpoints but none is intact (rather than silently starting over).
    """
    run_dir = Path(run_dir)
    if torch.distributed.get_rank() == 0:  # saves a kill interrupted: never a checkpoint, only disk space
        for partial in run_dir.glob("iter_*.tmp"):
            shutil.rmtree(partial, ignore_errors=True)
    target, problem = _pointer_target(run_dir)
    if problem:
        _warn(problem)
    candidates = ([target] if target else []) + [d for d in iter_dirs(run_dir) if d != target]
    damaged = []
    for path in candidates:
        problems, has_manifest = integrity.verify_on_all_ranks(path)
        if problems:
            damaged.append(f"{path.name}: {'; '.join(problems[:3])}")
            _warn(f"{path} is damaged ({'; '.join(problems[:3])}); trying an older checkpoint")
            continue
        integrity.check_metadata_pickle(path)
        if not has_manifest:
            _warn(f"{path} has no {integrity.MANIFEST} (an older checkpoint): loading it unverified")
        if damaged or problem:
            _warn(f"resuming from {path.name}, the newest intact checkpoint; {LATEST} now points at it")
            if torch.distributed.get_rank() == 0:
                _point_latest_at(run_dir, path)
            torch.distributed.barrier()
        return path
    if candidates:
        raise UserError(f"{run_dir}: no intact checkpoint to resume from ({' | '.join(damaged)})")
    return None


@dataclass
class TrainState:
    """What besides model and optimizer a checkpoint restores."""

    step: int = 0
    consumed_samples: int = 0


#: picks the sharded state dict entries of one model chunk a checkpoint holds (LoRA: only the adapters)
ModelState = Callable[[Any], dict]


def _model_sharded(models: list, model_state: ModelState | None = None) -> dict[str, Any]:
    pick = model_state or (lambda m: m.sharded_state_dict())
    return {model_key(i, len(models)): pick(m) for i, m in enumerate(models)}


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
    model_state: ModelState | None = None,
    extra_files: Callable[[Path], None] | None = None,
) -> Path:
    """Write ``RUN/iter_<step>`` on all ranks, then (rank 0) the config, ``model_config.yaml`` (the
    architecture, see :mod:`megatron_mmed.models.weights`), ``extra_files(folder)``, the manifest and the
    ``latest`` pointer. ``model_state(model)`` chooses the model entries saved (default: all of them).

    A storage failure (a full disk) is a ``UserError`` on every rank; the partial ``iter_<step>.tmp`` is
    removed and ``latest`` keeps naming the previous checkpoint.
    """
    run_dir = Path(run_dir)
    tmp = run_dir / (iter_dir_name(step) + ".tmp")
    try:
        return _save(run_dir, step, models, optimizer, scheduler, state, cfg, model, model_state, extra_files)
    except BaseException as e:  # torch's CheckpointException derives from BaseException
        reason = None if isinstance(e, KeyboardInterrupt | SystemExit) else storage_failure(e, run_dir)
        if reason is None:
            raise
        if torch.distributed.get_rank() == 0:
            shutil.rmtree(tmp, ignore_errors=True)
        previous, _ = _pointer_target(run_dir)
        raise UserError(
            f"checkpoint save of step {step} to {run_dir} failed: {reason}; {LATEST} still points at "
            f"{previous.name if previous else 'no checkpoint'} (the partial {tmp.name} was removed)"
        ) from None


def _save(
    run_dir: Path, step: int, models: list, optimizer, scheduler, state, cfg, model, model_state, extra_files
) -> Path:
    from megatron.core import dist_checkpointing

    final = run_dir / iter_dir_name(step)
    tmp = run_dir / (iter_dir_name(step) + ".tmp")
    rank = torch.distributed.get_rank()
    error = None
    if rank == 0:
        try:
            shutil.rmtree(tmp, ignore_errors=True)
            tmp.mkdir(parents=True)
        except OSError as e:
            error = e
    agree(error)
    model_sd = _model_sharded(models, model_state)
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
    with writer_processes_safe():
        dist_checkpointing.save(sharded, str(tmp))
    torch.distributed.barrier()
    if rank == 0:
        try:
            save_config(cfg, tmp / "config.yaml")
            if model is not None:
                write_model_config(tmp, model)
            if extra_files is not None:
                extra_files(tmp)
        except OSError as e:
            error = e
    agree(error)
    integrity.write_manifest_on_all_ranks(tmp)
    if rank == 0:
        try:
            if final.exists():
                shutil.rmtree(final)
            os.replace(tmp, final)
            _fsync_dir(run_dir)
            save_config(cfg, run_dir / "config.yaml")
            _point_latest_at(run_dir, final)
        except OSError as e:  # the checkpoint is whole; at worst latest still names the previous one
            error = e
    agree(error)
    return final


def _point_latest_at(run_dir: Path, checkpoint: Path) -> None:
    """Replace ``RUN/latest`` atomically (temp file, fsync, rename, fsync of the folder)."""
    pointer_tmp = run_dir / (LATEST + ".tmp")
    with open(pointer_tmp, "w", encoding="utf-8") as fh:
        fh.write(checkpoint.name + "\n")
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(pointer_tmp, run_dir / LATEST)
    _fsync_dir(run_dir)


def _fsync_dir(path: Path) -> None:
    """Make a rename in ``path`` durable (a crash after it cannot resurrect the old entry)."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def load_checkpoint(
    path: str | Path, models: list, optimizer, scheduler, model_state: ModelState | None = None
) -> TrainState:
    """Restore model, optimizer, scheduler (and RNG when the TP/PP layout is unchanged) from ``path``.

    With ``model_state`` (the entries :func:`save_checkpoint` was given), only those weights are loaded; the
    model's other weights stay as they are (LoRA: the frozen base, loaded from ``init_from`` first).
    """
    from megatron.core import dist_checkpointing

    integrity.check_metadata_pickle(Path(path))
    path = str(path)
    _materialize_optimizer_state(optimizer)
    common = dist_checkpointing.load_common_state_dict(path)
    same_layout = common.get("layout") == _layout()
    model_sd = _model_sharded(models, model_state)
    metadata = {"distrib_optim_sharding_type": common.get("optim_sharding", _optim_sharding())}
    sharded = {
        **model_sd,
        "optimizer": optimizer.sharded_state_dict(model_sd, is_loading=True, metadata=metadata),
    }
    if same_layout:
        sharded["rng_state"] = _rng_object(is_loading=True)
    loaded = dist_checkpointing.load(sharded, path)
    configured = [{k: g[k] for k in _CONFIGURED_GROUP_KEYS if k in g} for g in optimizer.param_groups]
    with torch.no_grad():  # the optimizer copies into views of leaf parameters
        for i, m in enumerate(models):
            _load_model_state(m, loaded[model_key(i, len(models))], partial=model_state is not None)
        optimizer.load_state_dict(loaded["optimizer"])
    for group, values in zip(optimizer.param_groups, configured, strict=True):
        group.update(
            values
        )  # this run's settings, not the checkpoint's (the Adam moments are the checkpoint's)
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


def _load_model_state(model, state: dict, partial: bool) -> None:
    """``model.load_state_dict``; ``partial``: a subset of the model's entries, every one of which must land."""
    if not partial:
        model.load_state_dict(state)
        return
    missing, unexpected = model.load_state_dict(state, strict=False)
    if unexpected or set(state) & set(missing):
        raise UserError(f"the checkpoint's weights do not match the model ({(unexpected or missing)[:3]})")


def prune_checkpoints(run_dir: str | Path, keep: int) -> list[Path]:
    """Remove all but the newest ``keep`` ``iter_*`` of a run (0 keeps all; one process calls it), never the
    one ``latest`` names. Each is renamed to ``iter_*.tmp`` first, so a kill mid-removal leaves a leftover
    that a resume deletes, never a half-deleted folder that looks like a checkpoint. Returns the removed."""
    run_dir = Path(run_dir)
    if keep < 1:
        return []
    latest, _ = _pointer_target(run_dir)
    removed = []
    for old in iter_dirs(run_dir)[keep:]:
        if latest is not None and old.name == latest.name:
            continue
        doomed = old.with_name(old.name + ".tmp")
        try:
            os.replace(old, doomed)
            shutil.rmtree(doomed)
        except OSError as e:  # only disk space is lost; training goes on
            print(f"warning: could not remove the old checkpoint {old}: {e}", file=sys.stderr, flush=True)
            continue
        removed.append(old)
    return removed


#: per-group optimizer settings that come from the config: a resume with a changed ``optimizer.lr`` (or
#: betas, eps) applies it. megatron-core's scheduler reads ``max_lr``/``min_lr`` from the groups, which
#: ``load_state_dict`` would otherwise take from the checkpoint.
_CONFIGURED_GROUP_KEYS = ("max_lr", "min_lr", "betas", "eps")


def changed_settings(checkpoint: Path, cfg) -> list[str]:
    """``"optimizer.lr 0.003 -> 0.001"`` for each optimizer/schedule/train.steps value that differs from the
    config the checkpoint was saved with (a resume applies them; this names them)."""
    import yaml

    from megatron_mmed.common.config import to_dict

    path = checkpoint / "config.yaml"
    try:
        old = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except (OSError, UnicodeDecodeError, yaml.YAMLError):
        return []
    new = to_dict(cfg)
    out = []
    for section, keys in (("optimizer", None), ("schedule", None), ("train", ("steps",))):
        before, after = old.get(section) or {}, new.get(section) or {}
        for key in keys or sorted(set(before) | set(after)):
            if key in before and before.get(key) != after.get(key):
                out.append(f"{section}.{key} {before.get(key)} -> {after.get(key)}")
    return out


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

"""Slurm array helpers: a stage task's ``(rank, world_size)`` from flags or the array environment."""

from __future__ import annotations

import os

from megatron_mmed.common.errors import UserError


def _env_int(name: str) -> int | None:
    raw = os.environ.get(name)
    if raw is None or raw == "":
        return None
    try:
        return int(raw)
    except ValueError:
        raise UserError(f"{name}={raw!r} is not an integer") from None


def array_rank_world(rank: int | None = None, world_size: int | None = None) -> tuple[int, int]:
    """``--rank/--world-size`` when given, else SLURM_ARRAY_TASK_ID (relative to SLURM_ARRAY_TASK_MIN) and
    SLURM_ARRAY_TASK_COUNT, else ``(0, 1)``. Raises ``UserError`` unless ``0 <= rank < world_size``."""
    if rank is None:
        task_id = _env_int("SLURM_ARRAY_TASK_ID")
        rank = 0 if task_id is None else task_id - (_env_int("SLURM_ARRAY_TASK_MIN") or 0)
    if world_size is None:
        world_size = _env_int("SLURM_ARRAY_TASK_COUNT") or 1
    if world_size < 1 or not 0 <= rank < world_size:
        raise UserError(f"need 0 <= rank < world_size, got rank={rank} world_size={world_size}")
    return rank, world_size

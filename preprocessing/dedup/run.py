"""``run_dedup``: plan the tasks of each stage, run this rank's share (in worker processes), write the report.

A stage's tasks are numbered in a fixed order and task ``k`` belongs to rank ``k % world_size``, so a slurm
array (``--rank/--world-size`` from ``SLURM_ARRAY_TASK_ID/COUNT``) splits every stage the same way. Finished
tasks have a marker and are skipped on a rerun; a killed task is simply redone (its outputs are renamed into
place atomically before its marker is written), so the result is byte-identical to an uninterrupted run.
"""

from __future__ import annotations

import math
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from multiprocessing import get_all_start_methods
from multiprocessing.pool import Pool
from pathlib import Path
from typing import Any

from megatron_mmed.common.config import save_config
from megatron_mmed.common.errors import UserError
from megatron_mmed.common.lock import lock_is_held, rank_lock_path
from megatron_mmed.common.tasks import resume_tasks, worker_pool
from preprocessing.dedup.config import SUBSTAGES, DedupConfig
from preprocessing.dedup.lsh import Banding, choose_banding, fixed_banding
from preprocessing.dedup.report import build_extra, write_markdown
from preprocessing.dedup.stages import (
    Ctx,
    bucket_task,
    bucket_task_id,
    cluster_task,
    filter_task,
    signatures_task,
)
from preprocessing.document import CJK_LANGS
from preprocessing.layout import (
    StageStats,
    input_digest,
    kept_files,
    require_stage_output,
    write_stage_report,
)
from preprocessing.stage import open_stage, same_run

#: dedup's task pools fork (the tasks need no re-import) where the platform can
_START_METHOD = "fork" if "fork" in get_all_start_methods() else "spawn"


@dataclass
class DedupResult:
    out_dir: Path
    banding: Banding
    stats: StageStats | None = None
    report: dict[str, Any] | None = None
    seconds: dict[str, float] = field(default_factory=dict)
    ran: dict[str, int] = field(default_factory=dict)  # stage -> tasks run by this process
    complete: bool = False


@dataclass(frozen=True)
class Task:
    id: str
    fn: Callable[..., dict[str, Any]]
    args: tuple[Any, ...]


def banding_for(cfg: DedupConfig) -> Banding:
    if cfg.bands:
        return fixed_banding(cfg.threshold, cfg.bands, cfg.rows)
    return choose_banding(cfg.threshold, cfg.num_perm, cfg.fp_weight, cfg.fn_weight)


def plan(stage: str, ctx: Ctx) -> list[Task]:
    """All tasks of ``stage`` in a fixed order (buckets need the signature markers for document counts)."""
    if stage == "signatures":
        return [
            Task(f"{lg}-{i:05d}", signatures_task, (lg, i)) for lg, fs in ctx.files for i in range(len(fs))
        ]
    if stage == "buckets":
        tasks = []
        done = ctx.markers("signatures")
        for lg, fs in ctx.files:
            missing = [i for i in range(len(fs)) if not done.is_done(f"{lg}-{i:05d}")]
            if missing:
                raise UserError(
                    f"buckets: {len(missing)} signature task(s) of {lg} not done; run --stage signatures"
                )
            n_docs = sum(done.read(f"{lg}-{i:05d}")["docs"] for i in range(len(fs)))
            parts = max(1, math.ceil(n_docs / ctx.cfg.partition_docs))
            tasks += [Task(bucket_task_id(lg, p), bucket_task, (lg, p, parts)) for p in range(parts)]
        return tasks
    if stage == "clusters":
        return [Task(lg, cluster_task, (lg,)) for lg, _ in ctx.files]
    if stage == "filter":
        return [Task(f"{lg}-{i:05d}", filter_task, (lg, i)) for lg, fs in ctx.files for i in range(len(fs))]
    raise UserError(f"unknown stage {stage!r} (choose from all, {', '.join(SUBSTAGES)})")


#: the stage whose output each stage reads, and the flag that runs it
_NEEDS = {"buckets": "signatures", "clusters": "buckets", "filter": "clusters"}


def require_previous(ctx: Ctx, stage: str) -> None:
    """Raise ``UserError`` unless every task of the stage that ``stage`` reads has its marker (all ranks'),
    whatever order a slurm array ran them in: a filter before the clusters would remove nothing."""
    prev = _NEEDS.get(stage)
    if prev is None:
        return
    done = ctx.markers(prev)
    missing = [t.id for t in plan(prev, ctx) if not done.is_done(t.id)]
    if missing:
        raise UserError(
            f"{stage}: {len(missing)} {prev[:-1]} task(s) not done (e.g. {missing[0]}); run --stage {prev} first"
        )


# ---- worker-process plumbing (the context is set once per worker, not sent with every task) ----
_CTX: Ctx | None = None


def _set_ctx(ctx: Ctx) -> None:
    global _CTX
    _CTX = ctx


def _call(task: Task) -> tuple[str, dict[str, Any]]:
    assert _CTX is not None
    return task.id, task.fn(_CTX, *task.args)


def _wait_for(ctx: Ctx, stage: str, tasks: list[Task], world_size: int) -> None:
    """Block until every task of ``stage`` (all ranks) has its marker (``--stage all`` with world_size > 1).

    A rank with tasks left whose lock has been free for ``peer_timeout_s`` (it died, or never started) ends
    the wait with a ``UserError`` instead of a wait forever; its finished tasks are kept for the rerun.
    """
    markers = ctx.markers(stage)
    timeout = ctx.cfg.peer_timeout_s
    free_since: dict[int, float] = {}
    while True:
        missing = [k for k, t in enumerate(tasks) if not markers.is_done(t.id)]
        if not missing:
            return
        now = time.monotonic()
        for r in sorted({k % world_size for k in missing}):
            if lock_is_held(rank_lock_path(ctx.out_dir, r)):
                free_since.pop(r, None)
            elif now - free_since.setdefault(r, now) > timeout:
                left = sum(1 for k in missing if k % world_size == r)
                raise UserError(
                    f"dedup {stage}: rank {r}/{world_size} has {left} task(s) left and has not been running for "
                    f"{timeout:g} s (it died or never started); rerun that rank (finished tasks are kept)"
                )
        time.sleep(min(2.0, timeout / 4))


def make_context(in_dir: str | Path, out_dir: str | Path, cfg: DedupConfig) -> tuple[Ctx, Banding]:
    in_dir = require_stage_output(in_dir).resolve()
    out_dir = Path(out_dir).resolve()
    work_dir = Path(cfg.work_dir).resolve() if cfg.work_dir else out_dir / ".work"
    banding = banding_for(cfg)
    files = tuple((lg, tuple(str(p) for p in fs)) for lg, fs in kept_files(in_dir).items())
    ctx = Ctx(str(in_dir), str(out_dir), str(work_dir), cfg, banding.bands, banding.rows, files)
    return ctx, banding


def finalize(ctx: Ctx, banding: Banding) -> tuple[StageStats, dict[str, Any]]:
    """Merge the filter markers into OUT/report.json|md (and drop the work folder)."""
    stats = StageStats()
    filt = ctx.markers("filter")
    for t in plan("filter", ctx):
        stats.merge(StageStats.from_dict(filt.read(t.id)["stats"]))
    clusters = ctx.markers("clusters")
    cluster_info = {lg: clusters.read(lg) for lg, _ in ctx.files if clusters.is_done(lg)}
    sig = ctx.markers("signatures")
    no_sh = {
        lg: sum(sig.read(f"{lg}-{i:05d}")["no_shingles"] for i in range(len(fs))) for lg, fs in ctx.files
    }
    extra = build_extra(ctx.cfg, banding, cluster_info, no_sh, CJK_LANGS)
    report = write_stage_report(ctx.out_dir, "dedup", stats, input_dir=ctx.in_dir, **extra)
    write_markdown(Path(ctx.out_dir) / "report.md", report)
    if not ctx.cfg.keep_work:
        shutil.rmtree(ctx.work_dir, ignore_errors=True)
    return stats, report


def _run_stages(
    ctx: Ctx,
    stages: tuple[str, ...],
    stage: str,
    rank: int,
    world_size: int,
    show_progress: bool,
    log: Callable[[str], None],
    result: DedupResult,
    pool: Pool | None,
) -> None:
    for st in stages:
        t0 = time.perf_counter()
        require_previous(ctx, st)
        tasks = {t.id: t for t in plan(st, ctx)}
        done = resume_tasks(
            f"dedup {st}",
            tasks,
            _call,
            ctx.markers(st),
            rank=rank,
            world_size=world_size,
            unit="tasks",
            workers=ctx.cfg.workers,
            show_progress=show_progress,
            log=log,
            pool=pool,
            run_here=lambda t: (t.id, t.fn(ctx, *t.args)),
        )
        result.ran[st] = done.mine - done.skipped
        if stage == "all" and world_size > 1:
            _wait_for(ctx, st, list(tasks.values()), world_size)
        result.seconds[st] = time.perf_counter() - t0


def run_dedup(
    in_dir: str | Path,
    out_dir: str | Path,
    cfg: DedupConfig,
    stage: str = "all",
    rank: int = 0,
    world_size: int = 1,
    show_progress: bool = True,
    log: Callable[[str], None] = print,
) -> DedupResult:
    """Run ``stage`` (or all four) for this rank with ``cfg.workers`` processes; the last filter task to
    finish writes the report."""
    if world_size < 1 or not 0 <= rank < world_size:
        raise UserError(f"need 0 <= rank < world_size, got rank={rank} world_size={world_size}")
    stages = SUBSTAGES if stage == "all" else (stage,)
    if stage != "all" and stage not in SUBSTAGES:
        raise UserError(f"unknown stage {stage!r} (choose from all, {', '.join(SUBSTAGES)})")
    ctx, banding = make_context(in_dir, out_dir, cfg)
    digest = input_digest(ctx.in_dir)
    with open_stage(
        "dedup", ctx.out_dir, cfg, reads=[ctx.in_dir], input=digest, rank=rank, world_size=world_size
    ):
        result = DedupResult(Path(ctx.out_dir), banding)
        log(f"dedup: threshold {cfg.threshold}, {cfg.num_perm} permutations -> {banding.describe()}")
        filt = ctx.markers("filter")
        if (
            all(filt.is_done(t.id) for t in plan("filter", ctx))
            and (Path(ctx.out_dir) / "report.json").is_file()
        ):
            log("dedup: already complete (every filter task has its marker)")
            result.complete = True
            return result
        same_run(ctx.work_dir, "dedup", cfg, digest, what="dedup work folder")
        save_config(cfg, Path(ctx.work_dir) / "config.yaml")
        # one pool for all the stages (forked before any thread starts: workers need no re-import)
        with worker_pool(cfg.workers, _START_METHOD, _set_ctx, (ctx,)) as pool:
            _run_stages(ctx, stages, stage, rank, world_size, show_progress, log, result, pool)
        if all(filt.is_done(t.id) for t in plan("filter", ctx)):
            try:
                result.stats, result.report = finalize(ctx, banding)
            except FileNotFoundError:  # another array task finished at the same time, finalised, dropped WORK
                if not (Path(ctx.out_dir) / "report.json").is_file():
                    raise
            result.complete = True
        return result

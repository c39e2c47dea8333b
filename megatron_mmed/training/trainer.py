"""The training loop as named steps, shared by pretraining (``mmed train``) and fine-tuning (``mmed finetune``).

Shaped like torchtitan's ``Trainer`` and OLMo-core's trainer callbacks: :class:`Trainer` runs
``train_step()`` (one global batch through megatron-core's forward-backward schedule and the optimizer),
``maybe_evaluate()``, ``maybe_log()`` and ``stop_reason()`` (divergence, signals, ``exit_at_step``,
``exit_duration_minutes``) in :meth:`Trainer.fit`; a :class:`Checkpointer` owns the save schedule
(``maybe_save(step, reason)``), what a checkpoint holds and the pruning of old ``iter_*``. A stage brings its
own data as a :class:`BatchSource` (per-step micro-batches holding tokens, labels, loss_mask, position_ids)
and its own ``forward_step``; everything else is this module's.
"""

from __future__ import annotations

import math
import signal
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import torch

from megatron_mmed.common.errors import UserError
from megatron_mmed.training import checkpoint as ckpt
from megatron_mmed.training.config import CheckpointConfig, TrainConfig


class TrainingDiverged(UserError):
    """The loss became NaN/inf; the last good checkpoint is kept."""


@dataclass
class RunResult:
    """What a run did (returned on every rank; losses only on the last rank)."""

    start_step: int
    end_step: int
    losses: dict[int, float] = field(default_factory=dict)
    stopped_by: str | None = None  # "signal", "exit_at_step", "exit_duration" or None
    checkpoint: Path | None = None


@dataclass
class ModelParts:
    """This rank's model chunks (bare and DDP-wrapped), the Megatron optimizer and the LR scheduler."""

    gpt_models: list
    ddp_models: list
    optimizer: Any
    scheduler: Any


@dataclass
class StepInput:
    """One optimizer step's data on this rank, and what the step's metrics record says about it."""

    microbatches: Callable[[], Iterator[dict[str, torch.Tensor]]]  # a fresh iterator per model chunk
    num_microbatches: int
    seq_length: int  # positions per row (pipeline stages exchange activations of this length)
    micro_batch_size: int
    samples: int  # added to ``TrainState.consumed_samples``
    tokens: int  # positions this step trains on, all ranks (tokens/s)
    metrics: dict[str, Any] = field(default_factory=dict)  # stage-specific fields of the step's record


class BatchSource(Protocol):
    """A stage's training data: the input of step ``step`` (0-based), given the samples consumed before it."""

    def step_input(self, step: int, consumed_samples: int) -> StepInput: ...


ForwardStep = Callable  # megatron-core's ``forward_step_func(data_iterator, model) -> (output, loss_func)``


class StopFlag:
    """Set by SIGTERM/SIGUSR1 (slurm's warning before the time limit); checked between steps."""

    def __init__(self, enabled: bool) -> None:
        self.raised = False
        self._old: dict = {}
        if enabled:
            for sig in (signal.SIGTERM, signal.SIGUSR1):
                self._old[sig] = signal.signal(sig, self._handle)

    def _handle(self, signum, frame) -> None:
        self.raised = True

    def restore(self) -> None:
        for sig, handler in self._old.items():
            signal.signal(sig, handler)


def any_rank(flags: list[bool]) -> list[bool]:
    """Element-wise OR of ``flags`` over all ranks (one small all-reduce), so every rank decides alike."""
    t = torch.tensor([int(f) for f in flags], dtype=torch.int32)
    if torch.cuda.is_available():
        t = t.cuda()
    torch.distributed.all_reduce(t, op=torch.distributed.ReduceOp.MAX)
    return [bool(v) for v in t.tolist()]


class Stepper:
    """Runs one global batch (train or eval) through megatron-core's forward-backward function."""

    def __init__(self, ddp_models: list, forward_step: ForwardStep) -> None:
        from megatron.core.pipeline_parallel import get_forward_backward_func

        self.models, self.forward_step = ddp_models, forward_step
        self.fb = get_forward_backward_func()

    def run(self, step_input: StepInput, forward_only: bool) -> float | None:
        """Forward(-backward) ``step_input``; its loss over all loss-mask tokens of the global batch (DP-reduced)
        on the last pipeline stage, None on the others."""
        from megatron.core import parallel_state as ps

        chunks = len(self.models)
        iters = [step_input.microbatches() for _ in range(chunks)]
        out = self.fb(
            forward_step_func=self.forward_step,
            data_iterator=iters if chunks > 1 else iters[0],
            model=self.models if chunks > 1 else self.models[0],
            num_microbatches=step_input.num_microbatches,
            seq_length=step_input.seq_length,
            micro_batch_size=step_input.micro_batch_size,
            forward_only=forward_only,
        )
        if not ps.is_pipeline_last_stage(ignore_virtual=True):
            return None
        total = torch.stack([o["lm loss"] for o in out]).sum(0)
        torch.distributed.all_reduce(total, group=ps.get_data_parallel_group(with_context_parallel=True))
        return float(total[0] / total[1])


class Checkpointer:
    """Owns a run's checkpoints: resume, the save schedule, what a save holds, and pruning of old ``iter_*``.

    ``model_state`` picks the model entries a checkpoint holds (default: every parameter; LoRA: the adapters);
    ``extra_files(folder)`` runs on rank 0 in each new checkpoint folder before its manifest is written.
    """

    def __init__(
        self,
        run_dir: str | Path,
        cfg: CheckpointConfig,
        total_steps: int,
        parts: ModelParts,
        run_config: Any,
        saved_model=None,
        model_state: Callable[[Any], dict] | None = None,
        extra_files: Callable[[Path], None] | None = None,
    ) -> None:
        self.run_dir, self.cfg, self.total_steps, self.parts = Path(run_dir), cfg, total_steps, parts
        self.run_config, self.saved_model = run_config, saved_model
        self.model_state, self.extra_files = model_state, extra_files
        self.last: Path | None = None  # the newest checkpoint written or resumed from

    def load(self, path: Path) -> ckpt.TrainState:
        """Restore model (or adapter) weights, optimizer, scheduler, RNG and the step from ``path``."""
        p = self.parts
        state = ckpt.load_checkpoint(
            path, p.gpt_models, p.optimizer, p.scheduler, model_state=self.model_state
        )
        self.last = path
        return state

    def due(self, step: int, reason: str | None = None) -> bool:
        """Whether step ``step`` ends with a save: every ``save_interval``, at the last step, when stopping."""
        if not self.cfg.save:
            return False
        return step % self.cfg.save_interval == 0 or step == self.total_steps or reason is not None

    def maybe_save(self, step: int, state: ckpt.TrainState, reason: str | None = None) -> Path | None:
        """Save ``RUN/iter_<step>`` when the schedule says so (then prune); the new checkpoint or None."""
        if not self.due(step, reason):
            return None
        p = self.parts
        self.last = ckpt.save_checkpoint(
            self.run_dir,
            step,
            p.gpt_models,
            p.optimizer,
            p.scheduler,
            state,
            self.run_config,
            self.saved_model,
            model_state=self.model_state,
            extra_files=self.extra_files,
        )
        self.prune()
        return self.last

    def prune(self) -> list[Path]:
        """Remove all but the newest ``checkpoint.keep_last`` checkpoints (0: keep all; ``latest``'s stays)."""
        if torch.distributed.get_rank() != 0:
            return []
        return ckpt.prune_checkpoints(self.run_dir, self.cfg.keep_last)


def start_run(
    cfg: TrainConfig,
    env,
    arch,
    on_cpu: bool,
    *,
    run_config: Any = None,
    tokenizer: str | None = None,
    name: str = "mmed train",
    model_hook: Callable[[list], None] | None = None,
    per_token_loss: bool = False,
    model_state: ckpt.ModelState | None = None,
    extra_files: Callable[[Path], None] | None = None,
    load_init: bool = True,
    parallel_note: str | None = None,
) -> tuple[ModelParts, Checkpointer, ckpt.TrainState]:
    """Everything before the first step, on every rank: find the checkpoint to resume (verified), check the
    model against it or ``init_from``, write ``RUN/config.yaml`` (``run_config``: the stage's whole config),
    build model and optimizer, then resume or load ``init_from`` (unless ``load_init`` is False: the
    ``model_hook`` loaded it) and cut ``metrics.jsonl`` back to the resumed step. ``parallel_note`` replaces the
    parallelism's micro-batch count in the startup line (a stage whose count varies per step)."""
    from megatron_mmed.common.config import save_config
    from megatron_mmed.models.weights import load_weights
    from megatron_mmed.training.architecture import run_model
    from megatron_mmed.training.metrics import truncate_metrics
    from megatron_mmed.training.setup import build_model_and_optimizer

    run_config = run_config if run_config is not None else cfg
    par = env.parallelism
    run_dir = Path(cfg.checkpoint.dir)
    # before anything is written: the newest intact checkpoint (verified against its manifest), and the
    # weights it resumes or starts from checked to be this run's model
    resume_from = ckpt.find_resume_checkpoint(run_dir) if run_dir.is_dir() else None
    model = run_model(cfg, arch, par.padded_vocab_size, resume_from, tokenizer)
    if env.rank == 0:
        run_dir.mkdir(parents=True, exist_ok=True)
        save_config(run_config, run_dir / "config.yaml")
        shape = (
            par.describe() if parallel_note is None else f"{par.describe().split(';')[0]}; {parallel_note}"
        )
        print(f"{name}: {arch.name}, {shape}; run dir {run_dir}", flush=True)
    torch.distributed.barrier()
    gpt_models, ddp_models, optimizer, scheduler, _ = build_model_and_optimizer(
        cfg, arch, par.padded_vocab_size, on_cpu, model_hook=model_hook, per_token_loss=per_token_loss
    )
    parts = ModelParts(gpt_models, ddp_models, optimizer, scheduler)
    checkpointer = Checkpointer(
        run_dir, cfg.checkpoint, cfg.train.steps, parts, run_config, model, model_state, extra_files
    )
    state = ckpt.TrainState()
    if resume_from is not None:
        state = checkpointer.load(resume_from)
        changed = ckpt.changed_settings(resume_from, run_config)
        if changed and env.rank == 0:
            print(f"{name}: resuming with changed settings (applied): {'; '.join(changed)}", flush=True)
    elif cfg.checkpoint.init_from and load_init:
        load_weights(cfg.checkpoint.init_from, gpt_models)
        for m in ddp_models:  # the optimizer's fp32 main params must follow the loaded weights
            m.broadcast_params()
        optimizer.reload_model_params()
    if env.is_last_rank and run_dir.joinpath("metrics.jsonl").exists():
        truncate_metrics(run_dir / "metrics.jsonl", state.step)
    return parts, checkpointer, state


class Trainer:
    """Steps, evaluates, logs, checkpoints and stops a run; see the module docstring."""

    def __init__(
        self,
        cfg: TrainConfig,
        parts: ModelParts,
        batches: BatchSource,
        forward_step: ForwardStep,
        checkpointer: Checkpointer,
        metrics,
        state: ckpt.TrainState,
        *,
        is_last_rank: bool,
        world_size: int,
        evaluate: Callable[[Stepper], dict] | None = None,
        flops_per_token: int | None = None,
        name: str = "mmed train",
    ) -> None:
        self.cfg, self.parts, self.batches = cfg, parts, batches
        self.checkpointer, self.metrics, self.state = checkpointer, metrics, state
        self.is_last_rank, self.world_size = is_last_rank, world_size
        self.evaluate, self.flops_per_token, self.name = evaluate, flops_per_token, name
        self.stepper = Stepper(parts.ddp_models, forward_step)
        self.total_steps = cfg.train.steps
        self._started = time.time()
        self._window_start, self._window_steps, self._window_tokens = time.time(), 0, 0

    # --- the named steps -----------------------------------------------------------------------------------

    def train_step(self) -> dict[str, Any]:
        """One optimizer step on the next global batch: the step's loss, lr, grad norm and input."""
        p, state = self.parts, self.state
        step_input = self.batches.step_input(state.step, state.consumed_samples)
        for m in p.ddp_models:
            m.train()
            m.zero_grad_buffer()
        p.optimizer.zero_grad()
        loss = self.stepper.run(step_input, forward_only=False)
        _, grad_norm, _ = p.optimizer.step()
        lr = p.optimizer.param_groups[0]["lr"]  # the rate this step used
        p.scheduler.step(increment=1)  # the schedule counts optimizer steps
        state.step += 1
        state.consumed_samples += step_input.samples
        self._window_steps += 1
        self._window_tokens += step_input.tokens
        return {"loss": loss, "lr": lr, "grad_norm": grad_norm, "input": step_input}

    def maybe_evaluate(self, step: int) -> dict[str, Any]:
        """Validation results at every ``eval_interval`` and the last step (empty when not due or none)."""
        log = self.cfg.logging
        if not self._eval_due(step) or log.eval_iters <= 0 or self.evaluate is None:
            return {}
        for m in self.parts.ddp_models:
            m.eval()
        try:
            with torch.no_grad():
                return self.evaluate(self.stepper)
        finally:
            for m in self.parts.ddp_models:
                m.train()

    def maybe_log(self, step: int, result: dict[str, Any]) -> dict[str, Any] | None:
        """Write the step's record (every ``log_interval`` and whenever it evaluates); tokens/s over the window
        since the last record, evaluation and checkpoint time excluded."""
        if step % self.cfg.logging.log_interval != 0 and not self._eval_due(step):
            return None
        elapsed = time.time() - self._window_start
        tps = self._window_tokens / max(elapsed, 1e-9)
        grad_norm = result["grad_norm"]
        record: dict[str, Any] = {
            "step": step,
            "loss": result["loss"],
            "lr": result["lr"],
            "grad_norm": float(grad_norm) if grad_norm is not None else None,
            "tokens_per_s": tps,
        }
        if self.flops_per_token is not None:
            tflops = tps / self.world_size * self.flops_per_token / 1e12
            record.update(tflops_per_gpu=tflops, mfu=tflops / self.cfg.peak_tflops())
        record.update(result["input"].metrics)
        record.update(self.maybe_evaluate(step))
        self.metrics.log(record)
        self._window_start, self._window_steps, self._window_tokens = time.time(), 0, 0
        return record

    def stop_reason(self, loss: float | None, signalled: bool) -> str | None:
        """Why the run stops after this step (agreed on by every rank), or None; raises when it diverged."""
        step, minutes = self.state.step, self.cfg.checkpoint.exit_duration_minutes
        diverged, signalled, out_of_time = any_rank(
            [
                loss is not None and not math.isfinite(loss),
                signalled,
                bool(minutes and (time.time() - self._started) / 60 >= minutes),
            ]
        )
        if diverged:
            raise TrainingDiverged(
                f"loss is {'not finite' if loss is None else loss} at step {step}; stopping. Last good "
                f"checkpoint: {self.checkpointer.last or 'none'} "
                "(lower optimizer.lr, raise schedule.warmup_steps or check the data)"
            )
        reason = "signal" if signalled else "exit_duration" if out_of_time else None
        exit_at = self.cfg.train.exit_at_step
        if exit_at is not None and exit_at <= step < self.total_steps:
            reason = reason or "exit_at_step"
        return reason

    # --- the loop ------------------------------------------------------------------------------------------

    def fit(self) -> RunResult:
        """Train from ``state.step`` to ``train.steps`` (or until a stop reason), checkpointing on schedule."""
        state = self.state
        result = RunResult(start_step=state.step, end_step=state.step, checkpoint=self.checkpointer.last)
        stop = StopFlag(self.cfg.checkpoint.save_on_signal)
        self._started = time.time()
        if torch.distributed.get_rank() == 0 and state.step >= self.total_steps:
            print(
                f"{self.name}: {self.checkpointer.run_dir} is already at step {state.step} of "
                f"{self.total_steps}; nothing to do",
                flush=True,
            )
        try:
            self._window_start, self._window_steps, self._window_tokens = time.time(), 0, 0
            while state.step < self.total_steps:
                out = self.train_step()
                reason = self.stop_reason(out["loss"], stop.raised)
                self.maybe_log(state.step, out)
                if self.is_last_rank and out["loss"] is not None:
                    result.losses[state.step] = out["loss"]
                save_start = time.time()
                if self.checkpointer.maybe_save(state.step, state, reason) is not None:
                    result.checkpoint = self.checkpointer.last
                    self._window_start += time.time() - save_start  # throughput excludes checkpoint time
                if reason:
                    result.stopped_by = reason
                    if torch.distributed.get_rank() == 0:
                        print(
                            f"{self.name}: stopped by {reason} at step {state.step}; checkpoint {result.checkpoint}"
                        )
                    break
        finally:
            stop.restore()
            self.metrics.close()
        result.end_step = state.step
        return result

    def _eval_due(self, step: int) -> bool:
        return step % self.cfg.logging.eval_interval == 0 or step == self.total_steps

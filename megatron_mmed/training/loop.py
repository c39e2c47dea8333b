"""The training loop: megatron-core forward/backward schedules, optimizer steps, eval, logging, checkpoints.

``train(cfg)`` is what ``mmed train`` runs on every rank. It is deterministic given the config: the data
order comes from GPTDataset's seeded indices and the consumed-sample count, so a resumed run reproduces
the uninterrupted one's losses exactly.
"""

from __future__ import annotations

import math
import signal
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import torch

from megatron_mmed.common.errors import UserError
from megatron_mmed.training.config import TrainConfig


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


class _StopFlag:
    """Set by SIGTERM/SIGUSR1 (slurm's warning before the time limit); checked between steps."""

    def __init__(self, enabled: bool) -> None:
        self.raised = False
        self._old = {}
        if enabled:
            for sig in (signal.SIGTERM, signal.SIGUSR1):
                self._old[sig] = signal.signal(sig, self._handle)

    def _handle(self, signum, frame) -> None:
        self.raised = True

    def restore(self) -> None:
        for sig, handler in self._old.items():
            signal.signal(sig, handler)


def _any_rank(flags: list[bool]) -> list[bool]:
    """Element-wise OR of ``flags`` over all ranks (one small all-reduce), so every rank decides alike."""
    t = torch.tensor([int(f) for f in flags], dtype=torch.int32)
    if torch.cuda.is_available():
        t = t.cuda()
    torch.distributed.all_reduce(t, op=torch.distributed.ReduceOp.MAX)
    return [bool(v) for v in t.tolist()]


def _micro_batches(dataset, first_sample: int, count: int, mbs: int) -> Iterator[dict[str, torch.Tensor]]:
    """``count`` micro-batches of ``mbs`` consecutive samples starting at ``first_sample`` (wrapping)."""
    n = len(dataset)
    for b in range(count):
        items = [dataset[(first_sample + b * mbs + j) % n] for j in range(mbs)]
        yield {
            k: torch.stack([it[k] for it in items]) for k in ("tokens", "labels", "loss_mask", "position_ids")
        }


class _Stepper:
    """Runs one global batch (train or eval) through megatron-core's forward-backward function."""

    def __init__(
        self, cfg: TrainConfig, ddp_models: list, num_microbatches: int, dp: int, on_cpu: bool
    ) -> None:
        from megatron.core import parallel_state as ps
        from megatron.core.pipeline_parallel import get_forward_backward_func

        self.cfg, self.models, self.nmb, self.dp = cfg, ddp_models, num_microbatches, dp
        self.dp_rank = ps.get_data_parallel_rank()
        self.fb = get_forward_backward_func()
        s = cfg.model.seq_length
        # CPU: megatron-core's default causal mask is built on CUDA, so pass one explicitly.
        self.mask = torch.triu(torch.ones(s, s, dtype=torch.bool), diagonal=1)[None, None] if on_cpu else None
        self.device = "cpu" if on_cpu else torch.cuda.current_device()

    def _forward_step(self, data_iterator, model):
        batch = {k: v.to(self.device, non_blocking=True) for k, v in next(data_iterator).items()}
        if self.cfg.parallel.cp > 1:  # this rank's two (load-balanced) sequence chunks
            from megatron.core.utils import get_batch_on_this_cp_rank

            batch = get_batch_on_this_cp_rank(batch)
        mask = self.mask.to(self.device) if self.mask is not None else None
        output = model(batch["tokens"], batch["position_ids"], mask, labels=batch["labels"])

        def loss_func(per_token_loss: torch.Tensor):
            loss_mask = batch["loss_mask"].float()
            loss_sum = (per_token_loss.float() * loss_mask).sum()
            num_tokens = loss_mask.sum().to(torch.int)
            return loss_sum, num_tokens, {"lm loss": torch.stack([loss_sum.detach(), loss_mask.sum()])}

        return output, loss_func

    def run(self, dataset, first_sample: int, forward_only: bool) -> float | None:
        """Forward(-backward) the global batch starting at ``first_sample``; DP-averaged loss on the last stage."""
        from megatron.core import parallel_state as ps

        gbs, mbs = self.cfg.train.global_batch_size, self.cfg.train.micro_batch_size
        first = first_sample + self.dp_rank * (gbs // self.dp)
        chunks = len(self.models)
        iters = [_micro_batches(dataset, first, self.nmb, mbs) for _ in range(chunks)]
        out = self.fb(
            forward_step_func=self._forward_step,
            data_iterator=iters if chunks > 1 else iters[0],
            model=self.models if chunks > 1 else self.models[0],
            num_microbatches=self.nmb,
            seq_length=self.cfg.model.seq_length,
            micro_batch_size=mbs,
            forward_only=forward_only,
        )
        if not ps.is_pipeline_last_stage(ignore_virtual=True):
            return None
        total = torch.stack([o["lm loss"] for o in out]).sum(0)
        torch.distributed.all_reduce(total, group=ps.get_data_parallel_group(with_context_parallel=True))
        return float(total[0] / total[1])


def train(cfg: TrainConfig) -> RunResult:
    """Run (or resume) training as configured; every rank of the job calls this."""
    from megatron_mmed.common.cpu_shim import cpu_shim
    from megatron_mmed.training.dist import destroy_distributed, init_distributed
    from megatron_mmed.training.setup import preflight

    preflight(cfg)
    if not cfg.checkpoint.dir:
        raise UserError(
            "checkpoint.dir is required (the run directory: checkpoints, metrics.jsonl, config.yaml)"
        )
    if not cfg.data.blend:
        raise UserError("data.blend is required (the blend.json written by `mmed tokenize`)")
    import dataclasses

    from megatron_mmed.training.data import load_blend, resolve_vocab

    blend = load_blend(cfg.data.blend)
    arch = cfg.architecture()
    vocab = resolve_vocab(cfg.model.vocab_size, cfg.data.blend, blend, arch.vocab_size)
    arch = dataclasses.replace(arch, vocab_size=vocab)
    with cpu_shim() as on_cpu:
        env = init_distributed(cfg, vocab)
        try:
            return _train(cfg, env, blend, arch, on_cpu)
        finally:
            destroy_distributed()


def _train(cfg: TrainConfig, env, blend, arch, on_cpu: bool) -> RunResult:
    from megatron_mmed.common.config import save_config, to_dict
    from megatron_mmed.models.weights import load_weights
    from megatron_mmed.training import checkpoint as ckpt
    from megatron_mmed.training.architecture import run_model
    from megatron_mmed.training.data import blend_eod, blend_tokenizer_path, build_datasets
    from megatron_mmed.training.flops import flops_per_token
    from megatron_mmed.training.metrics import MetricsLogger, truncate_metrics
    from megatron_mmed.training.setup import build_model_and_optimizer

    layout = env.parallelism
    vocab = arch.vocab_size
    run_dir = Path(cfg.checkpoint.dir)
    # before anything is written: the newest intact checkpoint (verified against its manifest), and the
    # weights it resumes or starts from checked to be this run's model
    resume_from = ckpt.find_resume_checkpoint(run_dir) if run_dir.is_dir() else None
    model = run_model(cfg, arch, layout.padded_vocab_size, resume_from, blend_tokenizer_path(cfg.data.blend))
    if env.rank == 0:
        run_dir.mkdir(parents=True, exist_ok=True)
        save_config(cfg, run_dir / "config.yaml")
        print(f"mmed train: {arch.name}, {layout.describe()}; run dir {run_dir}", flush=True)
    torch.distributed.barrier()

    gpt_models, ddp_models, optimizer, scheduler, _ = build_model_and_optimizer(
        cfg, arch, layout.padded_vocab_size, on_cpu
    )
    t, log = cfg.train, cfg.logging
    state = ckpt.TrainState()
    if resume_from is not None:
        state = ckpt.load_checkpoint(resume_from, gpt_models, optimizer, scheduler)
        changed = ckpt.changed_settings(resume_from, cfg)
        if changed and env.rank == 0:
            print(f"mmed train: resuming with changed settings (applied): {'; '.join(changed)}", flush=True)
    elif cfg.checkpoint.init_from:
        load_weights(cfg.checkpoint.init_from, gpt_models)
        for m in ddp_models:  # the optimizer's fp32 main params must follow the loaded weights
            m.broadcast_params()
        optimizer.reload_model_params()
    if env.is_last_rank and run_dir.joinpath("metrics.jsonl").exists():
        truncate_metrics(run_dir / "metrics.jsonl", state.step)

    evals = t.steps // log.eval_interval + 1
    train_ds, valid = build_datasets(
        blend,
        seq_length=cfg.model.seq_length,
        split=cfg.data.split,
        seed=t.seed,
        cache_dir=cfg.data.cache_dir or str(run_dir / "data_cache"),
        train_samples=t.steps * t.global_batch_size,
        valid_samples=max(1, log.eval_iters * t.global_batch_size * evals),
        vocab_size=vocab,
        eod=blend_eod(cfg.data.blend),
    )
    stepper = _Stepper(cfg, ddp_models, layout.num_microbatches, layout.dp, on_cpu)
    train_flops = flops_per_token(arch, cfg.model.seq_length, layout.padded_vocab_size).training
    metrics = MetricsLogger(
        run_dir,
        enabled=env.is_last_rank,
        wandb_cfg={
            "project": log.wandb_project,
            "mode": log.wandb_mode,
            "name": log.wandb_run_name,
            "config": to_dict(cfg),
        },
    )
    stop = _StopFlag(cfg.checkpoint.save_on_signal)
    result = RunResult(start_step=state.step, end_step=state.step, checkpoint=resume_from)
    tokens_per_step = t.global_batch_size * cfg.model.seq_length
    started = time.time()
    if env.rank == 0 and state.step >= t.steps:
        print(
            f"mmed train: {run_dir} is already at step {state.step} of {t.steps}; nothing to do", flush=True
        )
    try:
        window_start, window_steps = time.time(), 0
        while state.step < t.steps:
            for m in ddp_models:
                m.train()
                m.zero_grad_buffer()
            optimizer.zero_grad()
            loss = stepper.run(train_ds, state.consumed_samples, forward_only=False)
            ok, grad_norm, _ = optimizer.step()
            lr = optimizer.param_groups[0]["lr"]  # the rate this step used
            scheduler.step(increment=1)  # the schedule counts optimizer steps
            state.step += 1
            state.consumed_samples += t.global_batch_size
            window_steps += 1
            minutes = cfg.checkpoint.exit_duration_minutes
            diverged, signalled, out_of_time = _any_rank(
                [
                    loss is not None and not math.isfinite(loss),
                    stop.raised,
                    bool(minutes and (time.time() - started) / 60 >= minutes),
                ]
            )
            if diverged:
                last = result.checkpoint
                raise TrainingDiverged(
                    f"loss is {'not finite' if loss is None else loss} at step {state.step}; stopping. Last good checkpoint: {last or 'none'} "
                    "(lower optimizer.lr, raise schedule.warmup_steps or check the data)"
                )
            evaluate = state.step % log.eval_interval == 0 or state.step == t.steps
            if state.step % log.log_interval == 0 or evaluate:
                elapsed = time.time() - window_start
                tps = window_steps * tokens_per_step / max(elapsed, 1e-9)
                tflops = tps / env.world_size * train_flops / 1e12
                record = {
                    "step": state.step,
                    "loss": loss,
                    "lr": lr,
                    "grad_norm": float(grad_norm) if grad_norm is not None else None,
                    "tokens_per_s": tps,
                    "tflops_per_gpu": tflops,
                    "mfu": tflops / cfg.peak_tflops(),
                    "consumed_tokens": state.consumed_samples * cfg.model.seq_length,
                }
                if evaluate and log.eval_iters > 0 and valid:
                    record.update(_evaluate(stepper, valid, log.eval_iters))
                metrics.log(record)
                window_start, window_steps = time.time(), 0
            if env.is_last_rank and loss is not None:
                result.losses[state.step] = loss
            reason = "signal" if signalled else "exit_duration" if out_of_time else None
            if t.exit_at_step is not None and t.exit_at_step <= state.step < t.steps:
                reason = reason or "exit_at_step"
            due = state.step % cfg.checkpoint.save_interval == 0 or state.step == t.steps or reason
            if cfg.checkpoint.save and due:
                save_start = time.time()
                result.checkpoint = ckpt.save_checkpoint(
                    run_dir, state.step, gpt_models, optimizer, scheduler, state, cfg, model
                )
                window_start += time.time() - save_start  # throughput excludes checkpoint time
            if reason:
                result.stopped_by = reason
                if env.rank == 0:
                    print(
                        f"mmed train: stopped by {reason} at step {state.step}; checkpoint {result.checkpoint}"
                    )
                break
    finally:
        stop.restore()
        metrics.close()
    result.end_step = state.step
    return result


def _evaluate(stepper: _Stepper, valid: dict, iters: int) -> dict:
    """Validation loss per language (and their mean) over ``iters`` fixed global batches each."""
    for m in stepper.models:
        m.eval()
    per_lang = {}
    with torch.no_grad():
        for lang, ds in valid.items():
            gbs = stepper.cfg.train.global_batch_size
            losses = [stepper.run(ds, i * gbs, forward_only=True) for i in range(iters)]
            if losses[0] is not None:
                per_lang[lang] = sum(losses) / len(losses)
    for m in stepper.models:
        m.train()
    if not per_lang:
        return {}
    return {"val_loss": sum(per_lang.values()) / len(per_lang), "val_loss_per_lang": per_lang}

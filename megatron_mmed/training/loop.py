"""Pretraining (``mmed train``): GPTDataset batches, the causal-LM forward step and per-language validation,
run by the shared :class:`~megatron_mmed.training.trainer.Trainer`.

``train(cfg)`` is what ``mmed train`` runs on every rank. It is deterministic given the config: the data
order comes from GPTDataset's seeded indices and the consumed-sample count, so a resumed run reproduces
the uninterrupted one's losses exactly.
"""

from __future__ import annotations

from collections.abc import Iterator

import torch

from megatron_mmed.common.errors import UserError
from megatron_mmed.training.config import TrainConfig
from megatron_mmed.training.trainer import RunResult, StepInput, Stepper, TrainingDiverged

__all__ = ["GPTBatches", "RunResult", "TrainingDiverged", "pretrain_trainer", "train"]


def _micro_batches(dataset, first_sample: int, count: int, mbs: int) -> Iterator[dict[str, torch.Tensor]]:
    """``count`` micro-batches of ``mbs`` consecutive samples starting at ``first_sample`` (wrapping)."""
    n = len(dataset)
    for b in range(count):
        items = [dataset[(first_sample + b * mbs + j) % n] for j in range(mbs)]
        yield {
            k: torch.stack([it[k] for it in items]) for k in ("tokens", "labels", "loss_mask", "position_ids")
        }


class GPTBatches:
    """A global batch is the ``global_batch_size`` samples after those consumed; this DP rank takes its share."""

    def __init__(self, dataset, cfg: TrainConfig, num_microbatches: int, dp: int, dp_rank: int) -> None:
        self.dataset, self.nmb = dataset, num_microbatches
        self.gbs, self.mbs = cfg.train.global_batch_size, cfg.train.micro_batch_size
        self.seq, self.first = cfg.model.seq_length, dp_rank * (self.gbs // dp)

    def step_input(self, step: int, consumed_samples: int) -> StepInput:
        first = consumed_samples + self.first
        return StepInput(
            microbatches=lambda: _micro_batches(self.dataset, first, self.nmb, self.mbs),
            num_microbatches=self.nmb,
            seq_length=self.seq,
            micro_batch_size=self.mbs,
            samples=self.gbs,
            tokens=self.gbs * self.seq,
            metrics={"consumed_tokens": (consumed_samples + self.gbs) * self.seq},
        )


def causal_forward_step(cfg: TrainConfig, on_cpu: bool):
    """``forward_step_func`` of pretraining: causal attention over the whole sequence, loss on ``loss_mask``."""
    s = cfg.model.seq_length
    # CPU: megatron-core's default causal mask is built on CUDA, so pass one explicitly.
    causal = torch.triu(torch.ones(s, s, dtype=torch.bool), diagonal=1)[None, None] if on_cpu else None
    device = "cpu" if on_cpu else torch.cuda.current_device()

    def forward_step(data_iterator, model):
        batch = {k: v.to(device, non_blocking=True) for k, v in next(data_iterator).items()}
        if cfg.parallel.cp > 1:  # this rank's two (load-balanced) sequence chunks
            from megatron.core.utils import get_batch_on_this_cp_rank

            batch = get_batch_on_this_cp_rank(batch)
        mask = causal.to(device) if causal is not None else None
        output = model(batch["tokens"], batch["position_ids"], mask, labels=batch["labels"])

        def loss_func(per_token_loss: torch.Tensor):
            loss_mask = batch["loss_mask"].float()
            loss_sum = (per_token_loss.float() * loss_mask).sum()
            num_tokens = loss_mask.sum().to(torch.int)
            return loss_sum, num_tokens, {"lm loss": torch.stack([loss_sum.detach(), loss_mask.sum()])}

        return output, loss_func

    return forward_step


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
            return pretrain_trainer(cfg, env, blend, arch, on_cpu).fit()
        finally:
            destroy_distributed()


def pretrain_trainer(cfg: TrainConfig, env, blend, arch, on_cpu: bool):
    """The :class:`Trainer` of a pretraining run, set up (resumed or initialised) and ready to ``fit()``."""
    from megatron.core import parallel_state as ps

    from megatron_mmed.training.data import blend_eod, blend_tokenizer_path, build_datasets
    from megatron_mmed.training.flops import flops_per_token
    from megatron_mmed.training.metrics import MetricsLogger
    from megatron_mmed.training.trainer import Trainer, start_run

    par = env.parallelism
    parts, checkpointer, state = start_run(
        cfg, env, arch, on_cpu, tokenizer=blend_tokenizer_path(cfg.data.blend)
    )
    t, log = cfg.train, cfg.logging
    evals = t.steps // log.eval_interval + 1
    train_ds, valid = build_datasets(
        blend,
        seq_length=cfg.model.seq_length,
        split=cfg.data.split,
        seed=t.seed,
        cache_dir=cfg.data.cache_dir or str(checkpointer.run_dir / "data_cache"),
        train_samples=t.steps * t.global_batch_size,
        valid_samples=max(1, log.eval_iters * t.global_batch_size * evals),
        vocab_size=arch.vocab_size,
        eod=blend_eod(cfg.data.blend),
    )
    dp_rank = ps.get_data_parallel_rank()

    def batches(ds) -> GPTBatches:
        return GPTBatches(ds, cfg, par.num_microbatches, par.dp, dp_rank)

    def evaluate(stepper: Stepper) -> dict:
        """Validation loss per language (and their mean) over ``eval_iters`` fixed global batches each."""
        per_lang = {}
        for lang, ds in valid.items():
            source = batches(ds)
            inputs = [source.step_input(0, i * t.global_batch_size) for i in range(log.eval_iters)]
            losses = [stepper.run(x, forward_only=True) for x in inputs]
            if losses[0] is not None:
                per_lang[lang] = sum(losses) / len(losses)
        if not per_lang:
            return {}
        return {"val_loss": sum(per_lang.values()) / len(per_lang), "val_loss_per_lang": per_lang}

    metrics = MetricsLogger.for_run(checkpointer.run_dir, env.is_last_rank, cfg)
    return Trainer(
        cfg,
        parts,
        batches(train_ds),
        causal_forward_step(cfg, on_cpu),
        checkpointer,
        metrics,
        state,
        is_last_rank=env.is_last_rank,
        world_size=env.world_size,
        evaluate=evaluate if valid else None,
        flops_per_token=flops_per_token(arch, cfg.model.seq_length, par.padded_vocab_size).training,
    )

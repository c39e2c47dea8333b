"""``mmed finetune``: MMedBench supervised fine-tuning, full or LoRA, on the pretraining Trainer.

``finetune(cfg)`` runs on every rank. It loads and tokenizes the training items (``data_report.json``), checks
the tokenizer against ``checkpoint.init_from``, sizes the run (epochs x steps per epoch) and hands the shared
:class:`~megatron_mmed.training.trainer.Trainer` its own data (:class:`SFTSource`: packed rows with the loss on
target tokens only) and forward step (per-example attention and positions); everything else (optimizer,
schedule, checkpoints with ``latest``, exact resume, signals, ``metrics.jsonl``, W&B) is pretraining's.

LoRA: a model hook loads the frozen base from ``init_from`` and adds the adapters before DDP and the optimizer
see the model; checkpoints hold the adapters (and their optimizer state) plus ``adapter.yaml`` naming the base.
"""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path

from megatron_mmed.common.errors import UserError
from megatron_mmed.finetune.config import FinetuneConfig
from megatron_mmed.finetune.packing import SFTBatches
from megatron_mmed.training.trainer import RunResult, StepInput


class SFTSource:
    """Fine-tuning's batch source: step -> this DP rank's micro-batches (the order depends on the step alone,
    so a resume at step ``s`` trains on exactly what an uninterrupted run would)."""

    def __init__(self, batches: SFTBatches, dp_rank: int) -> None:
        self.batches, self.dp_rank = batches, dp_rank

    def step_input(self, step: int, consumed_samples: int) -> StepInput:
        sb = self.batches.step(step, self.dp_rank)
        microbatches = sb.microbatches
        return StepInput(
            microbatches=lambda: iter(microbatches),
            num_microbatches=sb.num_microbatches,
            seq_length=max(int(mb["tokens"].shape[1]) for mb in microbatches),
            micro_batch_size=self.batches.mbs,
            samples=sb.examples,
            tokens=sb.real_positions,  # tokens/s counts example tokens, not padding
            metrics={
                "epoch": sb.epoch,
                "examples": sb.examples,
                "target_tokens": sb.target_tokens,
                "real_positions": sb.real_positions,
                "non_padding_share": sb.non_padding_share,
            },
        )


def finetune(cfg: FinetuneConfig) -> RunResult:
    """Run (or resume) a fine-tuning run as configured; every rank of the job calls this."""
    from megatron_mmed.common.cpu_shim import cpu_shim
    from megatron_mmed.finetune.data import check_tokenizer, load_sft_data
    from megatron_mmed.training.dist import destroy_distributed, init_distributed
    from megatron_mmed.training.setup import preflight

    if not cfg.checkpoint.dir:
        raise UserError(
            "checkpoint.dir is required (the run directory: checkpoints, metrics.jsonl, config.yaml)"
        )
    if not cfg.checkpoint.init_from:
        raise UserError(
            "checkpoint.init_from is required (the model to fine-tune: an `mmed convert hf-to-mcore` output or "
            "an `mmed train` run dir)"
        )
    data = load_sft_data(cfg.data)
    check_tokenizer(data, cfg.checkpoint.init_from)
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    tc = cfg.train_config(cfg.train.total_steps(len(data.examples)), world_size)
    tc.validate()  # the step count is known now: warmup < decay steps
    preflight(tc)
    arch = tc.architecture()
    arch = dataclasses.replace(arch, vocab_size=_vocab_size(cfg, data.vocab_size))
    with cpu_shim() as on_cpu:
        env = init_distributed(tc, arch.vocab_size)
        try:
            return _finetune(cfg, tc, env, data, arch, on_cpu)
        finally:
            destroy_distributed()


def _vocab_size(cfg: FinetuneConfig, tokenizer_vocab: int) -> int:
    """``model.vocab_size``, else the vocabulary of the weights fine-tuned (their ``model_config.yaml``), else
    the tokenizer's."""
    from megatron_mmed.models.weights import resolve_weights_dir
    from megatron_mmed.training.architecture import saved_model_of

    if cfg.model.vocab_size:
        return cfg.model.vocab_size
    saved = saved_model_of(resolve_weights_dir(cfg.checkpoint.init_from))  # type: ignore[arg-type]
    return saved.preset.vocab_size if saved is not None else tokenizer_vocab


def _finetune(cfg: FinetuneConfig, tc, env, data, arch, on_cpu: bool) -> RunResult:
    import torch
    from megatron.core import parallel_state as ps

    from megatron_mmed.finetune.packing import packing_stats
    from megatron_mmed.finetune.step import make_forward_step
    from megatron_mmed.models.builder import uses_te
    from megatron_mmed.training.metrics import MetricsLogger
    from megatron_mmed.training.trainer import Trainer, start_run

    thd = not on_cpu and uses_te(cfg.model.spec)  # Transformer Engine: megatron-core's packed (THD) path
    if thd and cfg.train.micro_batch_size != 1:
        raise UserError(
            "train.micro_batch_size must be 1 with the Transformer Engine spec (packed rows go through "
            f"megatron-core's THD path one row at a time), got {cfg.train.micro_batch_size}"
        )
    t = cfg.train
    batches = SFTBatches(
        data.examples,
        cfg.model.seq_length,
        t.global_batch_size,
        t.micro_batch_size,
        env.parallelism.dp,
        t.seed,
        cfg.data.pack,
        data.pad_id,
        cfg.data.pad_to_multiple_of,
        fixed_length=cfg.parallel.pp > 1,  # pipeline stages exchange activations of one fixed shape
    )
    hooks = _lora_hooks(cfg) if cfg.peft == "lora" else {}
    parts, checkpointer, state = start_run(
        tc,
        env,
        arch,
        on_cpu,
        run_config=cfg,
        tokenizer=str(Path(cfg.data.tokenizer).resolve()) if cfg.data.tokenizer else None,
        name="mmed finetune",
        per_token_loss=True,  # the step's loss is the mean over all its target tokens
        parallel_note=f"{t.global_batch_size} examples a step, {'packed' if cfg.data.pack else 'one a row'} in rows "
        f"of {cfg.model.seq_length} positions, {t.micro_batch_size} row(s) a micro-batch (a count that varies)",
        **hooks,
    )
    run_dir = checkpointer.run_dir
    if env.rank == 0:
        data.report.packing = packing_stats(batches)
        data.report.write(run_dir / "data_report.json")
        print(f"mmed finetune: {data.report.summary()}; {tc.train.steps} steps", flush=True)
        if cfg.peft == "lora":
            from megatron_mmed.finetune.adapters import write_adapter_meta

            write_adapter_meta(run_dir, cfg.lora, cfg.checkpoint.init_from, t.seed)  # type: ignore[arg-type]
    metrics = MetricsLogger.for_run(run_dir, env.is_last_rank, cfg)
    device = "cpu" if on_cpu else torch.cuda.current_device()
    trainer = Trainer(
        tc,
        parts,
        SFTSource(batches, ps.get_data_parallel_rank()),
        make_forward_step(device, thd=thd),
        checkpointer,
        metrics,
        state,
        is_last_rank=env.is_last_rank,
        world_size=env.world_size,
        name="mmed finetune",
    )
    return trainer.fit()


def _lora_hooks(cfg: FinetuneConfig) -> dict:
    """What makes a LoRA run: the base loaded and adapters added before wrapping, checkpoints of adapters."""
    from megatron_mmed.finetune.adapters import write_adapter_meta
    from megatron_mmed.finetune.lora import adapter_sharded_state_dict, apply_lora
    from megatron_mmed.models.weights import load_weights

    base, seed = cfg.checkpoint.init_from, cfg.train.seed

    def add_adapters(gpt_models: list) -> None:
        load_weights(base, gpt_models)  # the frozen base: before the adapters, whose keys it lacks
        for m in gpt_models:
            apply_lora(m, cfg.lora, seed=seed)

    return {
        "model_hook": add_adapters,
        "load_init": False,
        "model_state": adapter_sharded_state_dict,
        "extra_files": lambda folder: write_adapter_meta(folder, cfg.lora, base, seed),  # type: ignore[arg-type]
    }

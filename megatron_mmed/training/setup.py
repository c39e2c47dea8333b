"""Build the model chunks, Megatron DDP, the Megatron optimizer and the LR scheduler for a config."""

from __future__ import annotations

from collections.abc import Callable

import torch

from megatron_mmed.common.errors import UserError
from megatron_mmed.models.builder import build_gpt_model, te_available, transformer_config, uses_te
from megatron_mmed.models.internlm2 import ModelPreset
from megatron_mmed.training.config import TrainConfig


def preflight(cfg: TrainConfig) -> None:
    """Refuse settings this machine cannot run (FP8/TE without a GPU, W&B without wandb) on every rank,
    before any process group exists."""
    if cfg.logging.wandb_project and cfg.logging.wandb_mode != "disabled":
        import importlib.util

        if importlib.util.find_spec("wandb") is None:
            raise UserError(
                "logging.wandb_project is set but wandb is not installed (pip install wandb, or unset it)"
            )
    if cfg.precision.fp8 is not None and not torch.cuda.is_available():
        raise UserError(
            "precision.fp8 needs NVIDIA GPUs (Hopper or newer) with Transformer Engine; this machine has no "
            "CUDA device. Set precision.fp8=null to train in BF16/FP32 on CPU."
        )
    if cfg.precision.fp8 is not None and not te_available():
        raise UserError("precision.fp8 needs Transformer Engine (import transformer_engine failed)")
    if cfg.parallel.cp > 1 and not te_available():
        raise UserError("parallel.cp > 1 needs Transformer Engine's attention (GPU); use parallel.cp=1 here")
    if cfg.model.spec == "te" and not te_available():
        raise UserError(
            "model.spec=te needs Transformer Engine and a CUDA device; use model.spec=auto or local"
        )


def _core_config(cfg: TrainConfig, arch: ModelPreset, on_cpu: bool, per_token_loss: bool = False):
    p, pr = cfg.parallel, cfg.precision
    dtype = torch.bfloat16 if pr.dtype == "bf16" else torch.float32
    fp8 = {}
    if pr.fp8 is not None:
        fp8 = dict(
            fp8=pr.fp8,
            fp8_recipe=pr.fp8_recipe,
            fp8_amax_history_len=pr.fp8_amax_history_len,
            fp8_amax_compute_algo=pr.fp8_amax_compute_algo,
            first_last_layers_bf16=pr.first_last_layers_bf16,
            num_layers_at_start_in_bf16=pr.num_layers_at_start_in_bf16,
            num_layers_at_end_in_bf16=pr.num_layers_at_end_in_bf16,
        )
    return transformer_config(
        arch,
        fusions=cfg.model.fusions and not on_cpu and uses_te(cfg.model.spec),
        tensor_model_parallel_size=p.tp,
        pipeline_model_parallel_size=p.pp,
        virtual_pipeline_model_parallel_size=p.vpp,
        context_parallel_size=p.cp,
        sequence_parallel=p.sequence_parallel,
        params_dtype=dtype,
        bf16=pr.dtype == "bf16",
        pipeline_dtype=dtype,
        use_cpu_initialization=on_cpu,  # CPU: identical init at any TP (weights built whole, then split)
        batch_p2p_comm=not on_cpu,
        # fine-tuning: a step's loss (and gradient) is the mean over all its target tokens, not a mean of
        # micro-batch means (SFT micro-batches hold different numbers of target tokens)
        calculate_per_token_loss=per_token_loss,
        **fp8,
    )


def build_model_and_optimizer(
    cfg: TrainConfig,
    arch: ModelPreset,
    padded_vocab: int,
    on_cpu: bool,
    model_hook: Callable[[list], None] | None = None,
    per_token_loss: bool = False,
):
    """Returns ``(gpt_models, ddp_models, optimizer, scheduler, core_config)`` for this rank.

    ``model_hook(gpt_models)`` runs on the bare model chunks before DDP / Float16Module wrapping and before
    the optimizer sees their parameters (LoRA: load the frozen base, add the adapters). ``per_token_loss``:
    megatron-core's ``calculate_per_token_loss`` (fine-tuning).
    """
    from megatron.core import parallel_state as ps
    from megatron.core.distributed import DistributedDataParallel, DistributedDataParallelConfig
    from megatron.core.distributed.finalize_model_grads import finalize_model_grads
    from megatron.core.optimizer import OptimizerConfig, get_megatron_optimizer
    from megatron.core.optimizer_param_scheduler import OptimizerParamScheduler
    from megatron.core.transformer.module import Float16Module

    core = _core_config(cfg, arch, on_cpu, per_token_loss)
    chunks = cfg.parallel.vpp or 1
    gpt_models = []
    for vp in range(chunks):
        vp_stage = vp if cfg.parallel.vpp else None
        gpt_models.append(
            build_gpt_model(
                arch,
                core,
                padded_vocab,
                cfg.model.seq_length,
                spec=cfg.model.spec,
                pre_process=ps.is_pipeline_first_stage(ignore_virtual=False, vp_stage=vp_stage),
                post_process=ps.is_pipeline_last_stage(ignore_virtual=False, vp_stage=vp_stage),
                vp_stage=vp_stage,
            )
        )
    if model_hook is not None:  # before .cuda(): what the hook adds moves to the GPU with the model
        model_hook(gpt_models)
    if not on_cpu:
        for m in gpt_models:
            m.cuda(torch.cuda.current_device())
    p = cfg.parallel
    ddp_config = DistributedDataParallelConfig(
        grad_reduce_in_fp32=True,
        overlap_grad_reduce=p.overlap_grad_reduce,
        overlap_param_gather=p.overlap_param_gather,
        use_distributed_optimizer=p.use_distributed_optimizer,
        check_for_nan_in_grad=False,
    )
    ddp_models = []
    for i, m in enumerate(gpt_models):
        wrapped = Float16Module(core, m) if cfg.precision.dtype == "bf16" else m
        ddp_models.append(DistributedDataParallel(core, ddp_config, wrapped, disable_bucketing=i > 0))
    o = cfg.optimizer
    optimizer = get_megatron_optimizer(
        OptimizerConfig(
            optimizer="adam",
            lr=o.lr,
            min_lr=o.min_lr,
            weight_decay=o.weight_decay,
            adam_beta1=o.adam_beta1,
            adam_beta2=o.adam_beta2,
            adam_eps=o.adam_eps,
            clip_grad=o.clip_grad,
            bf16=cfg.precision.dtype == "bf16",
            params_dtype=core.params_dtype,
            use_distributed_optimizer=p.use_distributed_optimizer,
            overlap_param_gather=p.overlap_param_gather,
        ),
        ddp_models,
    )
    s = cfg.schedule
    decay_steps = s.decay_steps or cfg.train.steps
    scheduler = OptimizerParamScheduler(
        optimizer,
        init_lr=0.0,
        max_lr=o.lr,
        min_lr=o.min_lr,
        lr_warmup_steps=s.warmup_steps,
        lr_decay_steps=decay_steps,
        lr_decay_style=s.decay_style,
        start_wd=o.weight_decay,
        end_wd=o.weight_decay,
        wd_incr_steps=decay_steps,
        wd_incr_style="constant",
        wsd_decay_steps=s.wsd_decay_steps,
        lr_wsd_decay_style=s.wsd_decay_style if s.decay_style == "WSD" else None,
        # on resume the config's schedule wins over the checkpoint's (a changed lr is applied, not ignored);
        # checkpoint.load_checkpoint also restores the config's per-group max/min lr, betas and eps
        use_checkpoint_opt_param_scheduler=False,
        override_opt_param_scheduler=True,
    )
    core.no_sync_func = [m.no_sync for m in ddp_models] if len(ddp_models) > 1 else ddp_models[0].no_sync
    core.finalize_model_grads_func = finalize_model_grads
    core.grad_scale_func = optimizer.scale_loss
    if p.overlap_param_gather:
        core.param_sync_func = [m.start_param_sync for m in ddp_models]
        if len(ddp_models) == 1:
            core.param_sync_func = core.param_sync_func[0]
    return gpt_models, ddp_models, optimizer, scheduler, core

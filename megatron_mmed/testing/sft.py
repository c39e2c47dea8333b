"""A megatron-core SFT model + Megatron DDP + Megatron optimizer, driven directly (no Trainer): tests and
``benchmarks/finetune.py`` build the same thing with the settings ``mmed finetune`` uses on one CPU rank
(``training.setup.build_model_and_optimizer``: fp32 grad buffer, no overlap, no distributed optimizer)."""

from __future__ import annotations

from pathlib import Path


def mcore_sft(
    mcore_dir: Path,
    lr: float = 1e-3,
    clip: float = 1.0,
    lora=None,
    seq_length: int = 1024,
    wrap: bool = True,
    sequence_parallel: bool = False,
):
    """``(gpt_model, ddp_model, optimizer)`` at TP from parallel_state, loaded from a converted checkpoint
    (local spec, fp32), with LoRA adapters when ``lora`` (a ``LoraConfig``) is given.

    Call inside an initialised megatron-core session. The config counts the loss per token
    (``calculate_per_token_loss``), as fine-tuning does: a step's loss is the mean over its target tokens.
    """
    import torch
    from megatron.core import parallel_state as ps
    from megatron.core.distributed import DistributedDataParallel, DistributedDataParallelConfig
    from megatron.core.distributed.finalize_model_grads import finalize_model_grads
    from megatron.core.optimizer import OptimizerConfig, get_megatron_optimizer

    from megatron_mmed.models.builder import build_gpt_model, transformer_config
    from megatron_mmed.models.weights import load_weights, read_model_config

    saved = read_model_config(mcore_dir / "model_config.yaml")
    preset = saved.preset
    core = transformer_config(
        preset,
        params_dtype=torch.float32,
        use_cpu_initialization=True,
        perform_initialization=False,
        calculate_per_token_loss=True,
        tensor_model_parallel_size=ps.get_tensor_model_parallel_world_size(),
        sequence_parallel=sequence_parallel,
    )
    model = build_gpt_model(preset, core, saved.padded_vocab_size, seq_length, spec="local")
    load_weights(mcore_dir, [model])
    if lora is not None:
        from megatron_mmed.finetune.lora import apply_lora

        apply_lora(model, lora, seed=0)
    if not wrap:  # plain autograd (.grad), no Megatron DDP grad buffers
        return model, None, None
    ddp = DistributedDataParallel(
        core,
        DistributedDataParallelConfig(grad_reduce_in_fp32=True, check_for_nan_in_grad=False),
        model,
    )
    opt = get_megatron_optimizer(
        OptimizerConfig(
            optimizer="adam",
            lr=lr,
            min_lr=lr,
            weight_decay=0.0,
            adam_beta1=0.9,
            adam_beta2=0.999,
            adam_eps=1e-8,
            clip_grad=clip,
            params_dtype=torch.float32,
        ),
        [ddp],
    )
    core.finalize_model_grads_func = finalize_model_grads
    core.no_sync_func = ddp.no_sync
    core.grad_scale_func = opt.scale_loss
    return model, ddp, opt


def mcore_step(ddp, opt, microbatches: list, seq_length: int, forward_only: bool = False) -> float:
    """One global batch through megatron-core's schedule (+ optimizer step): mean loss over target tokens."""
    import torch
    from megatron.core.pipeline_parallel import get_forward_backward_func

    from megatron_mmed.finetune.step import make_forward_step

    ddp.zero_grad_buffer()
    opt.zero_grad()
    out = get_forward_backward_func()(
        forward_step_func=make_forward_step("cpu"),
        data_iterator=iter(microbatches),
        model=ddp,
        num_microbatches=len(microbatches),
        seq_length=seq_length,
        micro_batch_size=microbatches[0]["tokens"].shape[0],
        forward_only=forward_only,
    )
    total = torch.stack([o["lm loss"] for o in out]).sum(0)
    if not forward_only:
        opt.step()
    return float(total[0] / total[1])

"""Build a megatron-core ``GPTModel`` from a preset: ``TransformerConfig`` + layer spec + model args."""

from __future__ import annotations

from typing import Any

import torch

from megatron_mmed.models.internlm2 import ModelPreset


def transformer_config(arch: ModelPreset, fusions: bool = False, **parallel_and_precision: Any):
    """The megatron-core ``TransformerConfig`` of ``arch`` (InternLM2: RMSNorm, SwiGLU, no bias, no dropout).

    ``fusions`` turns on the GPU kernel fusions (SwiGLU, RoPE, cross-entropy, weight-gradient accumulation;
    Transformer Engine spec only). ``parallel_and_precision`` passes TP/PP/SP/dtype/FP8 fields through.
    """
    import torch.nn.functional as F
    from megatron.core.transformer.transformer_config import TransformerConfig

    return TransformerConfig(
        num_layers=arch.num_layers,
        hidden_size=arch.hidden_size,
        num_attention_heads=arch.num_attention_heads,
        num_query_groups=arch.num_query_groups,
        kv_channels=arch.head_dim,
        ffn_hidden_size=arch.ffn_hidden_size,
        normalization="RMSNorm",
        layernorm_epsilon=arch.norm_epsilon,
        gated_linear_unit=True,
        activation_func=F.silu,
        add_bias_linear=False,
        add_qkv_bias=False,
        hidden_dropout=0.0,
        attention_dropout=0.0,
        init_method_std=arch.init_method_std,
        bias_activation_fusion=fusions,
        bias_dropout_fusion=fusions,
        masked_softmax_fusion=fusions,
        persist_layer_norm=False,
        apply_rope_fusion=fusions,
        cross_entropy_loss_fusion=fusions,
        gradient_accumulation_fusion=fusions,
        **parallel_and_precision,
    )


def te_available() -> bool:
    """Transformer Engine importable and a CUDA device present."""
    if not torch.cuda.is_available():
        return False
    try:
        import transformer_engine  # noqa: F401
    except ImportError:
        return False
    return True


class LocalRMSNorm(torch.nn.RMSNorm):
    """torch RMSNorm with megatron-core's norm signature that also works under sequence parallelism.

    With sequence parallel each TP rank normalises a different slice of the sequence, so the weight's
    gradient must be all-reduced across TP; megatron-core does that for params marked ``sequence_parallel``
    (its own torch-norm wrapper refuses sequence parallel instead).
    """

    def __init__(
        self,
        config,
        hidden_size: int,
        eps: float = 1e-5,
        persist_layer_norm: bool = False,
        zero_centered_gamma: bool = False,
        normalization: str = "RMSNorm",
    ) -> None:
        super().__init__(hidden_size, eps=eps)
        self.weight.sequence_parallel = config.sequence_parallel


def uses_te(spec: str = "auto") -> bool:
    """Whether ``model.spec`` resolves to the Transformer Engine spec on this machine."""
    return spec == "te" or (spec == "auto" and te_available())


def layer_spec(arch: ModelPreset, spec: str = "auto", config=None, vp_stage: int | None = None):
    """Transformer Engine layer spec when TE is usable ("auto"/"te"); otherwise megatron-core's local spec
    with :class:`LocalRMSNorm` and :class:`SegmentAttention` (per-example attention of packed rows without a
    dense mask), as a block spec of this pipeline stage's layers when ``config`` is given.
    """
    import dataclasses

    from megatron.core.models.gpt import gpt_layer_specs
    from megatron.core.transformer.transformer_block import (
        TransformerBlockSubmodules,
        get_num_layers_to_build,
    )

    from megatron_mmed.models.attention import SegmentAttention

    if uses_te(spec):
        return gpt_layer_specs.get_gpt_layer_with_transformer_engine_spec()
    local = gpt_layer_specs.get_gpt_layer_local_spec(normalization="RMSNorm")
    norms = {"input_layernorm": LocalRMSNorm, "pre_mlp_layernorm": LocalRMSNorm}
    local = dataclasses.replace(local, submodules=dataclasses.replace(local.submodules, **norms))
    attn = local.submodules.self_attention
    attn = dataclasses.replace(
        attn, submodules=dataclasses.replace(attn.submodules, core_attention=SegmentAttention)
    )
    local = dataclasses.replace(local, submodules=dataclasses.replace(local.submodules, self_attention=attn))
    if config is None:
        return local
    n = get_num_layers_to_build(config, vp_stage=vp_stage)
    return TransformerBlockSubmodules(layer_specs=[local] * n, layer_norm=LocalRMSNorm)


def build_gpt_model(
    arch: ModelPreset,
    config,
    padded_vocab: int,
    max_sequence_length: int,
    spec: str = "auto",
    pre_process: bool = True,
    post_process: bool = True,
    vp_stage: int | None = None,
):
    """A ``GPTModel`` with InternLM2's embedding/RoPE/output choices (untied, RoPE base from the preset).

    When ``padded_vocab`` exceeds the real vocabulary (``arch.vocab_size``), the padding logits are masked
    (see :func:`mask_padded_logits`).
    """
    from megatron.core.models.gpt import GPTModel

    model = GPTModel(
        config=config,
        transformer_layer_spec=layer_spec(arch, spec, config, vp_stage),
        vocab_size=padded_vocab,
        max_sequence_length=max_sequence_length,
        pre_process=pre_process,
        post_process=post_process,
        share_embeddings_and_output_weights=False,
        position_embedding_type="rope",
        rotary_base=arch.rotary_base,
        vp_stage=vp_stage,
    )
    if post_process and padded_vocab > arch.vocab_size:
        mask_padded_logits(model.output_layer, arch.vocab_size, padded_vocab)
    return model


def mask_padded_logits(output_layer, vocab_size: int, padded_vocab: int) -> None:
    """Make the logits of the padding rows (ids >= ``vocab_size``) the dtype's lowest value.

    TP needs the vocabulary padded to a multiple of lcm(128, TP); left alone, the padding rows are extra
    classes in the softmax (vocab 1000 -> 1024: +2.4e-3 relative loss) and get trained. Masked, the loss is
    the true vocabulary's, their gradient is zero and no sampler can pick them. The lowest finite value,
    not -inf, so that an online-softmax kernel never computes ``-inf - -inf``. Works on this TP rank's
    slice of the vocabulary (or the gathered logits) in place, after the output layer's matmul.
    """

    def hook(module, args, output):
        from megatron.core import parallel_state as ps

        logits, bias = output
        width = logits.shape[-1]
        start = 0 if width == padded_vocab else ps.get_tensor_model_parallel_rank() * width
        if start + width > vocab_size:
            first = max(vocab_size - start, 0)
            logits[..., first:] = torch.finfo(logits.dtype).min
        return logits, bias

    output_layer.register_forward_hook(hook)

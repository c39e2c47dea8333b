"""Parameter count and model FLOPs per token (the numbers behind tokens/s -> TFLOP/s -> MFU).

Counts matmuls only (2 FLOPs per multiply-add); norms, softmax, RoPE and the loss are negligible. Training
costs 3x the forward pass (forward + backward for activations and for weights). Attention scores and the
value product are counted causally: a token at position i attends to i+1 keys, s/2 on average.
"""

from __future__ import annotations

from dataclasses import dataclass

from megatron_mmed.models.internlm2 import ModelPreset


@dataclass(frozen=True)
class FlopsBreakdown:
    """Forward FLOPs per token by term; ``training`` is 3x their sum."""

    qkv: int
    attention: int
    out_proj: int
    mlp: int
    logits: int

    @property
    def forward(self) -> int:
        return self.qkv + self.attention + self.out_proj + self.mlp + self.logits

    @property
    def training(self) -> int:
        return 3 * self.forward


def parameter_count(arch: ModelPreset, vocab_size: int) -> int:
    """Parameters of the untied GPT model (input embedding, layers, final norm, output layer)."""
    h, kv = arch.hidden_size, arch.num_query_groups * arch.head_dim
    per_layer = (
        h * (h + 2 * kv)  # fused QKV
        + h * h  # attention output projection
        + h * 2 * arch.ffn_hidden_size  # SwiGLU gate + up (fused fc1)
        + arch.ffn_hidden_size * h  # down projection (fc2)
        + 2 * h  # two RMSNorm weights
    )
    return 2 * vocab_size * h + arch.num_layers * per_layer + h


def flops_per_token(arch: ModelPreset, seq_length: int, vocab_size: int) -> FlopsBreakdown:
    """Forward matmul FLOPs per token of a causal sequence of ``seq_length`` tokens."""
    h, kv, n = arch.hidden_size, arch.num_query_groups * arch.head_dim, arch.num_layers
    return FlopsBreakdown(
        qkv=n * 2 * h * (h + 2 * kv),
        # QK^T and softmax(QK^T) V: 2 * (2 * s * h) each token over the full sequence, halved by causality.
        attention=n * 2 * seq_length * h,
        out_proj=n * 2 * h * h,
        mlp=n * 2 * 3 * h * arch.ffn_hidden_size,
        logits=2 * h * vocab_size,
    )


def tflops_per_gpu(tokens_per_s_per_gpu: float, training_flops_per_token: int) -> float:
    """Achieved model TFLOP/s per GPU from the per-GPU token rate."""
    return tokens_per_s_per_gpu * training_flops_per_token / 1e12

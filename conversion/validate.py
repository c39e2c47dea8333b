"""Validate a conversion by logits: run source and target on a fixed multilingual prompt and compare.

Both models run in fp32 on the weights as stored (so a bf16 output is compared on its own bf16 values). The
HF side is ``transformers.LlamaForCausalLM``; InternLM2-layout weights are fed to it through our mapping
(numerically the same model), because InternLM2's remote modeling code is not part of ``transformers``.
The megatron-core side is the TP=1 ``GPTModel``. Token ids come from the tokenizer files when present and
usable without remote code (transformers, or SentencePiece on ``tokenizer.model``), else from a fixed id
sequence, which the report then carries as a warning.
"""

from __future__ import annotations

import gc
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch

from conversion.arch import llama_config_for
from conversion.families import LLAMA, Family, mcore_getter, mcore_to_hf_tensors
from megatron_mmed.models.internlm2 import ModelPreset

#: one sentence per MMedC language (en, zh, ja, fr, ru, es).
PROMPT = (
    "The patient presented with fever and a persistent cough. 患者出现发热和持续咳嗽。"
    "患者は発熱と持続する咳を訴えた。Le patient présentait de la fièvre. "
    "У пациента была лихорадка. El paciente presentaba fiebre y tos persistente."
)
NUM_FIXED_IDS = 48
#: max |logit difference| allowed; both models compute in fp32, so only a dtype change (rounding) widens it.
TOLERANCES = {"fp32": 1e-4, "fp16": 2e-2, "bf16": 1e-1}


@dataclass(frozen=True)
class ValidationResult:
    """How close the target's logits are to the source's on the fixed prompt."""

    max_abs_diff: float
    top1_agreement: float
    num_tokens: int
    prompt: str  # "tokenizer" or "fixed ids"
    atol: float

    @property
    def ok(self) -> bool:
        return self.max_abs_diff <= self.atol

    def describe(self) -> str:
        verdict = "OK" if self.ok else "FAILED"
        return (
            f"validation {verdict}: max |logit diff| {self.max_abs_diff:.3g} (tolerance {self.atol:g}), "
            f"top-1 agreement {self.top1_agreement:.1%} over {self.num_tokens} tokens ({self.prompt})"
        )


def fixed_token_ids(vocab_size: int, n: int = NUM_FIXED_IDS) -> list[int]:
    """A deterministic id sequence spread over the vocabulary (used when there is no tokenizer)."""
    return [(7919 * i + 13) % vocab_size for i in range(n)]


def prompt_ids(vocab_size: int, tokenizer_dir: Path | None) -> tuple[list[int], str, str | None]:
    """``(ids, how, warning)``: the prompt through the folder's tokenizer when it can be used without remote
    code (see :func:`conversion.tokenizer.prompt_ids`), else fixed ids (with a warning if one was there)."""
    from conversion.tokenizer import prompt_ids as tokenizer_prompt_ids

    return tokenizer_prompt_ids(vocab_size, tokenizer_dir, PROMPT, fixed_token_ids(vocab_size))


def hf_llama_logits(arch: ModelPreset, tensors: Callable[[], object], ids: list[int]) -> torch.Tensor:
    """Logits of ``transformers.LlamaForCausalLM`` (fp32) loaded with the Llama-named ``tensors()`` pairs."""
    from transformers import LlamaConfig, LlamaForCausalLM
    from transformers.models.llama.modeling_llama import LlamaRotaryEmbedding

    cfg = LlamaConfig(
        **{
            k: v
            for k, v in llama_config_for(arch).items()
            if k not in ("architectures", "model_type", "torch_dtype")
        }
    )
    cfg._attn_implementation = "eager"
    with torch.device("meta"):
        model = LlamaForCausalLM(cfg)
    state = {name: t.to(torch.float32) for name, t in tensors()}
    model.load_state_dict(state, strict=True, assign=True)
    del state
    model.model.rotary_emb = LlamaRotaryEmbedding(cfg)  # its buffers are not weights: build them for real
    model.eval()
    with torch.no_grad():
        logits = model(torch.tensor([ids])).logits[0].float()
    del model
    gc.collect()
    return logits


def hf_logits_from_family(
    family: Family, arch: ModelPreset, get: Callable[[str], torch.Tensor], ids: list[int]
) -> torch.Tensor:
    """HF logits of weights in ``family``'s layout, fed to Llama through the megatron-core pivot names."""
    if family is LLAMA:
        return hf_llama_logits(arch, lambda: ((n, get(n)) for n in LLAMA.hf_names(arch.num_layers)), ids)
    fetch = mcore_getter(family, arch, get)
    return hf_llama_logits(arch, lambda: mcore_to_hf_tensors(LLAMA, arch, fetch), ids)


def mcore_logits(arch: ModelPreset, ckpt_dir: Path, padded_vocab: int, ids: list[int]) -> torch.Tensor:
    """Logits of the TP=1 megatron-core ``GPTModel`` loaded from a torch_dist checkpoint (fp32)."""
    from conversion.mcore_io import build_model
    from megatron_mmed.common.distributed import mcore_session
    from megatron_mmed.models.weights import load_weights

    with mcore_session() as on_cpu:
        model = build_model(arch, padded_vocab, torch.float32, on_cpu=on_cpu)
        load_weights(ckpt_dir, [model], what="the checkpoint", verify=False)  # verified, or just written
        model.eval()
        s = len(ids)
        tokens = torch.tensor([ids])
        positions = torch.arange(s)[None]
        mask = torch.triu(torch.ones(s, s, dtype=torch.bool), diagonal=1)[None, None]
        if not on_cpu:
            tokens, positions, mask = tokens.cuda(), positions.cuda(), mask.cuda()
        with torch.no_grad():
            logits = model(tokens, positions, mask)[0, :, : arch.vocab_size].float().cpu()
        del model
        gc.collect()
    return logits


def compare(source: torch.Tensor, target: torch.Tensor, prompt: str, atol: float) -> ValidationResult:
    """Max absolute difference and top-1 agreement of two ``[tokens, vocab]`` logit tensors."""
    if source.shape != target.shape:
        raise RuntimeError(f"logit shapes differ: {tuple(source.shape)} vs {tuple(target.shape)}")
    diff = (source - target).abs().max().item()
    agree = (source.argmax(-1) == target.argmax(-1)).float().mean().item()
    return ValidationResult(diff, agree, source.shape[0], prompt, atol)


def tolerance(source_dtype: str, target_dtype: str) -> float:
    """fp32's 1e-4 when both sides hold the same values (same dtype), else that of the lossier dtype."""
    if source_dtype == target_dtype:
        return TOLERANCES["fp32"]
    return max(TOLERANCES[source_dtype], TOLERANCES[target_dtype])

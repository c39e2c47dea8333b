"""Shared pieces of the fine-tuning tests: a SentencePiece tokenizer trained on the dev QA files, QA folders."""

from __future__ import annotations

import io
import json
from pathlib import Path

from eval.data import LANGUAGES, iter_json_lines

SP_VOCAB = 3000  # also the tiny models' vocabulary, so every id fits


def qa_texts(qa_dir: Path) -> list[str]:
    out = []
    for lang in LANGUAGES:
        for _, rec, _ in iter_json_lines(qa_dir / f"{lang}.jsonl"):
            out.append(
                rec["question"] + " " + " ".join(rec["options"].values()) + " " + rec.get("rationale", "")
            )
    return out


def train_sp(qa_dir: Path, out: Path, vocab: int = SP_VOCAB) -> Path:
    """A small SentencePiece BPE model (byte fallback, BOS 1 / EOS 2) trained on the real QA texts."""
    import sentencepiece as spm

    buf = io.BytesIO()
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(
            qa_texts(qa_dir)
            + ["### Instruction: ### Input: ### Response: ###Rationale: ###Answer: OPTION IS CORRECT."] * 20
        ),
        model_writer=buf,
        vocab_size=vocab,
        model_type="bpe",
        character_coverage=0.995,
        byte_fallback=True,
        num_threads=1,
        max_sentence_length=50000,
        normalization_rule_name="identity",
        remove_extra_whitespaces=False,
        minloglevel=2,
    )
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_bytes(buf.getvalue())
    return out


def write_qa(folder: Path, language: str, records: list[dict]) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{language}.jsonl"
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records), encoding="utf-8")
    return path


def qa_record(question: str = "Q?", answer="A", rationale: str = "because", options=None) -> dict:
    return {
        "question": question,
        "options": options or {"A": "yes", "B": "no", "C": "maybe"},
        "answer_idx": answer,
        "rationale": rationale,
    }


# --- a megatron-core model + Megatron DDP + Megatron optimizer, driven directly (no Trainer) ---------------


def mcore_sft(
    mcore_dir: Path,
    lr: float = 1e-3,
    clip: float = 1.0,
    lora=None,
    seq_length: int = 1024,
    wrap: bool = True,
    sequence_parallel: bool = False,
):
    """``(gpt_model, ddp_model, optimizer)`` at TP from parallel_state, loaded from a converted checkpoint.

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


def mcore_params_as_hf(model, arch) -> dict:
    """The model's parameters under Llama HF names (through conversion.families, the one key map)."""
    from conversion.families import LLAMA, mcore_to_hf_tensors

    params = {n: p.detach() for n, p in model.named_parameters()}
    return dict(mcore_to_hf_tensors(LLAMA, arch, lambda n: params[n]))


def mcore_grads_as_hf(model, arch) -> dict:
    from conversion.families import LLAMA, mcore_to_hf_tensors

    grads = {n: p.main_grad.detach().clone() for n, p in model.named_parameters() if p.requires_grad}
    return dict(mcore_to_hf_tensors(LLAMA, arch, lambda n: grads[n]))


def hf_batch(examples, pad_id: int = 0):
    """The paper's collation: right-padded input_ids, labels -100 on prompt and padding, attention mask."""
    import torch

    n = max(len(e.tokens) for e in examples)
    ids = torch.full((len(examples), n), pad_id, dtype=torch.long)
    labels = torch.full((len(examples), n), -100, dtype=torch.long)
    att = torch.zeros((len(examples), n), dtype=torch.long)
    for k, e in enumerate(examples):
        t = torch.as_tensor(e.tokens)
        ids[k, : len(t)] = t
        labels[k, e.prompt_len : len(t)] = t[e.prompt_len :]
        att[k, : len(t)] = 1
    return ids, labels, att

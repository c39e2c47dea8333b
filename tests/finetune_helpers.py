"""Shared pieces of the fine-tuning tests: a SentencePiece tokenizer trained on the dev QA files, QA folders."""

from __future__ import annotations

import io
import json
from pathlib import Path

import torch

from eval.data import LANGUAGES, iter_json_lines
from megatron_mmed.testing.sft import mcore_sft as mcore_sft  # shared with benchmarks/finetune.py
from megatron_mmed.testing.sft import mcore_step as mcore_step

SP_VOCAB = 3000  # also the tiny models' vocabulary, so every id fits
SFT_VOCAB = (
    3072  # the sft_llama fixture's: a multiple of 128, so megatron-core's padded vocabulary equals HF's
)
SFT_SEQ = 1024


def attention_mask(segment_ids: torch.Tensor) -> torch.Tensor:
    """The dense reference for per-segment attention: ``[b, 1, s, s]`` bool, True = masked, causal within each
    segment and nothing across (megatron-core's convention)."""
    s = segment_ids.shape[-1]
    same = segment_ids[:, :, None] == segment_ids[:, None, :]
    causal = torch.ones(s, s, dtype=torch.bool, device=segment_ids.device).tril()
    return ~(same & causal)[:, None]


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

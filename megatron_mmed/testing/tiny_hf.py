"""A tiny random Llama (or sliding-window Mistral) + a BPE tokenizer trained on given texts: the CPU stand-in
model for tests and benchmarks."""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path


def build_tiny_model(
    out: str | Path,
    texts: Iterable[str],
    vocab_size: int = 2000,
    seed: int = 0,
    sliding_window: int = 0,
    init_std: float = 0.02,
) -> Path:
    """Train a byte-level BPE on ``texts``, build a 2-layer Llama (hidden 64) and save both to ``out``; with
    ``sliding_window`` a Mistral of the same shape whose attention sees only that many past tokens. ``init_std``:
    the weights' standard deviation (transformers' default 0.02 gives near-uniform attention, so the model writes
    much the same whatever the prompt; ~0.2 makes what it writes depend on the prompt)."""
    import torch
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import (
        LlamaConfig,
        LlamaForCausalLM,
        MistralConfig,
        MistralForCausalLM,
        PreTrainedTokenizerFast,
    )

    out = Path(out)
    bpe = Tokenizer(models.BPE(unk_token=None))
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    bpe.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=["<pad>", "<s>", "</s>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    bpe.train_from_iterator(list(texts), trainer=trainer)
    tok = PreTrainedTokenizerFast(tokenizer_object=bpe, bos_token="<s>", eos_token="</s>", pad_token="<pad>")
    tok.save_pretrained(out)
    torch.manual_seed(seed)
    config, model = (MistralConfig, MistralForCausalLM) if sliding_window else (LlamaConfig, LlamaForCausalLM)
    extra = {"sliding_window": sliding_window} if sliding_window else {}
    cfg = config(
        vocab_size=len(tok),
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=4096,
        bos_token_id=tok.bos_token_id,
        eos_token_id=tok.eos_token_id,
        pad_token_id=tok.pad_token_id,
        initializer_range=init_std,
        **extra,
    )
    model(cfg).save_pretrained(out)
    return out

"""Tokenizer-free training data: UTF-8 bytes of corpus text as token ids, written like ``mmed tokenize``.

Token ids are bytes 0..255 plus EOD = 256 (vocab 257). Used by the training tests and smoke runs where no
tokenizer model is at hand; the files are megatron-core ``IndexedDataset``s plus a ``blend.json`` (equal
weights, so ``temperature`` is null).
"""

from __future__ import annotations

import json
from pathlib import Path

from megatron_mmed.common.blend_file import BlendDataset, BlendFile, BlendTokenizer

BYTE_VOCAB_SIZE = 257
BYTE_EOD = 256


def write_byte_level_blend(
    corpus_dir: str | Path, out_dir: str | Path, langs: list[str], max_docs: int = 200
) -> Path:
    """Write ``<lang>_text_document.{bin,idx}`` from ``corpus_dir/<lang>.jsonl`` texts and a ``blend.json``."""
    import numpy as np
    import torch
    from megatron.core.datasets.indexed_dataset import IndexedDatasetBuilder

    out = Path(out_dir).resolve()
    out.mkdir(parents=True, exist_ok=True)
    datasets = []
    for lang in langs:
        prefix = out / f"{lang}_text_document"
        builder = IndexedDatasetBuilder(str(prefix) + ".bin", dtype=np.uint16)
        n_tokens = n_docs = 0
        with open(Path(corpus_dir) / f"{lang}.jsonl", encoding="utf-8") as f:
            for i, line in enumerate(f):
                if i >= max_docs:
                    break
                ids = list(json.loads(line)["text"].encode("utf-8")) + [BYTE_EOD]
                builder.add_document(torch.tensor(ids, dtype=torch.int64), [len(ids)])
                n_tokens += len(ids)
                n_docs += 1
        builder.finalize(str(prefix) + ".idx")
        datasets.append(
            BlendDataset(lang, str(prefix), prefix.name, n_tokens, n_docs, 1.0, weight=1.0 / len(langs))
        )
    blend = BlendFile(
        root=str(out),
        temperature=None,
        multipliers={lang: 1.0 for lang in langs},
        tokenizer=BlendTokenizer("bytes", None, BYTE_EOD, None, BYTE_VOCAB_SIZE, "uint16"),
        datasets=tuple(datasets),
    )
    return blend.write(out)

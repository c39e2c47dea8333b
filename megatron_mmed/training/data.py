"""Tokenized data for training: the datasets of a ``blend.json`` as megatron-core GPT datasets.

``blend.json`` is read by :class:`megatron_mmed.common.blend_file.BlendFile` (its one reader: a file of another
shape is a one-line error naming the field); here each dataset's files are checked before megatron-core maps
them. Training draws from the weighted blend; validation keeps one dataset per prefix, so every language gets
its own validation loss.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from pathlib import Path

from megatron_mmed.common.blend_file import BlendFile
from megatron_mmed.common.errors import UserError


@dataclass(frozen=True)
class BlendEntry:
    """One tokenized dataset of the blend."""

    lang: str
    prefix: str  # absolute, without .bin/.idx
    weight: float

    def __iter__(self):  # unpack as (lang, prefix, weight)
        return iter((self.lang, self.prefix, self.weight))


def read_blend_file(path: str | Path) -> BlendFile:
    """``data.blend`` read by :class:`BlendFile`, its errors prefixed with the config key."""
    try:
        return BlendFile.read(path)
    except UserError as e:
        raise UserError(f"data.blend: {e}") from None


#: megatron-core's ``.idx`` header: magic, version (u64 = 1), dtype code (u8), sequence and document counts.
_IDX_MAGIC = b"MMIDIDX\x00\x00"
_IDX_HEADER = 34
#: dtype codes of megatron-core's ``DType`` that hold token ids (6 and 7 are float64/float32).
_TOKEN_DTYPES = {
    1: ("uint8", 1),
    2: ("int8", 1),
    3: ("int16", 2),
    4: ("int32", 4),
    5: ("int64", 8),
    8: ("uint16", 2),
}
_FLOAT_DTYPES = {6: "float64", 7: "float32"}


def check_indexed_dataset(prefix: str | Path) -> None:
    """Check ``prefix.idx``'s header and both files' sizes before megatron-core maps them.

    megatron-core asserts or raises ``KeyError``/``ValueError`` deep inside the dataset builder on a bad
    magic, version or dtype byte, and maps a cut ``.bin`` without noticing; here each is a ``UserError``.
    """
    idx, bin_ = Path(f"{prefix}.idx"), Path(f"{prefix}.bin")
    size = idx.stat().st_size
    with open(idx, "rb") as fh:
        head = fh.read(_IDX_HEADER)
        if len(head) < _IDX_HEADER or head[:9] != _IDX_MAGIC:
            raise UserError(f"{idx}: not a megatron-core index (bad magic or truncated header)")
        (version,) = struct.unpack("<Q", head[9:17])
        code = head[17]
        seqs, docs = struct.unpack("<QQ", head[18:34])
        if version != 1:
            raise UserError(f"{idx}: index version {version} (megatron-core reads version 1)")
        if code in _FLOAT_DTYPES:
            raise UserError(f"{idx}: holds {_FLOAT_DTYPES[code]} values, not token ids")
        if code not in _TOKEN_DTYPES:
            valid = ", ".join(f"{c} ({n})" for c, (n, _) in sorted(_TOKEN_DTYPES.items()))
            raise UserError(f"{idx}: dtype code {code} is not one of {valid}; the file is corrupt")
        need = _IDX_HEADER + seqs * (4 + 8) + docs * 8
        if size < need or seqs > size:
            raise UserError(f"{idx}: truncated ({size} bytes, its counts need {need})")
        if seqs == 0:
            return
        fh.seek(_IDX_HEADER + (seqs - 1) * 4)
        (last_len,) = struct.unpack("<i", fh.read(4))
        fh.seek(_IDX_HEADER + seqs * 4 + (seqs - 1) * 8)
        (last_ptr,) = struct.unpack("<q", fh.read(8))
    end = last_ptr + last_len * _TOKEN_DTYPES[code][1]
    if bin_.stat().st_size < end:
        raise UserError(f"{bin_}: truncated ({bin_.stat().st_size} bytes, its index points up to byte {end})")


def load_blend(path: str | Path) -> list[BlendEntry]:
    """The blend as ``[(lang, absolute prefix, weight), ...]``, every dataset's files checked; ``UserError``
    on a missing or malformed file."""
    blend = read_blend_file(path)
    out = []
    for i, d in enumerate(blend.datasets):
        try:
            prefix = Path(blend.prefix_on_disk(d)).resolve()
        except UserError as e:
            raise UserError(f"data.blend: {e}") from None
        for ext in (".bin", ".idx"):
            if not prefix.with_name(prefix.name + ext).is_file():
                raise UserError(f"data.blend: {path}: datasets[{i}]: {prefix}{ext} not found")
        check_indexed_dataset(prefix)
        out.append(BlendEntry(lang=d.lang, prefix=str(prefix), weight=d.weight))
    return out


def blend_eod(path: str | Path) -> int:
    """The end-of-document id of ``blend.json``'s tokenizer (informational: training neither masks nor
    resets at EOD)."""
    return read_blend_file(path).tokenizer.eod_id


def blend_vocab_size(path: str | Path) -> int:
    """The vocabulary size of ``blend.json``'s tokenizer."""
    return read_blend_file(path).tokenizer.vocab_size


def blend_tokenizer_path(path: str | Path) -> str | None:
    """The tokenizer ``blend.json`` names, if any: carried to the exported model."""
    return read_blend_file(path).tokenizer.path


def max_token_id(prefix: str, limit: int | None = 1 << 24) -> int:
    """Largest token id among the first ``limit`` tokens of ``prefix.bin`` (all when None).

    A cheap start-up guard against a model vocab smaller than the tokenizer's; bounded so that a
    multi-billion-token corpus is not read in full on every rank.
    """
    import numpy as np
    from megatron.core.datasets.indexed_dataset import IndexedDataset

    dtype = IndexedDataset(prefix, mmap=True).index.dtype
    tokens = np.memmap(prefix + ".bin", dtype=dtype, mode="r")
    if limit is not None:
        tokens = tokens[:limit]
    return int(tokens.max()) if tokens.size else -1


def resolve_vocab(
    configured: int | None, blend_path: str | Path, blend: list[BlendEntry], preset: int
) -> int:
    """The model vocab: ``model.vocab_size``, else that of blend.json's tokenizer (the preset's when it has
    none); checked against the tokenizer's size and the token ids at the start of every prefix."""
    declared = blend_vocab_size(blend_path)
    vocab = configured or declared or preset
    if declared and declared > vocab:
        raise UserError(
            f"{blend_path} declares vocab_size {declared} > model vocab {vocab}; set model.vocab_size"
        )
    for e in blend:
        top = max_token_id(e.prefix)
        if top >= vocab:
            raise UserError(
                f"{e.prefix}.bin holds token id {top} >= vocab size {vocab}; set model.vocab_size"
            )
    return vocab


@dataclass(frozen=True)
class _TokenIds:
    """The little of a tokenizer that GPTDataset reads (we neither pad nor reset at EOD)."""

    vocab_size: int
    eod: int
    pad: int = -1
    special_tokens_dict: dict | None = None

    @property
    def unique_identifiers(self) -> dict:  # part of the dataset cache key
        return {"class": "megatron_mmed.TokenIds", "vocab_size": self.vocab_size, "eod": self.eod}


def build_datasets(
    blend: list[BlendEntry],
    *,
    seq_length: int,
    split: str,
    seed: int,
    cache_dir: str,
    train_samples: int,
    valid_samples: int,
    vocab_size: int,
    eod: int = 0,
):
    """Train dataset over the weighted blend and ``{lang: validation dataset}`` (one per prefix)."""
    from megatron.core.datasets.blended_megatron_dataset_builder import BlendedMegatronDatasetBuilder
    from megatron.core.datasets.gpt_dataset import GPTDataset, GPTDatasetConfig

    def config(prefixes: list[str], weights: list[float] | None) -> GPTDatasetConfig:
        return GPTDatasetConfig(
            random_seed=seed,
            sequence_length=seq_length,
            blend=(prefixes, weights),
            split=split,
            path_to_cache=cache_dir,
            tokenizer=_TokenIds(vocab_size=vocab_size, eod=eod, special_tokens_dict={}),
            reset_position_ids=False,
            reset_attention_mask=False,
            eod_mask_loss=False,
            create_attention_mask=False,
            mid_level_dataset_surplus=0.05,
        )

    used = [e for e in blend if e.weight > 0]  # weight 0: validation only
    weights = [e.weight for e in used] if len(used) > 1 else None
    train = BlendedMegatronDatasetBuilder(
        GPTDataset, [train_samples, 0, 0], lambda: True, config([e.prefix for e in used], weights)
    ).build()[0]
    if train is None:
        raise UserError(f"data.split={split!r} leaves no training data")
    per_lang = {}
    for e in blend:  # the same per-prefix split as the blend uses, so validation documents stay held out
        valid = BlendedMegatronDatasetBuilder(
            GPTDataset, [0, valid_samples, 0], lambda: True, config([e.prefix], None)
        ).build()[1]
        if valid is not None:
            per_lang[e.lang] = valid
    return train, per_lang

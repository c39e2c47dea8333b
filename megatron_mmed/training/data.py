"""Tokenized data for training: read ``blend.json`` and build megatron-core GPT datasets from it.

``blend.json`` (written by ``mmed tokenize``) is a JSON object with a list under ``"datasets"`` (or
``"prefixes"``); each entry has ``prefix`` (absolute, or relative to the blend.json folder; without
``.bin``/``.idx``; when missing there, ``name`` is looked up beside blend.json), ``weight`` and ``lang``
(when absent, derived from a ``<lang>_text_document`` prefix). Optional ``vocab_size`` and ``eod``/``eod_id``,
at the top level or under ``tokenizer``, describe the tokenizer.

Training draws from the weighted blend; validation keeps one dataset per prefix, so every language gets
its own validation loss.
"""

from __future__ import annotations

import json
import re
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from megatron_mmed.common.errors import UserError

_LANG_FROM_PREFIX = re.compile(r"^(?P<lang>[A-Za-z]{2,3})_text_document$")


@dataclass(frozen=True)
class BlendEntry:
    """One tokenized dataset of the blend."""

    lang: str
    prefix: str  # absolute, without .bin/.idx
    weight: float

    def __iter__(self):  # unpack as (lang, prefix, weight)
        return iter((self.lang, self.prefix, self.weight))


def _read_blend_json(path: str | Path) -> dict[str, Any]:
    p = Path(path)
    if not p.is_file():
        raise UserError(f"data.blend: {p} not found (the blend.json written by `mmed tokenize`)")
    try:
        data = json.loads(p.read_text(encoding="utf-8"))
    except json.JSONDecodeError as e:
        raise UserError(f"data.blend: {p} is not valid JSON: {e}") from None
    if not isinstance(data, dict):
        raise UserError(f"data.blend: {p} must hold a JSON object")
    return data


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
    """The blend as ``[(lang, absolute prefix, weight), ...]``; ``UserError`` on a missing or bad file."""
    p = Path(path)
    data = _read_blend_json(p)
    entries = data.get("datasets", data.get("prefixes"))
    if not isinstance(entries, list) or not entries:
        raise UserError(f"data.blend: {p} has no non-empty 'datasets' (or 'prefixes') list")
    out = []
    for i, e in enumerate(entries):
        if not isinstance(e, dict) or not isinstance(e.get("prefix"), str):
            raise UserError(f"data.blend: {p}: entry {i} has no 'prefix' string")
        prefix = Path(re.sub(r"\.(bin|idx)$", "", e["prefix"]))
        if not prefix.is_absolute():
            prefix = p.parent / prefix
        if not prefix.with_name(
            prefix.name + ".idx"
        ).is_file():  # the folder was moved: look beside blend.json
            prefix = p.parent / str(e.get("name") or prefix.name)
        prefix = prefix.resolve()
        for ext in (".bin", ".idx"):
            if not prefix.with_name(prefix.name + ext).is_file():
                raise UserError(f"data.blend: {p}: entry {i}: {prefix}{ext} not found")
        check_indexed_dataset(prefix)
        lang = e.get("lang")
        if not lang:
            m = _LANG_FROM_PREFIX.match(prefix.name)
            lang = m.group("lang") if m else prefix.name
        try:
            weight = float(e.get("weight", 1.0))
        except (TypeError, ValueError):
            raise UserError(
                f"data.blend: {p}: entry {i}: weight {e.get('weight')!r} is not a number"
            ) from None
        if weight < 0:
            raise UserError(f"data.blend: {p}: entry {i}: negative weight {weight}")
        out.append(BlendEntry(lang=str(lang), prefix=str(prefix), weight=weight))
    if sum(e.weight for e in out) <= 0:
        raise UserError(f"data.blend: {p}: weights sum to zero")
    langs = [e.lang for e in out]
    if len(set(langs)) != len(langs):
        raise UserError(f"data.blend: {p}: duplicate languages {langs}")
    return out


def blend_eod(path: str | Path) -> int:
    """The end-of-document id declared in ``blend.json`` (``eod``/``eod_id``, top level or under
    ``tokenizer``); 0 when undeclared (training neither masks nor resets at EOD, so it is informational)."""
    data = _read_blend_json(path)
    for node in (data, data.get("tokenizer") if isinstance(data.get("tokenizer"), dict) else {}):
        for key in ("eod", "eod_id"):
            if isinstance(node.get(key), int):
                return node[key]
    return 0


def blend_vocab_size(path: str | Path) -> int | None:
    """The tokenizer vocab size declared in ``blend.json`` (top level or under ``tokenizer``), if any."""
    data = _read_blend_json(path)
    for node in (data, data.get("tokenizer") if isinstance(data.get("tokenizer"), dict) else {}):
        v = node.get("vocab_size")
        if isinstance(v, int) and v > 0:
            return v
    return None


def blend_tokenizer_path(path: str | Path) -> str | None:
    """The tokenizer ``blend.json`` names (``tokenizer.path``), if any: carried to the exported model."""
    tok = _read_blend_json(path).get("tokenizer")
    p = tok.get("path") if isinstance(tok, dict) else None
    return p if isinstance(p, str) else None


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
    """The model vocab: ``model.vocab_size``, else blend.json's declared one, else the preset's; checked
    against the declared size and the token ids at the start of every prefix."""
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

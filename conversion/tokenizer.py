"""Tokenizer files of a converted folder, and the prompt ids that validate a conversion.

InternLM2's repositories ship a SentencePiece ``tokenizer.model`` with a ``tokenizer_config.json`` that
names remote code (``auto_map`` -> ``tokenization_internlm2.py``). The InternLM2 family carries those files
along as they are (copied, never imported or run). The Llama family must load in stock transformers, so
its ``tokenizer_config.json`` is rewritten as a ``LlamaTokenizer`` over the same ``tokenizer.model`` with
the same special tokens and ids; the ids it gives are then checked against SentencePiece's own.
"""

from __future__ import annotations

import json
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

TOKENIZER_FILES = (
    "tokenizer.json",
    "tokenizer.model",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "added_tokens.json",
    "vocab.json",
    "merges.txt",
)
#: a repository's own tokenizer code (``tokenization_internlm2.py``, ``..._fast.py``): data to us, never run.
REMOTE_CODE_GLOB = "tokenization_*.py"
CONFIG = "tokenizer_config.json"
SP_MODEL = "tokenizer.model"
#: keys of InternLM2's tokenizer config that mean nothing to ``LlamaTokenizer``.
_INTERNLM2_ONLY = (
    "auto_map",
    "tokenizer_class",
    "decode_with_prefix_space",
    "sp_model_kwargs",
    "name_or_path",
)


@dataclass
class TokenizerFiles:
    """What was copied into a converted folder, and anything a user must know about it."""

    copied: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)


def _read_config(folder: Path) -> dict[str, Any] | None:
    path = folder / CONFIG
    if not path.is_file():
        return None
    try:
        cfg = json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError):
        return None
    return cfg if isinstance(cfg, dict) else None


def needs_remote_code(cfg: dict[str, Any]) -> bool:
    """Whether ``AutoTokenizer`` would need ``trust_remote_code`` for this tokenizer config."""
    if cfg.get("auto_map"):
        return True
    name = cfg.get("tokenizer_class")
    if not name:
        return False
    import transformers

    return not hasattr(transformers, name)


def sentencepiece_adds_dummy_prefix(model: Path) -> bool:
    """``normalizer_spec.add_dummy_prefix`` of a SentencePiece model (whether text gets a leading '▁')."""
    from sentencepiece import sentencepiece_model_pb2

    proto = sentencepiece_model_pb2.ModelProto()
    proto.ParseFromString(model.read_bytes())
    return bool(proto.normalizer_spec.add_dummy_prefix)


def llama_tokenizer_config(cfg: dict[str, Any] | None, add_prefix_space: bool) -> dict[str, Any]:
    """A stock ``LlamaTokenizer`` config with ``cfg``'s special tokens, added tokens and template.

    InternLM2Tokenizer encodes as ``<s>`` + SentencePiece pieces: ``legacy=False`` (no extra '▁' after a
    special token) and ``add_prefix_space`` = the model's own dummy-prefix setting give the same ids.
    """
    base = {k: v for k, v in (cfg or {}).items() if k not in _INTERNLM2_ONLY}
    return {
        "bos_token": "<s>",
        "eos_token": "</s>",
        "unk_token": "<unk>",
        "clean_up_tokenization_spaces": False,
        **base,
        "tokenizer_class": "LlamaTokenizer",
        "add_bos_token": (cfg or {}).get("add_bos_token", True),
        "add_eos_token": (cfg or {}).get("add_eos_token", False),
        "legacy": False,
        "add_prefix_space": add_prefix_space,
    }


def copy_tokenizer(src: Path, dst: Path, family: str | None = None) -> TokenizerFiles:
    """Copy the tokenizer in ``src`` (a folder or one file) into ``dst``, adapted to ``family``.

    ``family`` None or ``internlm2``: every tokenizer file, the remote tokenizer code included.
    ``llama``: no remote code; a config that needs it is rewritten for ``LlamaTokenizer`` (see module doc).
    """
    out = TokenizerFiles()
    dst.mkdir(parents=True, exist_ok=True)
    if src.is_file():  # a lone tokenizer file gets the name transformers looks for
        name = {".model": SP_MODEL, ".json": "tokenizer.json"}.get(src.suffix, src.name)
        shutil.copy2(src, dst / name)
        out.copied.append(name)
    else:
        names = [n for n in TOKENIZER_FILES if (src / n).is_file()]
        if family != "llama":
            names += sorted(p.name for p in src.glob(REMOTE_CODE_GLOB) if p.is_file())
        for name in names:
            shutil.copy2(src / name, dst / name)
        out.copied += names
    if family == "llama":
        _make_stock_llama(dst, out)
    return out


def _make_stock_llama(dst: Path, out: TokenizerFiles) -> None:
    cfg = _read_config(dst)
    model = dst / SP_MODEL
    stock = cfg is not None and not needs_remote_code(cfg)
    if stock or (dst / "tokenizer.json").is_file() and cfg is None:
        return
    if not model.is_file():
        if cfg is not None:
            out.warnings.append(
                f"{CONFIG} needs remote code ({cfg.get('tokenizer_class') or 'auto_map'}) and there is no "
                f"{SP_MODEL} to describe it as a LlamaTokenizer: stock transformers will not load this tokenizer"
            )
        return
    try:
        prefix = sentencepiece_adds_dummy_prefix(model)
    except Exception as e:  # noqa: BLE001 - a damaged model file: say so, keep the files as they are
        out.warnings.append(
            f"{model.name} could not be read as a SentencePiece model ({e}); tokenizer left as is"
        )
        return
    (dst / CONFIG).write_text(
        json.dumps(llama_tokenizer_config(cfg, prefix), indent=2, ensure_ascii=False) + "\n", encoding="utf-8"
    )
    was = f"{cfg.get('tokenizer_class', 'remote code')}" if cfg else "no config"
    out.notes.append(f"{CONFIG} written for stock LlamaTokenizer over {SP_MODEL} (was {was})")
    mismatch = compare_with_sentencepiece(dst)
    if mismatch:
        out.warnings.append(mismatch)


def _sentencepiece_ids(model: Path, text: str) -> list[int]:
    """``<s>`` (when the model has one) followed by SentencePiece's ids of ``text``."""
    import sentencepiece as spm

    sp = spm.SentencePieceProcessor(model_file=str(model))
    return ([sp.bos_id()] if sp.bos_id() >= 0 else []) + list(sp.encode(text))


def compare_with_sentencepiece(folder: Path) -> str | None:
    """A warning when the folder's stock tokenizer encodes the validation prompt unlike ``tokenizer.model``."""
    from transformers import AutoTokenizer

    from conversion.validate import PROMPT

    try:
        tok = AutoTokenizer.from_pretrained(str(folder), trust_remote_code=False)
        got = tok(PROMPT)["input_ids"]
    except Exception as e:  # noqa: BLE001 - reported, not fatal: the weights are what was converted
        return f"the written tokenizer does not load in stock transformers: {e}"
    want = _sentencepiece_ids(folder / SP_MODEL, PROMPT)
    if got != want:
        first = next((i for i, (a, b) in enumerate(zip(got, want)) if a != b), min(len(got), len(want)))
        return (
            f"the written LlamaTokenizer encodes the validation prompt unlike {SP_MODEL} from token {first} "
            "on (its SentencePiece normalisation is probably not 'identity'); check before use"
        )
    return None


def prompt_ids(
    vocab_size: int, folder: Path | None, text: str, fixed: list[int]
) -> tuple[list[int], str, str | None]:
    """``(ids, how, warning)`` for the validation prompt ``text``.

    The folder's tokenizer through stock transformers (no remote code); else its ``tokenizer.model`` read
    with SentencePiece (what InternLM2's own tokenizer does); else ``fixed`` ids, with a warning when a
    tokenizer was there but could not be used.
    """
    if folder is None or not any((folder / n).is_file() for n in TOKENIZER_FILES):
        return fixed, "fixed ids", None
    reasons = []
    cfg = _read_config(folder)
    if cfg is not None and needs_remote_code(cfg):
        # transformers 5 does not refuse such a config: it loads a generic tokenizer with other ids
        reasons.append(f"{CONFIG} names remote code ({cfg.get('tokenizer_class') or 'auto_map'})")
    else:
        try:
            from transformers import AutoTokenizer

            tok = AutoTokenizer.from_pretrained(str(folder), trust_remote_code=False)
            ids = list(tok(text)["input_ids"])
            if ids and max(ids) < vocab_size:
                return ids, "tokenizer", None
            reasons.append(f"its ids reach {max(ids) if ids else 'nothing'} >= vocab {vocab_size}")
        except Exception as e:  # noqa: BLE001 - any tokenizer transformers cannot load without remote code
            reasons.append(f"transformers: {str(e).splitlines()[0][:200]}")
    if (folder / SP_MODEL).is_file():
        try:
            ids = _sentencepiece_ids(folder / SP_MODEL, text)
            if ids and max(ids) < vocab_size:
                return ids, f"tokenizer ({SP_MODEL})", None
            reasons.append(f"{SP_MODEL}: ids reach {max(ids) if ids else 'nothing'} >= vocab {vocab_size}")
        except Exception as e:  # noqa: BLE001
            reasons.append(f"{SP_MODEL}: {str(e).splitlines()[0][:200]}")
    return (
        fixed,
        "fixed ids",
        (f"validated on fixed token ids: the tokenizer in {folder} could not be used ({'; '.join(reasons)})"),
    )

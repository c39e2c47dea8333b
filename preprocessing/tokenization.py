"""``mmed tokenize``: kept documents -> one Megatron indexed dataset per language, plus the blend file.

Each input file becomes one part (``OUT/.parts/<lang>/<k>.bin|idx``, in megatron-core's format written by
``tokenize_index.IndexWriter`` through temp names, then a completion marker); the parts of a language are
merged in file order into ``OUT/<lang>_text_document.bin|idx``. The output is therefore byte-identical
for any ``--workers``, and a rerun after ``kill -9`` redoes only the unfinished parts. Every document gets the
tokenizer's EOD appended (and a BOS in front only when ``add_bos``).
"""

from __future__ import annotations

import json
import os
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import xxhash

from megatron_mmed.common.config import ConfigError, to_dict
from megatron_mmed.common.errors import UserError
from megatron_mmed.common.io import DoneMarkers, JsonlZstWriter, iter_jsonl_zst_records
from megatron_mmed.common.tasks import resume_tasks
from preprocessing.blend import BlendConfig, build_blend, write_blend, write_tokenize_report
from preprocessing.layout import (
    StageStats,
    input_digest,
    kept_files,
    rejected_file,
    require_stage_output,
    unreadable_record,
)
from preprocessing.stage import open_stage
from preprocessing.tokenize_index import IndexWriter

STAGE = "tokenize"
INT32_MAX = 2**31 - 1
#: EOD candidates for a tokenizer.json without tokenizer_config.json, in order of preference
EOD_CANDIDATES: tuple[str, ...] = ("</s>", "<|endoftext|>", "<|end_of_text|>", "<eos>", "<|eos|>", "<|end|>")


@dataclass(frozen=True)
class TokenizeConfig:
    """Everything ``mmed tokenize`` does besides its paths; saved as ``OUT/config.yaml``."""

    #: fields that never change the token files (the blend is recomputed by every run)
    OUTPUT_NEUTRAL: ClassVar[frozenset[str]] = frozenset({"workers", "batch_docs", "keep_parts", "blend"})

    #: EOD appended to every document; default: the tokenizer's own (SentencePiece ``eos_id()``)
    eod_id: int | None = None
    add_bos: bool = False
    #: BOS id when ``add_bos``; default: the tokenizer's own
    bos_id: int | None = None
    #: documents with fewer tokens (before EOD) are rejected (``empty`` when 0, else ``too_short``)
    min_tokens: int = 1
    #: tokenizer.json only: special-token strings inside a document are encoded as text, never as control ids
    special_tokens_as_text: bool = True
    #: documents per batched encode call
    batch_docs: int = 256
    #: tokenizer threads inside each worker (SentencePiece ``num_threads``)
    threads_per_worker: int = 1
    workers: int = 1
    #: keep ``OUT/.parts`` after merging (debugging); off saves half the disk
    keep_parts: bool = False
    blend: BlendConfig = field(default_factory=BlendConfig)

    def validate(self) -> None:
        for name in ("min_tokens", "batch_docs", "threads_per_worker", "workers"):
            if getattr(self, name) < (0 if name == "min_tokens" else 1):
                raise ConfigError(
                    f"{name} must be >= {0 if name == 'min_tokens' else 1}, got {getattr(self, name)}"
                )
        for name in ("eod_id", "bos_id"):
            v = getattr(self, name)
            if v is not None and v < 0:
                raise ConfigError(f"{name} must be >= 0, got {v}")


# ---- tokenizers ----
class SentencePieceTokenizer:
    """A SentencePiece ``*.model`` (InternLM2 ships one), loaded with ``sentencepiece``: no remote code."""

    kind = "sentencepiece"

    def __init__(self, path: Path, threads: int = 1):
        import sentencepiece as spm

        try:
            self.sp = spm.SentencePieceProcessor(model_file=str(path))
        except Exception as e:  # sentencepiece raises RuntimeError/OSError with a parser message
            raise UserError(f"{path} is not a SentencePiece model: {str(e).splitlines()[0]}") from None
        self.path, self.threads = path, threads
        self.vocab_size = self.sp.get_piece_size()
        self.default_eod = self.sp.eos_id() if self.sp.eos_id() >= 0 else None
        self.default_bos = self.sp.bos_id() if self.sp.bos_id() >= 0 else None
        # sentencepiece >= 0.2.1 hands the ids back as int32 buffers: no Python int per token
        try:
            self.sp.encode([""], num_threads=1, return_type="numpy")
            self._return = {"return_type": "numpy"}
        except (TypeError, ValueError):  # an older sentencepiece (e.g. inside a container): int lists
            self._return = {}

    def encode_batch(self, texts: list[str]) -> list[np.ndarray] | list[list[int]]:
        return self.sp.encode(texts, num_threads=self.threads, **self._return)


class HFTokenizer:
    """A Hugging Face ``tokenizer.json``, loaded with ``tokenizers`` (no BOS/EOS post-processing applied)."""

    kind = "huggingface"

    def __init__(self, path: Path, special_tokens_as_text: bool = True):
        from tokenizers import Tokenizer

        try:
            self.tok = Tokenizer.from_file(str(path))
        except Exception as e:
            raise UserError(
                f"{path} is not a Hugging Face tokenizer.json: {str(e).splitlines()[0]}"
            ) from None
        self.tok.encode_special_tokens = special_tokens_as_text
        self.path = path
        vocab = self.tok.get_vocab(with_added_tokens=True)
        self.vocab_size = max(vocab.values()) + 1 if vocab else 0
        special = self._config_tokens(path)
        self.default_eod = self._find(special.get("eos_token"), *EOD_CANDIDATES)
        self.default_bos = self._find(special.get("bos_token"), "<s>", "<|begin_of_text|>", "<bos>")

    @staticmethod
    def _config_tokens(path: Path) -> dict[str, str]:
        """eos/bos token strings from a ``tokenizer_config.json`` beside the file, when there is one."""
        cfg = path.with_name("tokenizer_config.json")
        try:
            data = json.loads(cfg.read_text(encoding="utf-8")) if cfg.is_file() else {}
        except (OSError, json.JSONDecodeError):
            return {}
        out = {}
        for key in ("eos_token", "bos_token"):
            v = data.get(key)
            v = v.get("content") if isinstance(v, dict) else v
            if isinstance(v, str):
                out[key] = v
        return out

    def _find(self, *tokens: str | None) -> int | None:
        for t in tokens:
            if t is not None and (i := self.tok.token_to_id(t)) is not None:
                return i
        return None

    def encode_batch(self, texts: list[str]) -> list[list[int]]:
        return [e.ids for e in self.tok.encode_batch_fast(texts, add_special_tokens=False)]


def load_tokenizer(path: str | Path, cfg: TokenizeConfig) -> SentencePieceTokenizer | HFTokenizer:
    """A tokenizer from a ``*.model`` / ``tokenizer.json`` file or a folder holding one."""
    path = Path(path)
    if path.is_dir():
        found = [path / n for n in ("tokenizer.model", "tokenizer.json") if (path / n).is_file()]
        if not found:
            raise UserError(f"no tokenizer.model or tokenizer.json in {path}")
        path = found[0]
    if not path.is_file():
        raise UserError(f"tokenizer file does not exist: {path}")
    if path.suffix == ".json":
        return HFTokenizer(path, cfg.special_tokens_as_text)
    return SentencePieceTokenizer(path, cfg.threads_per_worker)


@dataclass(frozen=True)
class TokenIds:
    """The ids the stage adds, checked against the vocabulary, and the token dtype on disk."""

    eod_id: int
    bos_id: int | None
    vocab_size: int
    dtype: str  # "uint16" | "int32"

    @classmethod
    def resolve(cls, tok: SentencePieceTokenizer | HFTokenizer, cfg: TokenizeConfig) -> TokenIds:
        if tok.vocab_size > INT32_MAX:
            raise UserError(
                f"{tok.path}: vocabulary of {tok.vocab_size:,} ids does not fit int32 token files"
            )
        eod = cfg.eod_id if cfg.eod_id is not None else tok.default_eod
        if eod is None:
            raise UserError(f"{tok.path}: the tokenizer has no end-of-document token; pass --eod-id ID")
        bos = None
        if cfg.add_bos:
            bos = cfg.bos_id if cfg.bos_id is not None else tok.default_bos
            if bos is None:
                raise UserError(f"{tok.path}: the tokenizer has no BOS token; set bos_id=ID")
        for name, v in (("eod_id", eod), ("bos_id", bos)):
            if v is not None and v >= tok.vocab_size:
                raise UserError(f"{name} {v} is outside the vocabulary (size {tok.vocab_size})")
        # megatron-core's own rule (DType.optimal_dtype): uint16 below 65,500 ids, int32 above
        dtype = "uint16" if tok.vocab_size < 65500 else "int32"
        return cls(eod, bos, tok.vocab_size, dtype)


def tokenize_file(
    tok: SentencePieceTokenizer | HFTokenizer,
    ids: TokenIds,
    cfg: TokenizeConfig,
    lang: str,
    path: Path,
    part_prefix: Path,
    rejected_path: Path,
) -> dict[str, Any]:
    """Tokenize one kept file into the part ``part_prefix.bin|idx``; returns its marker payload."""
    dtype = np.dtype(ids.dtype)
    tmp = f"{part_prefix}.tmp"
    part_prefix.parent.mkdir(parents=True, exist_ok=True)
    builder = IndexWriter(tmp + ".bin", dtype)
    rejected = JsonlZstWriter(rejected_path)
    stats = StageStats()
    docs = tokens = 0
    batch: list[tuple[str, str, str]] = []
    eod = np.array([ids.eod_id], dtype=dtype)
    head = [np.array([ids.bos_id], dtype=dtype)] if ids.bos_id is not None else []
    extra = len(head) + 1
    min_tokens = max(cfg.min_tokens, 1)

    def flush() -> None:
        nonlocal docs, tokens
        pieces, lengths = [], []
        for (doc_id, doc_lang, text), seq in zip(batch, tok.encode_batch([b[2] for b in batch]), strict=True):
            n = len(seq)
            if n < min_tokens:
                reason = "empty" if not n else "too_short"
                stats.dropped(doc_lang, reason)
                rejected.write({"id": doc_id, "lang": doc_lang, "reason": reason, "tokens": n, "text": text})
                continue
            pieces += (*head, seq, eod)
            lengths.append(n + extra)
            stats.kept(doc_lang, len(text))
        batch.clear()
        if not lengths:
            return
        # one vectorised conversion per batch (ids < vocab size, which fits the dtype) and one write
        flat = np.concatenate(pieces, dtype=dtype, casting="unsafe")
        builder.add_documents(flat, lengths)
        docs += len(lengths)
        tokens += flat.size

    records = iter_jsonl_zst_records(path)
    try:
        for line_no, rec in records:
            text = rec.get("text") if rec is not None else None
            if not isinstance(text, str):
                stats.seen(lang, 0)
                stats.dropped(lang, "parse")
                rejected.write(
                    {"id": (rec or {}).get("id") or f"{path.name}:{line_no}", "lang": lang, "reason": "parse"}
                )
                continue
            doc_lang = rec.get("lang") or lang
            stats.seen(doc_lang, len(text))
            if not text or text.isspace():  # (no stripped copy of every document)
                stats.dropped(doc_lang, "empty")
                rejected.write({"id": rec.get("id"), "lang": doc_lang, "reason": "empty", "text": text})
                continue
            batch.append((rec.get("id"), doc_lang, text))
            if len(batch) >= cfg.batch_docs:
                flush()
        if batch:
            flush()
        if records.unreadable is not None:  # a cut input file: its readable part is kept, the rest recorded
            stats.seen(lang, 0)
            stats.dropped(lang, "unreadable")
            rejected.write(unreadable_record(lang, records.unreadable))
        builder.finalize(tmp + ".idx")
        rejected.close()
    except BaseException:
        rejected.abort()
        builder.abort()
        raise
    os.replace(tmp + ".bin", f"{part_prefix}.bin")
    os.replace(tmp + ".idx", f"{part_prefix}.idx")
    return {"file": str(path), "documents": docs, "tokens": tokens, "stats": stats.to_dict()}


# ---- worker-process plumbing: one tokenizer per process ----
_WORKER: tuple[Any, TokenIds, TokenizeConfig] | None = None


def _init_worker(tokenizer_path: str, ids: TokenIds, cfg: TokenizeConfig) -> None:
    global _WORKER
    os.environ["TOKENIZERS_PARALLELISM"] = "false"  # one thread per worker process
    _WORKER = (load_tokenizer(tokenizer_path, cfg), ids, cfg)


def _work(task: tuple[str, str, str, str, str]) -> tuple[str, dict[str, Any]]:
    sid, lang, path, part, rej = task
    assert _WORKER is not None
    tok, ids, cfg = _WORKER
    return sid, tokenize_file(tok, ids, cfg, lang, Path(path), Path(part), Path(rej))


def merge_parts(parts: list[Path], prefix: Path, dtype: str) -> None:
    """Concatenate part datasets (in order) into ``prefix.bin|idx``."""
    tmp = f"{prefix}.tmp"
    builder = IndexWriter(tmp + ".bin", np.dtype(dtype))
    try:
        for p in parts:
            builder.add_index(p)
        builder.finalize(tmp + ".idx")
    except BaseException:
        builder.abort()
        Path(tmp + ".idx").unlink(missing_ok=True)
        raise
    os.replace(tmp + ".bin", f"{prefix}.bin")
    os.replace(tmp + ".idx", f"{prefix}.idx")


@dataclass
class TokenizeResult:
    out_dir: Path
    stats: StageStats
    counts: dict[str, dict[str, int]]  # lang -> {"tokens", "documents"}
    blend: dict[str, Any]
    files_total: int
    files_skipped: int
    seconds: float
    report: dict[str, Any]


def run_tokenize(
    input_dir: str | Path,
    tokenizer_path: str | Path,
    out_dir: str | Path,
    cfg: TokenizeConfig,
    show_progress: bool = True,
) -> TokenizeResult:
    """Tokenize ``input_dir``'s kept documents into ``out_dir`` (resuming finished parts)."""
    t0 = time.time()
    inp = require_stage_output(input_dir)
    tok = load_tokenizer(tokenizer_path, cfg)
    ids = TokenIds.resolve(tok, cfg)
    tok_info = {"kind": tok.kind, "path": str(Path(tok.path).resolve()), **to_dict(ids)}
    tok_digest = xxhash.xxh3_64_hexdigest(Path(tok.path).read_bytes())
    with open_stage(STAGE, out_dir, cfg, reads=[inp], input=input_digest(inp), tokenizer=tok_digest) as out:
        files = kept_files(inp)
        markers = DoneMarkers(out, STAGE)
        for lang in files:  # final files deleted since the merge: redo that language's parts
            if markers.is_done(f"merge-{lang}") and not (out / f"{lang}_text_document.idx").is_file():
                for m in (markers.dir / lang).glob("*.json") if (markers.dir / lang).is_dir() else []:
                    m.unlink()
                markers.path(f"merge-{lang}").unlink()
        tasks = {
            f"{lang}/{k:06d}": (
                f"{lang}/{k:06d}",
                lang,
                str(p),
                str(out / ".parts" / lang / f"{k:06d}"),
                str(rejected_file(out, f"{lang}-{k:06d}")),
            )
            for lang, paths in files.items()
            for k, p in enumerate(paths)
        }

        def run_here(task: tuple[str, str, str, str, str]) -> tuple[str, dict[str, Any]]:
            sid, lang, p, part, rej = task
            return sid, tokenize_file(tok, ids, cfg, lang, Path(p), Path(part), Path(rej))

        # each worker loads its own tokenizer; in this process the one loaded above serves
        done = resume_tasks(
            "tokenize",
            tasks,
            _work,
            markers,
            unit="files",
            workers=cfg.workers,
            show_progress=show_progress,
            initializer=_init_worker,
            initargs=(str(tok.path), ids, cfg),
            run_here=run_here,
        )
        results = done.results

        counts: dict[str, dict[str, int]] = {}
        for lang, paths in files.items():
            sids = [f"{lang}/{k:06d}" for k in range(len(paths))]
            docs = sum(results[s]["documents"] for s in sids)
            counts[lang] = {"tokens": sum(results[s]["tokens"] for s in sids), "documents": docs}
            prefix = out / f"{lang}_text_document"
            if docs and not markers.is_done(f"merge-{lang}"):
                parts = [out / ".parts" / lang / s.split("/")[1] for s in sids if results[s]["documents"]]
                merge_parts(parts, prefix, ids.dtype)
                markers.mark(f"merge-{lang}", counts[lang])
            if not cfg.keep_parts:
                shutil.rmtree(out / ".parts" / lang, ignore_errors=True)
        if not cfg.keep_parts and (out / ".parts").is_dir() and not any((out / ".parts").iterdir()):
            (out / ".parts").rmdir()
        stats = StageStats()
        for sid in sorted(results):
            stats.merge(StageStats.from_dict(results[sid]["stats"]))
        blend = build_blend(out, counts, cfg.blend, tok_info)
        write_blend(out, blend)
        report = write_tokenize_report(out, inp, stats, counts, blend, to_dict(cfg))
        return TokenizeResult(out, stats, counts, blend, done.total, done.skipped, time.time() - t0, report)

"""MMedBench training items -> tokenized SFT examples with a loss mask on the answer, and a data report.

Every valid item gives two examples in the one prompt module's template (``eval.prompts.sft_example``): with
its rationale, and answering directly; an item whose rationale is empty gives only the direct one (counted).
An example's tokens are ``[BOS] + tok(prompt + target) + [EOS]`` (tokenized together, as the paper does, so
the tokens at the prompt/target boundary are those the model sees at inference); the loss covers the target
tokens and EOS only. Examples longer than ``data.max_length`` are cut at the end and counted; one whose
prompt alone fills the length has no target left and is dropped, counted. Bad items (no ``answer_idx``,
letters not among the options, broken JSON) are counted with their reasons by ``eval.data``'s loader.
"""

from __future__ import annotations

import json
from collections import Counter
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from eval.data import QAItem, load_language, resolve_languages
from eval.prompts import sft_example
from megatron_mmed.common.errors import UserError
from megatron_mmed.finetune.config import SFTDataConfig

REPORT_NAME = "data_report.json"
REPORT_FORMAT = "megatron-mmed.sft-data-report/1"


@dataclass(frozen=True)
class SFTTokens:
    """One tokenized example: ``tokens[:prompt_len]`` is BOS + prompt, the rest target (+ EOS unless cut)."""

    tokens: np.ndarray  # int64
    prompt_len: int
    language: str
    rationale: bool

    @property
    def num_target(self) -> int:
        return len(self.tokens) - self.prompt_len


@dataclass
class SFTDataReport:
    """What became of the training files: items, skips with reasons, examples, truncation, token counts."""

    train_dir: str = ""
    tokenizer: str = ""
    max_length: int = 0
    items: dict[str, int] = field(default_factory=dict)  # language -> valid items
    bad_items: dict[str, int] = field(default_factory=dict)  # language -> skipped records
    bad_reasons: dict[str, int] = field(default_factory=dict)  # reason -> count (all languages)
    items_without_rationale: dict[str, int] = field(default_factory=dict)  # direct example only
    examples: int = 0
    rationale_examples: int = 0
    direct_examples: int = 0
    truncated_examples: int = 0  # cut to max_length (their EOS or more of the target is lost)
    truncated_tokens: int = 0
    dropped_prompt_too_long: int = 0  # prompt alone >= max_length: no target token left
    boundary_merges: int = 0  # prompt+target tokenized differently from the prompt alone at the seam
    tokens: int = 0  # all example tokens kept
    target_tokens: int = 0  # tokens that carry loss (as labels)
    max_example_tokens: int = 0
    mean_example_tokens: float = 0.0
    packing: dict[str, Any] = field(default_factory=dict)  # filled by packing.packing_stats

    def to_dict(self) -> dict[str, Any]:
        return {"format": REPORT_FORMAT, **asdict(self)}

    def write(self, path: str | Path) -> Path:
        """``RUN/data_report.json`` (written via a temp name)."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps(self.to_dict(), indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
        tmp.replace(path)
        return path

    @classmethod
    def read(cls, path: str | Path) -> SFTDataReport:
        data = json.loads(Path(path).read_text(encoding="utf-8"))
        if data.pop("format", None) != REPORT_FORMAT:
            raise UserError(f"{path}: not a {REPORT_FORMAT} file")
        return cls(**data)

    def summary(self) -> str:
        langs = ", ".join(f"{k} {v}" for k, v in self.items.items())
        skipped = sum(self.bad_items.values())
        no_rat = sum(self.items_without_rationale.values())
        return (
            f"{sum(self.items.values())} items ({langs}); {skipped} skipped; {self.examples} examples "
            f"({self.rationale_examples} with rationale, {self.direct_examples} direct; {no_rat} items had no "
            f"rationale); {self.truncated_examples} truncated to {self.max_length} tokens, "
            f"{self.dropped_prompt_too_long} dropped (prompt too long); {self.target_tokens:,} target tokens"
        )


@dataclass
class SFTData:
    """The tokenized examples of a run, the ids the batches need, and the report."""

    examples: list[SFTTokens]
    report: SFTDataReport
    vocab_size: int
    eos_id: int
    bos_id: int | None
    pad_id: int


def train_folder(path: str | Path) -> Path:
    """The folder with ``<Language>.jsonl``: ``path/Train`` for an MMedBench root, else ``path`` itself."""
    root = Path(path)
    if not root.is_dir():
        raise UserError(f"data.train: {root} is not a directory")
    return root / "Train" if (root / "Train").is_dir() else root


def load_items(
    path: str | Path, languages: tuple[str, ...] | list[str] = ()
) -> tuple[list[QAItem], SFTDataReport]:
    """Valid training items of every (requested) language, in the paper's language order, and the skip counts."""
    folder = train_folder(path)
    try:
        langs = resolve_languages(folder, languages)
    except UserError as e:
        raise UserError(f"data.train: {e}") from None
    report = SFTDataReport(train_dir=str(folder))
    items: list[QAItem] = []
    reasons: Counter[str] = Counter()
    for lang in langs:
        ls = load_language(folder / f"{lang}.jsonl", lang, strict=True)
        items += ls.items
        report.items[lang] = len(ls.items)
        report.bad_items[lang] = len(ls.bad)
        reasons.update(_reason_kind(b.reason) for b in ls.bad)
        report.items_without_rationale[lang] = sum(1 for it in ls.items if not it.rationale.strip())
    report.bad_reasons = dict(sorted(reasons.items()))
    if not items:
        raise UserError(
            f"data.train: no usable MMedBench items in {folder} ({sum(report.bad_items.values())} bad)"
        )
    return items, report


def _reason_kind(reason: str) -> str:
    """A reason without the item-specific part (``answer_idx X not among options ABCD`` -> its stem)."""
    for stem in ("answer_idx", "option key", "option ", "not valid JSON"):
        if reason.startswith(stem):
            return {
                "answer_idx": "answer_idx missing or not among the options",
                "option key": "option key not a letter",
                "option ": "empty option",
                "not valid JSON": "not valid JSON",
            }[stem]
    return reason


def example_texts(items: list[QAItem], style: str = "paper") -> list[tuple[QAItem, bool, str, str]]:
    """``(item, with_rationale, prompt, target)``: rationale + direct per item, direct only when it has none."""
    out = []
    for it in items:
        for rationale in (True, False):
            if rationale and not it.rationale.strip():
                continue
            ex = sft_example(it, rationale=rationale, style=style)  # type: ignore[arg-type]
            out.append((it, rationale, ex.prompt, ex.target))
    return out


def tokenize_examples(
    texts: list[tuple[QAItem, bool, str, str]],
    tokenizer,
    max_length: int,
    eos_id: int,
    bos_id: int | None,
    report: SFTDataReport,
    batch: int = 512,
) -> list[SFTTokens]:
    """Tokenize prompt and prompt+target with ``tokenizer.encode_batch``; cut to ``max_length``; count."""
    out: list[SFTTokens] = []
    head = [bos_id] if bos_id is not None else []
    lengths = []
    for start in range(0, len(texts), batch):
        chunk = texts[start : start + batch]
        prompts = tokenizer.encode_batch([p for _, _, p, _ in chunk])
        fulls = tokenizer.encode_batch([p + t for _, _, p, t in chunk])
        for (item, rationale, _, _), p_ids, f_ids in zip(chunk, prompts, fulls, strict=True):
            p_ids, f_ids = list(p_ids), list(f_ids)
            if f_ids[: len(p_ids)] != p_ids:
                report.boundary_merges += 1  # still mask len(prompt) tokens, as the paper does
            ids = head + f_ids + [eos_id]
            prompt_len = len(head) + len(p_ids)
            if prompt_len >= max_length:
                report.dropped_prompt_too_long += 1
                continue
            if len(ids) > max_length:
                report.truncated_examples += 1
                report.truncated_tokens += len(ids) - max_length
                ids = ids[:max_length]
            ex = SFTTokens(np.asarray(ids, dtype=np.int64), prompt_len, item.language, rationale)
            out.append(ex)
            lengths.append(len(ids))
            report.examples += 1
            report.rationale_examples += rationale
            report.direct_examples += not rationale
            report.target_tokens += ex.num_target
    report.tokens = int(sum(lengths))
    report.max_example_tokens = int(max(lengths, default=0))
    report.mean_example_tokens = float(np.mean(lengths)) if lengths else 0.0
    return out


def load_sft_data(cfg: SFTDataConfig, tokenizer=None) -> SFTData:
    """``data.train`` + ``data.tokenizer`` -> tokenized examples and their report (the first step of a run)."""
    from preprocessing.tokenization import TokenizeConfig, load_tokenizer

    if not cfg.train:
        raise UserError("data.train is required (MMedBench <Language>.jsonl files or a root with Train/)")
    if tokenizer is None:
        if not cfg.tokenizer:
            raise UserError("data.tokenizer is required (a SentencePiece .model or a HF tokenizer.json)")
        tokenizer = load_tokenizer(cfg.tokenizer, TokenizeConfig())
    eos = tokenizer.default_eod
    if eos is None:
        raise UserError(f"{tokenizer.path}: the tokenizer has no EOS token (every target must end with one)")
    bos = tokenizer.default_bos if cfg.add_bos else None
    if cfg.add_bos and bos is None:
        raise UserError(f"{tokenizer.path}: the tokenizer has no BOS token; set data.add_bos=false")
    items, report = load_items(cfg.train, cfg.languages)
    report.tokenizer, report.max_length = str(tokenizer.path), cfg.max_length
    texts = example_texts(items, cfg.prompt_style)
    examples = tokenize_examples(texts, tokenizer, cfg.max_length, eos, bos, report)
    if not examples:
        raise UserError(f"data.train: every example's prompt is longer than data.max_length={cfg.max_length}")
    return SFTData(examples, report, tokenizer.vocab_size, eos, bos, pad_id=eos)


def check_tokenizer(data: SFTData, init_from: str | Path) -> None:
    """Refuse a tokenizer that is not the checkpoint's: ids beyond its vocabulary, or other EOS/BOS ids than
    the ones its conversion recorded (``model_config.yaml`` token ids)."""
    from conversion.mcore_io import checkpoint_arch
    from megatron_mmed.models.weights import resolve_weights_dir

    arch, name, _ = checkpoint_arch(resolve_weights_dir(init_from))
    where = f"checkpoint.init_from {init_from} (model {name!r})"
    if data.vocab_size > arch.vocab_size:
        raise UserError(
            f"data.tokenizer has {data.vocab_size:,} ids but {where} has a vocabulary of {arch.vocab_size:,}: "
            "not the tokenizer the model was trained with"
        )
    for key, ours in (("eos_token_id", data.eos_id), ("bos_token_id", data.bos_id)):
        theirs = arch.token_ids.get(key)
        if ours is not None and isinstance(theirs, int) and theirs != ours:
            raise UserError(
                f"data.tokenizer's {key.split('_')[0].upper()} is {ours} but {where} was converted with {theirs}: "
                "not the tokenizer the model was trained with"
            )

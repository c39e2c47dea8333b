"""``mmed pipeline``: [extract ->] prep -> dedup -> decontam -> tokenize in one command, one folder per stage.

::

    OUT/config.yaml        the PipelineConfig (every stage's config inside)
    OUT/extract/           PDFs/HTML/WARC of ``extract_inputs`` -> docs/ (read by prep with ``inputs``)
    OUT/prep/ OUT/dedup/ OUT/decontam/   stage folders (same layout, see preprocessing.layout)
    OUT/tokenizer/         a SentencePiece model trained on the data, only when no tokenizer is given
    OUT/tok/               <lang>_text_document.{bin,idx} + blend.json
    OUT/pipeline.json      what ran, per-stage document counts, seconds

Every stage resumes from its own completion markers, so rerunning the same command after a crash redoes
only unfinished work; a stage whose input changed since (new raw files, an earlier stage redone) is redone
with every stage after it. The stages are the entries of ``REGISTRY``, run in its order; extract runs
whenever ``extract_inputs`` are given and prep runs (a recipe's inputs are never silently ignored).
"""

from __future__ import annotations

import json
import os
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from megatron_mmed.common.config import ConfigError, save_config
from megatron_mmed.common.errors import UserError
from megatron_mmed.common.io import StaleOutputError, atomic_write_json, ensure_writable_dir, output_errors
from megatron_mmed.common.lock import LOCK_NAME, FileLock, folder_lock
from megatron_mmed.common.progress import console
from preprocessing.decontam import DecontamConfig, run_decontam
from preprocessing.dedup.config import DedupConfig
from preprocessing.dedup.run import run_dedup
from preprocessing.extract import ExtractConfig, run_extract
from preprocessing.layout import iter_kept
from preprocessing.prep import PrepConfig, run_prep
from preprocessing.tokenization import TokenizeConfig, run_tokenize


@dataclass(frozen=True)
class SentencePieceConfig:
    """The small tokenizer trained when ``tokenizer`` is empty (demo, smoke tests; real runs use InternLM2's)."""

    vocab_size: int = 2000
    model_type: str = "unigram"
    character_coverage: float = 0.9995
    max_sentences: int = 200_000

    def validate(self) -> None:
        if self.vocab_size < 100:
            raise ConfigError(f"sentencepiece.vocab_size must be >= 100, got {self.vocab_size}")


@dataclass(frozen=True)
class StageCall:
    """What a registry entry gets to run its stage: the folders and the progress switch."""

    root: Path  # the pipeline's output folder
    out: Path  # this stage's folder
    prev: Path | None  # the folder of the stage before it (None before prep)
    dirs: dict[str, Path]  # every stage's folder
    show_progress: bool


@dataclass(frozen=True)
class PipelineStage:
    """One entry of the registry: a stage name (also its config section and ``stages`` entry), its folder
    under OUT, whether it reads the previous stage's folder, and how a recipe runs it (returning what the
    stage adds to ``pipeline.json`` besides its totals)."""

    name: str
    folder: str
    run: Callable[[PipelineConfig, StageCall], dict[str, Any]]
    reads_previous: bool = True


def _extract(cfg: PipelineConfig, call: StageCall) -> dict[str, Any]:
    run_extract(list(cfg.extract_inputs), call.out, cfg.extract, show_progress=call.show_progress)
    return {}


def _prep(cfg: PipelineConfig, call: StageCall) -> dict[str, Any]:
    inputs = list(cfg.inputs)
    if cfg.extract_inputs and (call.dirs["extract"] / "report.json").is_file():
        inputs.append(str(call.dirs["extract"] / "docs"))
    run_prep(inputs, call.out, cfg.prep, show_progress=call.show_progress)
    return {}


def _dedup(cfg: PipelineConfig, call: StageCall) -> dict[str, Any]:
    assert call.prev is not None
    run_dedup(call.prev, call.out, cfg.dedup, show_progress=call.show_progress, log=console.print)
    return {}


def _decontam(cfg: PipelineConfig, call: StageCall) -> dict[str, Any]:
    assert call.prev is not None
    run_decontam(call.prev, cfg.benchmark, call.out, cfg.decontam, show_progress=call.show_progress)
    return {}


def _tokenize(cfg: PipelineConfig, call: StageCall) -> dict[str, Any]:
    assert call.prev is not None
    tokenizer = cfg.tokenizer or str(
        train_sentencepiece(call.prev, call.root / "tokenizer", cfg.sentencepiece)
    )
    run_tokenize(call.prev, tokenizer, call.out, cfg.tokenize, show_progress=call.show_progress)
    return {"tokenizer": tokenizer}


#: the preprocessing stages in pipeline order: ``mmed pipeline`` runs the planned ones through this table
REGISTRY: tuple[PipelineStage, ...] = (
    PipelineStage("extract", "extract", _extract, reads_previous=False),
    PipelineStage("prep", "prep", _prep, reads_previous=False),
    PipelineStage("dedup", "dedup", _dedup),
    PipelineStage("decontam", "decontam", _decontam),
    PipelineStage("tokenize", "tok", _tokenize),
)
#: the stage names (what recipes' ``stages`` list), defined by the registry alone
STAGES: tuple[str, ...] = tuple(s.name for s in REGISTRY)
#: what a recipe runs unless it names ``stages``; extract joins whenever ``extract_inputs`` are given
DEFAULT_STAGES: tuple[str, ...] = STAGES[1:]


@dataclass(frozen=True)
class PipelineConfig:
    """The whole preprocessing chain; ``configs/prep/*.yaml`` are recipes of this."""

    inputs: tuple[str, ...] = ()
    #: PDFs, HTML pages, WARC files (folders, zips) for the extract stage; its docs/ join ``inputs`` in prep
    extract_inputs: tuple[str, ...] = ()
    output: str = ""
    #: MMedBench-schema QA folder for decontamination (``<Language>.jsonl`` or ``Test/<Language>.jsonl``)
    benchmark: str = ""
    #: SentencePiece ``.model`` or HF ``tokenizer.json``; empty: train a small SentencePiece model on the data
    tokenizer: str = ""
    #: the stages to run, in pipeline order; extract is added when ``extract_inputs`` are given and prep runs
    stages: tuple[str, ...] = DEFAULT_STAGES
    #: worker processes for every stage (overrides the stages' own ``workers`` when set)
    workers: int | None = None
    extract: ExtractConfig = field(default_factory=ExtractConfig)
    prep: PrepConfig = field(default_factory=PrepConfig)
    dedup: DedupConfig = field(default_factory=DedupConfig)
    decontam: DecontamConfig = field(default_factory=DecontamConfig)
    tokenize: TokenizeConfig = field(default_factory=TokenizeConfig)
    sentencepiece: SentencePieceConfig = field(default_factory=SentencePieceConfig)

    def planned(self) -> tuple[str, ...]:
        """The stages this recipe runs: ``stages``, with extract in front when ``extract_inputs`` are given
        and prep runs (prep is what reads extract's output)."""
        if self.extract_inputs and "prep" in self.stages and "extract" not in self.stages:
            return ("extract", *self.stages)
        return self.stages

    def validate(self) -> None:
        unknown = [s for s in self.stages if s not in STAGES]
        if unknown:
            raise ConfigError(f"stages: unknown {unknown} (choose from {list(STAGES)})")
        order = [STAGES.index(s) for s in self.stages]
        if order != sorted(order) or len(set(order)) != len(order):
            raise ConfigError(f"stages must be a subsequence of {list(STAGES)}, got {list(self.stages)}")
        if not self.output:
            raise ConfigError("output is required (the pipeline's root folder)")
        if "extract" in self.stages and not self.extract_inputs:
            raise ConfigError("extract_inputs is required when the extract stage runs")
        if "prep" in self.stages and not self.inputs and not self.extract_inputs:
            raise ConfigError("inputs (or extract_inputs) is required when the prep stage runs")
        if "decontam" in self.stages and not self.benchmark:
            raise ConfigError("benchmark (an MMedBench-schema QA folder) is required for the decontam stage")
        if self.workers is not None and self.workers < 1:
            raise ConfigError(f"workers must be >= 1, got {self.workers}")


def train_sentencepiece(data_dir: Path, out_dir: Path, cfg: SentencePieceConfig) -> Path:
    """Train a SentencePiece model on the kept documents of ``data_dir``; returns ``out_dir/tokenizer.model``."""
    import sentencepiece as spm

    model = out_dir / "tokenizer.model"
    if model.is_file():
        return model
    out_dir.mkdir(parents=True, exist_ok=True)
    text = out_dir / "train.txt"
    n = 0
    with open(text, "w", encoding="utf-8") as fh:
        for rec in iter_kept(data_dir):
            for line in rec["text"].splitlines():
                if line.strip() and n < cfg.max_sentences:
                    fh.write(line.strip() + "\n")
                    n += 1
    if n == 0:
        raise UserError(f"no text to train a tokenizer on in {data_dir} (every document was filtered out?)")
    tmp_prefix = out_dir / "tokenizer.tmp"
    spm.SentencePieceTrainer.train(
        input=str(text),
        model_prefix=str(tmp_prefix),
        vocab_size=cfg.vocab_size,
        model_type=cfg.model_type,
        character_coverage=cfg.character_coverage,
        hard_vocab_limit=False,
        bos_id=1,
        eos_id=2,
        unk_id=0,
        pad_id=-1,
        byte_fallback=True,
        num_threads=1,
        minloglevel=2,
    )
    Path(f"{tmp_prefix}.vocab").replace(out_dir / "tokenizer.vocab")
    Path(f"{tmp_prefix}.model").replace(model)
    text.unlink()
    return model


def _with_workers(cfg: PipelineConfig) -> PipelineConfig:
    """``workers``, when set, replaces every stage's own."""
    if cfg.workers is None:
        return cfg
    return replace(cfg, **{s: replace(getattr(cfg, s), workers=cfg.workers) for s in STAGES})


def run_pipeline(cfg: PipelineConfig, show_progress: bool = True) -> dict[str, Any]:
    """Run the planned stages in registry order; returns the summary also written to ``OUT/pipeline.json``.

    A stage whose input changed since its folder was made (new raw files, or an earlier stage redone) is
    redone, and so is every stage after it: their folders are cleared first (``redone`` in the summary). A
    stage whose own settings changed is refused, as by its single command: the recipe is the user's to
    change, and deleting the folder is theirs to decide. ``OUT/config.yaml`` is written when the run ends
    (and before it starts in a new folder), so a refused run leaves the recipe of the last one in place.
    """
    cfg = _with_workers(cfg)
    planned = cfg.planned()
    root = ensure_writable_dir(cfg.output)
    with folder_lock(root, "mmed pipeline"), output_errors(root):
        for leftover in root.glob(f"{_TRASH}*"):  # a clear interrupted by kill -9
            shutil.rmtree(leftover, ignore_errors=True)
        if not (root / "config.yaml").is_file():
            save_config(cfg, root / "config.yaml")
        dirs = {st.name: root / st.folder for st in REGISTRY}
        summary: dict[str, Any] = {"stages": {}, "dirs": {s: str(d) for s, d in dirs.items()}, "redone": []}
        prev: Path | None = None
        for i, st in enumerate(REGISTRY):
            if st.name not in planned:
                if (dirs[st.name] / "report.json").is_file():
                    prev = dirs[st.name]  # a later stage may start from an earlier run's output
                continue
            if st.reads_previous and prev is None:
                raise UserError(f"stage {st.name} needs the output of the stage before it (run it first)")
            t0 = time.time()
            console.rule(f"[bold]{st.name}")
            call = StageCall(root, dirs[st.name], prev, dirs, show_progress)
            try:
                extra = st.run(cfg, call)
            except StaleOutputError as e:
                if not set(e.changed) <= _INPUT_KEYS:
                    raise
                later = [s for s in STAGES[i:] if s in planned or dirs[s].exists()]
                console.print(
                    f"{st.name}: {e.folder} was made from another input; redoing {', '.join(later)} "
                    "(their old folders are cleared)"
                )
                _clear(root, [dirs[s] for s in STAGES[i:]], cfg)
                summary["redone"] = [s for s in STAGES[i:] if s in planned]
                extra = st.run(cfg, call)
            summary["stages"][st.name] = {"seconds": round(time.time() - t0, 2), **_totals(call.out)}
            summary.update(extra)
            prev = call.out
        save_config(cfg, root / "config.yaml")
        atomic_write_json(root / "pipeline.json", summary)
        return summary


#: fingerprint entries that are data a stage reads (a change redoes the stage), not its settings
_INPUT_KEYS = frozenset({"input", "benchmark", "tokenizer"})
_TRASH = ".cleared-"


def _clear(root: Path, folders: list[Path], cfg: PipelineConfig) -> None:
    """Delete stage folders of this pipeline (and what derives from them: the tokenizer trained on the
    data, a dedup work folder elsewhere): each is first renamed into ``OUT/.cleared-*``, so a kill -9 in
    the middle never leaves a half-deleted folder that looks like a stage output."""
    victims = [f for f in folders if f.exists()]
    if not cfg.tokenizer:
        victims.append(root / "tokenizer")
    work = Path(cfg.dedup.work_dir) if cfg.dedup.work_dir else None
    if (
        work is not None
        and (root / "dedup") in folders
        and (work / ".done" / "dedup" / "_run.json").is_file()
    ):
        victims.append(work)
    for k, folder in enumerate(victims):
        if not folder.exists():
            continue
        trash = folder.parent / f"{_TRASH}{folder.name}-{os.getpid()}-{k}"
        with FileLock(folder / LOCK_NAME).acquire("mmed pipeline"):  # never under a stage command at work
            folder.rename(trash)
        shutil.rmtree(trash)


def _totals(stage_dir: Path) -> dict[str, Any]:
    rep = json.loads((stage_dir / "report.json").read_text(encoding="utf-8"))
    return rep.get("totals", {})

"""``mmed prep``: ingest -> clean -> language ID -> medical filter -> quality filters, shard by shard.

Each shard writes ``kept/<lang>/<shard>.jsonl.zst`` and ``rejected/<shard>.jsonl.zst`` through temp files and
then a completion marker holding its counters, so a rerun after ``kill -9`` skips finished shards and the final
output equals an uninterrupted run, for any number of workers.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from megatron_mmed.common.config import ConfigError, to_dict
from megatron_mmed.common.io import JsonlZstWriter, files_digest
from preprocessing.clean import CleanConfig, clean_text
from preprocessing.document import Doc
from preprocessing.ingest import BadRecord, IngestConfig, Shard, discover, plan_shards, read_shard
from preprocessing.langid import LangIdConfig, LanguageIdentifier
from preprocessing.layout import StageStats, kept_file, rejected_file
from preprocessing.medical import MedicalConfig, MedicalFilter
from preprocessing.quality import QualityConfig, QualityFilter
from preprocessing.stage import open_stage, resume_shards

#: The steps of ``mmed prep`` in order; the report counts documents in and out of each.
STEPS: tuple[str, ...] = ("ingest", "clean", "langid", "medical", "quality")


@dataclass(frozen=True)
class OutputConfig:
    #: keep the text of rejected documents in ``rejected/`` (the quarantine); off saves disk at scale
    keep_rejected_text: bool = True


@dataclass(frozen=True)
class PrepConfig:
    """Everything ``mmed prep`` does; saved as ``OUT/config.yaml``."""

    ingest: IngestConfig = field(default_factory=IngestConfig)
    clean: CleanConfig = field(default_factory=CleanConfig)
    langid: LangIdConfig = field(default_factory=LangIdConfig)
    medical: MedicalConfig = field(default_factory=MedicalConfig)
    quality: QualityConfig = field(default_factory=QualityConfig)
    output: OutputConfig = field(default_factory=OutputConfig)
    workers: int = 1

    def validate(self) -> None:
        if self.workers < 1:
            raise ConfigError(f"workers must be >= 1, got {self.workers}")


class ShardProcessor:
    """Holds the (expensive to build) filters; processes one shard at a time."""

    def __init__(self, cfg: PrepConfig):
        self.cfg = cfg
        self.langid = LanguageIdentifier(cfg.langid)
        self.medical = MedicalFilter(cfg.medical)
        self.quality = QualityFilter(cfg.quality)
        self.languages = set(cfg.langid.languages)
        #: the max_length rule runs first (before cleaning) so huge documents cost nothing
        self.max_chars = None if "max_length" in cfg.quality.disabled else cfg.quality.max_chars

    def process_doc(self, doc: Doc, funnel: dict[str, StageStats]) -> tuple[str | None, str]:
        """Run the stages on ``doc`` in place. Returns ``(reason, detail)``; reason None means kept.

        ``funnel`` gets, per stage, the document's characters in and out (or its drop reason). Documents that
        never reached language ID are counted under the language ``unknown``.
        """
        chars = len(doc.text)
        passed: list[tuple[str, int]] = []  # (stage, characters out) for every stage the doc got through
        if self.max_chars and chars > self.max_chars:
            reason, detail = "quality:max_length", f"{chars} chars > {self.max_chars}"
        else:
            passed.append(("ingest", chars))
            reason, detail = self._stages(doc, passed)
        if not any(stage == "langid" for stage, _ in passed):
            doc.lang = None
        c_in = chars
        for i, stage in enumerate(STEPS):
            st = funnel[stage]
            st.seen(doc.lang, c_in)
            if i < len(passed):
                c_in = passed[i][1]
                st.kept(doc.lang, c_in)
            else:
                st.dropped(doc.lang, reason or "")
                break
        return reason, detail

    def _stages(self, doc: Doc, passed: list[tuple[str, int]]) -> tuple[str | None, str]:
        doc.text = clean_text(doc.text, self.cfg.clean)
        if not doc.text.strip():
            return "empty", "no text after cleaning"
        passed.append(("clean", len(doc.text)))
        hint = doc.lang if self.cfg.ingest.trust_lang_field and doc.lang in self.languages else None
        if hint is None:
            lang, conf = self.langid.detect(doc.text)
            if lang is None:
                return (
                    "lang",
                    f"not one of {'/'.join(sorted(self.languages))} or confidence {conf:.2f} too low",
                )
            doc.lang = lang
            doc.scores["lang_conf"] = round(float(conf), 4)
        passed.append(("langid", len(doc.text)))
        keep, med_scores = self.medical.score(doc.text, doc.lang)
        doc.scores.update(med_scores)
        if not keep:
            return "medical", f"{self.cfg.medical.preset} preset"
        passed.append(("medical", len(doc.text)))
        text, rule, q_scores = self.quality.apply(doc.text, doc.lang)
        doc.scores.update(q_scores)
        if rule is not None:
            return f"quality:{rule}", ""
        if not text.strip():
            return "empty", "no text after line cleanup"
        doc.text = text
        passed.append(("quality", len(doc.text)))
        return None, ""

    def run_shard(self, shard: Shard, out_dir: Path) -> dict[str, Any]:
        """Process one shard into its output files; returns the counters written into its marker."""
        funnel = {s: StageStats() for s in STEPS}
        overall = StageStats()
        writers: dict[str, JsonlZstWriter] = {}
        rejected = JsonlZstWriter(rejected_file(out_dir, shard.shard_id))
        keep_text = self.cfg.output.keep_rejected_text
        try:
            for item in read_shard(shard, self.cfg.ingest, self.max_chars):
                if isinstance(item, BadRecord):
                    overall.seen(None, len(item.raw or ""))
                    overall.dropped(None, item.reason)
                    funnel["ingest"].seen(None, len(item.raw or ""))
                    funnel["ingest"].dropped(None, item.reason)
                    rec = {
                        "id": item.id,
                        "lang": None,
                        "reason": item.reason,
                        "detail": item.detail,
                        "source": item.source,
                    }
                    if keep_text and item.raw is not None:
                        rec["raw"] = item.raw
                    rejected.write(rec)
                    continue
                chars_in = len(item.text)
                reason, detail = self.process_doc(item, funnel)
                overall.seen(item.lang, chars_in)
                if reason is None:
                    overall.kept(item.lang, len(item.text))
                    w = writers.get(item.lang)
                    if w is None:
                        w = writers[item.lang] = JsonlZstWriter(kept_file(out_dir, item.lang, shard.shard_id))
                    w.write(item.to_record())
                else:
                    overall.dropped(item.lang, reason)
                    rec = {
                        "id": item.id,
                        "lang": item.lang,
                        "reason": reason,
                        "detail": detail,
                        "source": item.source,
                    }
                    if item.scores:
                        rec["scores"] = item.scores
                    if keep_text:
                        rec["text"] = item.text
                    rejected.write(rec)
            for w in writers.values():
                w.close()
            rejected.close()
        except BaseException:
            for w in writers.values():
                w.abort()
            rejected.abort()
            raise
        return {
            "shard": shard.describe(),
            "overall": overall.to_dict(),
            "stages": {s: st.to_dict() for s, st in funnel.items()},
        }


@dataclass
class PrepResult:
    out_dir: Path
    overall: StageStats
    stages: dict[str, StageStats]
    shards_total: int
    shards_skipped: int
    skipped_files: list[str]
    seconds: float
    report: dict[str, Any]


def run_prep(
    inputs: list[str | Path],
    out_dir: str | Path,
    cfg: PrepConfig,
    show_progress: bool = True,
    rank: int = 0,
    world_size: int = 1,
) -> PrepResult:
    """Run ``mmed prep`` over ``inputs`` into ``out_dir`` (resuming finished shards).

    With ``world_size > 1`` (a slurm array) this task takes shards ``rank, rank + world_size, ...``; whichever
    task finds every shard done at its end writes the report (``report.json`` is absent until then).
    """
    from preprocessing.prep_report import write_prep_report

    t0 = time.time()
    files, skipped_files = discover(inputs)
    digest = files_digest((name, path) for path, name in files)
    with open_stage(
        "prep", out_dir, cfg, reads=inputs, input=digest, rank=rank, world_size=world_size
    ) as out:
        # build the filters once up front: a bad keywords file fails here, before any worker starts
        local = ShardProcessor(cfg)
        shards = plan_shards(files, cfg.ingest)
        done = resume_shards(
            "prep", shards, out, cfg, local, rank=rank, world_size=world_size, show_progress=show_progress
        )
        results, skipped = done.results, done.skipped
        if not done.complete:
            return PrepResult(
                out, StageStats(), {}, len(shards), skipped, skipped_files, time.time() - t0, {}
            )
        overall = StageStats()
        stages = {s: StageStats() for s in STEPS}
        for sid in sorted(results):
            overall.merge(StageStats.from_dict(results[sid]["overall"]))
            for s in STEPS:
                stages[s].merge(StageStats.from_dict(results[sid]["stages"][s]))
        seconds = time.time() - t0
        report = write_prep_report(
            out,
            cfg_dict=to_dict(cfg),
            overall=overall,
            stages=stages,
            skipped_files=skipped_files,
            n_shards=len(shards),
        )
        return PrepResult(out, overall, stages, len(shards), skipped, skipped_files, seconds, report)

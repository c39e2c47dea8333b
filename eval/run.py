"""``mmed eval mmedbench``: prompt a model on MMedBench, append raw outputs as it goes, score, report.

Predictions are appended to ``OUT/predictions.jsonl`` after every chunk (flushed and fsynced), so an
interrupted run resumes where it stopped; the finished file is rewritten with parsed answers and correctness.
"""

from __future__ import annotations

import json
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from eval.backends import Backend, check_model_dir, make_backend
from eval.data import LANGUAGES, LanguageSet, QAItem, data_digest, load_benchmark
from eval.prompts import (
    answer_text,
    build_loglik_prompt,
    build_prompt,
    loglik_continuations,
    select_shots,
)
from eval.report import write_jsonl, write_reports
from eval.scoring import record_run_identity, score_outputs
from megatron_mmed.common.config import ConfigError, from_dict, save_config, to_dict, validate_tree
from megatron_mmed.common.errors import UserError
from megatron_mmed.common.io import ensure_writable_dir
from megatron_mmed.common.progress import progress_bar

PREDICTIONS = "predictions.jsonl"
#: Config fields that change what a prediction is: a resumed run must agree on them.
PROMPT_FIELDS = (
    "mode",
    "prompt",
    "rationale",
    "shots",
    "seed",
    "max_new_tokens",
    "max_prompt_tokens",
    "model",
)
#: ``max_new_tokens`` of the official MMedLM inference script.
PAPER_MAX_NEW_TOKENS = 1000


@dataclass(frozen=True)
class EvalConfig:
    """Everything that decides an MMedBench run (saved as ``OUT/config.yaml``)."""

    model: str
    data: str
    out: str
    mode: Literal["generate", "loglik"] = "generate"
    prompt: Literal["paper", "clean"] = "paper"  # generate mode: the paper's exact template or the tidied one
    rationale: bool = True  # generate mode: ask for a rationale first (the paper's main protocol)
    shots: int = 0  # solved examples from Train/ put before each question
    seed: int = 1234  # picks the few-shot examples
    languages: tuple[str, ...] = ()  # names or ISO codes; empty = every language file present
    limit: int = 0  # first N valid items per language (0 = all), for smoke tests
    backend: Literal["hf", "vllm"] = "hf"
    batch_size: int = 16
    max_new_tokens: int = PAPER_MAX_NEW_TOKENS
    max_prompt_tokens: int = 0  # 0 = the model's max_position_embeddings
    dtype: Literal["auto", "float32", "bfloat16", "float16"] = "auto"
    device: str = "auto"
    trust_remote_code: bool = False
    bertscore_model: str = ""  # local encoder folder; empty = no BERTScore
    resume: bool = True
    wandb_project: str = ""  # empty = no W&B logging
    wandb_run_name: str = ""

    def validate(self) -> None:
        for name in ("model", "data", "out"):
            if not getattr(self, name):
                raise ConfigError(f"{name} must be set")
        for name, low in (
            ("batch_size", 1),
            ("max_new_tokens", 1),
            ("shots", 0),
            ("limit", 0),
            ("max_prompt_tokens", 0),
        ):
            if getattr(self, name) < low:
                raise ConfigError(f"{name} must be >= {low}, got {getattr(self, name)}")
        if self.bertscore_model and not Path(self.bertscore_model).is_dir():
            raise ConfigError(f"bertscore_model folder not found: {self.bertscore_model}")

    @property
    def protocol(self) -> str:
        """``paper`` (greedy generation, the paper's prompt, zero-shot: comparable with the paper's table),
        ``loglik`` (answer-letter log-likelihood, for base models) or ``generate`` (any other generation)."""
        if self.mode == "loglik":
            return "loglik"
        return "paper" if self.prompt == "paper" and self.shots == 0 else "generate"

    @classmethod
    def from_mapping(cls, data: dict[str, Any]) -> EvalConfig:
        """Typed, validated config from a plain mapping (YAML or CLI flags)."""
        cfg = from_dict(cls, data)
        validate_tree(cfg)
        return cfg


def _read_done(path: Path, prompts: dict[tuple[str, int], str]) -> tuple[list[dict[str, Any]], int]:
    """Records already in ``path`` whose item and prompt are still current; returns (records, dropped).

    A torn last line, an item no longer in the benchmark, or a prompt that changed (other data, template or
    shots) is dropped and redone.
    """
    done: dict[tuple[str, int], dict[str, Any]] = {}
    dropped = 0
    with open(path, encoding="utf-8") as fh:
        for line in fh:
            if not line.strip():
                continue
            try:
                rec = json.loads(line)
                key = (rec["language"], rec["index"])
                ok = isinstance(rec.get("output"), str) and prompts.get(key) == rec.get("prompt")
            except (json.JSONDecodeError, KeyError, TypeError):
                ok = False
            if ok:
                done[key] = rec
            else:
                dropped += 1
    return list(done.values()), dropped


def _check_resume(cfg: EvalConfig, out: Path) -> None:
    saved = out / "config.yaml"
    if not saved.is_file():
        return
    import yaml

    old = yaml.safe_load(saved.read_text(encoding="utf-8")) or {}
    diff = [f for f in PROMPT_FIELDS if f in old and old[f] != to_dict(cfg)[f]]
    if diff:
        raise UserError(
            f"{out} holds predictions made with different {', '.join(diff)}; use another --out or --no-resume"
        )


def _append(fh, records: list[dict[str, Any]]) -> None:
    for r in records:
        fh.write(json.dumps(r, ensure_ascii=False) + "\n")
    fh.flush()
    os.fsync(fh.fileno())


def _loglik_record(backend: Backend, item: QAItem, prompt: str) -> dict[str, Any]:
    """Score every option letter; choose the top k letters, k = number of gold answers (documented rule)."""
    conts = loglik_continuations(item)
    scores = backend.loglik(prompt, conts)
    letters = sorted(item.options)
    ranked = sorted(range(len(letters)), key=lambda i: -scores[i])
    chosen = sorted(letters[i] for i in ranked[: len(item.answers)])
    return {
        "output": f"###Answer: {answer_text(chosen)}",
        "logprobs": {letters[i]: round(scores[i], 6) for i in range(len(letters))},
    }


def _prompts(cfg: EvalConfig, bench: dict[str, LanguageSet]) -> dict[tuple[str, int], str]:
    shots: dict[str, list[QAItem]] = {lang: [] for lang in bench}
    if cfg.shots:
        train = load_benchmark(cfg.data, "Train", list(bench))
        shots = {
            lang: select_shots(train[lang].items, cfg.shots, cfg.seed + LANGUAGES.index(lang))
            for lang in bench
        }
    prompts = {}
    for lang, ls in bench.items():
        for it in ls.items:
            if cfg.mode == "generate":
                prompts[(lang, it.index)] = build_prompt(it, cfg.prompt, cfg.rationale, shots[lang])
            else:
                prompts[(lang, it.index)] = build_loglik_prompt(it, shots[lang])
    return prompts


def _require_wandb() -> Any:
    """The wandb module, checked before a long run starts rather than after it."""
    try:
        import wandb
    except ImportError:
        raise UserError("wandb_project is set but the wandb package is not installed") from None
    return wandb


def _log_wandb(cfg: EvalConfig, results: dict[str, Any]) -> None:
    wandb = _require_wandb()
    run = wandb.init(project=cfg.wandb_project, name=cfg.wandb_run_name or None, config=to_dict(cfg))
    metrics = {f"mmedbench/accuracy/{k}": v for k, v in results["accuracy"].items()}
    metrics["mmedbench/average"] = results["average"]
    for lang, m in results.get("rationale", {}).items():
        metrics.update(
            {f"mmedbench/rationale/{lang}/{k}": v for k, v in m.items() if isinstance(v, int | float)}
        )
    run.log(metrics)
    run.finish()


def run_mmedbench(cfg: EvalConfig, backend: Backend | None = None, progress: bool = True) -> dict[str, Any]:
    """Evaluate ``cfg.model`` on MMedBench and write predictions and reports to ``cfg.out``; returns results."""
    validate_tree(cfg)
    check_model_dir(cfg.model)
    if cfg.wandb_project:
        _require_wandb()
    bench = load_benchmark(cfg.data, "Test", cfg.languages)
    if cfg.limit:
        for ls in bench.values():
            ls.items = ls.items[: cfg.limit]
    out = ensure_writable_dir(cfg.out)
    pred_path = out / PREDICTIONS
    prompts = _prompts(cfg, bench)
    done: list[dict[str, Any]] = []
    dropped = 0
    if pred_path.is_file() and cfg.resume:
        _check_resume(cfg, out)
        done, dropped = _read_done(pred_path, prompts)
    # rewrite cleanly (drops a torn last line and stale records), atomically, then append to it
    write_jsonl(pred_path, done)
    save_config(cfg, out / "config.yaml")
    have = {(r["language"], r["index"]) for r in done}
    # longest prompts first: batches of similar length pad less, and a too-long prompt fails early
    todo = sorted((key for key in prompts if key not in have), key=lambda k: -len(prompts[k]))
    items = {(lang, it.index): it for lang, ls in bench.items() for it in ls.items}
    protocol = cfg.protocol
    with_rationale = cfg.mode == "generate" and cfg.rationale
    started = time.perf_counter()
    with open(pred_path, "a", encoding="utf-8") as fh:
        if todo and backend is None:
            backend = make_backend(
                cfg.backend,
                cfg.model,
                batch_size=cfg.batch_size,
                dtype=cfg.dtype,
                device=cfg.device,
                trust_remote_code=cfg.trust_remote_code,
                max_prompt_tokens=cfg.max_prompt_tokens,
            )
        chunk = cfg.batch_size * 4
        with progress_bar("mmedbench", total=len(todo), unit="questions", enabled=progress) as bar:
            for start in range(0, len(todo), chunk):
                keys = todo[start : start + chunk]
                if cfg.mode == "generate":
                    texts = backend.generate([prompts[k] for k in keys], cfg.max_new_tokens)
                    new = [{"output": t} for t in texts]
                else:
                    new = [_loglik_record(backend, items[k], prompts[k]) for k in keys]
                recs = [
                    {
                        "language": k[0],
                        "index": k[1],
                        "id": items[k].id,
                        "protocol": protocol,
                        "rationale": with_rationale,
                        "prompt_style": cfg.prompt,
                        "model": cfg.model,
                        "prompt": prompts[k],
                        **r,
                    }
                    for k, r in zip(keys, new, strict=True)
                ]
                _append(fh, recs)
                done.extend(recs)
                bar.advance(len(keys))
    seconds = time.perf_counter() - started
    outputs = {(r["language"], r["index"]): r["output"] for r in done}
    results, scored = score_outputs(
        bench, outputs, rationale=with_rationale, bertscore_model=cfg.bertscore_model
    )
    raw = {(r["language"], r["index"]): r for r in done}
    order = {k: i for i, k in enumerate(prompts)}
    records = sorted(
        ({**raw[(s["language"], s["index"])], **s} for s in scored),
        key=lambda r: order[(r["language"], r["index"])],
    )
    record_run_identity(results, protocol, cfg.prompt, cfg.model, data_digest(bench.values()))
    results["config"] = {"command": "mmedbench", **to_dict(cfg)}
    results["run"] = {
        "generated": len(todo),
        "resumed": len(done) - len(todo),
        "stale_records_dropped": dropped,
        "seconds": round(seconds, 3),
        "questions_per_s": round(len(todo) / seconds, 3) if todo and seconds > 0 else None,
        "truncated_prompts": getattr(backend, "truncated", 0),
    }
    write_reports(results, records, out, records_name=PREDICTIONS)
    if cfg.wandb_project:
        _log_wandb(cfg, results)
    return results

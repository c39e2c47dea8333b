"""``mmed eval``: ``mmedbench`` runs a model on MMedBench; ``score`` re-scores an existing predictions file."""

from __future__ import annotations

import argparse
from typing import Any

HELP = (
    "evaluate a Hugging Face checkpoint on MMedBench (eval mmedbench), re-score predictions (eval score), "
    "or print the exact prompt of one item (eval prompt)"
)


def _add_mmedbench(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--model", metavar="DIR", help="Hugging Face model folder (config.json + weights + tokenizer)"
    )
    p.add_argument("--data", metavar="DIR", help="MMedBench folder: <Language>.jsonl, or Test/ (and Train/)")
    p.add_argument("--out", metavar="DIR", help="output folder (rerun to resume)")
    p.add_argument(
        "--protocol",
        choices=["paper", "loglik"],
        help="paper: greedy generation with the paper's prompt, zero-shot, comparable with its table (default); "
        "loglik: answer-letter log-likelihood, for base models",
    )
    p.add_argument("--mode", choices=["generate", "loglik"], help="generate or loglik (--protocol sets it)")
    p.add_argument(
        "--prompt",
        choices=["paper", "clean"],
        help="paper: the official MMedLM template byte for byte (default); clean: a tidied one",
    )
    p.add_argument("--no-rationale", action="store_true", help="ask for the answer directly (no rationale)")
    p.add_argument("--shots", type=int, help="few-shot examples from Train/ (fixed seed)")
    p.add_argument("--seed", type=int, help="seed choosing the few-shot examples")
    p.add_argument("--languages", nargs="+", metavar="LANG", help="subset, e.g. English zh ja (default: all)")
    p.add_argument("--limit", type=int, help="first N items per language (smoke tests)")
    p.add_argument("--backend", choices=["hf", "vllm"], help="hf (default) or vllm (optional, GPU)")
    p.add_argument("--batch-size", type=int)
    p.add_argument("--max-new-tokens", type=int)
    p.add_argument("--max-prompt-tokens", type=int, help="left-truncate longer prompts (0 = model context)")
    p.add_argument("--dtype", choices=["auto", "float32", "bfloat16", "float16"])
    p.add_argument("--device", help="cpu, cuda, cuda:1 … (default: cuda when available)")
    p.add_argument(
        "--trust-remote-code", action="store_true", help="allow the model folder's own Python code"
    )
    p.add_argument(
        "--bertscore-model", metavar="DIR", help="local encoder folder for BERTScore (off by default)"
    )
    p.add_argument("--no-resume", action="store_true", help="discard predictions already in --out")
    p.add_argument("--wandb-project", help="log results to this W&B project (needs wandb installed)")
    p.add_argument("--wandb-run-name")
    p.add_argument("--config", metavar="YAML", help="an EvalConfig YAML (flags win over it)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.add_argument("overrides", nargs="*", metavar="key=value", help="config overrides, e.g. batch_size=32")


def _add_score(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--data", required=True, metavar="DIR", help="MMedBench folder with <Language>.jsonl (or Test/)"
    )
    p.add_argument(
        "--predictions", required=True, metavar="FILE", help='JSONL of {"language","index","output"}'
    )
    p.add_argument("--out", metavar="DIR", help="write results.json/md/png and scored_predictions.jsonl here")
    p.add_argument("--languages", nargs="+", metavar="LANG", help="score these (default: those predicted)")
    p.add_argument("--bertscore-model", metavar="DIR", default="", help="local encoder folder for BERTScore")
    p.add_argument("--no-rationale-metrics", action="store_true", help="skip BLEU/ROUGE on rationales")
    p.add_argument(
        "--protocol",
        choices=["paper", "generate", "loglik"],
        help="how the predictions were made (default: what the file says, else paper)",
    )


def _add_prompt(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--data", required=True, metavar="DIR", help="MMedBench folder: <Language>.jsonl, or Test/"
    )
    p.add_argument("--language", required=True, help="English, Chinese, … or an ISO code (en, zh, …)")
    p.add_argument("--index", required=True, type=int, help="0-based line number of the item in its file")
    p.add_argument(
        "--prompt", choices=["paper", "clean"], default="paper", help="prompt style (default paper)"
    )
    p.add_argument("--no-rationale", action="store_true", help="the direct-answer instruction")


def add_arguments(p: argparse.ArgumentParser) -> None:
    sub = p.add_subparsers(dest="eval_command", metavar="SUBCOMMAND")
    sub.required = True
    _add_mmedbench(sub.add_parser("mmedbench", help="run a model on MMedBench and score it"))
    _add_score(sub.add_parser("score", help="score an existing predictions file"))
    _add_prompt(
        sub.add_parser(
            "prompt", help="print exactly the string the model is given for one item (no newline added)"
        )
    )


def _config_from_args(args: argparse.Namespace) -> Any:
    from eval.run import EvalConfig
    from megatron_mmed.common.config import ConfigError, apply_overrides, read_config_file

    data: dict[str, Any] = read_config_file(args.config) if args.config else {}
    apply_overrides(data, args.overrides)
    flags = {
        "model": args.model,
        "data": args.data,
        "out": args.out,
        "mode": args.mode,
        "prompt": args.prompt,
        "shots": args.shots,
        "seed": args.seed,
        "languages": args.languages,
        "limit": args.limit,
        "backend": args.backend,
        "batch_size": args.batch_size,
        "max_new_tokens": args.max_new_tokens,
        "max_prompt_tokens": args.max_prompt_tokens,
        "dtype": args.dtype,
        "device": args.device,
        "bertscore_model": args.bertscore_model,
        "wandb_project": args.wandb_project,
        "wandb_run_name": args.wandb_run_name,
    }
    data.update({k: v for k, v in flags.items() if v is not None})
    if args.protocol:
        mode = "loglik" if args.protocol == "loglik" else "generate"
        if args.mode and args.mode != mode:
            raise ConfigError(f"--protocol {args.protocol} and --mode {args.mode} disagree")
        data["mode"] = mode
        if args.protocol == "paper" and (data.get("prompt", "paper") != "paper" or data.get("shots", 0)):
            raise ConfigError(
                "--protocol paper means the paper's prompt, zero-shot (drop --prompt clean / --shots)"
            )
    if args.no_rationale:
        data["rationale"] = False
    if args.trust_remote_code:
        data["trust_remote_code"] = True
    if args.no_resume:
        data["resume"] = False
    missing = [f"--{k}" for k in ("model", "data", "out") if not data.get(k)]
    if missing:
        raise ConfigError(f"missing {', '.join(missing)}")
    return EvalConfig.from_mapping(data)


def _print_summary(results: dict[str, Any], out: str | None) -> None:
    from eval.report import summary_text
    from megatron_mmed.common.progress import console

    console.print(summary_text(results), markup=False)
    if out:
        console.print(f"output: {out}  (results.json, results.md, results.png)", markup=False)


def run(args: argparse.Namespace) -> int:
    if args.eval_command == "prompt":
        import sys

        from eval.data import find_item
        from eval.prompts import build_prompt

        item = find_item(args.data, args.language, args.index)
        sys.stdout.write(build_prompt(item, args.prompt, rationale=not args.no_rationale))
        sys.stdout.flush()
        return 0
    if args.eval_command == "score":
        from eval.scoring import score_predictions

        results = score_predictions(
            args.data,
            args.predictions,
            args.out,
            languages=args.languages or (),
            bertscore_model=args.bertscore_model,
            rationale=False if args.no_rationale_metrics else None,
            protocol=args.protocol,
        )
        _print_summary(results, args.out)
        return 0
    from eval.run import run_mmedbench

    cfg = _config_from_args(args)
    results = run_mmedbench(cfg, progress=not args.no_progress)
    _print_summary(results, cfg.out)
    return 0

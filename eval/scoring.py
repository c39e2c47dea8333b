"""Scoring shared by the live run and ``mmed eval score``: parse raw outputs, accuracy, rationale metrics.

Policies (also written into every results.json under ``policy``):
- an item with no prediction counts as wrong; accuracy is over all valid items of the language and
  ``coverage`` says how many had a prediction;
- multi-answer items are correct only when the parsed set equals the gold set (all and only those letters);
- ``average`` is the unweighted mean over the scored languages (the paper's "Avg");
- rationale metrics use items whose ``human_check_passed`` is true, or, when the data has no human-check
  fields, every item with a reference rationale; ``paper_bleu``/``paper_rouge`` are the official script's
  (mislabelled) "BLEU-1"/"ROUGE-1" over the same items (see ``eval.paper_metrics``).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from eval.data import (
    LANGUAGES,
    LanguageSet,
    QAItem,
    data_digest,
    iter_json_lines,
    load_benchmark,
    split_dir,
)
from eval.metrics import bertscore, rationale_metrics
from eval.paper_metrics import paper_rationale_metrics
from eval.parse import parse_answer, strip_eot
from megatron_mmed.common.errors import UserError
from preprocessing.document import LANGUAGE_NAMES

POLICY = {
    "missing": "items without a prediction count as wrong; accuracy = correct / valid items; see coverage",
    "multi_answer": "correct only if the parsed letter set equals the gold set",
    "average": "unweighted mean of per-language accuracy over the scored languages",
    "unparsed": "outputs with no parseable answer count as wrong; 'unparsed' counts them per language and 'unparsed_examples' shows the first few",
    "bad_items": "data records failing validation are skipped (not in the denominator) and listed",
    "rationale_subset": "human_check_passed items, or all items with a reference rationale if the data has no check fields",
    "paper_metrics": "paper_bleu = NLTK sentence_bleu (4-gram, smoothing 1) and paper_rouge = rouge ROUGE-L F, "
    "per-item means x100: what the paper's table calls BLEU-1 and ROUGE-1",
}
_UNPARSED_SHOWN = 50
_OUTPUT_SHOWN = 400

Key = tuple[str, int]

#: What a predictions line may name as its ``protocol``: ours, and the names of earlier releases.
PROTOCOLS: tuple[str, ...] = ("paper", "generate", "loglik")
_LEGACY_PROTOCOLS = {"generate-rationale": ("paper", True), "generate-direct": ("paper", False)}


def record_run_identity(results: dict[str, Any], protocol: str, prompt: str, model: str, digest: str) -> None:
    """Protocol, prompt, model and data digest at the top of results.json; the paper's rows need ``paper``."""
    results.update(
        {
            "protocol": protocol,
            "prompt": prompt,
            "model": model,
            "data_digest": digest,
            "comparable_with_paper": protocol == "paper",
        }
    )


def extract_rationale(output: str, extra_eot: tuple[str, ...] = ()) -> str:
    """The rationale part of an output: after ``###Rationale:`` and before ``###Answer``."""
    text = strip_eot(output, extra_eot)
    low = text.lower()
    start = low.find("rationale:")
    text, low = (
        (text[start + len("rationale:") :], low[start + len("rationale:") :]) if start != -1 else (text, low)
    )
    end = low.find("###answer")
    if end == -1:
        end = low.find("answer:")
    return (text[:end] if end != -1 else text).strip()


def _rationale_subset(items: list[QAItem]) -> tuple[list[QAItem], str]:
    if any(it.human_check_passed is not None for it in items):
        return [it for it in items if it.human_check_passed and it.rationale.strip()], "human_check_passed"
    return [it for it in items if it.rationale.strip()], "all_with_rationale"


def score_outputs(
    bench: Mapping[str, LanguageSet],
    outputs: Mapping[Key, str],
    extra_eot: tuple[str, ...] = (),
    rationale: bool | None = None,
    bertscore_model: str = "",
) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """(results, per-item records) for raw ``outputs`` keyed by (language, index).

    ``rationale=None`` computes rationale metrics only when some output carries a ``Rationale:`` section.
    """
    if rationale is None:
        rationale = any("rationale:" in o.lower() for o in outputs.values())
    res: dict[str, Any] = {"accuracy": {}, "average": None, "coverage": {}, "counts": {}, "unparsed": {}}
    res["unparsed_examples"] = {}
    res["bad_items"] = {}
    rat: dict[str, Any] = {}
    records: list[dict[str, Any]] = []
    for lang, ls in bench.items():
        correct = predicted = unparsed = multi = multi_correct = 0
        shown: list[dict[str, Any]] = []
        for it in ls.items:
            multi += it.multi
            out = outputs.get((lang, it.index))
            if out is None:
                continue
            predicted += 1
            parsed = parse_answer(out, it.options, extra_eot)
            ok = parsed.letters is not None and tuple(parsed.letters) == it.answers
            correct += ok
            multi_correct += ok and it.multi
            if parsed.letters is None:
                unparsed += 1
                if len(shown) < _UNPARSED_SHOWN:
                    shown.append({"index": it.index, "id": it.id, "output": out[:_OUTPUT_SHOWN]})
            records.append(
                {
                    "language": lang,
                    "index": it.index,
                    "id": it.id,
                    "output": out,
                    "parsed": ",".join(parsed.letters) if parsed.letters else None,
                    "parse_rule": parsed.rule,
                    "gold": ",".join(it.answers),
                    "correct": ok,
                }
            )
        n = len(ls.items)
        res["accuracy"][lang] = correct / n if n else 0.0
        res["coverage"][lang] = predicted / n if n else 0.0
        res["counts"][lang] = {
            "items": n,
            "predicted": predicted,
            "missing": n - predicted,
            "correct": correct,
            "unparsed": unparsed,
            "multi_answer_items": multi,
            "multi_answer_correct": multi_correct,
            "bad_items": len(ls.bad),
            "accuracy_on_predicted": correct / predicted if predicted else None,
        }
        res["unparsed"][lang] = unparsed
        res["unparsed_examples"][lang] = shown
        res["bad_items"][lang] = [{"index": b.index, "reason": b.reason} for b in ls.bad]
        if rationale:
            subset, how = _rationale_subset(ls.items)
            cands = [extract_rationale(outputs.get((lang, it.index), ""), extra_eot) for it in subset]
            refs = [it.rationale for it in subset]
            m = rationale_metrics(cands, refs, lang)
            if subset:
                raw = [strip_eot(outputs.get((lang, it.index), ""), extra_eot) for it in subset]
                m.update(paper_rationale_metrics(raw, refs, lang))
            m["subset"] = how
            if bertscore_model and subset:
                m.update({k: round(v, 4) for k, v in bertscore(cands, refs, bertscore_model).items()})
            rat[lang] = m
    accs = list(res["accuracy"].values())
    res["average"] = sum(accs) / len(accs) if accs else None
    res["rationale"] = rat
    res["policy"] = POLICY
    return res, records


def normalise_language(name: Any) -> str | None:
    """``"English"``/``"english"``/``"en"`` -> ``"English"``; ``None`` when not an MMedBench language."""
    if not isinstance(name, str):
        return None
    if name.lower() in LANGUAGE_NAMES:
        return LANGUAGE_NAMES[name.lower()]
    cap = name[:1].upper() + name[1:].lower()
    return cap if cap in LANGUAGES else None


def read_predictions(path: str | Path) -> tuple[dict[Key, str], list[dict[str, Any]], dict[str, set]]:
    """(outputs keyed by (language, index), problems, what the lines say) from a predictions JSONL.

    Later lines win duplicates. ``protocol``, ``prompt_style``, ``model`` and ``rationale`` are optional (written by
    ``mmed eval mmedbench``); the third value collects the ones named, by field.
    """
    path = Path(path)
    if not path.is_file():
        raise UserError(f"predictions file not found: {path}")
    outputs: dict[Key, str] = {}
    problems: list[dict[str, Any]] = []
    said: dict[str, set] = {"protocol": set(), "prompt_style": set(), "model": set(), "rationale": set()}
    for index, rec, reason in iter_json_lines(path):
        lineno = index + 1
        if reason:
            problems.append({"line": lineno, "reason": reason})
            continue
        if not isinstance(rec, dict):
            problems.append({"line": lineno, "reason": "not a JSON object"})
            continue
        lang = normalise_language(rec.get("language"))
        idx, out = rec.get("index"), rec.get("output")
        if lang is None:
            problems.append({"line": lineno, "reason": f"unknown language {rec.get('language')!r}"})
        elif isinstance(idx, bool) or not isinstance(idx, int) or idx < 0:
            problems.append({"line": lineno, "reason": f"index {idx!r} is not a non-negative integer"})
        elif not isinstance(out, str):
            problems.append({"line": lineno, "reason": "output is missing or not a string"})
        else:
            if (lang, idx) in outputs:
                problems.append(
                    {"line": lineno, "reason": f"duplicate prediction for {lang} {idx} (last kept)"}
                )
            outputs[(lang, idx)] = out
            proto, asked = rec.get("protocol"), rec.get("rationale")
            if proto in _LEGACY_PROTOCOLS:
                proto, asked = _LEGACY_PROTOCOLS[proto]
            if proto in PROTOCOLS:
                said["protocol"].add(proto)
            if isinstance(asked, bool) and proto != "loglik":
                said["rationale"].add(asked)
            for key in ("prompt_style", "model"):
                if isinstance(rec.get(key), str):
                    said[key].add(rec[key])
    return outputs, problems, said


def score_predictions(
    data: str | Path,
    predictions: str | Path,
    out: str | Path | None = None,
    languages: Iterable[str] = (),
    bertscore_model: str = "",
    rationale: bool | None = None,
    protocol: str | None = None,
) -> dict[str, Any]:
    """Score a predictions file (``{"language", "index", "output"}`` lines) against MMedBench in ``data``.

    Scored languages are ``languages`` when given, else those data languages with at least one prediction.
    Rationale metrics: ``rationale`` when given, else when the file says its protocol asked for rationales
    (or, for files without a ``protocol`` field, when some output has a ``Rationale:`` section).
    ``protocol``: when not given, the one the file's lines name, or ``paper`` for files that name none (outputs in
    the paper's format, e.g. from the official inference script); lines naming several give ``mixed``.
    Writes results.json/md/png and scored_predictions.jsonl to ``out`` when given; returns the results.
    """
    from eval.report import write_reports

    outputs, problems, said = read_predictions(predictions)
    if rationale is None and said["protocol"]:
        rationale = True in said["rationale"]
    if protocol is None:
        protocol = (
            said["protocol"].pop() if len(said["protocol"]) == 1 else "mixed" if said["protocol"] else "paper"
        )
    if not outputs:
        raise UserError(f"no usable predictions in {predictions} ({len(problems)} malformed lines)")
    requested = tuple(languages)
    if not requested:
        present = {lang for lang, _ in outputs}
        requested = tuple(lang for lang in LANGUAGES if lang in present)
        folder = split_dir(data, "Test")
        missing = [lang for lang in requested if not (folder / f"{lang}.jsonl").is_file()]
        if missing:
            raise UserError(f"predictions name {', '.join(missing)} but {folder} has no such file(s)")
    bench = load_benchmark(data, "Test", requested)
    valid = {(lang, it.index) for lang, ls in bench.items() for it in ls.items}
    for key in sorted(set(outputs) - valid):
        lang, idx = key
        if lang in bench:
            problems.append(
                {"language": lang, "index": idx, "reason": "no valid item at this index (ignored)"}
            )
        del outputs[key]
    results, records = score_outputs(bench, outputs, rationale=rationale, bertscore_model=bertscore_model)
    results["prediction_problems"] = problems
    one = lambda key: next(iter(said[key])) if len(said[key]) == 1 else ""  # noqa: E731
    record_run_identity(
        results, protocol, one("prompt_style") or "paper", one("model"), data_digest(bench.values())
    )
    results["config"] = {
        "command": "score",
        "data": str(data),
        "predictions": str(predictions),
        "languages": list(bench),
        "bertscore_model": bertscore_model,
    }
    if out is not None:
        write_reports(results, records, out, records_name="scored_predictions.jsonl")
    return results

"""The one prompt module for evaluation and fine-tuning: the paper's template and a tidied variant.

``style="paper"`` (default) is byte-identical to MAGIC-AI4Med/MMedLM ``finetune/train.py``, which the released
models were trained with: its instruction texts (``Let’s`` with U+2019; one space after ``step-by-step.``, where
``inference/inference.py`` has two), the Alpaca wrapper, raw question/option text, options as ``"{key}. {text} "``
in file order, and a target ``###Rationale: …\\n###Answer: OPTION A,C IS CORRECT.`` that follows the prompt with
nothing in between (the caller appends the tokenizer's EOS). ``style="clean"`` is the tidied prompt for models
not trained on that template: ASCII apostrophe, stripped text, sorted keys, `` in {lang}`` in both instructions.
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from typing import Literal, NamedTuple

from eval.data import QAItem

PromptStyle = Literal["paper", "clean"]
PROMPT_STYLES: tuple[str, ...] = ("paper", "clean")

PAPER_INSTRUCTION_RATIONALE = (
    "You're a {lang} doctor, kindly address the medical queries according to the patient's account in {lang}. "
    "Let\u2019s solve this step-by-step. You should first give the reason in {lang} for your choice. "
    "Then you should give the right answer index of the question."
)
PAPER_INSTRUCTION_DIRECT = (
    "You're a {lang} doctor, kindly address the medical queries according to the patient's account. "
    "Answer with the best option directly."
)
CLEAN_INSTRUCTION_RATIONALE = PAPER_INSTRUCTION_RATIONALE.replace("\u2019", "'")
CLEAN_INSTRUCTION_DIRECT = (
    "You're a {lang} doctor, kindly address the medical queries according to the patient's account in {lang}. "
    "Answer with the best option directly."
)
QUESTION_SUFFIX = "Which of the following is the best treatment for this patient?"
TEMPLATE = (
    "Below is an instruction that describes a task, paired with an input that provides further context. "
    "Write a response that appropriately completes the request.\n\n"
    "### Instruction:\n{instruction}\n\n### Input:\n{input}\n\n### Response:"
)
SHOT_SEPARATOR = "\n\n"

LOGLIK_HEADER = "The following is a multiple choice question about medicine ({lang})."


class SFTExample(NamedTuple):
    """One supervised example: the loss goes on ``target`` (+ the tokenizer's EOS, appended by the caller)."""

    prompt: str
    target: str


def _check(style: str) -> None:
    if style not in PROMPT_STYLES:
        raise ValueError(f"unknown prompt style {style!r} (choose from {', '.join(PROMPT_STYLES)})")


def answer_text(letters: Sequence[str]) -> str:
    """``("A", "C")`` -> ``"OPTION A,C IS CORRECT."`` (the paper's answer line)."""
    return f"OPTION {','.join(letters)} IS CORRECT."


def instruction(language: str, rationale: bool = True, style: PromptStyle = "paper") -> str:
    _check(style)
    if style == "paper":
        text = PAPER_INSTRUCTION_RATIONALE if rationale else PAPER_INSTRUCTION_DIRECT
    else:
        text = CLEAN_INSTRUCTION_RATIONALE if rationale else CLEAN_INSTRUCTION_DIRECT
    return text.format(lang=language)


def format_input(item: QAItem, style: PromptStyle = "paper") -> str:
    """Question, the fixed treatment sentence, then the options on one line."""
    _check(style)
    if style == "paper":
        options = "".join(f"{k}. {v} " for k, v in item.options.items())
        return f"###Question: {item.question} {QUESTION_SUFFIX} ###Options: {options}"
    options = " ".join(f"{k}. {item.options[k].strip()}" for k in sorted(item.options))
    return f"###Question: {item.question.strip()} {QUESTION_SUFFIX} ###Options: {options}"


def format_target(item: QAItem, rationale: bool = True, style: PromptStyle = "paper") -> str:
    """The expected response: ``###Rationale: …\\n###Answer: OPTION X IS CORRECT.`` (answer only without rationale).

    The paper's has no leading space (it directly follows ``### Response:``); the clean one starts with one.
    """
    _check(style)
    answer = f"###Answer: {answer_text(item.answers)}"
    if rationale:
        text = item.rationale if style == "paper" else item.rationale.strip()
        answer = f"###Rationale: {text}\n{answer}"
    return answer if style == "paper" else " " + answer


def format_prompt(item: QAItem, rationale: bool = True, style: PromptStyle = "paper") -> str:
    """One question in the Alpaca template, ending right where the model's response starts."""
    return TEMPLATE.format(
        instruction=instruction(item.language, rationale, style), input=format_input(item, style)
    )


def sft_example(item: QAItem, rationale: bool = True, style: PromptStyle = "paper") -> SFTExample:
    """(prompt, target) for supervised fine-tuning in ``style``; append the tokenizer's EOS to the target."""
    return SFTExample(format_prompt(item, rationale, style), format_target(item, rationale, style))


def build_prompt(
    item: QAItem, style: PromptStyle = "paper", rationale: bool = True, shots: Sequence[QAItem] = ()
) -> str:
    """The generation prompt for ``item``, preceded by ``shots`` solved examples (prompt + target) if few-shot."""
    parts = [format_prompt(s, rationale, style) + format_target(s, rationale, style) for s in shots]
    parts.append(format_prompt(item, rationale, style))
    return SHOT_SEPARATOR.join(parts)


def build_generate_prompt(
    item: QAItem, rationale: bool = True, shots: Sequence[QAItem] = (), style: PromptStyle = "paper"
) -> str:
    """``build_prompt`` with the argument order of earlier releases."""
    return build_prompt(item, style, rationale, shots)


def _plain_question(item: QAItem) -> str:
    options = "\n".join(f"{k}. {item.options[k].strip()}" for k in sorted(item.options))
    return f"Question: {item.question.strip()}\n{options}\nAnswer:"


def build_loglik_prompt(item: QAItem, shots: Sequence[QAItem] = ()) -> str:
    """Zero/few-shot prompt for letter scoring: header, solved examples, then the question up to ``Answer:``."""
    parts = [LOGLIK_HEADER.format(lang=item.language)]
    parts += [f"{_plain_question(s)} {','.join(s.answers)}" for s in shots]
    parts.append(_plain_question(item))
    return SHOT_SEPARATOR.join(parts)


def loglik_continuations(item: QAItem) -> list[str]:
    """One scored continuation per option letter (``" A"``, ``" B"``, …), in key order."""
    return [f" {k}" for k in sorted(item.options)]


def select_shots(pool: Sequence[QAItem], k: int, seed: int) -> list[QAItem]:
    """``k`` fixed examples drawn from ``pool`` (Train) with ``seed``: the same for every question of a language."""
    if k <= 0:
        return []
    return random.Random(seed).sample(list(pool), min(k, len(pool)))

"""Prompt builders: the paper's fine-tuning format (reused by SFT) and a plain zero-shot format for loglik.

The paper's instruction/input/output texts are wrapped in the Alpaca template its fine-tuning code used; the
same functions give SFT pairs (``sft_example``) so training and evaluation can never drift apart.
"""

from __future__ import annotations

import random
from collections.abc import Sequence

from eval.data import QAItem

INSTRUCTION_RATIONALE = (
    "You're a {lang} doctor, kindly address the medical queries according to the patient's account in {lang}. "
    "Let's solve this step-by-step. You should first give the reason in {lang} for your choice. "
    "Then you should give the right answer index of the question."
)
INSTRUCTION_DIRECT = (
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


def answer_text(letters: Sequence[str]) -> str:
    """``("A", "C")`` -> ``"OPTION A,C IS CORRECT."`` (the paper's answer line)."""
    return f"OPTION {','.join(letters)} IS CORRECT."


def format_input(item: QAItem) -> str:
    """The paper's input: question, the fixed treatment sentence, then ``A. …`` options on one line."""
    options = " ".join(f"{k}. {v}" for k, v in item.options.items())
    return f"###Question: {item.question} {QUESTION_SUFFIX} ###Options: {options}"


def format_target(item: QAItem, rationale: bool = True) -> str:
    """The expected response: ``###Rationale: …\\n###Answer: OPTION X IS CORRECT.`` (answer only without rationale)."""
    answer = f"###Answer: {answer_text(item.answers)}"
    if not rationale:
        return answer
    return f"###Rationale: {item.rationale}\n{answer}"


def instruction(language: str, rationale: bool = True) -> str:
    return (INSTRUCTION_RATIONALE if rationale else INSTRUCTION_DIRECT).format(lang=language)


def format_prompt(item: QAItem, rationale: bool = True) -> str:
    """One question in the fine-tuning template, ending right where the model's response starts."""
    return TEMPLATE.format(instruction=instruction(item.language, rationale), input=format_input(item))


def sft_example(item: QAItem, rationale: bool = True) -> tuple[str, str]:
    """(prompt, target) for supervised fine-tuning; the loss goes on ``" " + target`` only."""
    return format_prompt(item, rationale), " " + format_target(item, rationale)


def build_generate_prompt(item: QAItem, rationale: bool = True, shots: Sequence[QAItem] = ()) -> str:
    """Paper-format prompt, preceded by ``shots`` solved examples (same template) when few-shot."""
    parts = [format_prompt(s, rationale) + " " + format_target(s, rationale) for s in shots]
    parts.append(format_prompt(item, rationale))
    return SHOT_SEPARATOR.join(parts)


def _plain_question(item: QAItem) -> str:
    options = "\n".join(f"{k}. {v}" for k, v in item.options.items())
    return f"Question: {item.question}\n{options}\nAnswer:"


def build_loglik_prompt(item: QAItem, shots: Sequence[QAItem] = ()) -> str:
    """Zero/few-shot prompt for letter scoring: header, solved examples, then the question up to ``Answer:``."""
    parts = [LOGLIK_HEADER.format(lang=item.language)]
    parts += [f"{_plain_question(s)} {','.join(s.answers)}" for s in shots]
    parts.append(_plain_question(item))
    return SHOT_SEPARATOR.join(parts)


def loglik_continuations(item: QAItem) -> list[str]:
    """One scored continuation per option letter (``" A"``, ``" B"``, …)."""
    return [f" {k}" for k in item.options]


def select_shots(pool: Sequence[QAItem], k: int, seed: int) -> list[QAItem]:
    """``k`` fixed examples drawn from ``pool`` (Train) with ``seed``: the same for every question of a language."""
    if k <= 0:
        return []
    return random.Random(seed).sample(list(pool), min(k, len(pool)))

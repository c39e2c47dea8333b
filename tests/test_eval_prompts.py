"""The paper's prompt, byte for byte: MAGIC-AI4Med/MMedLM ``finetune/train.py`` (instruction texts, Alpaca
wrapper, ``"{key}. {text} "`` options in file order, raw text, target + EOS), written out here by hand."""

from __future__ import annotations

import json

import pytest

from eval.data import validate_record
from eval.prompts import SFTExample, build_prompt, sft_example
from megatron_mmed.cli import main

#: Raw text on purpose: a trailing space in the question and an option, options not in key order.
REC = {
    "question": "A 45-year-old man has crushing chest pain. ",
    "options": {"A": "Aspirin", "C": "Nitroglycerin", "B": "Heparin "},
    "answer_idx": "A,C",
    "rationale": "Both relieve ischaemia.",
}
ITEM = validate_record(REC, "English", 0)

HEAD = (
    "Below is an instruction that describes a task, paired with an input that provides further context. "
    "Write a response that appropriately completes the request.\n\n### Instruction:\n"
)
INPUT = (
    "\n\n### Input:\n###Question: A 45-year-old man has crushing chest pain.  Which of the following is the best "
    "treatment for this patient? ###Options: A. Aspirin C. Nitroglycerin B. Heparin  \n\n### Response:"
)
PAPER_RATIONALE = (
    HEAD
    + "You're a English doctor, kindly address the medical queries according to the patient's account in "
    "English. Let\u2019s solve this step-by-step. You should first give the reason in English for your choice. "
    "Then you should give the right answer index of the question." + INPUT
)
PAPER_DIRECT = (
    HEAD + "You're a English doctor, kindly address the medical queries according to the patient's account. "
    "Answer with the best option directly." + INPUT
)
CLEAN_INPUT = (
    "\n\n### Input:\n###Question: A 45-year-old man has crushing chest pain. Which of the following is the best "
    "treatment for this patient? ###Options: A. Aspirin B. Heparin C. Nitroglycerin\n\n### Response:"
)
CLEAN_RATIONALE = (
    HEAD
    + "You're a English doctor, kindly address the medical queries according to the patient's account in "
    "English. Let's solve this step-by-step. You should first give the reason in English for your choice. "
    "Then you should give the right answer index of the question." + CLEAN_INPUT
)
CLEAN_DIRECT = (
    HEAD
    + "You're a English doctor, kindly address the medical queries according to the patient's account in "
    "English. Answer with the best option directly." + CLEAN_INPUT
)


def test_paper_prompt_is_the_official_template_byte_for_byte():
    assert build_prompt(ITEM) == PAPER_RATIONALE  # the default is the paper's
    assert build_prompt(ITEM, "paper", rationale=False) == PAPER_DIRECT
    assert sft_example(ITEM) == SFTExample(
        PAPER_RATIONALE, "###Rationale: Both relieve ischaemia.\n###Answer: OPTION A,C IS CORRECT."
    )
    assert sft_example(ITEM, rationale=False) == (PAPER_DIRECT, "###Answer: OPTION A,C IS CORRECT.")
    # the official loss text is prompt + target + EOS, with nothing in between
    prompt, target = sft_example(ITEM)
    assert (prompt + target + "</s>").count("### Response:###Rationale: Both") == 1


def test_clean_prompt_is_the_tidied_one():
    assert build_prompt(ITEM, "clean") == CLEAN_RATIONALE
    assert build_prompt(ITEM, "clean", rationale=False) == CLEAN_DIRECT
    assert (
        sft_example(ITEM, style="clean").target
        == " ###Rationale: Both relieve ischaemia.\n###Answer: OPTION A,C IS CORRECT."
    )
    with pytest.raises(ValueError, match="prompt style"):
        build_prompt(ITEM, "chatml")


def test_few_shot_paper_examples_are_prompt_plus_target():
    shot = validate_record({**REC, "answer_idx": "B"}, "English", 1)
    got = build_prompt(ITEM, "paper", shots=[shot])
    assert (
        got
        == PAPER_RATIONALE
        + "###Rationale: Both relieve ischaemia.\n###Answer: OPTION B IS CORRECT.\n\n"
        + PAPER_RATIONALE
    )


@pytest.mark.parametrize(
    ("flags", "expected"),
    [([], PAPER_RATIONALE), (["--no-rationale"], PAPER_DIRECT), (["--prompt", "clean"], CLEAN_RATIONALE),
     (["--prompt", "clean", "--no-rationale"], CLEAN_DIRECT)],
)  # fmt: skip
def test_eval_prompt_prints_exactly_the_model_input(tmp_path, capsys, flags, expected):
    (tmp_path / "English.jsonl").write_text(json.dumps(REC) + "\n", encoding="utf-8")
    rc = main(["eval", "prompt", "--data", str(tmp_path), "--language", "English", "--index", "0", *flags])
    assert rc == 0 and capsys.readouterr().out == expected  # no newline added


def test_eval_prompt_errors(tmp_path, capsys):
    (tmp_path / "English.jsonl").write_text(
        json.dumps(REC) + "\n" + json.dumps({**REC, "options": {}}) + "\n"
    )
    assert main(["eval", "prompt", "--data", str(tmp_path), "--language", "en", "--index", "1"]) == 2
    assert "English item 1 is not usable: missing or empty options" in capsys.readouterr().err
    assert main(["eval", "prompt", "--data", str(tmp_path), "--language", "en", "--index", "7"]) == 2
    assert "no item at line index 7" in capsys.readouterr().err

"""Answer parsing on the output shapes real models produce (paper format, free text, six languages)."""

from __future__ import annotations

import pytest

from eval.parse import parse_answer, strip_eot

FIVE = {k: f"text {k}" for k in "ABCDE"}
RU = {"A": "да", "B": "нет"}


@pytest.mark.parametrize(
    ("output", "expected"),
    [
        ("###Rationale: A is wrong since ...\n###Answer: OPTION B IS CORRECT.", ("B",)),
        ("###Rationale: ...\n###Answer: OPTION A,C IS CORRECT.</s>", ("A", "C")),
        ("option c is correct", ("C",)),
        ("Answer: B", ("B",)),
        ("The answer is (C) because the patient ...", ("C",)),
        ("Answer: B I think", ("B",)),
        ("the correct answer is: E", ("E",)),
        ("B.", ("B",)),
        ("(D)", ("D",)),
        ("C", ("C",)),
        ("A, C", ("A", "C")),
        ("答案：B", ("B",)),
        ("答案是D。", ("D",)),
        ("正解はB", ("B",)),
        ("正解はＣとＥ", ("C", "E")),  # full-width letters, Japanese 'and'
        ("Réponse : A, B et E", ("A", "B", "E")),
        ("La respuesta correcta es la D.", ("D",)),
        ("I think\nAnswer: D and E", ("D", "E")),
        ("B<|im_end|>garbage Answer: C", ("B",)),
        ("B</s>Answer: C", ("B",)),
        ("B<|endoftext|>", ("B",)),
        ("Answer: text D", ("D",)),  # the option's text after a marker
        ("The best option is C.", ("C",)),
        ("B) text B", ("B",)),
        ("Option B", ("B",)),
        ("Answer: **C**", ("C",)),
        ("The correct answer is **D. text D**", ("D",)),
        ("réponses exactes : A, C", ("A", "C")),
        ("\\boxed{C}", ("C",)),
        ("Answer: b", ("B",)),  # lower-case letter right after a marker
        ("正解：c", ("C",)),
    ],
)
def test_parses_letters(output, expected):
    assert parse_answer(output, FIVE).letters == expected


@pytest.mark.parametrize(
    ("output", "expected"),
    [("Ответ: да", ("A",)), ("Ответ: нет.", ("B",)), ("Да.", ("A",)), ("нет", ("B",)), ("Ответ: B", ("B",))],
)
def test_russian_yes_no(output, expected):
    assert parse_answer(output, RU).letters == expected


@pytest.mark.parametrize(
    "output",
    [
        "",
        "   ",
        "garbage text without a choice",
        "A patient with fever is seen",  # a leading article is not answer A
        "The patient has A disease",
        "Answer: F",  # not an option
        "Answer: a patient with fever",  # lower-case word, not a letter
        "<|im_end|>B",  # nothing before the end-of-text token
        "Option A is wrong",  # mentioning an option is not choosing it
        "Данные отсутствуют",
    ],
)
def test_unparseable(output):
    assert parse_answer(output, FIVE if "Данные" not in output else RU).letters is None


def test_last_answer_wins_and_new_block_is_ignored():
    out = "Answer: A\nOn reflection, Answer: D\n###Question: next one ... ###Answer: OPTION B IS CORRECT."
    assert parse_answer(out, FIVE).letters == ("D",)


def test_strip_eot_with_tokenizer_specific_marker():
    assert strip_eot("B[EOS] more", ("[EOS]",)) == "B"
    assert parse_answer("C[EOS]", FIVE).letters == ("C",)
    assert parse_answer("C<eos_custom> Answer: A", FIVE, extra_eot=("<eos_custom>",)).letters == ("C",)

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


#: Issue 12: formats that were read as a wrong letter or not at all, each with its gold reading.
@pytest.mark.parametrize(
    ("output", "expected"),
    [
        # lower-case letter lists are read whole (they used to give only the first letter: a false "correct")
        ("Answer: b, d", ("B", "D")),
        ("Answer: a, c, e", ("A", "C", "E")),
        ("答え: c。", ("C",)),
        ("正解は b、c、e", ("B", "C", "E")),
        ("正解：b と d", ("B", "D")),
        # Oxford-comma lists
        ("The correct answers are A, B, and C.", ("A", "B", "C")),
        ("The correct answers are A, B, C, D, and E.", ("A", "B", "C", "D", "E")),
        # phrases that had no rule
        ("选A", ("A",)),
        ("故选E", ("E",)),
        ("答えは c です", ("C",)),
        ("正解は「e」", ("E",)),
        ("La opción correcta es la C", ("C",)),
        ("B is correct.", ("B",)),
        ("I would choose B", ("B",)),
        ("The answer is not D; it is A", ("A",)),
        # the six languages, single and several letters
        ("The answer is C.", ("C",)),
        ("答案：A、C", ("A", "C")),
        ("正解はAとC", ("A", "C")),
        ("La bonne réponse est C.", ("C",)),
        ("Réponses : A et C", ("A", "C")),
        ("Правильный ответ: C", ("C",)),
        ("Ответ: A и C", ("A", "C")),
        ("La respuesta correcta es C.", ("C",)),
        ("Respuesta: A y C", ("A", "C")),
        # fullwidth letters, boxed, bracketed and dotted letters
        ("答案：Ｄ", ("D",)),
        ("Ａ，Ｃ", ("A", "C")),
        ("The final answer is $\\boxed{E}$.", ("E",)),
        ("\\boxed{A, C}", ("A", "C")),
        ("(B)", ("B",)),
        ("B)", ("B",)),
        ("B.", ("B",)),
        ("B. text B", ("B",)),
    ],
)
def test_issue12_formats(output, expected):
    assert parse_answer(output, FIVE).letters == expected


@pytest.mark.parametrize("eos", ["</s>", "<|im_end|>", "<|endoftext|>", ""])
@pytest.mark.parametrize("newline", ["\n", "\r\n"])
def test_official_rationale_format_with_any_eos(eos, newline):
    out = f"###Rationale: Option A is wrong, D is tempting.{newline}###Answer: OPTION B,D IS CORRECT.{eos}"
    assert parse_answer(out, FIVE).letters == ("B", "D")
    if eos:  # whatever the model writes after its end-of-text token is not read
        assert parse_answer(out + "Answer: A", FIVE).letters == ("B", "D")


def test_cyrillic_letters_only_where_unambiguous():
    assert parse_answer("Ответ: Б", RU).letters == ("B",)
    assert parse_answer("Ответ: А", RU).letters == ("A",)
    assert parse_answer("Ответ: Б", FIVE).letters == ("B",)
    # В is the third Cyrillic letter and looks like Latin B: never guessed
    assert parse_answer("Ответ: В", FIVE).letters is None


@pytest.mark.parametrize(
    "output",
    [
        "The answer is not D.",  # a negation alone names no answer
        "The answer is A or B.",  # a hesitation is not a choice
        "Answer: a patient with fever",
        "Answer: b because the patient",  # a lower-case letter followed by prose is not an answer
        "选项A是错误的",  # "option A is wrong": 选项 is not 选
        "Option B is not correct",
        "Ответ: В",
    ],
)
def test_unsure_is_unparsed_never_a_guess(output):
    assert parse_answer(output, FIVE).letters is None

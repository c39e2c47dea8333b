"""MMedBench loading: both layouts, real files, and bad input counted or refused with a clear message."""

from __future__ import annotations

import json
import shutil

import pytest

from eval.data import LANGUAGES, load_benchmark, load_language, parse_answer_idx, resolve_languages, split_dir
from eval.prompts import (
    build_generate_prompt,
    build_loglik_prompt,
    format_target,
    select_shots,
    sft_example,
)
from megatron_mmed.common.errors import UserError

GOOD = {
    "question": "Q?",
    "options": {"A": "yes", "B": "no", "C": "maybe"},
    "answer_idx": "B",
    "rationale": "r",
}


def _write(path, records):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(
        "".join((r if isinstance(r, str) else json.dumps(r, ensure_ascii=False)) + "\n" for r in records)
    )


def test_real_files_load_clean(shared_data):
    bench = load_benchmark(shared_data / "qa")
    assert list(bench) == list(LANGUAGES)
    for lang, ls in bench.items():
        assert len(ls.items) == 80 and not ls.bad, lang
        assert [it.index for it in ls.items] == list(range(80))
    assert sum(it.multi for it in bench["French"].items) == 43
    assert sum(it.multi for it in bench["Japanese"].items) == 11
    ru = bench["Russian"].items[0]
    assert ru.options == {"A": "да", "B": "нет"}
    assert bench["Japanese"].items[5].answers == ("D", "E")  # "D,E" in the file


def test_answer_idx_forms():
    assert parse_answer_idx("C") == ("C",)
    assert parse_answer_idx("C,A") == ("A", "C")
    assert parse_answer_idx(" a , c ") == ("A", "C")
    assert parse_answer_idx(["B", "A"]) == ("A", "B")
    assert parse_answer_idx("") == () and parse_answer_idx(3) == () and parse_answer_idx("AB") == ()


def test_bad_items_are_counted_with_reasons(tmp_path):
    path = tmp_path / "English.jsonl"
    _write(
        path,
        [
            GOOD,
            {**GOOD, "options": {}},
            {k: v for k, v in GOOD.items() if k != "options"},
            {**GOOD, "answer_idx": "E"},
            {**GOOD, "answer_idx": "A,F"},
            {**GOOD, "question": "  "},
            "{not json",
            "",
            GOOD,
        ],
    )
    ls = load_language(path, "English")
    assert [it.index for it in ls.items] == [0, 8]  # line numbers survive skipped and blank lines
    reasons = {b.index: b.reason for b in ls.bad}
    assert set(reasons) == {1, 2, 3, 4, 5, 6}
    assert "empty options" in reasons[1] and "options" in reasons[2]
    assert "E not among options" in reasons[3] and "F not among options" in reasons[4]
    assert "question" in reasons[5] and "JSON" in reasons[6]


def test_file_level_mistakes_are_user_errors(tmp_path):
    with pytest.raises(UserError, match="not found"):
        load_benchmark(tmp_path / "nope")
    with pytest.raises(UserError, match="no MMedBench language files"):
        load_benchmark(tmp_path)
    (tmp_path / "French.jsonl").write_text("\n")
    with pytest.raises(UserError, match="French is empty"):
        load_benchmark(tmp_path)
    with pytest.raises(UserError, match="Spanish not found"):
        load_benchmark(tmp_path, languages=["es"])
    with pytest.raises(UserError, match="unknown language"):
        resolve_languages(tmp_path, ["Klingon"])
    with pytest.raises(UserError, match="no Train/"):
        split_dir(tmp_path, "Train")


def test_test_train_layout_and_shots(tmp_path, shared_data):
    for split in ("Test", "Train"):
        (tmp_path / split).mkdir()
        shutil.copy(shared_data / "qa" / "Spanish.jsonl", tmp_path / split / "Spanish.jsonl")
    test = load_benchmark(tmp_path, "Test")
    train = load_benchmark(tmp_path, "Train")
    assert list(test) == ["Spanish"] and len(train["Spanish"].items) == 80
    shots = select_shots(train["Spanish"].items, 2, seed=7)
    assert shots == select_shots(train["Spanish"].items, 2, seed=7)  # fixed seed -> same examples
    assert shots != select_shots(train["Spanish"].items, 2, seed=8)
    item = test["Spanish"].items[0]
    prompt = build_generate_prompt(item, True, shots)
    assert prompt.count("### Instruction:") == 3
    assert prompt.count("###Answer: OPTION") == 2  # the shots are solved, the question is not
    assert prompt.endswith("### Response:")
    assert f"###Rationale: {shots[0].rationale}" in prompt


def test_paper_prompt_format(shared_data):
    it = load_language(shared_data / "qa" / "Japanese.jsonl", "Japanese").items[5]
    prompt, target = sft_example(it, rationale=True, style="clean")  # the tidied prompt of earlier releases
    assert "You're a Japanese doctor" in prompt and "Let's solve this step-by-step" in prompt
    assert (
        f"###Question: {it.question} Which of the following is the best treatment for this patient?" in prompt
    )
    assert "###Options: A. 大動脈弁閉鎖不全症 B. 左室自由壁破裂" in prompt
    assert target == " ###Rationale: \n###Answer: OPTION D,E IS CORRECT."
    assert format_target(it, rationale=False) == "###Answer: OPTION D,E IS CORRECT."
    direct = build_generate_prompt(it, rationale=False)
    assert "Answer with the best option directly." in direct and "step-by-step" not in direct
    ll = build_loglik_prompt(it)
    assert ll.endswith("\nE. 乳頭筋断裂\nAnswer:")


def test_bom_does_not_hide_the_first_item(tmp_path, shared_data):
    """A UTF-8 BOM at the start of a language file (Windows editors write one) used to make item 0 vanish."""
    raw = (shared_data / "qa" / "English.jsonl").read_bytes()
    (tmp_path / "English.jsonl").write_bytes(b"\xef\xbb\xbf" + raw)
    ls = load_language(tmp_path / "English.jsonl", "English")
    assert not ls.bad and [it.index for it in ls.items] == list(range(80))
    assert ls.items[0].question == json.loads(raw.decode().splitlines()[0])["question"]


def test_one_loader_for_both_option_shapes_in_file_order(tmp_path):
    recs = [
        {"question": " Q? ", "options": ["yes ", "no"], "answer_idx": "B", "source_id": "s1"},
        {"question": "Q2", "options": {"B": "b text", "A": "a text"}, "answer_idx": "A"},
    ]
    _write(tmp_path / "English.jsonl", recs)
    a, b = load_language(tmp_path / "English.jsonl", "English").items
    assert a.options == {"A": "yes ", "B": "no"} and a.answers == ("B",)
    assert a.question == " Q? "  # raw text: the paper's prompt uses it as written
    assert list(b.options) == ["B", "A"]  # file order, as the official template lists them
    assert (a.id, a.qid, b.id, b.qid) == ("s1", "English:0", "English-1", "English:1")


def test_undecodable_lines_are_counted_not_fatal(tmp_path):
    good = json.dumps(GOOD).encode()
    (tmp_path / "English.jsonl").write_bytes(good + b"\n\xff\xfe\x00garbage\n" + good + b"\r\n")
    ls = load_language(tmp_path / "English.jsonl", "English")
    assert [it.index for it in ls.items] == [0, 2]
    assert [(b.index, b.reason) for b in ls.bad] == [(1, "not valid UTF-8")]


def test_flat_files_and_test_folder_together_are_ambiguous(tmp_path, shared_data):
    (tmp_path / "Test").mkdir()
    shutil.copy(shared_data / "qa" / "Spanish.jsonl", tmp_path / "Test" / "Spanish.jsonl")
    shutil.copy(shared_data / "qa" / "English.jsonl", tmp_path / "English.jsonl")
    with pytest.raises(UserError, match="both"):
        split_dir(tmp_path, "Test")

"""Scoring predictions files on the real MMedBench-schema data: oracle, shifted letters, multi-answer sets,
missing and malformed predictions, and the ``mmed eval score`` contract."""

from __future__ import annotations

import json

import pytest

from eval.data import LANGUAGES
from eval.scoring import score_predictions
from megatron_mmed.cli import main


def _items(shared_data):
    """(language, line index, gold letters, option letters) straight from the files, independent of eval.data."""
    rows = []
    for lang in LANGUAGES:
        for i, line in enumerate(
            (shared_data / "qa" / f"{lang}.jsonl").read_text(encoding="utf-8").splitlines()
        ):
            rec = json.loads(line)
            rows.append((lang, i, sorted(rec["answer_idx"].split(",")), sorted(rec["options"])))
    return rows


def _write_preds(path, preds):
    path.write_text("".join(json.dumps(p, ensure_ascii=False) + "\n" for p in preds), encoding="utf-8")
    return path


def _shift(letters, options):
    return sorted({options[(options.index(x) + 1) % len(options)] for x in letters})


def test_oracle_scores_100_percent_via_cli(shared_data, tmp_path):
    preds = [
        {"language": lang, "index": i, "output": f"###Answer: OPTION {','.join(gold)} IS CORRECT."}
        for lang, i, gold, _ in _items(shared_data)
    ]
    out = tmp_path / "out"
    rc = main(["eval", "score", "--data", str(shared_data / "qa"), "--predictions",
               str(_write_preds(tmp_path / "p.jsonl", preds)), "--out", str(out)])  # fmt: skip
    assert rc == 0
    res = json.loads((out / "results.json").read_text())
    assert res["accuracy"] == {lang: 1.0 for lang in LANGUAGES}
    assert res["average"] == 1.0
    assert all(c["unparsed"] == 0 and c["missing"] == 0 for c in res["counts"].values())
    assert (out / "results.png").stat().st_size > 0 and (out / "scored_predictions.jsonl").is_file()
    md = (out / "results.md").read_text()
    assert "| **this run** | 100.00 | 100.00 | 100.00 | 100.00 | 100.00 | 100.00 | 100.00 |" in md
    assert "| MMedLM 2-7B (paper) | 61.74 | 80.01 | 61.81 | 52.09 | 80.47 | 67.65 | 67.30 |" in md
    assert "InternLM2-7B (paper) | 57.27" in md and "74.27" in md


def test_shifted_letters_give_expected_figure(shared_data, tmp_path):
    """Every 3rd item answered right, the rest shifted one letter: accuracy = the right ones (plus any
    multi-answer set that a shift maps onto itself, e.g. all five letters)."""
    preds, expected = [], {lang: [0, 0] for lang in LANGUAGES}
    styles = ["Answer: {}", "{}.", "###Answer: OPTION {} IS CORRECT."]
    for lang, i, gold, options in _items(shared_data):
        letters = gold if i % 3 == 0 else _shift(gold, options)
        expected[lang][0] += letters == gold
        expected[lang][1] += 1
        preds.append({"language": lang, "index": i, "output": styles[i % 3].format(",".join(letters))})
    res = score_predictions(shared_data / "qa", _write_preds(tmp_path / "p.jsonl", preds))
    for lang, (right, n) in expected.items():
        assert res["accuracy"][lang] == pytest.approx(right / n), lang
    assert res["accuracy"]["English"] == pytest.approx(27 / 80)  # indices 0, 3, …, 78
    assert res["average"] == pytest.approx(sum(r / n for r, n in expected.values()) / 6)


def test_multi_answer_needs_the_exact_set(shared_data, tmp_path):
    fr = [
        (i, gold, opts) for lang, i, gold, opts in _items(shared_data) if lang == "French" and len(gold) > 1
    ]
    (i0, g0, _), (i1, g1, o1), (i2, g2, _), (i3, g3, _) = fr[:4]
    extra = next(x for x in o1 if x not in g1)
    preds = [
        {
            "language": "French",
            "index": i0,
            "output": f"Réponse : {' et '.join(reversed(g0))}",
        },  # order-free: right
        {
            "language": "French",
            "index": i1,
            "output": f"OPTION {','.join([*g1, extra])} IS CORRECT.",
        },  # superset
        {"language": "French", "index": i2, "output": f"OPTION {g2[0]} IS CORRECT."},  # subset
        {"language": "French", "index": i3, "output": f"OPTION {','.join(g3)} IS CORRECT."},  # exact
    ]
    res = score_predictions(shared_data / "qa", _write_preds(tmp_path / "p.jsonl", preds), tmp_path / "o")
    c = res["counts"]["French"]
    assert (c["predicted"], c["correct"], c["multi_answer_correct"]) == (4, 2, 2)
    assert c["missing"] == 76 and res["coverage"]["French"] == pytest.approx(4 / 80)
    assert res["accuracy"] == {"French": pytest.approx(2 / 80)}  # missing items count as wrong
    scored = [json.loads(x) for x in (tmp_path / "o" / "scored_predictions.jsonl").read_text().splitlines()]
    assert [r["correct"] for r in scored] == [True, False, False, True]


def test_unparsed_and_malformed_predictions_are_reported(shared_data, tmp_path):
    lines = [
        json.dumps({"language": "ru", "index": 0, "output": "Ответ: да"}),
        json.dumps({"language": "Russian", "index": 1, "output": "I cannot decide"}),
        json.dumps({"language": "Klingon", "index": 0, "output": "A"}),
        json.dumps({"language": "Russian", "index": 999, "output": "A"}),
        json.dumps({"language": "Russian", "index": "2", "output": "A"}),
        json.dumps({"language": "Russian", "index": 3}),
        "{torn",
    ]
    (tmp_path / "p.jsonl").write_text("\n".join(lines) + "\n", encoding="utf-8")
    res = score_predictions(shared_data / "qa", tmp_path / "p.jsonl")
    assert list(res["accuracy"]) == ["Russian"]
    gold0 = json.loads((shared_data / "qa" / "Russian.jsonl").read_text().splitlines()[0])["answer_idx"]
    assert res["counts"]["Russian"]["correct"] == (gold0 == "A")
    assert res["counts"]["Russian"]["unparsed"] == 1
    assert res["unparsed"] == {"Russian": 1}
    assert res["unparsed_examples"]["Russian"][0] == {"index": 1, "id": res["unparsed_examples"]["Russian"][0]["id"],
                                             "output": "I cannot decide"}  # fmt: skip
    reasons = " | ".join(p["reason"] for p in res["prediction_problems"])
    for text in ("unknown language 'Klingon'", "no valid item at this index", "not a non-negative integer",
                 "output is missing", "not valid JSON"):  # fmt: skip
        assert text in reasons


def test_score_cli_errors(shared_data, tmp_path, capsys):
    rc = main(
        ["eval", "score", "--data", str(shared_data / "qa"), "--predictions", str(tmp_path / "none.jsonl")]
    )
    assert rc == 2 and "predictions file not found" in capsys.readouterr().err
    _write_preds(tmp_path / "p.jsonl", [{"language": "English", "index": 0, "output": "A"}])
    rc = main(
        ["eval", "score", "--data", str(tmp_path / "nodata"), "--predictions", str(tmp_path / "p.jsonl")]
    )
    assert rc == 2 and "not found" in capsys.readouterr().err


def test_binary_predictions_file_is_a_one_line_error_or_counted(shared_data, tmp_path, capsys):
    garbage = bytes(range(256)) * 40 + b"\n\x00\xff\xfe\n"
    (tmp_path / "bin.jsonl").write_bytes(garbage)
    rc = main(
        ["eval", "score", "--data", str(shared_data / "qa"), "--predictions", str(tmp_path / "bin.jsonl")]
    )
    err = capsys.readouterr().err
    assert rc == 2 and err.startswith("mmed eval: error: no usable predictions") and err.count("\n") == 1
    # good lines around a binary one are scored; the binary line is counted, a BOM does not hide line 1
    good = json.dumps({"language": "Russian", "index": 0, "output": "Ответ: да"}, ensure_ascii=False)
    (tmp_path / "mixed.jsonl").write_bytes(b"\xef\xbb\xbf" + good.encode() + b"\n\xc3\x28\xff\n")
    res = score_predictions(shared_data / "qa", tmp_path / "mixed.jsonl")
    assert res["counts"]["Russian"]["predicted"] == 1
    assert res["prediction_problems"] == [{"line": 2, "reason": "not valid UTF-8"}]

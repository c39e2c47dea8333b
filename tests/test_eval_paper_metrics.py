"""``paper_bleu`` / ``paper_rouge`` reproduce the official MMedLM rationale numbers on hand-checked pairs.

Reference values were computed once, outside the repo, in a scratch venv (/tmp/refvenv: nltk 3.10.4,
rouge 1.0.1, jieba 0.42.1, janome 0.5.1 on Python 3.11) with the official definitions: the response cut and
newline removal of ``inference/inference.py``, the ``[SPLIT]`` line read back and cut as in
``metrics/rationale_similarity.py``, ``sentence_bleu([ref], cand, smoothing_function=method1)`` and
``Rouge().get_scores(cand, ref)[0]["rouge-l"]["f"]``. NLTK's English Punkt model is a download that is not
reachable here, so sentences came from ``PunktSentenceTokenizer`` with our abbreviation list; the boundaries in
these texts (and ``Dr.``, ``e.g.`` kept whole) are the English model's, checked by hand.
"""

from __future__ import annotations

import json

import pytest

from eval.paper_metrics import (
    official_rationale,
    paper_rationale_metrics,
    paper_tokens,
    rouge_l_f,
    sentence_bleu,
    split_sentences,
    word_tokenize,
)
from eval.scoring import score_predictions

#: (language, raw model output, reference rationale, official BLEU, official ROUGE-L F)
PAIRS = [
    ("English", "###Rationale: The patient has high blood pressure and diabetes.\nThiazides (e.g. chlorthalidone) are "
     "first-line; ACE inhibitors protect the kidney.\n###Answer: OPTION B IS CORRECT.</s>",
     "The patient has hypertension and diabetes. An ACE inhibitor is first-line because it protects the kidney, e.g. "
     "lisinopril. Thiazides aren't preferred here.", 0.052026606349804605, 0.42857142361678),
    ("English", "###Rationale: Dr. Smith's patient can't breathe: it's \"acute\" asthma! Give salbutamol... then "
     "steroids.\n###Answer: OPTION A IS CORRECT.",
     "The child has acute asthma. Salbutamol is given first, then steroids (prednisolone 1 mg/kg).",
     0.024289783953423513, 0.1538461488757398),
    ("French", "###Rationale: Le patient présente une pneumonie. L'amoxicilline est le traitement de première "
     "intention.\n###Answer: OPTION C IS CORRECT.",
     "Il s'agit d'une pneumonie communautaire. Le traitement de première intention est l'amoxicilline, 1 g trois fois "
     "par jour.", 0.13206564878142502, 0.39999999520000007),
    ("Spanish", "###Rationale: La paciente tiene anemia ferropénica, por lo que el tratamiento es hierro oral.\n"
     "###Answer: OPTION D IS CORRECT.",
     "La anemia ferropénica se trata con hierro oral. La transfusión solo se indica si hay inestabilidad.",
     0.07048930954890646, 0.2962962913031551),
    ("Russian", "###Rationale: У пациента острый аппендицит. Показана операция.\n###Answer: OPTION A IS CORRECT.",
     "Клиническая картина типична для острого аппендицита. Показана экстренная аппендэктомия.",
     0.0446778805361507, 0.1333333285333335),
    ("Chinese", "###Rationale: 患者出现发热和咳嗽，胸片提示肺炎。首选阿莫西林治疗。\n###Answer: OPTION B IS CORRECT.",
     "患者发热、咳嗽，胸部X线提示社区获得性肺炎，首选阿莫西林。", 0.0440378996027018, 0.5714285664540818),
    ("Japanese", "###Rationale: 急性心筋梗塞の患者に収縮期雑音が出現した。乳頭筋断裂が考えられる。\n"
     "###Answer: OPTION E IS CORRECT.",
     "急性心筋梗塞後に新たな収縮期雑音が出現した場合、乳頭筋断裂や心室中隔穿孔を考える。",
     0.34460178972075217, 0.6666666617876543),
]  # fmt: skip


@pytest.mark.parametrize(("language", "output", "reference", "bleu", "rouge"), PAIRS)
def test_reproduces_the_official_numbers(language, output, reference, bleu, rouge):
    got = paper_rationale_metrics([output], [reference], language)
    assert got["paper_bleu"] == pytest.approx(100 * bleu, abs=1e-4)
    assert got["paper_rouge"] == pytest.approx(100 * rouge, abs=1e-4)


def test_official_tokens_keep_case_and_punctuation_and_glue_newlines():
    # newline removal glues "diabetes.Thiazides"; abbreviations stay whole; the final period is a token
    assert paper_tokens(official_rationale(PAIRS[0][1]), "English") == [
        "The", "patient", "has", "high", "blood", "pressure", "and", "diabetes.Thiazides", "(", "e.g.",
        "chlorthalidone", ")", "are", "first-line", ";", "ACE", "inhibitors", "protect", "the", "kidney", ".",
    ]  # fmt: skip
    assert word_tokenize("Dr. Smith's patient can't breathe: it's \"acute\" asthma! Give salbutamol... then x.") == [
        "Dr.", "Smith", "'s", "patient", "ca", "n't", "breathe", ":", "it", "'s", "``", "acute", "''", "asthma",
        "!", "Give", "salbutamol", "...", "then", "x", ".",
    ]  # fmt: skip
    assert split_sentences("It hurts (a lot.) Then 3. Sleep. See fig. 2 now.") == [
        "It hurts (a lot.)", "Then 3.", "Sleep.", "See fig. 2 now.",
    ]  # fmt: skip


def test_definitions_on_tiny_cases():
    # smoothing method 1: a zero count becomes 0.1 over the raw n-gram total (NLTK on Python <= 3.11)
    hyp, ref = ["a", "b", "c"], ["a", "b", "d"]
    p = [2 / 3, 1 / 2, 0.1 / 1, 0.1 / 1]
    assert sentence_bleu(ref, hyp) == pytest.approx((p[0] * p[1] * p[2] * p[3]) ** 0.25)
    assert sentence_bleu(ref, ["x"]) == 0.0 and sentence_bleu(ref, []) == 0.0
    # ROUGE-L of the package counts distinct words: "a a b" vs "a b" -> P = R = 1
    assert rouge_l_f("a a b", "a b") == pytest.approx(1.0, abs=1e-6)
    assert rouge_l_f("", "a b") == 0.0 and rouge_l_f("...", "a b") == 0.0  # the package raises here


def test_scored_results_carry_paper_columns_over_human_checked_items(tmp_path):
    """results.json rationale: bleu1..4, rouge1/2/L and paper_bleu/paper_rouge, over human_check_passed items."""
    lang, output, reference, bleu, rouge = PAIRS[3]
    base = {"options": {"A": "a", "B": "b", "C": "c", "D": "d"}, "answer_idx": "D", "human_checked": True}
    recs = [
        {**base, "question": "Q1", "rationale": reference, "human_check_passed": True},
        {**base, "question": "Q2", "rationale": "Otra explicación distinta.", "human_check_passed": False},
    ]
    (tmp_path / "Spanish.jsonl").write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in recs))
    preds = [{"language": lang, "index": i, "output": output} for i in range(2)]
    (tmp_path / "p.jsonl").write_text("".join(json.dumps(p, ensure_ascii=False) + "\n" for p in preds))
    res = score_predictions(tmp_path, tmp_path / "p.jsonl", tmp_path / "out")
    m = json.loads((tmp_path / "out" / "results.json").read_text())["rationale"]["Spanish"]
    assert set(m) >= {
        "bleu1",
        "bleu2",
        "bleu3",
        "bleu4",
        "rouge1",
        "rouge2",
        "rougeL",
        "paper_bleu",
        "paper_rouge",
    }
    assert m["n"] == 1 and m["subset"] == "human_check_passed"
    assert m["paper_bleu"] == pytest.approx(100 * bleu, abs=1e-4)
    assert m["paper_rouge"] == pytest.approx(100 * rouge, abs=1e-4)
    assert res["accuracy"] == {"Spanish": 1.0}
    assert "paper_bleu" in (tmp_path / "out" / "results.md").read_text()

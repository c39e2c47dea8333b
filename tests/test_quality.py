"""Quality filters: every rule fires on a crafted bad document (space and CJK) and not when disabled; real
medical text passes; line cleanup is conservative; the work is linear."""

from __future__ import annotations

import dataclasses
import json
import random
import time

import pytest

from megatron_mmed.common.config import ConfigError
from preprocessing.clean import CleanConfig, clean_text
from preprocessing.document import LANGS
from preprocessing.quality import RULES, CjkThresholds, QualityConfig, QualityFilter, clean_lines, drop_line

QF = QualityFilter(QualityConfig())

EN = (
    "Hypertension is a common chronic condition in which the blood pressure in the arteries is persistently "
    "elevated. Long-term high blood pressure is a major risk factor for stroke, coronary artery disease, heart "
    "failure, atrial fibrillation, peripheral arterial disease, vision loss and chronic kidney disease. "
    "Lifestyle changes such as reduced salt intake, regular exercise and weight loss lower it, and several "
    "classes of drugs are used when these are not enough."
)
EN2 = (
    "Diagnosis is based on repeated measurements taken on separate occasions, ideally confirmed by "
    "ambulatory or home monitoring to exclude white-coat effects before treatment is started."
)
ZH = (
    "高血压是一种常见的慢性疾病，指动脉血压持续升高。长期高血压是脑卒中、冠心病、心力衰竭、心房颤动、"
    "外周动脉疾病、视力丧失和慢性肾病的主要危险因素。减少食盐摄入、规律运动和减轻体重等生活方式改变可以降低血压，"
    "效果不足时可使用多类降压药物。"
)
JA = (
    "高血圧は動脈の血圧が持続的に高い状態が続く慢性疾患である。長期間の高血圧は脳卒中、冠動脈疾患、心不全、"
    "心房細動、末梢動脈疾患、視力障害および慢性腎臓病の主要な危険因子となる。減塩、定期的な運動、減量などの"
    "生活習慣の改善で血圧は低下し、不十分な場合には数種類の降圧薬が用いられる。"
)


def _words(seed: int, n: int, length: int) -> list[str]:
    rng = random.Random(seed)
    return ["".join(rng.choice("bcdfghklmnprstvz") for _ in range(length)) for _ in range(n)]


def _bad_docs() -> list[tuple[str, str, str]]:
    """(rule, lang, text): each text fails ``rule`` first under the default config, and nothing else once
    ``rule`` is disabled (except repeated lines, which are also repeated n-grams: see ``NEXT``)."""
    en_sents = [s.strip() + "." for s in EN.split(".") if s.strip()]
    zh_sents = [s + "。" for s in ZH.split("。") if s]
    filler = " ".join(_words(1, 40, 6))
    return [
        ("min_length", "en", "Blood pressure was normal today."),
        ("min_length", "zh", "患者血压正常。"),
        ("mean_word_length", "en", " ".join(_words(2, 40, 2))),
        ("mean_word_length", "fr", " ".join(_words(3, 40, 14))),
        ("symbol_ratio", "en", EN + " " + " ".join(f"#{w}" for w in _words(4, 12, 6))),
        ("symbol_ratio", "zh", "……".join(ZH[i : i + 6] for i in range(0, len(ZH), 6))),
        ("bullet_lines", "en", "\n".join(f"• {s}" for s in en_sents)),
        ("bullet_lines", "ja", "\n".join(f"・{s}。" for s in JA.split("。") if s)),
        ("ellipsis_lines", "es", "\n".join(f"{s[:-1]}..." for s in en_sents)),
        ("ellipsis_lines", "zh", "\n".join(f"{s[:-1]}……" for s in zh_sents)),
        ("alpha_ratio", "en", EN + " " + " ".join(str(1000 + 7 * i) for i in range(40))),
        ("alpha_ratio", "ja", JA[:60] + " ".join(str(1000 + 7 * i) for i in range(60))),
        ("dup_lines", "en", "\n".join(en_sents + [en_sents[0]] * 3)),
        ("dup_lines", "zh", "\n".join(zh_sents + [zh_sents[1]] * 3)),
        ("top_ngram", "en", filler + " " + " ".join(f"cheap pills {w}" for w in _words(5, 12, 5))),
        ("top_ngram", "zh", ZH[:40] + "".join(f"减肥药{c}" for c in ZH[40:90])),
        ("dup_ngram", "en", filler + " " + " ".join(_words(6, 16, 7)) * 1 + " " + " ".join(_words(6, 16, 7))),
        ("dup_ngram", "ja", JA[:50] + JA[60:110] * 3),
    ]


#: What fires once the rule is off (a line repeated verbatim is also a repeated n-gram).
NEXT = {"dup_lines": "dup_ngram"}


@pytest.mark.parametrize("rule,lang,text", _bad_docs(), ids=lambda v: v if len(v) < 20 else "")
def test_rule_fires_and_can_be_disabled(rule, lang, text):
    _, reason, scores = QF.apply(text, lang)
    assert reason == rule, scores
    _, reason_off, scores_off = QualityFilter(QualityConfig(disabled=(rule,))).apply(text, lang)
    assert reason_off == NEXT.get(rule), scores_off
    if rule in NEXT:
        everything_off = QualityFilter(QualityConfig(disabled=(rule, NEXT[rule])))
        assert everything_off.apply(text, lang)[1] is None


@pytest.mark.parametrize("lang,text", [("en", EN), ("zh", ZH), ("ja", JA)])
def test_dup_paragraphs_and_max_length(lang, text):
    paras = "\n\n".join([text, text, text[: len(text) // 2], text])
    off_lines = QualityFilter(QualityConfig(disabled=("dup_lines",)))
    assert off_lines.apply(paras, lang)[1] == "dup_paragraphs"
    assert QF.apply(paras, lang)[1] == "dup_lines"  # lines are checked first
    all_off = QualityFilter(QualityConfig(disabled=("dup_lines", "dup_paragraphs", "top_ngram", "dup_ngram")))
    assert all_off.apply(paras, lang)[1] is None
    short = QualityFilter(QualityConfig(max_chars=100))
    assert short.apply(text, lang)[1] == "max_length"
    assert QualityFilter(QualityConfig(max_chars=100, disabled=("max_length",))).apply(text, lang)[1] is None


def test_russian_allows_longer_words():
    ru = (
        "Этилметилгидроксипиридина сукцинат является ингибитором свободнорадикальных процессов и обладает "
        "антигипоксическим, стресспротекторным, ноотропным, противосудорожным и анксиолитическим действием, "
        "а также повышает резистентность организма к воздействию различных повреждающих факторов."
    )
    _, reason, scores = QF.apply(ru, "ru")
    assert reason is None and 10 < scores["mean_word_length"] < 12
    assert QF.apply(ru, "fr")[1] == "mean_word_length"


@pytest.mark.parametrize("lang,text", [("zh", ZH), ("ja", JA)])
def test_cjk_without_spaces_is_not_judged_by_words(lang, text):
    assert " " not in text
    out, reason, scores = QF.apply(text, lang)
    assert reason is None and out == text
    assert "words" not in scores and "mean_word_length" not in scores
    assert scores["nonspace_chars"] == len(text)
    # Treated as a space language it would be one 150-character "word".
    assert QF.apply(text, "en")[1] == "min_length"


def test_good_text_passes_in_every_language():
    for lang, text in [("en", EN), ("zh", ZH), ("ja", JA)]:
        out, reason, scores = QF.apply(text, lang)
        assert reason is None, (lang, scores)
        assert all(round(v, 4) == v for v in scores.values())
        assert {"alpha_ratio", "top_2gram", "dup_10gram"} <= set(scores)


def _corpus(shared_data, lang: str, domain: str) -> list[str]:
    with open(shared_data / "corpus" / f"{lang}.jsonl", encoding="utf-8") as f:
        recs = [json.loads(line) for line in f if line.strip()]
    return [clean_text(r["text"], CleanConfig()) for r in recs if r["domain"] == domain]


def test_real_medical_docs_pass(shared_data):
    """Measured pass rate 1.000 in every language (103/103 en..es, 107/107 ja, after clean_text)."""
    for lang in LANGS:
        docs = _corpus(shared_data, lang, "medical")
        failed = [(QF.apply(d, lang)[1], d[:80]) for d in docs]
        failed = [f for f in failed if f[0] is not None]
        assert 1 - len(failed) / len(docs) >= 0.97, (lang, failed)


def test_real_general_docs_mostly_pass(shared_data):
    """Measured: en 0.948 (Enron e-mail threads with repeated signatures), ru 0.990, others 1.000."""
    for lang in LANGS:
        docs = _corpus(shared_data, lang, "general")
        rate = sum(QF.apply(d, lang)[1] is None for d in docs) / len(docs)
        assert rate >= 0.9, (lang, rate)


@pytest.mark.parametrize(
    "line",
    [
        "-----------",
        "* * *",
        "Home",
        "» Next »",
        "登录",
        "トップへ戻る",
        "We use cookies to improve your experience. Accept all",
        "Ce site utilise des cookies pour la navigation.",
        "Este sitio usa cookies. Aceptar",
        "Мы используем файлы cookie",
        "本网站使用Cookie，继续浏览即表示您同意。",
        "Please enable JavaScript to view this page.",
        "© 2021 Example Health. All rights reserved.",
    ],
)
def test_line_cleanup_drops_boilerplate(line):
    assert drop_line(line)


@pytest.mark.parametrize(
    "line",
    [
        "Avoid cookies, cakes and other foods rich in added sugar.",
        "120/80",
        "BP 145/92 mmHg",
        "Next, the patient was examined.",
        "患者",
        "① 高血压",
        "Home blood pressure monitoring is recommended for all patients with suspected hypertension.",
        "",
    ],
)
def test_line_cleanup_keeps_content(line):
    assert not drop_line(line)


def test_line_cleanup_in_apply():
    text = f"Home\nMenu\n\n{EN}\n\n-----\n\nWe use cookies. Accept\n\n{EN2}"
    out, reason, scores = QF.apply(text, "en")
    assert out == f"{EN}\n\n{EN2}"
    assert scores["lines_dropped"] == 4
    assert reason is None
    out_off, _, scores_off = QualityFilter(QualityConfig(line_cleanup=False)).apply(text, "en")
    assert out_off == text and "lines_dropped" not in scores_off
    assert clean_lines(EN) == (EN, 0)


def test_huge_document_is_fast():
    """Measured ~0.7 s for ~1 MB of random zh text (n-gram work capped at ``ngram_max_tokens``)."""
    rng = random.Random(0)
    chars = list(ZH.replace("，", "").replace("。", "").replace("、", ""))
    text = "\n".join("".join(rng.choice(chars) for _ in range(100)) + "。" for _ in range(9000))
    start = time.perf_counter()
    _, reason, scores = QF.apply(text, "zh")
    assert time.perf_counter() - start < 15
    assert reason is None, scores


@pytest.mark.parametrize(
    "kwargs",
    [
        {"disabled": ("nope",)},
        {"mean_word_length": (5.0, 3.0)},
        {"mean_word_length_by_lang": {"ru": (3.0,)}},
        {"max_bullet_lines": 1.5},
        {"max_dup_lines": (0.3, 2.0)},
        {"max_dup_paragraphs": (0.3,)},
        {"line_rules_min_lines": 0},
        {"cjk": CjkThresholds(dup_ngram_max=(0.3,))},
        {"cjk": CjkThresholds(min_alpha_ratio=-0.1)},
    ],
)
def test_config_validation(kwargs):
    with pytest.raises(ConfigError):
        QualityConfig(**kwargs).validate()
    with pytest.raises(ConfigError):
        QualityFilter(QualityConfig(**kwargs))


def test_rule_names_and_defaults():
    assert set(RULES) == {
        "max_length",
        "min_length",
        "mean_word_length",
        "symbol_ratio",
        "bullet_lines",
        "ellipsis_lines",
        "alpha_ratio",
        "dup_lines",
        "dup_paragraphs",
        "top_ngram",
        "dup_ngram",
    }
    cfg = QualityConfig()
    cfg.validate()
    assert cfg.cjk.min_length != cfg.space.min_length
    assert dataclasses.replace(cfg, disabled=RULES).disabled == RULES

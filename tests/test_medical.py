"""Tests for the medical filter: the MMedC rule checked by hand, our default preset on the real corpus, config."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from megatron_mmed.common.config import ConfigError, from_dict
from megatron_mmed.common.errors import UserError
from preprocessing.document import LANGS
from preprocessing.medical import (
    KEYWORDS_DIR,
    MedicalConfig,
    MedicalFilter,
    normalize,
    parse_keyword_list,
)

# ------------------------------------------------------------------------------------------------ fixtures


@pytest.fixture(scope="module")
def keywords_json(shared_data: Path) -> Path:
    return shared_data / "mmedc_keywords.json"


@pytest.fixture(scope="module")
def mmedc(keywords_json: Path) -> MedicalFilter:
    return MedicalFilter(MedicalConfig(preset="mmedc", keywords_file=str(keywords_json)))


@pytest.fixture(scope="module")
def default() -> MedicalFilter:
    return MedicalFilter(MedicalConfig())


@pytest.fixture(scope="module")
def mmedc_words(keywords_json: Path) -> dict[str, set[str]]:
    """The keyword set per language, read straight from the JSON (independent of the code under test)."""
    data = json.loads(keywords_json.read_text(encoding="utf-8"))
    return {lang: {w.lower() for lst in data["keywords"][lang].values() for w in lst} for lang in LANGS}


def _pad(text: str, length: int) -> str:
    """``text`` + a space + 'z's up to exactly ``length`` characters ('z' is in no keyword)."""
    assert length > len(text) + 1
    return text + " " + "z" * (length - len(text) - 1)


def _check_boundaries(f: MedicalFilter, text: str, lang: str, hits: int, weighted: int, ratio: float) -> None:
    """Exact scores on ``text``, then keep exactly at the ratio threshold and drop one character beyond it."""
    keep, scores = f.score(text, lang)
    assert scores["med_hits"] == hits
    assert scores["med_ratio"] == round(weighted / len(text), 4)
    boundary = round(weighted / ratio)
    assert weighted / boundary == ratio  # the chosen numbers land exactly on the threshold
    assert f.score(_pad(text, boundary), lang)[0] is True
    assert f.score(_pad(text, boundary + 1), lang)[0] is False


# ------------------------------------------------------------------------------------------------ mmedc by hand


def test_mmedc_en_by_hand(mmedc, mmedc_words):
    w = mmedc_words["en"]
    assert {"chemotherapy", "cell", "gene", "dna", "virus", "blood", "blood pressure"} <= w
    assert not {"cells", "damage", "to", ":", "pressure"} & w
    # "chemotherapy" (12 chars) is long: substring of "chemotherapy-induced". "cell" is short: the token
    # "cells" does not count. Hits: chemotherapy, cell, gene, dna, virus = 5 (threshold 5).
    text = "chemotherapy-induced damage to cells : cell gene dna virus"
    weighted = 12 + 4 + 4 + 3 + 5
    _check_boundaries(mmedc, text, "en", hits=5, weighted=weighted, ratio=0.04)
    # one distinct hit fewer (no virus) fails the hit threshold even at a high ratio
    keep, scores = mmedc.score("chemotherapy-induced damage to cells : cell gene dna", "en")
    assert (keep, scores["med_hits"]) == (False, 4)
    # a long multi-word keyword counts every occurrence; "blood" also counts as a token, twice
    text = "Blood pressure blood pressure"
    keep, scores = mmedc.score(text, "en")
    assert scores == {"med_hits": 2, "med_ratio": round((2 * 14 + 2 * 5) / len(text), 4)}


def test_mmedc_fr_by_hand(mmedc, mmedc_words):
    w = mmedc_words["fr"]
    assert {"cardiologie", "douleur chronique", "douleur", "cancer", "maladie", "cellule"} <= w
    assert not {"chronique", "maladies"} & w
    # long: cardiologie (11), "douleur chronique" (17, has a space); short tokens: douleur, cancer, cellule;
    # "maladies" is not the token "maladie". Hits = 5 (threshold 4).
    text = "cardiologie douleur chronique cancer maladies cellule"
    _check_boundaries(mmedc, text, "fr", hits=5, weighted=11 + 17 + 7 + 6 + 7, ratio=0.04)
    assert mmedc.score("cardiologie douleur chronique maladies cellule", "fr") == (
        True,
        {"med_hits": 4, "med_ratio": round((11 + 17 + 7 + 7) / 46, 4)},
    )
    assert mmedc.score("cardiologie douleur chronique maladies", "fr")[0] is False  # 3 hits


def test_mmedc_es_by_hand(mmedc, mmedc_words):
    w = mmedc_words["es"]
    assert {"diagnóstico", "cardiología", "enfermedad", "hospital", "gen"} <= w
    assert not {"en", "y", "del", "genes", "cardiología:"} & w
    # long: diagnóstico (11), cardiología (11, inside the token "cardiología:"); short: enfermedad, hospital;
    # "gen" only occurs inside "genes". Hits = 4 = threshold.
    text = "diagnóstico en cardiología: enfermedad y genes del hospital"
    _check_boundaries(mmedc, text, "es", hits=4, weighted=11 + 11 + 10 + 8, ratio=0.04)
    assert mmedc.score("diagnóstico en cardiología: enfermedad y genes", "es")[0] is False  # 3 hits


def test_mmedc_ru_by_hand(mmedc, mmedc_words):
    w = mmedc_words["ru"]
    assert {"головная боль", "заболевание", "врач", "вирус", "кровь"} <= w
    assert not {"головная", "боль", "вирусы", "и"} & w
    # long: "головная боль" (13), заболевание (11); short: врач, кровь; "вирус" only inside "вирусы".
    text = "Головная боль и заболевание : врач и вирусы и кровь"
    _check_boundaries(mmedc, text, "ru", hits=4, weighted=13 + 11 + 4 + 5, ratio=0.02)
    assert mmedc.score("Головная боль и заболевание : врач и вирусы", "ru")[0] is False  # 3 hits


def test_mmedc_zh_by_hand(mmedc, mmedc_words):
    # zh/ja: every keyword is a substring count, also inside longer keywords (心脏 inside 心脏病).
    text = "心脏病患者在医院手术"
    found = {k for k in mmedc_words["zh"] if k in text}
    assert found == {"心脏", "心脏病", "患者", "医院", "手术"}
    _check_boundaries(mmedc, text, "zh", hits=5, weighted=2 + 3 + 2 + 2 + 2, ratio=0.05)
    text = "心脏病患者在医院"
    assert {k for k in mmedc_words["zh"] if k in text} == {"心脏", "心脏病", "患者", "医院"}
    assert mmedc.score(text, "zh")[0] is False  # 4 hits < 5
    # occurrences are counted: 患者 three times
    text = "患者患者患者"
    assert {k for k in mmedc_words["zh"] if k in text} == {"患者"}
    assert mmedc.score(text, "zh")[1] == {"med_hits": 1, "med_ratio": 1.0}


def test_mmedc_ja_by_hand(mmedc, mmedc_words):
    text = "免疫療法と手術室で患者を"
    found = {k for k in mmedc_words["ja"] if k in text}
    assert found == {"免疫", "免疫療法", "手術", "手術室", "患者"}
    _check_boundaries(mmedc, text, "ja", hits=5, weighted=2 + 4 + 2 + 3 + 2, ratio=0.05)
    text = "免疫療法と手術を"
    assert {k for k in mmedc_words["ja"] if k in text} == {"免疫", "免疫療法", "手術"}
    assert mmedc.score(text, "ja")[0] is False


# ------------------------------------------------------------------------------------------------ default preset


def test_keyword_lists_ship_and_are_broad():
    for lang in LANGS:
        path = KEYWORDS_DIR / f"{lang}.txt"
        assert path.is_file(), path
        assert len(parse_keyword_list(path, lang)) >= 300, lang


def test_default_matching_rules(default):
    # whole words vs stems: "cell" is a whole word (no "cellar"), "diagnos*" a stem
    assert default.score("the cellar and the cellist", "en")[1]["med_hits"] == 0
    _, s = default.score("diagnosis diagnosed diagnostic", "en")
    assert s["med_hits"] == 1 and s["med_count"] == 3
    # Russian stems catch inflections; ё reads as е; a stem colliding with a place name is spelled out
    _, s = default.score("Болезни и болезнью; лечение лечения; отёк", "ru")
    assert s["med_hits"] == 3 and s["med_count"] == 5
    assert default.score("запорожского казачества", "ru")[1]["med_hits"] == 0
    # zh: Traditional characters are folded before matching
    assert normalize("醫院診斷", "zh") == "医院诊断"
    assert default.score("醫院診斷", "zh")[1] == default.score("医院诊断", "zh")[1]
    # suffix terms: a word ending in -itis counts for en
    assert default.score("tendinitis", "en")[1]["med_hits"] == 1


def test_default_is_length_aware(default):
    short_hits, short_ratio = default.required(20, "en")
    long_hits, long_ratio = default.required(1200, "en")
    assert short_hits < long_hits and short_ratio > long_ratio
    assert default.required(10**6, "en")[0] == default.cfg.max_hits


# ------------------------------------------------------------------------------------------------ the real corpus


def _rates(f: MedicalFilter, shared_data: Path, lang: str) -> tuple[float, float]:
    kept = {"medical": [], "general": []}
    for line in (shared_data / "corpus" / f"{lang}.jsonl").read_text(encoding="utf-8").splitlines():
        rec = json.loads(line)
        kept[rec["domain"]].append(f.score(rec["text"], lang)[0])
    return sum(kept["medical"]) / len(kept["medical"]), sum(kept["general"]) / len(kept["general"])


def test_default_on_corpus(default, shared_data):
    rates = {lang: _rates(default, shared_data, lang) for lang in LANGS}
    print("\ndefault preset: lang medical_kept general_kept")
    for lang, (med, gen) in rates.items():
        print(f"  {lang} {med:6.1%} {gen:6.1%}")
    for lang, (med, gen) in rates.items():
        assert med >= 0.75, (lang, med)
        assert gen <= 0.03, (lang, gen)


#: mmedc medical-kept rates measured on the dev corpus with this implementation (see the report: the paper's
#: rule misses most medical documents; inflected Russian almost never matches its dictionary forms).
MMEDC_MEDICAL = {"en": 0.31, "zh": 0.20, "ja": 0.28, "fr": 0.25, "ru": 0.0, "es": 0.28}


def test_mmedc_on_corpus(mmedc, shared_data):
    rates = {lang: _rates(mmedc, shared_data, lang) for lang in LANGS}
    print("\nmmedc preset: lang medical_kept general_kept")
    for lang, (med, gen) in rates.items():
        print(f"  {lang} {med:6.1%} {gen:6.1%}")
    for lang, (med, gen) in rates.items():
        assert gen <= 0.03, (lang, gen)
        assert abs(med - MMEDC_MEDICAL[lang]) <= 0.15, (lang, med)
        assert med <= 0.75, (lang, med)


# ------------------------------------------------------------------------------------------------ config and errors


def test_config_validation(keywords_json):
    with pytest.raises(ConfigError, match="--keywords"):
        MedicalConfig(preset="mmedc").validate()
    with pytest.raises(ConfigError, match="--keywords"):
        MedicalFilter(MedicalConfig(preset="mmedc"))
    with pytest.raises(ConfigError, match="preset"):
        MedicalConfig(preset="strict").validate()  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match="not one of"):
        from_dict(MedicalConfig, {"preset": "strict"})
    with pytest.raises(ConfigError, match="only used by preset 'mmedc'"):
        MedicalConfig(keywords_file=str(keywords_json)).validate()
    with pytest.raises(ConfigError, match="missing: zh"):
        MedicalConfig(min_ratio={"en": 0.1, "ja": 0.1, "fr": 0.1, "ru": 0.1, "es": 0.1}).validate()
    with pytest.raises(ConfigError, match="min_hits"):
        MedicalConfig(min_hits=0).validate()
    cfg = from_dict(MedicalConfig, {"preset": "mmedc", "keywords_file": str(keywords_json)})
    cfg.validate()


def _write(tmp_path: Path, name: str, text: str) -> str:
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return str(path)


def test_malformed_keywords_file_is_user_error(tmp_path, keywords_json):
    good = json.loads(keywords_json.read_text(encoding="utf-8"))
    no_ru = {**good, "keywords": {k: v for k, v in good["keywords"].items() if k != "ru"}}
    bad_list = {**good, "keywords": {**good["keywords"], "fr": {"a": "not a list"}}}
    bad_threshold = {
        **good,
        "thresholds": {**good["thresholds"], "en": {"hit_times": "5", "hit_ratio": 0.04}},
    }
    cases = {
        "missing.json": None,
        "notjson.json": "{ not json",
        "list.json": "[1, 2]",
        "no_ru.json": json.dumps(no_ru),
        "bad_list.json": json.dumps(bad_list),
        "bad_threshold.json": json.dumps(bad_threshold),
    }
    for name, content in cases.items():
        path = str(tmp_path / name) if content is None else _write(tmp_path, name, content)
        with pytest.raises(UserError, match="--keywords"):
            MedicalFilter(MedicalConfig(preset="mmedc", keywords_file=path))


def test_malformed_keyword_list_is_user_error(tmp_path):
    for bad in ("ca*rdi", "*", "two *words", "*suffix with space"):
        path = Path(_write(tmp_path, "en.txt", f"# comment\nheart\n{bad}\n"))
        with pytest.raises(UserError, match="en.txt:3"):
            parse_keyword_list(path, "en")
    with pytest.raises(UserError, match="wildcards"):
        parse_keyword_list(Path(_write(tmp_path, "zh.txt", "医院*\n")), "zh")
    with pytest.raises(UserError, match="no terms"):
        parse_keyword_list(Path(_write(tmp_path, "fr.txt", "# only a comment\n")), "fr")
    terms = parse_keyword_list(
        Path(_write(tmp_path, "ru.txt", "болезн*  # stem\nголовн* бол*\nврач\n")), "ru"
    )
    assert terms == {"болезн": "stem", "головн* бол": "stem", "врач": "word"}

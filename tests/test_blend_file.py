"""``blend.json`` through its one type: written, read back equal, other shapes refused naming the field."""

from __future__ import annotations

import json
import shutil

import pytest
import yaml

from megatron_mmed.common.blend_file import FORMAT, BlendDataset, BlendFile, BlendTokenizer
from megatron_mmed.common.errors import UserError


def _blend(root, weights=(0.25, 0.75, 0.0)) -> BlendFile:
    langs = ("en", "zh", "ru")
    return BlendFile(
        root=str(root),
        temperature=2.0,
        multipliers={lang: 1.0 for lang in langs},
        tokenizer=BlendTokenizer("sentencepiece", "/m/sp.model", 2, None, 1000, "uint16"),
        datasets=tuple(
            BlendDataset(lang, str(root / f"{lang}_text_document"), f"{lang}_text_document", 10, 2, 1.0, w)
            for lang, w in zip(langs, weights, strict=True)
        ),
    )


def _touch_datasets(folder, langs=("en", "zh", "ru")) -> None:
    for lang in langs:
        for ext in (".bin", ".idx"):
            (folder / f"{lang}_text_document{ext}").write_bytes(b"")


def test_written_file_reads_back_equal(tmp_path):
    blend = _blend(tmp_path)
    path = blend.write(tmp_path)
    assert path == tmp_path / "blend.json"
    back = BlendFile.read(tmp_path)  # the folder or the file
    assert back == blend and BlendFile.read(path) == blend and back.path == path
    doc = json.loads(path.read_text())
    assert doc["format"] == FORMAT and list(doc) == [
        "format",
        "root",
        "temperature",
        "multipliers",
        "tokenizer",
        "datasets",
        "blend",
    ]
    assert doc["blend"] == [
        [str(tmp_path / "en_text_document"), str(tmp_path / "zh_text_document")],
        [0.25, 0.75],
    ]
    assert yaml.safe_load((tmp_path / "blend.yaml").read_text()) == doc
    assert path.read_text() == json.dumps(blend.to_dict(), ensure_ascii=False, indent=2) + "\n"


def test_writer_refuses_what_the_reader_would(tmp_path):
    with pytest.raises(UserError, match="negative weight"):
        _blend(tmp_path, weights=(0.5, -0.5, 1.0)).write(tmp_path)
    with pytest.raises(UserError, match="weights sum to zero"):
        _blend(tmp_path, weights=(0.0, 0.0, 0.0)).write(tmp_path)
    assert not (tmp_path / "blend.json").exists()


@pytest.mark.parametrize(
    "change, message",
    [
        (lambda d: d.update(format="megatron-mmed.blend/2"), "field 'format' is 'megatron-mmed.blend/2'"),
        (lambda d: d["tokenizer"].update(vocab_size=True), "'tokenizer.vocab_size' must be an integer"),
        (lambda d: d["tokenizer"].update(eod_id=5000), "tokenizer.eod_id 5000 is outside the vocabulary"),
        (lambda d: d.update(multipliers=[1.0]), "field 'multipliers' must be an object"),
        (lambda d: d["blend"][1].reverse(), "field 'blend' disagrees"),
        (lambda d: d["datasets"][2].update(lang="en"), "duplicate languages"),
        (lambda d: d.update(root=None), "field 'root' must be a string"),
    ],
)
def test_reader_refuses_other_shapes_in_one_line(tmp_path, change, message):
    doc = _blend(tmp_path).to_dict()
    change(doc)
    (tmp_path / "blend.json").write_text(json.dumps(doc))
    with pytest.raises(UserError, match=message) as e:
        BlendFile.read(tmp_path)
    assert str(tmp_path / "blend.json") in str(e.value) and "\n" not in str(e.value)


def test_datasets_are_found_beside_the_file_then_at_their_prefix(tmp_path):
    data = tmp_path / "tok"
    data.mkdir()
    _touch_datasets(data)
    _blend(data).write(data)
    copy = tmp_path / "copy"
    shutil.copytree(data, copy)
    blend = BlendFile.read(copy)
    assert [blend.prefix_on_disk(d) for d in blend.datasets] == [
        str(copy.resolve() / f"{x}_text_document") for x in ("en", "zh", "ru")
    ]
    apart = tmp_path / "apart"  # the file alone: the datasets at their absolute prefixes
    apart.mkdir()
    shutil.copy(data / "blend.json", apart)
    blend = BlendFile.read(apart)
    assert blend.prefix_on_disk(blend.datasets[0]) == str(data / "en_text_document")
    shutil.rmtree(data)
    with pytest.raises(UserError, match="dataset en_text_document not found beside it or at"):
        blend.prefix_on_disk(blend.datasets[0])

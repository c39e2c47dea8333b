"""Tokenizers of converted folders: what stock transformers loads, what InternLM2's remote code needs."""

from __future__ import annotations

import io
import json

import pytest
from convert_helpers import save_internlm2, tiny_llama

from conversion import hf_to_mcore, mcore_to_hf

pytestmark = pytest.mark.timeout(300)

#: one line per MMedC language, with a character the tiny tokenizer never saw (byte fallback) and a special token.
SAMPLE = (
    "The patient presented with fever and a persistent cough. 患者出现发热和持续咳嗽。"
    "患者は発熱と持続する咳を訴えた。Le patient présentait de la fièvre.  "
    "У пациента была лихорадка. El paciente presentaba fiebre 🩺 <|im_end|>\n"
)
#: written as InternLM's repositories write it: remote code, InternLM2Tokenizer.
INTERNLM2_TOKENIZER_CONFIG = {
    "auto_map": {"AutoTokenizer": ["tokenization_internlm2.InternLM2Tokenizer", None]},
    "tokenizer_class": "InternLM2Tokenizer",
    "bos_token": "<s>",
    "eos_token": "</s>",
    "unk_token": "<unk>",
    "pad_token": "</s>",
    "add_bos_token": True,
    "add_eos_token": False,
    "decode_with_prefix_space": False,
    "clean_up_tokenization_spaces": False,
    "added_tokens_decoder": {
        "3": {"content": "<|im_start|>", "special": True, "lstrip": False, "rstrip": False,
              "normalized": False, "single_word": False},
        "4": {"content": "<|im_end|>", "special": True, "lstrip": False, "rstrip": False,
              "normalized": False, "single_word": False},
    },
    "additional_special_tokens": ["<|im_start|>", "<|im_end|>"],
}  # fmt: skip


def _sp_model(shared_data, dummy_prefix: bool) -> bytes:
    """A small SentencePiece BPE model like InternLM2's (identity normalisation, byte fallback)."""
    import sentencepiece as spm

    texts = []
    for lang in ("en", "zh", "ja", "fr", "ru", "es"):
        lines = (shared_data / "corpus" / f"{lang}.jsonl").read_text(encoding="utf-8").splitlines()
        texts += [json.loads(line)["text"] for line in lines[:8]]
    buf = io.BytesIO()
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(texts), model_writer=buf, vocab_size=1000, model_type="bpe",
        character_coverage=0.98, byte_fallback=True, normalization_rule_name="identity",
        add_dummy_prefix=dummy_prefix, remove_extra_whitespaces=False,
        user_defined_symbols=["<|im_start|>", "<|im_end|>"], num_threads=1, minloglevel=2,
    )  # fmt: skip
    return buf.getvalue()


@pytest.fixture(scope="module", params=[False, True], ids=["no-dummy-prefix", "dummy-prefix"])
def internlm2_with_tokenizer(request, shared_data, tmp_path_factory):
    """An InternLM2 folder with a SentencePiece tokenizer, InternLM2's tokenizer config and its remote code."""
    root = tmp_path_factory.mktemp("i2tok")
    src = save_internlm2(tiny_llama(vocab_size=1000), root / "internlm2")
    (src / "tokenizer.model").write_bytes(_sp_model(shared_data, request.param))
    (src / "tokenizer_config.json").write_text(json.dumps(INTERNLM2_TOKENIZER_CONFIG))
    marker = root / "remote-code-ran"
    (src / "tokenization_internlm2.py").write_text(f"open({str(marker)!r}, 'w').write('executed')\n")
    mcore = root / "mcore"
    hf_to_mcore(src, mcore, skip_validation=True)
    return src, mcore, marker


def _source_ids(src, text: str) -> list[int]:
    """What InternLM2Tokenizer returns: <s> then SentencePiece's pieces of the text."""
    import sentencepiece as spm

    sp = spm.SentencePieceProcessor(model_file=str(src / "tokenizer.model"))
    return [sp.bos_id(), *sp.encode(text)]


def test_llama_export_tokenizer_loads_in_stock_transformers_with_the_same_ids(
    internlm2_with_tokenizer, tmp_path
):
    from transformers import AutoTokenizer

    src, mcore, marker = internlm2_with_tokenizer
    report = mcore_to_hf(mcore, tmp_path / "hf", family="llama", dtype="fp32")
    out = tmp_path / "hf"
    cfg = json.loads((out / "tokenizer_config.json").read_text())
    assert "auto_map" not in cfg and not list(out.glob("tokenization_*.py"))
    tok = AutoTokenizer.from_pretrained(out)  # no trust_remote_code
    assert tok(SAMPLE)["input_ids"] == _source_ids(src, SAMPLE)
    assert (tok.bos_token_id, tok.eos_token_id, tok.unk_token_id) == (1, 2, 0)
    assert tok.convert_tokens_to_ids("<|im_end|>") == 4
    assert report.validation.prompt == "tokenizer" and not report.warnings
    assert not marker.exists()


def test_internlm2_export_carries_the_remote_tokenizer_code_without_running_it(
    internlm2_with_tokenizer, tmp_path
):
    src, mcore, marker = internlm2_with_tokenizer
    out = tmp_path / "i2"
    report = mcore_to_hf(mcore, out, family="internlm2", dtype="fp32")
    assert (out / "tokenization_internlm2.py").read_text() == (src / "tokenization_internlm2.py").read_text()
    assert json.loads((out / "tokenizer_config.json").read_text()) == INTERNLM2_TOKENIZER_CONFIG
    # validated on the tokenizer's own ids (read with SentencePiece), never on remote code
    assert report.validation.prompt == "tokenizer (tokenizer.model)" and not marker.exists()


def test_validation_on_fixed_ids_is_a_warning_in_the_summary_and_the_report(
    internlm2_with_tokenizer, tmp_path
):
    src, mcore, _ = internlm2_with_tokenizer
    broken = tmp_path / "tok"
    broken.mkdir()
    (broken / "tokenizer.model").write_bytes(b"not a sentencepiece model")
    out = tmp_path / "hf"
    report = mcore_to_hf(mcore, out, family="llama", dtype="fp32", tokenizer=broken)
    assert report.validation.prompt == "fixed ids"
    assert any("fixed token ids" in w and "tokenizer" in w for w in report.warnings), report.warnings
    assert "warning: " in report.summary()
    written = json.loads((out / "conversion_report.json").read_text())
    assert written["warnings"] == report.warnings and written["validation"]["prompt"] == "fixed ids"

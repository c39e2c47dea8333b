"""``mmed tokenize`` on the real corpus: every .bin/.idx read back with megatron-core, blends, resume, bad input."""

from __future__ import annotations

import io
import json
import os
import signal
import subprocess
import sys
import time
import warnings
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import zstandard

from megatron_mmed.common.config import ConfigError, load_config
from megatron_mmed.common.errors import UserError
from megatron_mmed.common.io import JsonlZstWriter, dumps, read_jsonl_zst
from preprocessing.blend import BlendConfig, read_blend, temperature_weights
from preprocessing.document import LANGS
from preprocessing.layout import StageStats, write_stage_report
from preprocessing.tokenization import TokenIds, TokenizeConfig, run_tokenize

with warnings.catch_warnings():
    warnings.simplefilter("ignore")
    from megatron.core.datasets.indexed_dataset import IndexedDataset

REPO = Path(__file__).resolve().parents[1]


def _corpus(shared: Path) -> dict[str, list[dict]]:
    out = {}
    for lang in LANGS:
        lines = (shared / "corpus" / f"{lang}.jsonl").read_text(encoding="utf-8").splitlines()
        out[lang] = [
            {"id": r["id"], "text": r["text"], "lang": lang, "source": r["source"]}
            for r in map(json.loads, lines)
        ]
    return out


def _raw_lines(path: Path) -> list[str]:
    with open(path, "rb") as fh:
        return zstandard.ZstdDecompressor().stream_reader(fh).read().decode("utf-8").splitlines()


def _write_prep_layout(root: Path, docs: dict[str, list[dict]], files_per_lang: int) -> Path:
    for lang, ds in docs.items():
        for f in range(files_per_lang):
            with JsonlZstWriter(root / "kept" / lang / f"shard-{f:04d}.jsonl.zst", create_empty=True) as w:
                for d in ds[f::files_per_lang]:
                    w.write(d)
    stats = StageStats()
    for lang, ds in docs.items():
        for d in ds:
            stats.seen(lang, len(d["text"]))
            stats.kept(lang, len(d["text"]))
    write_stage_report(root, "prep", stats)
    return root


@pytest.fixture(scope="session")
def sp_model(shared_data, tmp_path_factory) -> Path:
    """A tiny SentencePiece unigram model trained on the shared corpus (all six languages)."""
    import sentencepiece as spm

    texts = [d["text"] for ds in _corpus(shared_data).values() for d in ds]
    path = tmp_path_factory.mktemp("sp") / "tiny.model"
    buf = io.BytesIO()
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(texts),
        model_writer=buf,
        vocab_size=3000,
        model_type="unigram",
        character_coverage=0.995,
        byte_fallback=True,
        num_threads=1,
        max_sentence_length=20000,
        minloglevel=2,
    )
    path.write_bytes(buf.getvalue())
    return path


@pytest.fixture(scope="session")
def hf_tokenizer(shared_data, tmp_path_factory) -> Path:
    """A tiny byte-level BPE tokenizer.json whose post-processor adds <s> (which we must not write)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=2000,
        special_tokens=["<unk>", "<s>", "</s>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
    )
    tok.train_from_iterator((d["text"] for ds in _corpus(shared_data).values() for d in ds), trainer)
    tok.post_processor = processors.TemplateProcessing(single="<s> $A", special_tokens=[("<s>", 1)])
    path = tmp_path_factory.mktemp("hf") / "tokenizer.json"
    tok.save(str(path))
    return path


@pytest.fixture(scope="module")
def corpus_input(shared_data, tmp_path_factory):
    """The real corpus in prep's layout (3 files per language), plus broken records in ja's first file."""
    docs = _corpus(shared_data)
    root = _write_prep_layout(tmp_path_factory.mktemp("tok_in") / "in", docs, files_per_lang=3)
    extra = [dumps({"id": "ja-empty", "text": "", "lang": "ja"}), "{broken json", dumps({"id": "ja-notext"})]
    lines = _raw_lines(root / "kept" / "ja" / "shard-0000.jsonl.zst")
    raw = "\n".join(lines[:5] + extra + lines[5:]) + "\n"
    (root / "kept" / "ja" / "shard-0000.jsonl.zst").write_bytes(
        zstandard.ZstdCompressor().compress(raw.encode())
    )
    return root, docs


@pytest.fixture(scope="module")
def sp_run(corpus_input, sp_model, tmp_path_factory):
    root, _ = corpus_input
    out = tmp_path_factory.mktemp("tok_sp") / "out"
    res = run_tokenize(root, sp_model, out, TokenizeConfig(), show_progress=False)
    return out, res


def _expected_docs(root: Path) -> dict[str, list[dict]]:
    """Documents per language in the order the stage must write them (file order, then line order)."""
    out = {}
    for lang in LANGS:
        out[lang] = []
        for f in sorted((root / "kept" / lang).glob("*.jsonl.zst")):
            for line in _raw_lines(f):
                try:
                    rec = json.loads(line)
                except json.JSONDecodeError:
                    continue
                if isinstance(rec.get("text"), str) and rec["text"].strip():
                    out[lang].append(rec)
    return out


def _read_back(prefix: Path) -> list[list[int]]:
    ds = IndexedDataset(str(prefix))
    try:
        assert ds.document_indices.tolist() == list(range(len(ds) + 1))  # one sequence per document
        return [ds[i].tolist() for i in range(len(ds))]
    finally:
        del ds


def test_sentencepiece_read_back_every_document(sp_run, corpus_input, sp_model):
    import sentencepiece as spm

    out, res = sp_run
    root, _ = corpus_input
    sp = spm.SentencePieceProcessor(model_file=str(sp_model))
    eos = sp.eos_id()
    expected = _expected_docs(root)
    for lang in LANGS:
        got = _read_back(out / f"{lang}_text_document")
        want = [ids + [eos] for ids in sp.encode([d["text"] for d in expected[lang]])]
        assert got == want, lang
        assert IndexedDataset(str(out / f"{lang}_text_document")).index.dtype == np.uint16
        assert res.counts[lang] == {"documents": len(want), "tokens": sum(map(len, want))}
    rejected = {
        r["id"]: r["reason"] for f in (out / "rejected").glob("*.jsonl.zst") for r in read_jsonl_zst(f)
    }
    assert rejected == {"ja-empty": "empty", "shard-0000.jsonl.zst:6": "parse", "ja-notext": "parse"}
    assert not (out / ".parts").exists()


def test_blend_report_and_config(sp_run, corpus_input, sp_model):
    out, res = sp_run
    blend = json.loads((out / "blend.json").read_text())
    assert blend["format"] == "megatron-mmed.blend/1" and blend["root"] == str(out.resolve())
    assert [d["lang"] for d in blend["datasets"]] == list(LANGS)
    tokens = {d["lang"]: d["tokens"] for d in blend["datasets"]}
    for d in blend["datasets"]:  # T = 1: proportional to tokens
        assert (
            d["prefix"] == str(out.resolve() / f"{d['lang']}_text_document")
            and d["name"] == Path(d["prefix"]).name
        )
        assert d["weight"] == pytest.approx(d["tokens"] / sum(tokens.values()))
    assert blend["blend"] == [
        [d["prefix"] for d in blend["datasets"]],
        [d["weight"] for d in blend["datasets"]],
    ]
    assert blend["tokenizer"]["eod_id"] == 2 and blend["tokenizer"]["dtype"] == "uint16"
    import yaml

    assert yaml.safe_load((out / "blend.yaml").read_text()) == blend
    report = json.loads((out / "report.json").read_text())
    assert report["stage"] == "tokenize" and [c["stage"] for c in report["chain"]] == ["prep"]
    assert report["tokens_per_language"] == tokens
    assert report["datasets"]["en"]["tokens_per_doc"]["max"] == max(
        IndexedDataset(str(out / "en_text_document")).sequence_lengths
    )
    assert report["languages"]["ja"]["drops"] == {"empty": 1, "parse": 2}
    for png in report["plots"]:
        assert (out / png).read_bytes()[:4] == b"\x89PNG"
    assert "| ja |" in (out / "report.md").read_text()
    assert load_config(TokenizeConfig, out / "config.yaml") == TokenizeConfig()


def test_gpt_dataset_from_blend_yields_samples(sp_run, sp_model, tmp_path):
    import torch
    from megatron.core.datasets.blended_megatron_dataset_builder import BlendedMegatronDatasetBuilder
    from megatron.core.datasets.gpt_dataset import GPTDataset, GPTDatasetConfig
    from megatron.core.tokenizers import MegatronTokenizer

    from megatron_mmed.common.distributed import mcore_session

    out, res = sp_run
    prefixes, weights = read_blend(out / "blend.json")
    tokenizer = MegatronTokenizer.from_pretrained(
        str(sp_model), metadata_path={"library": "sentencepiece", "model_type": "gpt"}
    )
    assert tokenizer.eod == res.blend["tokenizer"]["eod_id"]
    config = GPTDatasetConfig(
        random_seed=1234,
        sequence_length=64,
        blend=(prefixes, weights),
        split="1,0,0",
        path_to_cache=str(tmp_path / "cache"),
        tokenizer=tokenizer,
        reset_position_ids=False,
        reset_attention_mask=False,
        eod_mask_loss=False,
    )
    with mcore_session():  # the blended-index cache path asks torch.distributed for the rank
        train, valid, test = BlendedMegatronDatasetBuilder(
            GPTDataset, [600, 0, 0], lambda: True, config
        ).build()
    assert valid is None and test is None and len(train) >= 600
    sample = train[0]
    assert sample["tokens"].shape == (64,) and sample["labels"].shape == (64,)
    assert torch.equal(sample["tokens"][1:], sample["labels"][:-1])
    share = np.bincount(train.dataset_index, minlength=len(prefixes)) / len(train)
    assert np.allclose(share, weights, atol=0.02)
    allt = torch.cat([train[i]["tokens"] for i in range(len(train))])
    assert int(allt.max()) < 3000 and int((allt == tokenizer.eod).sum()) > 0


def test_hf_tokenizer_json(corpus_input, hf_tokenizer, tmp_path):
    from tokenizers import Tokenizer

    root, docs = corpus_input
    small = {lang: docs[lang][:20] for lang in ("en", "zh")}
    small["en"].append({"id": "lit", "text": "a literal </s> and <s> in text", "lang": "en", "source": "t"})
    inp = _write_prep_layout(tmp_path / "in", small, files_per_lang=2)
    res = run_tokenize(inp, hf_tokenizer, tmp_path / "out", TokenizeConfig(), show_progress=False)
    tok = Tokenizer.from_file(str(hf_tokenizer))
    tok.encode_special_tokens = True
    eos = tok.token_to_id("</s>")
    assert res.blend["tokenizer"]["kind"] == "huggingface" and res.blend["tokenizer"]["eod_id"] == eos
    expected = _expected_docs(inp)
    for lang in small:
        got = _read_back(tmp_path / "out" / f"{lang}_text_document")
        want = [tok.encode(d["text"], add_special_tokens=False).ids + [eos] for d in expected[lang]]
        assert got == want
        assert all(seq[0] != tok.token_to_id("<s>") and seq.count(eos) == 1 for seq in got)  # no BOS, one EOD
    assert set(res.counts) == {"en", "zh"}
    # a moved output folder: read_blend finds the datasets beside blend.json by name
    (tmp_path / "out").rename(tmp_path / "moved")
    prefixes, weights = read_blend(tmp_path / "moved")
    assert prefixes == [str((tmp_path / "moved").resolve() / f"{x}_text_document") for x in ("en", "zh")]
    assert sum(weights) == pytest.approx(1.0)


def test_workers_give_identical_bytes(sp_run, corpus_input, sp_model, tmp_path):
    out1, _ = sp_run
    root, _ = corpus_input
    run_tokenize(root, sp_model, tmp_path / "w2", TokenizeConfig(workers=2), show_progress=False)
    for lang in LANGS:
        for ext in ("bin", "idx"):
            name = f"{lang}_text_document.{ext}"
            assert (tmp_path / "w2" / name).read_bytes() == (out1 / name).read_bytes(), name


def _datasets_bytes(out: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(out.glob("*_text_document.*"))}


@pytest.mark.slow  # three CLI processes killed mid-run
def test_cli_resume_after_kill_9(shared_data, sp_model, tmp_path):
    import sentencepiece as spm

    docs = _corpus(shared_data)
    inp = _write_prep_layout(tmp_path / "in", docs, files_per_lang=12)  # 72 parts
    mmed = str(Path(sys.executable).with_name("mmed"))
    base = [mmed, "tokenize", "--input", str(inp), "--tokenizer", str(sp_model), "--no-progress"]
    run_tokenize(inp, sp_model, tmp_path / "ref", TokenizeConfig(), show_progress=False)
    sp = spm.SentencePieceProcessor(model_file=str(sp_model))
    assert _read_back(tmp_path / "ref" / "en_text_document")[0][-1] == sp.eos_id()
    for attempt in range(3):
        out = tmp_path / f"killed{attempt}"
        marks = out / ".done" / "tokenize"
        proc = subprocess.Popen(
            [*base, "--output", str(out)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
        )
        deadline = time.time() + 120
        while time.time() < deadline and proc.poll() is None:
            if len(list(marks.rglob("*/*.json"))) >= 2:
                os.kill(proc.pid, signal.SIGKILL)
                break
            time.sleep(0.002)
        proc.wait(timeout=60)
        done = len(list(marks.rglob("*/*.json")))
        if proc.returncode == -signal.SIGKILL and done < 72:
            break
    else:
        pytest.fail("could not kill the run before it finished")
    assert not (out / "blend.json").exists()
    again = subprocess.run([*base, "--output", str(out)], capture_output=True, text=True, timeout=300)
    assert again.returncode == 0, again.stderr
    assert f"{done}/72 files already done" in " ".join(again.stderr.split())
    assert _datasets_bytes(out) == _datasets_bytes(tmp_path / "ref") and len(_datasets_bytes(out)) == 12
    strip = lambda b: [{k: v for k, v in d.items() if k != "prefix"} for d in b["datasets"]]  # noqa: E731
    assert strip(json.loads((out / "blend.json").read_text())) == strip(
        json.loads((tmp_path / "ref" / "blend.json").read_text())
    )


def test_bad_input(corpus_input, sp_model, tmp_path, shared_data):
    import sentencepiece as spm

    root, docs = corpus_input
    cfg = TokenizeConfig()
    with pytest.raises(UserError, match="does not exist"):
        run_tokenize(root, tmp_path / "missing.model", tmp_path / "o", cfg)
    (tmp_path / "junk.model").write_text("not a model")
    with pytest.raises(UserError, match="not a SentencePiece model"):
        run_tokenize(root, tmp_path / "junk.model", tmp_path / "o", cfg)
    (tmp_path / "tokenizer.json").write_text('{"x": 1}')
    with pytest.raises(UserError, match="not a Hugging Face tokenizer.json"):
        run_tokenize(root, tmp_path / "tokenizer.json", tmp_path / "o", cfg)
    with pytest.raises(UserError, match="not a preprocessing output"):
        run_tokenize(tmp_path, sp_model, tmp_path / "o", cfg)
    with pytest.raises(UserError, match="does not fit int32"):
        TokenIds.resolve(SimpleNamespace(path="big", vocab_size=2**31, default_eod=0, default_bos=None), cfg)
    with pytest.raises(UserError, match="outside the vocabulary"):
        run_tokenize(root, sp_model, tmp_path / "o", TokenizeConfig(eod_id=5000))
    # a SentencePiece model without </s>: EOD must be given explicitly
    buf = io.BytesIO()
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(d["text"] for d in docs["en"]),
        model_writer=buf,
        vocab_size=500,
        eos_id=-1,
        num_threads=1,
        minloglevel=2,
    )
    (tmp_path / "noeos.model").write_bytes(buf.getvalue())
    small = _write_prep_layout(tmp_path / "in", {"en": docs["en"][:3], "fr": [], "ru": docs["ru"][:2]}, 1)
    with JsonlZstWriter(small / "kept" / "fr" / "shard-0000.jsonl.zst") as w:  # a language with only empties
        w.write({"id": "fr-blank", "text": " \n ", "lang": "fr"})
    with pytest.raises(UserError, match="no end-of-document token"):
        run_tokenize(small, tmp_path / "noeos.model", tmp_path / "o", cfg)
    res = run_tokenize(
        small, tmp_path / "noeos.model", tmp_path / "o", TokenizeConfig(eod_id=1), show_progress=False
    )
    assert [d["lang"] for d in res.blend["datasets"]] == ["en", "ru"]
    assert not list((tmp_path / "o").glob("fr_text_document*"))
    assert res.stats.drops["fr"] == {"empty": 1}
    assert all(seq[-1] == 1 for seq in _read_back(tmp_path / "o" / "ru_text_document"))
    with pytest.raises(UserError, match="made with another config or input"):
        run_tokenize(small, sp_model, tmp_path / "o", cfg)


def test_large_vocabulary_uses_int32(tmp_path, corpus_input):
    from tokenizers import Tokenizer, models, pre_tokenizers

    _, docs = corpus_input
    words = sorted({w for d in docs["en"][:30] for w in d["text"].split()})
    vocab = {"<unk>": 0, "</s>": 1, **{f"<pad{i}>": i + 2 for i in range(70000)}}
    vocab.update({w: len(vocab) + i for i, w in enumerate(words)})
    tok = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tok.save(str(tmp_path / "tokenizer.json"))
    inp = _write_prep_layout(tmp_path / "in", {"en": docs["en"][:30]}, 1)
    res = run_tokenize(
        inp, tmp_path / "tokenizer.json", tmp_path / "out", TokenizeConfig(), show_progress=False
    )
    assert res.blend["tokenizer"]["dtype"] == "int32" and res.blend["tokenizer"]["eod_id"] == 1
    got = _read_back(tmp_path / "out" / "en_text_document")
    assert got == [[vocab[w] for w in d["text"].split()] + [1] for d in docs["en"][:30]]
    assert IndexedDataset(str(tmp_path / "out" / "en_text_document")).index.dtype == np.int32


def test_add_documents_writes_what_add_document_writes(tmp_path):
    """Ours (batched writes, numpy only) against megatron-core's builder, one document at a time."""
    from megatron.core.datasets.indexed_dataset import IndexedDatasetBuilder

    from preprocessing.tokenize_index import IndexWriter

    rng = np.random.default_rng(0)
    docs = [rng.integers(0, 8000, size=int(n)).astype(np.uint16) for n in rng.integers(1, 300, size=50)]
    one = IndexedDatasetBuilder(str(tmp_path / "one.bin"), dtype=np.uint16)
    for d in docs:
        one.add_document(d.tolist(), [d.size])
    one.finalize(str(tmp_path / "one.idx"))
    bulk = IndexWriter(tmp_path / "bulk.bin", np.uint16)
    for chunk in (docs[:1], docs[1:20], docs[20:]):  # several batches, as tokenize_file flushes them
        bulk.add_documents(np.concatenate(chunk), [d.size for d in chunk])
    bulk.finalize(tmp_path / "bulk.idx")
    for ext in ("bin", "idx"):
        assert (tmp_path / f"bulk.{ext}").read_bytes() == (tmp_path / f"one.{ext}").read_bytes()
    assert [x.tolist() for x in IndexedDataset(str(tmp_path / "bulk"))] == [d.tolist() for d in docs]
    with pytest.raises(ValueError, match="lengths add up to 5"):
        bulk.add_documents(np.zeros(4, np.uint16), [2, 3])
    with pytest.raises(ValueError, match="uint16"):
        bulk.add_documents(np.zeros(4, np.int32), [4])


def test_sentencepiece_int_lists_and_numpy_write_the_same_part(corpus_input, sp_model, tmp_path):
    """sentencepiece >= 0.2.1 returns int32 buffers; an older one (as a container may ship) int lists."""
    from preprocessing.tokenization import load_tokenizer, tokenize_file

    root, _ = corpus_input
    cfg = TokenizeConfig()
    tok = load_tokenizer(sp_model, cfg)
    assert tok._return == {"return_type": "numpy"}  # the pinned sentencepiece has the fast path
    ids = TokenIds.resolve(tok, cfg)
    f = sorted((root / "kept" / "zh").glob("*.jsonl.zst"))[0]
    fast = tokenize_file(tok, ids, cfg, "zh", f, tmp_path / "np", tmp_path / "np-rej.jsonl.zst")
    tok._return = {}
    slow = tokenize_file(tok, ids, cfg, "zh", f, tmp_path / "ls", tmp_path / "ls-rej.jsonl.zst")
    assert fast["documents"] > 0 and fast == {**slow, "file": fast["file"]}
    for ext in ("bin", "idx"):
        assert (tmp_path / f"np.{ext}").read_bytes() == (tmp_path / f"ls.{ext}").read_bytes()


def test_temperature_weights_and_config():
    tokens = {"en": 900, "zh": 100}
    assert temperature_weights(tokens, 1.0) == pytest.approx({"en": 0.9, "zh": 0.1})
    t2 = temperature_weights(tokens, 2.0)  # sqrt: 30 : 10
    assert t2 == pytest.approx({"en": 0.75, "zh": 0.25})
    assert temperature_weights(tokens, 1e6) == pytest.approx({"en": 0.5, "zh": 0.5}, abs=1e-4)
    assert temperature_weights(tokens, 1.0, {"zh": 9.0}) == pytest.approx({"en": 0.5, "zh": 0.5})
    assert temperature_weights({"en": 10**12, "zh": 1}, 0.01)["en"] == 1.0  # no overflow
    assert temperature_weights(tokens, 1.0, {"zh": 0.0})["zh"] == 0.0
    cfg = load_config(TokenizeConfig, None, ["blend.temperature=3", "blend.weights.ru=2", "workers=2"])
    assert cfg.blend == BlendConfig(temperature=3.0, weights={"ru": 2.0}) and cfg.workers == 2
    for bad, msg in (("blend.temperature=0", "temperature"), ("blend.weights.xx=1", "unknown language")):
        with pytest.raises(ConfigError, match=msg):
            load_config(TokenizeConfig, None, [bad])
    with pytest.raises(ConfigError, match="workers"):
        load_config(TokenizeConfig, None, ["workers=0"])


def test_benchmark_script_starts():
    proc = subprocess.run(
        [sys.executable, str(REPO / "benchmarks" / "bench_tokenize.py"), "--help"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 0, proc.stderr
    assert "docs/s" in proc.stdout


def test_truncated_input_file_keeps_the_readable_part_and_records_the_rest(corpus_input, sp_model, tmp_path):
    _, docs = corpus_input
    inp = _write_prep_layout(tmp_path / "in", {"en": docs["en"]}, 1)
    f = inp / "kept" / "en" / "shard-0000.jsonl.zst"
    f.write_bytes(f.read_bytes()[: f.stat().st_size * 2 // 3])
    res = run_tokenize(inp, sp_model, tmp_path / "out", TokenizeConfig(), show_progress=False)
    n = res.counts["en"]["documents"]
    assert 0 < n < len(docs["en"]) and len(_read_back(tmp_path / "out" / "en_text_document")) == n
    rejected = [r for p in (tmp_path / "out" / "rejected").glob("*.zst") for r in read_jsonl_zst(p)]
    assert [r["reason"] for r in rejected] == ["unreadable"]
    assert "shard-0000.jsonl.zst" in rejected[0]["detail"] and "byte 0" in rejected[0]["detail"]
    assert res.stats.drops["en"] == {"unreadable": 1}


def test_output_inside_the_input_is_refused(corpus_input, sp_model, tmp_path):
    _, docs = corpus_input
    inp = _write_prep_layout(tmp_path / "in", {"en": docs["en"][:3]}, 1)
    for out in (inp, inp / "tok"):
        with pytest.raises(UserError, match="inside the input"):
            run_tokenize(inp, sp_model, out, TokenizeConfig(), show_progress=False)
    assert not (inp / "tok").exists()


def test_a_changed_input_is_refused_not_mixed(corpus_input, sp_model, tmp_path):
    _, docs = corpus_input
    a = _write_prep_layout(tmp_path / "a", {"en": docs["en"][:20], "fr": docs["fr"][:20]}, 1)
    b = _write_prep_layout(tmp_path / "b", {"en": docs["en"][20:40]}, 1)
    run_tokenize(a, sp_model, tmp_path / "out", TokenizeConfig(), show_progress=False)
    with pytest.raises(UserError, match="another config or input.*other input"):
        run_tokenize(b, sp_model, tmp_path / "out", TokenizeConfig(), show_progress=False)


@pytest.mark.slow  # two CLI runs on a tmpfs
def test_full_disk_is_a_one_line_error_and_a_rerun_completes(shared_data, sp_model, tmp_path):
    from fault_helpers import grow, small_disk

    inp = _write_prep_layout(tmp_path / "in", _corpus(shared_data), files_per_lang=2)
    run_tokenize(inp, sp_model, tmp_path / "ref", TokenizeConfig(), show_progress=False)
    mmed = str(Path(sys.executable).with_name("mmed"))
    with small_disk(tmp_path / "disk", "300k") as disk:
        cmd = [
            mmed,
            "tokenize",
            "--input",
            str(inp),
            "--tokenizer",
            str(sp_model),
            "--output",
            str(disk / "o"),
        ]
        res = subprocess.run([*cmd, "--no-progress"], capture_output=True, text=True, timeout=300)
        assert res.returncode == 2 and "No space left on device" in res.stderr, res.stderr[-2000:]
        assert "cannot read" not in res.stderr and len(res.stderr.strip().splitlines()) == 1
        assert not (disk / "o" / "blend.json").exists() and not list(disk.rglob("*.tmp*"))
        grow(disk, "32m")
        res = subprocess.run([*cmd, "--no-progress"], capture_output=True, text=True, timeout=300)
        assert res.returncode == 0, res.stderr
        assert _datasets_bytes(disk / "o") == _datasets_bytes(tmp_path / "ref")


def test_a_folder_in_use_is_refused(corpus_input, sp_model, tmp_path):
    from megatron_mmed.common.lock import FileLock, LockBusyError

    _, docs = corpus_input
    inp = _write_prep_layout(tmp_path / "in", {"en": docs["en"][:3]}, 1)
    (tmp_path / "o").mkdir()
    with (
        FileLock(tmp_path / "o" / ".lock").acquire("mmed tokenize"),
        pytest.raises(LockBusyError, match="in use"),
    ):
        run_tokenize(inp, sp_model, tmp_path / "o", TokenizeConfig(), show_progress=False)
    assert sorted(p.name for p in (tmp_path / "o").iterdir()) == [".lock"]


def test_a_run_imports_neither_torch_nor_megatron_core_nor_pyplot(corpus_input, sp_model, tmp_path):
    """Start-up is most of a small run: torch + megatron-core cost 3-12 s per ``mmed tokenize``, pyplot ~1 s."""
    root, _ = corpus_input
    code = (
        "import sys\n"
        "from pathlib import Path\n"
        "from preprocessing.tokenization import TokenizeConfig, run_tokenize\n"
        f"run_tokenize(Path({str(root)!r}), Path({str(sp_model)!r}), Path({str(tmp_path / 'o')!r}), "
        "TokenizeConfig(), show_progress=False)\n"
        "print([m for m in ('torch', 'megatron.core', 'matplotlib.pyplot') if m in sys.modules])\n"
    )
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO, timeout=300)
    assert res.returncode == 0, res.stderr[-2000:]
    assert res.stdout.strip().splitlines()[-1] == "[]"
    assert (tmp_path / "o" / "tokens_per_doc.png").read_bytes()[:4] == b"\x89PNG"

"""blend.json reading (only the format `mmed tokenize` writes), datasets, the CPU shim, NaN stops."""

from __future__ import annotations

import json

import pytest
import torch

from megatron_mmed.common.config import load_config
from megatron_mmed.common.errors import UserError
from megatron_mmed.training.config import TrainConfig
from megatron_mmed.training.data import blend_vocab_size, load_blend


@pytest.fixture(scope="module")
def tok(shared_data, tmp_path_factory):
    from megatron_mmed.testing.byte_data import write_byte_level_blend

    return write_byte_level_blend(shared_data / "corpus", tmp_path_factory.mktemp("tok"), ["ru", "es"], 30)


def test_load_blend_relative_prefixes_and_declared_vocab(tok):
    blend = load_blend(tok)
    assert [(e.lang, e.weight) for e in blend] == [("ru", 0.5), ("es", 0.5)]
    assert all(e.prefix.startswith(str(tok.parent.resolve())) for e in blend)
    lang, prefix, weight = blend[0]
    assert prefix.endswith("ru_text_document") and not prefix.endswith(".bin")
    assert blend_vocab_size(tok) == 257


@pytest.mark.parametrize(
    "change, field",
    [
        (lambda d: d.update(prefixes=d.pop("datasets")), "'prefixes'"),  # the old alternative key
        (lambda d: d.update(eod=d["tokenizer"].pop("eod_id")), "'eod'"),  # eod at the top level
        (lambda d: d.update(vocab_size=d.pop("tokenizer")["vocab_size"]), "'vocab_size'"),
        (lambda d: d["tokenizer"].pop("eod_id"), "'tokenizer.eod_id'"),
        (lambda d: d.pop("format"), "'format'"),
        (lambda d: d["datasets"][0].pop("lang"), r"'datasets\[0\].lang'"),
        (lambda d: d["datasets"][1].update(weight="1"), r"'datasets\[1\].weight'"),
    ],
)
def test_load_blend_refuses_other_shapes_naming_the_field(tok, tmp_path, change, field):
    """Training reads only the format `mmed tokenize` writes: no `prefixes`/`eod`/top-level fallbacks."""
    data = json.loads(tok.read_text())
    change(data)
    alt = tmp_path / "blend.json"
    alt.write_text(json.dumps(data))
    with pytest.raises(UserError, match=f"data.blend: .*{field}") as e:
        load_blend(alt)
    assert "\n" not in str(e.value)


def _blend_with(tok, **dataset) -> str:
    data = json.loads(tok.read_text())
    data["datasets"] = [{**data["datasets"][0], **dataset}]
    data["blend"] = [[data["datasets"][0]["prefix"]], [data["datasets"][0]["weight"]]]
    return json.dumps(data)


@pytest.mark.parametrize(
    "content, message",
    [
        ("not json", "not valid JSON"),
        (lambda tok: json.dumps({**json.loads(tok.read_text()), "datasets": []}), "no non-empty"),
        (lambda tok: _blend_with(tok, prefix=None), "no 'prefix'"),
        (lambda tok: _blend_with(tok, prefix="/nope_text_document", name="nope"), "not found"),
        (lambda tok: _blend_with(tok, weight=-1), "negative weight"),
    ],
)
def test_load_blend_errors_are_user_errors(tok, content, message):
    bad = tok.parent / "bad_blend.json"
    bad.write_text(content if isinstance(content, str) else content(tok))
    with pytest.raises(UserError, match=message):
        load_blend(bad)


def _damage(path, how):
    data = bytearray(path.read_bytes())
    if how == "dtype code 0":
        data[17] = 0
    elif how == "dtype code 9":
        data[17] = 9
    elif how == "float dtype":
        data[17] = 7
    elif how == "bad magic":
        data[:4] = b"JUNK"
    elif how == "version 2":
        data[9] = 2
    elif how in ("idx cut short", "bin cut short"):
        data = data[: len(data) // 2]
    path.write_bytes(bytes(data))


@pytest.mark.parametrize(
    "how, message",
    [
        ("dtype code 0", "dtype code 0 is not one of"),
        ("dtype code 9", "dtype code 9 is not one of"),
        ("float dtype", "holds float32 values, not token ids"),
        ("bad magic", "not a megatron-core index"),
        ("version 2", "index version 2"),
        ("idx cut short", "truncated"),
        ("bin cut short", "truncated"),
    ],
)
def test_damaged_index_or_bin_is_a_user_error(tok, tmp_path, how, message):
    """A `.idx` with a wrong dtype byte (or a cut `.bin`) is a one-line error naming the file, not a
    KeyError from megatron-core's reader deep inside the dataset builder."""
    import shutil

    from megatron_mmed.training.data import resolve_vocab

    copy = tmp_path / "tok"
    shutil.copytree(tok.parent, copy)
    _damage(copy / ("ru_text_document.bin" if how == "bin cut short" else "ru_text_document.idx"), how)
    with pytest.raises(UserError, match=message) as e:
        resolve_vocab(None, copy / tok.name, load_blend(copy / tok.name), 92544)
    assert "ru_text_document" in str(e.value)


def test_missing_blend_is_a_user_error(tmp_path):
    with pytest.raises(UserError, match="not found"):
        load_blend(tmp_path / "blend.json")


def test_byte_level_files_read_back_with_indexed_dataset(shared_data, tok):
    from megatron.core.datasets.indexed_dataset import IndexedDataset

    ds = IndexedDataset(str(tok.parent / "es_text_document"))
    first = json.loads((shared_data / "corpus" / "es.jsonl").open(encoding="utf-8").readline())["text"]
    assert len(ds) == 30
    assert bytes(ds[0][:-1].tolist()).decode("utf-8") == first and ds[0][-1] == 256


def test_cpu_shim_redirects_and_restores():
    from megatron.core.tensor_parallel import random as mrandom

    from megatron_mmed.common.cpu_shim import cpu_shim

    if torch.cuda.is_available():
        with cpu_shim() as active:
            assert active is False
        return
    original_tracker = mrandom.CudaRNGStatesTracker
    with cpu_shim() as active:
        assert active
        assert torch.zeros(2, device="cuda").device.type == "cpu"
        assert torch.ones(1).cuda().device.type == "cpu"
        assert torch.ones(1, dtype=torch.bfloat16).type() == "torch.cuda.BFloat16Tensor"
        assert torch.cuda.current_device() == "cpu"
        tracker = mrandom.CudaRNGStatesTracker()
        tracker.add("tp", 7)
        before = torch.get_rng_state()
        with tracker.fork("tp"):
            a = torch.rand(3)
        assert torch.equal(torch.get_rng_state(), before)  # the default stream is untouched
        torch.manual_seed(7)
        assert torch.equal(a, torch.rand(3))  # the fork drew from the seeded stream
    assert mrandom.CudaRNGStatesTracker is original_tracker
    assert torch.ones(1).type() == "torch.FloatTensor"


def test_nan_loss_stops_with_a_clear_message(repo_root, tok, tmp_path):
    """Weights-only init (the `checkpoint.init_from` format) holding a NaN makes step 1 diverge."""
    from megatron_mmed.common.distributed import mcore_session
    from megatron_mmed.models import get_preset
    from megatron_mmed.models.builder import build_gpt_model, transformer_config
    from megatron_mmed.models.weights import save_weights
    from megatron_mmed.training.loop import TrainingDiverged, train

    arch = get_preset("tiny")
    weights = tmp_path / "weights"
    with mcore_session(seed=1):
        model = build_gpt_model(
            arch, transformer_config(arch, use_cpu_initialization=True), 384, 64, spec="local"
        )
        with torch.no_grad():
            model.decoder.final_layernorm.weight.fill_(float("nan"))
        save_weights(weights, [model])
    cfg = load_config(
        TrainConfig,
        repo_root / "configs/train/tiny_cpu.yaml",
        [f"data.blend={tok}", f"checkpoint.dir={tmp_path / 'run'}", f"checkpoint.init_from={weights}"]
        + [
            "model.seq_length=64",
            "train.micro_batch_size=2",
            "train.global_batch_size=4",
            "logging.log_interval=1",
        ],
    )
    with pytest.raises(TrainingDiverged, match="loss is nan at step 1"):
        train(cfg)
    assert not (tmp_path / "run" / "latest").exists()


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_trains_on_real_mmed_tokenize_output(shared_data, repo_root, tmp_path):
    """The interface between the stages: `mmed tokenize` output (SentencePiece) feeds `mmed train` as is."""
    import io

    import sentencepiece as spm

    from megatron_mmed.cli import main
    from megatron_mmed.common.io import JsonlZstWriter
    from preprocessing.layout import StageStats, write_stage_report

    kept, texts, stats = tmp_path / "prep", [], StageStats()
    for lang in ("en", "zh", "ru"):
        lines = (shared_data / "corpus" / f"{lang}.jsonl").read_text(encoding="utf-8").splitlines()[:40]
        with JsonlZstWriter(kept / "kept" / lang / "shard-0000.jsonl.zst", create_empty=True) as w:
            for rec in map(json.loads, lines):
                w.write({"id": rec["id"], "text": rec["text"], "lang": lang, "source": rec["source"]})
                stats.seen(lang, len(rec["text"]))
                stats.kept(lang, len(rec["text"]))
                texts.append(rec["text"])
    write_stage_report(kept, "prep", stats)
    buf = io.BytesIO()
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(texts),
        model_writer=buf,
        vocab_size=2000,
        model_type="unigram",
        byte_fallback=True,
        character_coverage=0.995,
        num_threads=1,
        max_sentence_length=20000,
        minloglevel=2,
    )
    (tmp_path / "sp.model").write_bytes(buf.getvalue())
    tok = tmp_path / "TOK"
    assert (
        main(
            ["tokenize", "--input", str(kept), "--tokenizer", str(tmp_path / "sp.model")]
            + ["--output", str(tok), "--no-progress"]
        )
        == 0
    )
    assert [e.lang for e in load_blend(tok / "blend.json")] == ["en", "zh", "ru"]
    assert blend_vocab_size(tok / "blend.json") == 2000
    run = tmp_path / "RUN"
    args = [
        "train",
        "--config",
        str(repo_root / "configs/train/tiny_cpu.yaml"),
        f"data.blend={tok / 'blend.json'}",
    ]
    args += [
        "train.steps=10",
        f"checkpoint.dir={run}",
        "logging.eval_interval=10",
        "checkpoint.save_interval=5",
    ]
    assert main(args) == 0
    records = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    assert set(records[-1]["val_loss_per_lang"]) == {"en", "zh", "ru"}
    assert (run / "latest").read_text().strip() == "iter_0000010"

"""End to end on a tiny random Llama (built here, no downloads): both modes, all outputs, resume, the CLI,
``eval score`` agreeing with the live run, batched generation equal to one-at-a-time, bad input."""

from __future__ import annotations

import json
import shutil
import sys

import pytest

from eval import backends
from eval.backends import HFBackend
from eval.data import LANGUAGES
from eval.metrics import bertscore
from eval.run import EvalConfig, run_mmedbench
from eval.scoring import score_predictions
from megatron_mmed.cli import main
from megatron_mmed.common.config import ConfigError
from megatron_mmed.common.errors import UserError
from megatron_mmed.testing.tiny_hf import build_tiny_model


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory, shared_data):
    texts = []
    for f in sorted((shared_data / "qa").glob("*.jsonl")):
        for line in f.read_text(encoding="utf-8").splitlines():
            rec = json.loads(line)
            texts.append(rec["question"] + " " + " ".join(rec["options"].values()) + " " + rec["rationale"])
    # weights at std 0.2: what the model writes depends on the prompt (at 0.02 every prompt gets the same first token)
    return build_tiny_model(tmp_path_factory.mktemp("tiny"), texts, vocab_size=1500, init_std=0.2)


@pytest.fixture(scope="module")
def small_qa(tmp_path_factory, shared_data):
    """The first 2 real items of every language (a tmp copy, so a full run stays tiny)."""
    folder = tmp_path_factory.mktemp("qa")
    for f in sorted((shared_data / "qa").glob("*.jsonl")):
        (folder / f.name).write_text(
            "".join(f.read_text(encoding="utf-8").splitlines(True)[:2]), encoding="utf-8"
        )
    return folder


def _cfg(tiny_model, shared_data, out, **kw):
    base = dict(model=str(tiny_model), data=str(shared_data / "qa"), out=str(out), limit=2, max_new_tokens=4,
                batch_size=4)  # fmt: skip
    return EvalConfig.from_mapping({**base, **kw})


def _lines(path):
    return [json.loads(x) for x in path.read_text(encoding="utf-8").splitlines()]


def test_generate_via_cli_writes_everything_and_score_agrees(tiny_model, small_qa, tmp_path, capsys):
    out = tmp_path / "gen"
    rc = main(["eval", "mmedbench", "--model", str(tiny_model), "--data", str(small_qa), "--out",
               str(out), "--max-new-tokens", "4", "--batch-size", "4", "--no-progress"])  # fmt: skip
    assert rc == 0
    assert "MMedLM 2-7B (paper)" in capsys.readouterr().err
    for name in ("predictions.jsonl", "results.json", "results.md", "results.png", "config.yaml"):
        assert (out / name).is_file(), name
    preds = _lines(out / "predictions.jsonl")
    assert len(preds) == 12 and {p["language"] for p in preds} == set(LANGUAGES)
    for p in preds:
        assert {"language", "index", "id", "prompt", "output", "parsed", "correct"} <= set(p)
        assert "Let\u2019s solve this step-by-step" in p["prompt"]  # the paper's prompt is the default
    res = json.loads((out / "results.json").read_text())
    assert res["config"]["mode"] == "generate" and res["run"]["generated"] == 12
    assert "Spanish" in res["rationale"] and res["rationale"]["Spanish"]["n"] == 2  # Spanish has rationales
    rescored = score_predictions(small_qa, out / "predictions.jsonl", tmp_path / "rescored")
    assert rescored["accuracy"] == res["accuracy"] and rescored["counts"] == res["counts"]
    assert rescored["rationale"]["Spanish"] == res["rationale"]["Spanish"]


def test_loglik_mode_and_score_agrees(tiny_model, shared_data, tmp_path):
    cfg = _cfg(tiny_model, shared_data, tmp_path / "ll", mode="loglik", limit=4, languages=["ja", "fr", "ru"])
    # with --limit the live run scores the first 4 items; `eval score` against the full files counts the
    # other 76 as missing (wrong), so its accuracy on predicted items must equal the live accuracy
    res = run_mmedbench(cfg, progress=False)
    preds = _lines(tmp_path / "ll" / "predictions.jsonl")
    assert len(preds) == 12
    gold = {
        lang: [
            json.loads(x)["answer_idx"].split(",")
            for x in (shared_data / "qa" / f"{lang}.jsonl").read_text().splitlines()
        ]
        for lang in ("Japanese", "French", "Russian")
    }
    right = {lang: 0 for lang in gold}
    for p in preds:
        k = len(gold[p["language"]][p["index"]])  # documented rule: top-k letters, k = number of gold answers
        top = sorted(sorted(p["logprobs"], key=lambda x: -p["logprobs"][x])[:k])
        assert p["parsed"] == ",".join(top)
        right[p["language"]] += top == sorted(gold[p["language"]][p["index"]])
    assert res["accuracy"] == {lang: pytest.approx(r / 4) for lang, r in right.items()}
    assert res["rationale"] == {}
    assert "Answer:" in preds[0]["prompt"] and "step-by-step" not in preds[0]["prompt"]
    rescored = score_predictions(shared_data / "qa", tmp_path / "ll" / "predictions.jsonl")
    for lang, c in rescored["counts"].items():
        assert c["missing"] == 76 and c["accuracy_on_predicted"] == pytest.approx(res["accuracy"][lang])
        assert rescored["accuracy"][lang] == pytest.approx(res["accuracy"][lang] * 4 / 80)


def test_resume_after_interruption(tiny_model, shared_data, tmp_path):
    kw = dict(languages=["English", "Russian"], limit=3)
    full = run_mmedbench(_cfg(tiny_model, shared_data, tmp_path / "full", **kw), progress=False)
    full_preds = {
        (p["language"], p["index"]): p["output"] for p in _lines(tmp_path / "full" / "predictions.jsonl")
    }
    # simulate a kill: the first chunk's 2 lines survive, the third is torn mid-write
    part = tmp_path / "part"
    part.mkdir()
    shutil.copy(tmp_path / "full" / "config.yaml", part / "config.yaml")
    lines = (tmp_path / "full" / "predictions.jsonl").read_text(encoding="utf-8").splitlines()
    (part / "predictions.jsonl").write_text(
        lines[0] + "\n" + lines[1] + "\n" + lines[2][:40], encoding="utf-8"
    )
    res = run_mmedbench(_cfg(tiny_model, shared_data, part, **kw), progress=False)
    assert (
        res["run"]["generated"] == 4
        and res["run"]["resumed"] == 2
        and res["run"]["stale_records_dropped"] == 1
    )
    again = {(p["language"], p["index"]): p["output"] for p in _lines(part / "predictions.jsonl")}
    assert again == full_preds  # greedy: the resumed run reproduces the uninterrupted one
    assert res["accuracy"] == full["accuracy"]
    done = run_mmedbench(_cfg(tiny_model, shared_data, part, **kw), progress=False)
    assert done["run"]["generated"] == 0 and done["run"]["resumed"] == 6
    # a changed question (same language and index) is redone, not silently reused
    data = tmp_path / "data"
    data.mkdir()
    for lang in ("English", "Russian"):
        lines = (shared_data / "qa" / f"{lang}.jsonl").read_text(encoding="utf-8").splitlines(True)
        if lang == "Russian":
            rec = json.loads(lines[1])
            lines[1] = (
                json.dumps({**rec, "question": rec["question"] + " (edited)"}, ensure_ascii=False) + "\n"
            )
        (data / f"{lang}.jsonl").write_text("".join(lines), encoding="utf-8")
    edited = run_mmedbench(_cfg(tiny_model, shared_data, part, data=str(data), **kw), progress=False)
    assert edited["run"]["generated"] == 1 and edited["run"]["stale_records_dropped"] == 1
    with pytest.raises(UserError, match="different mode"):
        run_mmedbench(_cfg(tiny_model, shared_data, part, mode="loglik", **kw), progress=False)


def test_batched_left_padded_generation_equals_one_at_a_time(tiny_model, shared_data):
    texts = [
        json.loads(x)["question"] for x in (shared_data / "qa" / "Chinese.jsonl").read_text().splitlines()[:3]
    ]
    texts += [
        json.loads(x)["question"] for x in (shared_data / "qa" / "English.jsonl").read_text().splitlines()[:3]
    ]
    backend = HFBackend(tiny_model, batch_size=6)
    batched = backend.generate(texts, max_new_tokens=6)
    single = [backend.generate([t], max_new_tokens=6)[0] for t in texts]
    assert batched == single
    assert len({len(backend.tok(t)["input_ids"]) for t in texts}) > 1  # the batch really needed padding


def test_bad_items_do_not_crash_a_run(tiny_model, tmp_path):
    data = tmp_path / "data"
    data.mkdir()
    good = {"question": "Fever?", "options": {"A": "да", "B": "нет"}, "answer_idx": "A", "rationale": ""}
    lines = [good, {**good, "answer_idx": "C"}, {**good, "options": {}}, good]
    (data / "Russian.jsonl").write_text("".join(json.dumps(x, ensure_ascii=False) + "\n" for x in lines))
    res = run_mmedbench(_cfg(tiny_model, tmp_path, tmp_path / "o", data=str(data), limit=0), progress=False)
    assert res["counts"]["Russian"]["items"] == 2 and res["counts"]["Russian"]["bad_items"] == 2
    assert [b["index"] for b in res["bad_items"]["Russian"]] == [1, 2]


def test_model_folder_without_tokenizer(tiny_model, shared_data, tmp_path, capsys):
    bare = tmp_path / "bare"
    bare.mkdir()
    for name in ("config.json", "model.safetensors"):
        shutil.copy(tiny_model / name, bare / name)
    with pytest.raises(UserError, match="has no tokenizer"):
        run_mmedbench(_cfg(bare, shared_data, tmp_path / "o"), progress=False)
    rc = main(["eval", "mmedbench", "--model", str(tmp_path / "missing"), "--data", str(shared_data / "qa"),
               "--out", str(tmp_path / "o2")])  # fmt: skip
    assert rc == 2 and "model folder not found" in capsys.readouterr().err
    rc = main(["eval", "mmedbench", "--model", str(tiny_model), "--data", str(shared_data / "qa")])
    assert rc == 2 and "missing --out" in capsys.readouterr().err


def test_bertscore_with_a_local_model(tiny_model):
    same = bertscore(["el paciente tiene fiebre"], ["el paciente tiene fiebre"], str(tiny_model))
    assert same["bertscore_f1"] == pytest.approx(100.0, abs=1e-3)
    other = bertscore(["el paciente tiene fiebre"], ["咳嗽和发热"], str(tiny_model))
    assert other["bertscore_f1"] < 99.0


@pytest.mark.gpu
def test_vllm_backend_matches_prompt_and_parsing(tiny_model, shared_data, tmp_path):
    pytest.importorskip("vllm")
    res = run_mmedbench(
        _cfg(tiny_model, shared_data, tmp_path / "v", backend="vllm", mode="loglik"), progress=False
    )
    hf = run_mmedbench(
        _cfg(tiny_model, shared_data, tmp_path / "h", mode="loglik", device="cuda"), progress=False
    )
    assert res["counts"].keys() == hf["counts"].keys()
    assert res["average"] == pytest.approx(hf["average"], abs=0.2)


def test_config_validation():
    base = {"model": "m", "data": "d", "out": "o"}
    with pytest.raises(ConfigError, match="batch_size must be >= 1"):
        EvalConfig.from_mapping({**base, "batch_size": 0})
    with pytest.raises(ConfigError, match="unknown config key"):
        EvalConfig.from_mapping({**base, "temperature": 0.7})
    with pytest.raises(ConfigError, match="not one of"):
        EvalConfig.from_mapping({**base, "mode": "sample"})
    with pytest.raises(ConfigError, match="model must be set"):
        EvalConfig.from_mapping({**base, "model": ""})


@pytest.mark.parametrize(
    ("text", "msg"),
    [
        ("model: [unclosed\n", "not valid YAML"),
        ("- model\n- data\n", "top level must be a mapping"),
        (None, "not found"),
    ],
)
def test_cli_yaml_config_goes_through_the_config_loader(tmp_path, capsys, text, msg):
    """A broken --config is the shared loader's one-line error (exit 2), like every other command's YAML."""
    cfg = tmp_path / "eval.yaml"
    if text is not None:
        cfg.write_text(text)
    rc = main(["eval", "mmedbench", "--config", str(cfg), "--out", str(tmp_path / "o")])
    err = capsys.readouterr().err
    assert rc == 2 and msg in err and "Traceback" not in err, err
    assert err.strip().splitlines()[-1].startswith("mmed eval: error: ")


def test_cli_yaml_config_few_shot_from_train(tiny_model, shared_data, tmp_path):
    data = tmp_path / "bench"
    for split in ("Test", "Train"):
        (data / split).mkdir(parents=True)
        lines = (shared_data / "qa" / "Russian.jsonl").read_text(encoding="utf-8").splitlines(True)
        (data / split / "Russian.jsonl").write_text("".join(lines[:2] if split == "Test" else lines[40:]))
    cfg = tmp_path / "eval.yaml"
    cfg.write_text(f"model: {tiny_model}\ndata: {data}\nmode: loglik\nshots: 2\nlanguages: [ru]\n")
    out = tmp_path / "o"
    assert (
        main(["eval", "mmedbench", "--config", str(cfg), "--out", str(out), "--no-progress", "seed=7"]) == 0
    )
    preds = _lines(out / "predictions.jsonl")
    assert len(preds) == 2 and all(
        p["prompt"].count("Question:") == 3 for p in preds
    )  # 2 shots + the question
    assert (
        preds[0]["prompt"].split("Question:")[1:3] == preds[1]["prompt"].split("Question:")[1:3]
    )  # fixed shots
    res = json.loads((out / "results.json").read_text())
    assert res["config"]["shots"] == 2 and res["config"]["seed"] == 7 and res["config"]["languages"] == ["ru"]


def test_wandb_requested_but_missing(tiny_model, small_qa, tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "wandb", None)  # the package absent: `import wandb` raises ImportError
    cfg = _cfg(tiny_model, small_qa, tmp_path / "o", data=str(small_qa), wandb_project="mmed")
    with pytest.raises(UserError, match="wandb package is not installed"):
        run_mmedbench(cfg, progress=False)
    assert not (tmp_path / "o").exists()  # refused before any work, not after a long run


def test_wandb_offline_run_is_written(tiny_model, small_qa, tmp_path, monkeypatch):
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_DIR", str(tmp_path))
    monkeypatch.setenv("WANDB_SILENT", "true")
    cfg = _cfg(tiny_model, small_qa, tmp_path / "o", data=str(small_qa), wandb_project="mmed", limit=1)
    run_mmedbench(cfg, progress=False)
    runs = list((tmp_path / "wandb").glob("offline-run-*"))
    assert len(runs) == 1 and list(runs[0].glob("*.wandb"))


def test_protocol_prompt_model_and_data_digest_are_recorded(tiny_model, small_qa, tmp_path, capsys):
    """results.md shows the paper's rows only for protocol 'paper' (greedy generation, the paper's prompt)."""
    import hashlib

    digest = hashlib.sha256()
    for lang in LANGUAGES:
        digest.update(f"{lang}.jsonl\n".encode() + (small_qa / f"{lang}.jsonl").read_bytes())
    runs = {
        "paper": ["--protocol", "paper"],
        "loglik": ["--protocol", "loglik"],
        "generate": ["--prompt", "clean"],
    }
    for protocol, flags in runs.items():
        out = tmp_path / protocol
        rc = main(["eval", "mmedbench", "--model", str(tiny_model), "--data", str(small_qa), "--out", str(out),
                   "--max-new-tokens", "2", "--limit", "1", "--no-progress", *flags])  # fmt: skip
        assert rc == 0
        res = json.loads((out / "results.json").read_text())
        assert res["protocol"] == protocol and res["model"] == str(tiny_model)
        assert res["prompt"] == ("clean" if protocol == "generate" else "paper")
        assert res["data_digest"] == "sha256:" + digest.hexdigest()
        shown = "MMedLM 2-7B (paper)" in (out / "results.md").read_text()
        assert shown == (protocol == "paper"), protocol
        assert all(p["protocol"] == protocol for p in _lines(out / "predictions.jsonl"))
        rescored = score_predictions(small_qa, out / "predictions.jsonl", tmp_path / f"re-{protocol}")
        assert rescored["protocol"] == protocol
        assert ("MMedLM 2-7B (paper)" in (tmp_path / f"re-{protocol}" / "results.md").read_text()) == shown
    assert "Let's solve" in _lines(tmp_path / "generate" / "predictions.jsonl")[0]["prompt"]
    capsys.readouterr()
    rc = main(["eval", "mmedbench", "--model", str(tiny_model), "--data", str(small_qa), "--out",
               str(tmp_path / "x"), "--protocol", "paper", "--prompt", "clean"])  # fmt: skip
    assert rc == 2 and "protocol paper" in capsys.readouterr().err


def _generate_equals_hf_one_at_a_time(backend, prompts: list[str], new_tokens: int, eot_at: int) -> None:
    """``backend.generate`` gives the tokens transformers' own ``generate`` gives one prompt at a time (the
    official script's loop), first as is, then with an extra "end-of-text" id (the first prompt's ``eot_at``-th
    generated token) at which some rows stop early while the others go on; and a batch given shortest first
    (not in ``generate``'s longest-first order) gives each row its own tokens."""
    import torch

    batched = backend.generate(prompts, max_new_tokens=new_tokens)
    seqs = sorted((backend.tok(p)["input_ids"] for p in prompts), key=len)
    assert backend._greedy(seqs, new_tokens) == backend._greedy(seqs[::-1], new_tokens)[::-1]
    eot = backend._greedy([backend.tok(prompts[0])["input_ids"]], new_tokens)[0][eot_at]
    backend.eos_ids = [*backend.eos_ids, eot]
    stopped = backend.generate(prompts, max_new_tokens=new_tokens)
    for outs, eos in ((batched, backend.eos_ids[:-1]), (stopped, backend.eos_ids)):
        for prompt, got in zip(prompts, outs, strict=True):
            enc = backend.tok(prompt, return_tensors="pt")
            with torch.inference_mode():
                ref = backend.model.generate(**enc, do_sample=False, max_new_tokens=new_tokens, eos_token_id=eos,
                                             pad_token_id=backend.tok.pad_token_id)  # fmt: skip
            want = ref[0, enc["input_ids"].shape[1] :].tolist()
            want = want[: next((i + 1 for i, t in enumerate(want) if t in eos), len(want))]
            assert got == backend.tok.decode(want, skip_special_tokens=False)
    assert any(
        len(a) > len(b) for a, b in zip(batched, stopped, strict=True)
    )  # some rows really stopped early
    assert (backend.rows_dropped > 0) == backend.prefix_kv  # and left the PrefixKV decode batch


# the three batched paths: PrefixKV on the model's forward written out (a Llama on CPU), PrefixKV on transformers'
# forward (models of another layout), the transformers cache (GPUs, models the probe rejects)
PATHS = pytest.mark.parametrize("path", ["own-forward", "prefix-kv", "hf-cache"])


def _take(backend, path, monkeypatch):
    assert backend.prefix_kv and backend.own_forward  # a Llama on CPU takes the first
    if path != "own-forward":
        backend._own, backend.own_forward = None, False
    backend.prefix_kv = path != "hf-cache"
    monkeypatch.setattr(backends, "DROP_FINISHED", 1e-9)  # PrefixKV: every row leaves the batch at its EOS


@PATHS
def test_batched_generation_equals_hf_generate_one_at_a_time(tiny_model, shared_data, path, monkeypatch):
    """Grouped right-padded prompt passes joined into one decode batch, rows stopping early: the same tokens as
    transformers' own ``generate`` run one prompt at a time (the official script's loop), on every batched path
    (``PrefixKV`` buffers in length buckets, on either forward; the transformers-cache fallback)."""

    prompts = []
    for lang in ("Chinese", "English", "Japanese"):
        lines = (shared_data / "qa" / f"{lang}.jsonl").read_text(encoding="utf-8").splitlines()[:3]
        prompts += [json.loads(x)["question"] for x in lines]
    backend = HFBackend(tiny_model, batch_size=9, prefill_group=2)
    _take(backend, path, monkeypatch)
    _generate_equals_hf_one_at_a_time(backend, prompts, new_tokens=8, eot_at=2)


@pytest.mark.parametrize("path", ["own-forward", "prefix-kv"])
def test_finished_rows_leave_the_prefix_kv_decode_batch(tiny_model, shared_data, path, monkeypatch):
    """Rows that have their EOS leave the PrefixKV decode batch: each later step feeds exactly the unfinished rows,
    each its own last token at its own position, and every row's tokens are those of decoding without drops."""
    from collections import Counter

    from eval.data import load_benchmark
    from eval.prompts import build_prompt

    bench = load_benchmark(shared_data / "qa")
    prompts = [
        build_prompt(it) for lang in ("English", "Japanese", "Russian") for it in bench[lang].items[:8]
    ]
    backend = HFBackend(tiny_model, batch_size=len(prompts), prefill_group=2)
    _take(backend, path, monkeypatch)
    seqs = [backend.tok(p)["input_ids"] for p in prompts]
    free = backend._greedy(seqs, 10)
    # the random model writes much the same in every row: the most common token at the first step where rows
    # differ ends those rows there, the others later or not at all
    t = next(t for t in range(10) if len({f[t] for f in free}) > 1)
    backend.eos_ids = [*backend.eos_ids, Counter(f[t] for f in free).most_common(1)[0][0]]
    fed, forward = [], backend._kv_forward

    def recorded(ids, positions, kv, last):
        if ids.shape[1] == 1:
            fed.append(sorted(zip(positions[:, 0].tolist(), ids[:, 0].tolist(), strict=True)))
        return forward(ids, positions, kv, last)

    monkeypatch.setattr(backend, "_kv_forward", recorded)
    got = backend._greedy(seqs, 10)
    assert got == [backend._through_eos(f) for f in free] and backend.rows_dropped > 0
    assert len({len(g) for g in got}) > 1  # rows finished at different steps
    for t, step in enumerate(fed, 1):  # step t feeds token t-1 of the rows that have not ended by then
        assert step == sorted(
            (len(s) + t - 1, g[t - 1]) for s, g in zip(seqs, got, strict=True) if len(g) > t
        )


def test_demo_eval_scores_by_loglik_without_loading_bars(tiny_model, tmp_path, capfd):
    """`make demo`'s eval step: a real, near-chance number per language (loglik), not free generation's 0.00
    from a model too small to write the answer format; transformers' "Loading weights" bars stay hidden."""
    from megatron_mmed.demo import SAMPLE, _evaluate

    summary = _evaluate(tiny_model, SAMPLE / "qa", tmp_path / "eval", show_progress=False)
    res = json.loads((tmp_path / "eval" / "results.json").read_text())
    assert res["protocol"] == "loglik" and summary["average"] == res["average"]
    assert all(c["predicted"] == c["items"] == 6 and c["unparsed"] == 0 for c in res["counts"].values())
    assert 0 < sum(c["correct"] for c in res["counts"].values()) < 36
    out = capfd.readouterr()
    assert "Loading weights" not in out.err + out.out
    assert "loglik" in out.err + out.out  # the printed table says which protocol made the number


@PATHS
def test_shared_prefix_generation_equals_hf_generate_one_at_a_time(
    tiny_model, shared_data, path, monkeypatch
):
    """Paper prompts of three languages: each language's ~220-token wrapper + instruction is computed once and
    serves several passes (prefill_group=2), the rest right-padded, all rows joined in one decode batch (its
    keys read once per step with ``PrefixKV``, copied into every row's cache on the fallback path); the tokens
    equal transformers' own ``generate`` run one prompt at a time, also when rows stop early."""

    from eval.data import load_benchmark
    from eval.prefix import prefill_groups
    from eval.prompts import build_prompt

    bench = load_benchmark(shared_data / "qa")
    prompts = [build_prompt(it) for lang in ("English", "Chinese", "Russian") for it in bench[lang].items[:4]]
    backend = HFBackend(tiny_model, batch_size=12, prefill_group=2)
    seqs = [backend.tok(p)["input_ids"] for p in prompts]
    groups = prefill_groups(seqs, backend.prefill_group)
    assert min(g.shared for g in groups) > 200 and len({g.shared for g in groups}) > 1  # per language
    assert len(groups) > 3  # a language's prefix serves more than one pass
    _take(backend, path, monkeypatch)
    _generate_equals_hf_one_at_a_time(backend, prompts, new_tokens=10, eot_at=3)


def test_sliding_window_model_generates_as_hf_one_at_a_time(shared_data, tmp_path):
    """A sliding-window model (a tiny Mistral, window 4 tokens, much shorter than the prompts: BioMistral is of
    this family) has cache layers that keep only the window, which the batched paths cannot copy or extend: it
    goes through transformers' left-padded ``generate`` and gives the same tokens as one prompt at a time."""
    texts = [
        json.loads(x)["question"] for x in (shared_data / "qa" / "English.jsonl").read_text().splitlines()
    ]
    mistral = build_tiny_model(tmp_path / "mistral", texts, vocab_size=400, sliding_window=4, init_std=0.2)
    prompts = []
    for lang in ("English", "Spanish"):
        lines = (shared_data / "qa" / f"{lang}.jsonl").read_text(encoding="utf-8").splitlines()[:3]
        prompts += [json.loads(x)["question"] for x in lines]
    backend = HFBackend(mistral, batch_size=6)
    assert not backend.prefix_kv and not backend._plain_cache
    _generate_equals_hf_one_at_a_time(backend, prompts, new_tokens=8, eot_at=2)

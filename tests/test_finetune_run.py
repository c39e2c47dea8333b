"""``mmed finetune`` end to end on CPU (real megatron-core, transformers, peft): the contract, resume, LoRA, errors."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
from convert_helpers import save_llama, tiny_llama
from finetune_helpers import qa_record, train_sp, write_qa

from megatron_mmed.cli import main
from megatron_mmed.common.config import load_config
from megatron_mmed.finetune.config import FinetuneConfig

pytestmark = pytest.mark.timeout(600)
VOCAB = 3072  # the tiny init's vocabulary: the SentencePiece model's 3000 ids fit
SEQ = 512


@pytest.fixture(scope="module")
def sp(shared_data, tmp_path_factory):
    return train_sp(shared_data / "qa", tmp_path_factory.mktemp("sp") / "tok.model")


@pytest.fixture(scope="module")
def init(tmp_path_factory):
    """A tiny random Llama converted by `mmed convert hf-to-mcore` (weights-only torch_dist + model_config.yaml)."""
    from conversion import hf_to_mcore

    d = tmp_path_factory.mktemp("init")
    hf_to_mcore(
        save_llama(tiny_llama(vocab_size=VOCAB, max_position_embeddings=SEQ), d / "hf"),
        d / "mcore",
        skip_validation=True,
    )
    return d / "mcore"


def _args(repo_root, qa, sp, init, run, *extra) -> list[str]:
    return [
        "finetune",
        "--config",
        str(repo_root / "configs/finetune/tiny_cpu.yaml"),
        f"data.train={qa}",
        f"data.tokenizer={sp}",
        f"checkpoint.init_from={init}",
        f"checkpoint.dir={run}",
        "model.preset=from_init",
        "logging.log_interval=1",
        *extra,
    ]


def _records(run: Path) -> list[dict]:
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]


def _losses(run: Path) -> dict[int, float]:
    return {r["step"]: r["loss"] for r in _records(run)}


@pytest.mark.slow
def test_end_to_end_finetune_convert_and_eval(repo_root, shared_data, sp, init, tmp_path, capsys):
    """The contract: `mmed finetune` on the dev QA files writes metrics, config, data report and torch_dist
    checkpoints with `latest`; the target-token loss falls; the export loads in transformers and
    `mmed eval mmedbench` scores it."""
    run = tmp_path / "FT"
    assert main(_args(repo_root, shared_data / "qa", sp, init, run, "train.steps=30")) == 0
    recs = _records(run)
    assert [r["step"] for r in recs] == list(range(1, 31))
    for key in ("loss", "lr", "grad_norm", "tokens_per_s", "non_padding_share", "target_tokens", "examples"):
        assert all(r[key] is not None for r in recs), key
    assert all(r["examples"] == 16 and 0.5 < r["non_padding_share"] <= 1 for r in recs)
    first, last = sum(r["loss"] for r in recs[:3]) / 3, sum(r["loss"] for r in recs[-3:]) / 3
    assert last < first - 1.0, (first, last)  # the target-token loss falls
    assert (run / "latest").read_text().strip() == "iter_0000030"
    assert sorted(d.name for d in run.glob("iter_*")) == ["iter_0000015", "iter_0000030"]
    cfg = load_config(FinetuneConfig, run / "config.yaml")  # config.yaml reads back as the run's config
    assert cfg.data.train == str(shared_data / "qa") and cfg.train.steps == 30
    from megatron_mmed.finetune.data import SFTDataReport

    report = SFTDataReport.read(run / "data_report.json")
    assert report.examples > 0 and 0.5 < report.packing["non_padding_share"] <= 1

    hf, out = tmp_path / "HF", tmp_path / "EVAL"
    assert main(["convert", "mcore-to-hf", "--ckpt", str(run), "--out", str(hf), "--layout", "llama"]) == 0
    assert (hf / "tokenizer.model").is_file()
    assert (
        main(
            ["eval", "mmedbench", "--model", str(hf), "--data", str(shared_data / "qa"), "--out", str(out)]
            + ["--protocol", "loglik", "--limit", "4"]
        )
        == 0
    )
    results = json.loads((out / "results.json").read_text())
    assert set(results["accuracy"]) == {"English", "Chinese", "Japanese", "French", "Russian", "Spanish"}
    assert 0 <= results["average"] <= 1


RESUME = ["train.steps=6", "checkpoint.save_interval=2", "data.languages=[en,zh]"]


@pytest.fixture(scope="module")
def uninterrupted(repo_root, shared_data, sp, init, tmp_path_factory) -> dict[int, float]:
    """The losses of a 6-step full fine-tuning run that nothing interrupts."""
    run = tmp_path_factory.mktemp("uninterrupted") / "run"
    assert main(_args(repo_root, shared_data / "qa", sp, init, run, *RESUME)) == 0
    return _losses(run)


@pytest.mark.slow
def test_resume_equals_uninterrupted(repo_root, shared_data, sp, init, uninterrupted, tmp_path):
    qa = shared_data / "qa"
    assert main(_args(repo_root, qa, sp, init, tmp_path / "split", *RESUME, "train.exit_at_step=3")) == 0
    assert (tmp_path / "split" / "latest").read_text().strip() == "iter_0000003"
    assert main(_args(repo_root, qa, sp, init, tmp_path / "split", *RESUME)) == 0
    assert _losses(tmp_path / "split") == uninterrupted  # bit for bit, same data order


@pytest.mark.slow
def test_kill_9_then_rerun_equals_uninterrupted(repo_root, shared_data, sp, init, uninterrupted, tmp_path):
    """`kill -9` after the first checkpoint (possibly in the middle of the next one): the same command again
    resumes from the newest intact checkpoint and ends with the uninterrupted run's losses."""
    import os
    import signal
    import subprocess
    import sys
    import time

    run = tmp_path / "run"
    argv = [
        sys.executable,
        "-m",
        "megatron_mmed.cli",
        *_args(repo_root, shared_data / "qa", sp, init, run, *RESUME),
    ]
    for _ in range(3):
        proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.time() + 300
        while time.time() < deadline and proc.poll() is None and not (run / "latest").exists():
            time.sleep(0.01)
        if proc.poll() is None:
            os.kill(proc.pid, signal.SIGKILL)
        proc.wait(timeout=60)
        latest = (run / "latest").read_text().strip() if (run / "latest").exists() else None
        if proc.returncode == -signal.SIGKILL and latest not in (None, "iter_0000006"):
            break
        shutil.rmtree(run, ignore_errors=True)
    else:
        pytest.fail("could not kill the run between its first and last checkpoint")
    again = subprocess.run(argv, capture_output=True, text=True, timeout=600)
    assert again.returncode == 0, again.stdout[-2000:] + again.stderr[-2000:]
    assert _losses(run) == uninterrupted
    assert [r["step"] for r in _records(run)] == list(range(1, 7))  # no step logged twice


@pytest.mark.slow
def test_lora_checkpoints_hold_adapters_and_resume_exactly(repo_root, shared_data, sp, init, tmp_path):
    """LoRA runs: adapters-only checkpoints (+ their Adam state and the base's path) that resume bit for bit,
    exported both ways: merged HF weights and a PEFT adapter that peft loads on the base, same logits."""
    from torch.distributed.checkpoint import FileSystemReader

    from megatron_mmed.finetune.adapters import read_adapter_meta

    common = ["peft=lora", "train.steps=6", "checkpoint.save_interval=3", "data.languages=[en,zh]"]
    qa = shared_data / "qa"
    assert main(_args(repo_root, qa, sp, init, tmp_path / "full", *common)) == 0
    assert main(_args(repo_root, qa, sp, init, tmp_path / "split", *common, "train.exit_at_step=3")) == 0
    assert main(_args(repo_root, qa, sp, init, tmp_path / "split", *common)) == 0
    assert _losses(tmp_path / "split") == _losses(tmp_path / "full")
    ckpt = tmp_path / "split" / "iter_0000006"
    keys = set(FileSystemReader(str(ckpt)).read_metadata().state_dict_metadata)
    weights = {k for k in keys if k.startswith("decoder.") or k.startswith(("embedding", "output_layer"))}
    assert weights and all("_lora." in k for k in weights), sorted(weights)[:5]  # adapters only, no base
    assert any(k.startswith("optimizer.") for k in keys)  # their Adam state, for an exact resume
    for where in (ckpt, tmp_path / "split"):  # the pointer to the frozen base, in the checkpoint and the run
        meta = read_adapter_meta(where)
        assert meta is not None and meta.base == str(init.resolve()) and meta.lora.rank == 8

    from transformers import LlamaForCausalLM

    from conversion.lora import peft_logits

    run, merged, adapter = tmp_path / "split", tmp_path / "merged", tmp_path / "adapter"
    to_hf = ["convert", "mcore-to-hf", "--ckpt", str(run), "--out", str(merged), "--layout", "llama"]
    assert main([*to_hf, "--dtype", "fp32"]) == 0
    base_hf = init.parent / "hf"
    assert (
        main(["convert", "lora-to-peft", "--ckpt", str(run), "--base", str(base_hf), "--out", str(adapter)])
        == 0
    )
    assert json.loads((adapter / "adapter_config.json").read_text())["r"] == 8
    ids = list(range(5, 45))
    theirs = peft_logits(base_hf, adapter, ids)
    with torch.no_grad():
        folded = LlamaForCausalLM.from_pretrained(merged)(torch.tensor([ids])).logits[0]
        base = LlamaForCausalLM.from_pretrained(base_hf)(torch.tensor([ids])).logits[0]
    torch.testing.assert_close(theirs, folded, atol=1e-4, rtol=0)
    assert (folded - base).abs().max() > 1e-3  # the fine-tuned adapters changed the model


def _one_line_error(capsys, argv) -> str:
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("mmed finetune: error: ") and "\n" not in err, err
    return err


def test_bad_inputs_are_one_line_errors(repo_root, shared_data, sp, init, tmp_path, capsys):
    qa, run = shared_data / "qa", tmp_path / "run"
    (tmp_path / "empty").mkdir()
    err = _one_line_error(capsys, _args(repo_root, tmp_path / "empty", sp, init, run))
    assert "data.train: no MMedBench language files" in err
    err = _one_line_error(capsys, _args(repo_root, qa, sp, init, run, "peft=lora", "lora.targets=qkv,q_proj"))
    assert "lora.targets: unknown target(s) 'q_proj'" in err
    small = tmp_path / "small_vocab"
    from conversion import hf_to_mcore

    hf256 = save_llama(tiny_llama(vocab_size=256, max_position_embeddings=SEQ), tmp_path / "hf256")
    hf_to_mcore(hf256, small, skip_validation=True)
    capsys.readouterr()  # the conversion's progress output
    err = _one_line_error(capsys, _args(repo_root, qa, sp, small, run))
    assert "data.tokenizer has 3,000 ids" in err and "vocabulary of 256" in err
    err = _one_line_error(capsys, _args(repo_root, qa, sp, init, run, "checkpoint.init_from=null"))
    assert "needs checkpoint.init_from" in err  # model.preset=from_init reads the architecture there
    no_init = ("checkpoint.init_from=null", "model.preset=tiny")
    err = _one_line_error(capsys, _args(repo_root, qa, sp, init, run, *no_init))
    assert "checkpoint.init_from is required" in err
    assert not run.exists()  # refused before anything was written


def test_bad_items_and_long_examples_are_counted_in_the_report(repo_root, sp, init, tmp_path):
    """Items without answer_idx or with letters not among the options are skipped and counted; an example
    longer than data.max_length is cut and counted, never silently."""
    qa = tmp_path / "qa"
    good = [qa_record(f"Question {i}?", rationale="because " * (60 if i == 0 else 3)) for i in range(6)]
    bad = [{k: v for k, v in qa_record().items() if k != "answer_idx"}, qa_record(answer="F")]
    write_qa(qa, "English", good + bad)
    run = tmp_path / "run"
    argv = _args(
        repo_root, qa, sp, init, run, "train.steps=1", "data.max_length=256", "schedule.warmup_steps=0"
    )
    assert main(argv) == 0
    report = json.loads((run / "data_report.json").read_text())
    assert report["items"] == {"English": 6} and report["bad_items"] == {"English": 2}
    assert report["bad_reasons"] == {"answer_idx missing or not among the options": 2}
    assert report["truncated_examples"] >= 1 and report["truncated_tokens"] > 0


def test_dry_run_counts_the_steps_from_the_data(repo_root, shared_data, sp, init, capsys):
    assert main([*_args(repo_root, shared_data / "qa", sp, init, "/nonexistent/run"), "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert "steps: 30 (train.steps)" in out and "items (" in out and "parallel: TP=1 PP=1 DP=1" in out
    assert not Path("/nonexistent/run").exists()


@pytest.mark.slow  # a 16-example step run twice by hand (about 45 s here)
def test_step_gradient_is_the_mean_over_all_target_tokens(repo_root, shared_data, sp, init, tmp_path):
    """The first step's gradient norm equals that of the mean cross-entropy over every target token of the
    step (megatron-core's calculate_per_token_loss), not the mean of its micro-batches' means."""
    from finetune_helpers import mcore_sft

    from conversion.mcore_io import mcore_session
    from megatron_mmed.finetune.data import load_sft_data
    from megatron_mmed.finetune.packing import SFTBatches
    from megatron_mmed.finetune.step import sft_forward

    run = tmp_path / "run"
    assert (
        main(_args(repo_root, shared_data / "qa", sp, init, run, "train.steps=1", "schedule.warmup_steps=0"))
        == 0
    )
    logged = _records(run)[0]["grad_norm"]
    cfg = load_config(FinetuneConfig, run / "config.yaml")
    data = load_sft_data(cfg.data)
    t = cfg.train
    mbs = SFTBatches(
        data.examples, SEQ, t.global_batch_size, t.micro_batch_size, 1, t.seed, True, data.pad_id
    )
    microbatches = mbs.step(0).microbatches
    assert len(microbatches) > 1
    norms = {}
    with mcore_session():
        model, _, _ = mcore_sft(init, wrap=False, seq_length=SEQ)
        for how in ("per_token", "mean_of_means"):
            model.zero_grad()
            sums = [(sft_forward(model, mb) * mb["loss_mask"]).sum() for mb in microbatches]
            counts = [mb["loss_mask"].sum() for mb in microbatches]
            if how == "per_token":
                loss = sum(sums) / sum(counts)
            else:
                loss = sum(s / c for s, c in zip(sums, counts, strict=True)) / len(sums)
            loss.backward()
            norms[how] = float(torch.sqrt(sum((p.grad.double() ** 2).sum() for p in model.parameters())))
    assert logged == pytest.approx(norms["per_token"], rel=1e-4)
    assert abs(norms["mean_of_means"] - norms["per_token"]) > 1e-3 * norms["per_token"]  # the test can fail

"""`mmed pipeline` / `mmed demo` on the embedded sample: every stage runs and removes exactly what it should."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from megatron_mmed.common.config import ConfigError, load_config
from megatron_mmed.demo import DEMO_RECIPE, SAMPLE
from preprocessing.document import LANGS
from preprocessing.layout import iter_kept, iter_rejected
from preprocessing.pipeline import PipelineConfig

MMED = [sys.executable, "-m", "megatron_mmed.cli"]


@pytest.fixture(scope="module")
def demo_run(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("demo")
    res = subprocess.run(
        [*MMED, "demo", "--output", str(out), "--no-progress"], capture_output=True, text=True, timeout=900
    )
    assert res.returncode == 0, res.stderr[-3000:]
    assert "mmed demo" in res.stderr
    return out


def _sample_ids(domain: str | None = None) -> set[str]:
    ids = set()
    for lang in LANGS:
        for line in (SAMPLE / "raw" / f"{lang}.jsonl").read_text(encoding="utf-8").splitlines():
            r = json.loads(line)
            if domain is None or r.get("domain") == domain:
                ids.add(r["id"])
    return ids


@pytest.mark.slow  # the demo_run fixture: `mmed demo` preprocesses, trains 40 steps, converts, evaluates
def test_demo_stages(demo_run: Path):
    data = demo_run / "data"
    summary = json.loads((data / "pipeline.json").read_text())
    assert list(summary["stages"]) == ["prep", "dedup", "decontam", "tokenize"]
    prep_kept = {r["id"] for r in iter_kept(data / "prep")}
    assert prep_kept == _sample_ids("medical")  # every medical sample doc kept, every general one dropped
    prep_rej = {r["id"]: r["reason"] for r in iter_rejected(data / "prep")}
    assert {prep_rej[i] for i in ("other-de-1", "other-ko-1", "other-pt-1")} == {"lang"}
    dup = {r["id"]: r for r in iter_rejected(data / "dedup")}
    kept_ids = {r["kept_id"] for r in dup.values()}
    for lang in LANGS:
        assert dup[f"{lang}-med-dup-001"]["reason"] == "dup:exact"
        near = [r for r in dup.values() if r["lang"] == lang and r["reason"] == "dup:near"]
        assert len(near) == 2
        for k in ("001", "002"):  # each near copy is the removed one, or the one kept in its place (longer)
            assert f"{lang}-med-near-{k}" in set(dup) | kept_ids
    assert len(dup) == 3 * len(LANGS)
    contam = {r["id"]: r for r in iter_rejected(data / "decontam")}
    assert set(contam) == {f"{lang}-med-contam-001" for lang in LANGS}
    assert all(r["reason"] == "contaminated" and r["matches"] for r in contam.values())
    blend = json.loads((data / "tok" / "blend.json").read_text())
    assert blend
    for lang in LANGS:
        assert (data / "tok" / f"{lang}_text_document.bin").stat().st_size > 0
        assert (data / "tok" / f"{lang}_text_document.idx").is_file()
    assert (data / "tokenizer" / "tokenizer.model").is_file()
    for stage in ("prep", "dedup", "decontam", "tok"):
        assert (data / stage / "config.yaml").is_file() and (data / stage / "report.json").is_file()
    chain = json.loads((data / "tok" / "report.json").read_text())["chain"]
    assert [c["stage"] for c in chain] == ["prep", "dedup", "decontam"]


@pytest.mark.slow
def test_demo_trains_converts_and_evaluates(demo_run: Path):
    demo = json.loads((demo_run / "demo.json").read_text())
    assert demo["train"]["steps"] == 40 and demo["train"]["last_loss"] < demo["train"]["first_loss"]
    assert (demo_run / "run" / "loss_curve.png").stat().st_size > 1000
    assert (demo_run / "run" / "latest").is_file()
    from megatron_mmed.demo import FINETUNE_STEPS  # a few steps of `mmed finetune` before the export

    assert demo["finetune"]["steps"] == FINETUNE_STEPS and (demo_run / "ft" / "latest").is_file()
    assert demo["convert"]["dir"] == str(demo_run / "hf") and (demo_run / "ft" / "data_report.json").is_file()
    from transformers import LlamaForCausalLM

    model = LlamaForCausalLM.from_pretrained(demo_run / "hf")
    assert model.config.num_hidden_layers == 2
    results = json.loads((demo_run / "eval" / "results.json").read_text())
    assert set(results["accuracy"]) == {"English", "Chinese", "Japanese", "French", "Russian", "Spanish"}
    preds = (demo_run / "eval" / "predictions.jsonl").read_text().splitlines()
    assert len(preds) == 36  # 6 questions x 6 languages


@pytest.mark.slow
def test_demo_rerun_resumes(demo_run: Path):
    before = {p: p.read_bytes() for p in (demo_run / "data").rglob("*.zst")}
    res = subprocess.run(
        [*MMED, "demo", "--output", str(demo_run), "--no-progress"],
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert res.returncode == 0, res.stderr[-3000:]
    assert "resumed" in res.stderr or "already complete" in res.stderr
    assert {p: p.read_bytes() for p in (demo_run / "data").rglob("*.zst")} == before


def test_pipeline_config_validation(tmp_path: Path):
    with pytest.raises(ConfigError, match="benchmark"):
        load_config(PipelineConfig, DEMO_RECIPE, [f"output={tmp_path}", "inputs=[x]"])
    with pytest.raises(ConfigError, match="subsequence"):
        load_config(
            PipelineConfig,
            DEMO_RECIPE,
            [f"output={tmp_path}", "inputs=[x]", "benchmark=q", "stages=[dedup,prep]"],
        )
    for recipe in sorted((Path(DEMO_RECIPE).parent).glob("*.yaml")):  # every shipped recipe parses
        load_config(PipelineConfig, recipe, [f"output={tmp_path}", "inputs=[x]", "benchmark=q"])


def test_pipeline_workers_reach_every_stage(tmp_path: Path):
    from preprocessing.pipeline import STAGES, _with_workers

    cfg = load_config(
        PipelineConfig, DEMO_RECIPE, [f"output={tmp_path}", "inputs=[x]", "benchmark=q", "workers=3"]
    )
    assert {s: getattr(_with_workers(cfg), s).workers for s in STAGES} == dict.fromkeys(STAGES, 3)


def _stage_counts(data: Path) -> dict[str, tuple[int, int]]:
    """(docs in, docs out) of every stage folder, read from its report."""
    out = {}
    for stage in ("prep", "dedup", "decontam", "tok"):
        t = json.loads((data / stage / "report.json").read_text())["totals"]
        out[stage] = (t["docs_in"], t["docs_out"])
    return out


def _assert_chained(data: Path) -> None:
    """Every stage's output was made from its input as it is now (no stale downstream folder)."""
    counts = _stage_counts(data)
    assert counts["dedup"][0] == counts["prep"][1]
    assert counts["decontam"][0] == counts["dedup"][1]
    assert counts["tok"][0] == counts["decontam"][1]
    langs = {p.name for p in (data / "prep" / "kept").iterdir()}
    for stage in ("dedup", "decontam"):
        assert {p.name for p in (data / stage / "kept").iterdir()} <= langs, stage
    assert {p.name.split("_")[0] for p in (data / "tok").glob("*_text_document.bin")} <= langs


@pytest.mark.slow
def test_pipeline_redoes_every_stage_after_a_changed_input(tmp_path: Path):
    from megatron_mmed.common.errors import UserError
    from preprocessing.pipeline import run_pipeline

    raw = tmp_path / "raw"
    raw.mkdir()
    for f in (SAMPLE / "raw").glob("*.jsonl"):
        (raw / f.name).write_bytes(f.read_bytes())
    data = tmp_path / "data"
    args = [f"inputs=[{raw}]", f"output={data}", f"benchmark={SAMPLE / 'qa'}"]
    run_pipeline(load_config(PipelineConfig, DEMO_RECIPE, args), show_progress=False)
    before = _stage_counts(data)
    # the raw input changes: Japanese is gone; prep and every stage after it must follow
    (raw / "ja.jsonl").unlink()
    summary = run_pipeline(load_config(PipelineConfig, DEMO_RECIPE, args), show_progress=False)
    assert summary["redone"] == ["prep", "dedup", "decontam", "tokenize"]
    _assert_chained(data)
    assert _stage_counts(data)["tok"][1] < before["tok"][1]
    assert not (data / "tok" / "ja_text_document.bin").exists()
    # a changed setting is refused (the recipe is the user's), naming the folder to delete; once deleted,
    # that stage is redone and so is every stage after it
    langs = "prep.langid.languages=[en,zh,fr,es]"
    configs = {p: p.read_text() for p in data.rglob("config.yaml")}
    with pytest.raises(UserError, match=r"other settings.*delete"):
        run_pipeline(load_config(PipelineConfig, DEMO_RECIPE, [*args, langs]), show_progress=False)
    assert {p: p.read_text() for p in data.rglob("config.yaml")} == configs  # the refused run changed none
    shutil.rmtree(data / "prep")
    summary = run_pipeline(load_config(PipelineConfig, DEMO_RECIPE, [*args, langs]), show_progress=False)
    assert "- es" in (data / "config.yaml").read_text()  # the recipe of the run that made the folders
    assert summary["redone"] == ["dedup", "decontam", "tokenize"]
    _assert_chained(data)
    assert not (data / "tok" / "ru_text_document.bin").exists()


def test_a_pipeline_folder_in_use_is_refused(tmp_path: Path):
    from megatron_mmed.common.errors import UserError
    from megatron_mmed.common.lock import FileLock
    from preprocessing.pipeline import run_pipeline

    cfg = load_config(
        PipelineConfig, DEMO_RECIPE, [f"inputs=[{SAMPLE / 'raw'}]", f"output={tmp_path}", "benchmark=q"]
    )
    with (
        FileLock(tmp_path / ".lock").acquire("mmed pipeline"),
        pytest.raises(UserError, match="in use by mmed"),
    ):
        run_pipeline(cfg, show_progress=False)
    assert sorted(p.name for p in tmp_path.iterdir()) == [".lock"]

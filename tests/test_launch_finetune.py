"""launch/finetune_internlm2_7b.sh: launch/pretrain.sh's machinery with STAGE=finetune, full or LoRA (dry runs)."""

from __future__ import annotations

import re
import shlex
from pathlib import Path

import pytest
import yaml
from slurm_helpers import REPO, run, wait_gone

SCRIPT = "launch/finetune_internlm2_7b.sh"


def _shown(out: str) -> dict[str, tuple[object, str]]:
    """The dry run's `key=value  # source` lines: key -> (value parsed as YAML, source)."""
    rows = re.findall(r"^([a-z0-9_.]+)=(.*?)\s+# (yaml|override|default|env [A-Z0-9_]+)$", out, re.M)
    return {key: (yaml.safe_load(value), source) for key, value, source in rows}


def _line(out: str, start: str) -> list[str]:
    return shlex.split(next(x for x in out.splitlines() if x.startswith(start)))


@pytest.fixture(scope="module")
def sp(shared_data, tmp_path_factory):
    from finetune_helpers import train_sp

    return train_sp(shared_data / "qa", tmp_path_factory.mktemp("sp") / "tok.model")


@pytest.mark.parametrize("peft", ["", "none", "lora"])
def test_dry_run_full_and_lora(peft: str, shared_data: Path, sp: Path, tmp_path: Path):
    """PEFT picks the recipe; the job runs `mmed finetune` with the knobs as overrides, sized from the recipe
    (and the dry run from the data: its step count), and resubmits itself (and requeues) through
    launch/pretrain.sh with the same stage."""
    kind = "lora" if peft == "lora" else "full"
    qa = str(shared_data / "qa")
    env = {"PEFT": peft, "DATA": qa, "INIT_FROM": "/ckpt/init", "TOKENIZER": str(sp)}
    env |= {"SAVE": str(tmp_path / "ft"), "NODES": "2", "OVERRIDES": "train.epochs=1"}
    res = run(["bash", SCRIPT, "--dry-run"], env=env)
    assert res.returncode == 0, res.stderr + res.stdout
    out = res.stdout
    recipe = str(REPO / f"configs/finetune/mmedbench_{kind}.yaml")
    assert f"(dry run): {recipe}" in out and "world_size=16" in out
    sbatch = _line(out, "sbatch ")
    assert sbatch[-2:] == [str(REPO / "launch/pretrain.sh"), recipe]
    for opt in ("--nodes=2", "--ntasks-per-node=8", "--gpus-per-node=8", "--requeue", "--signal=B:USR1@600"):
        assert opt in sbatch, opt
    assert f"--job-name=mmed-ft-internlm2-7b-{kind}" in sbatch and "--export=ALL" in sbatch  # STAGE travels
    srun = _line(out, "srun ")
    cmd = srun[srun.index("-m") :]
    assert cmd[:5] == ["-m", "megatron_mmed.cli", "finetune", "--config", recipe]
    for arg in (f"data.train={qa}", "checkpoint.init_from=/ckpt/init", f"data.tokenizer={sp}"):
        assert arg in cmd, arg
    assert cmd[-1] == "train.epochs=1"  # overrides last: they beat the environment
    shown = _shown(out)
    assert shown["data.train"] == (qa, "env DATA") and shown["data.tokenizer"] == (str(sp), "env TOKENIZER")
    assert shown["peft"] == ("lora" if kind == "lora" else "none", "env PEFT" if peft else "yaml")
    assert shown["train.epochs"] == (1, "override") and shown["launch.nodes"] == (2, "env NODES")
    assert "mmed finetune --dry-run --world-size 16" in out and "items (" in out
    assert re.search(r"^steps: \d+ \(1 epoch\(s\) of 128 examples a step\)", out, re.M), out
    layout = "TP=2 PP=1 DP=8" if kind == "full" else "TP=1 PP=1 DP=16"
    assert f"parallel: {layout} on 16 rank(s)" in out
    if kind == "lora":
        assert "trainable: " in out and "(LoRA rank 16 on qkv,proj,fc1,fc2)" in out


def test_wrapper_reuses_pretrain_sh_and_its_header_is_the_recipes_job():
    """The fine-tuning script only picks a recipe and runs launch/pretrain.sh (no copied machinery); its
    #SBATCH header (for a direct sbatch) matches the recipes' job."""
    text = (REPO / SCRIPT).read_text()
    body = [x for x in text.splitlines() if x.strip() and not x.startswith("#")]
    assert len(body) == 2 and "STAGE=finetune" in body[1] and "pretrain.sh" in body[1]
    assert not any(word in line for line in body for word in ("sbatch", "srun", "scontrol"))
    header = dict(
        (m + [""])[:2] for m in (h.split("=", 1) for h in re.findall(r"^#SBATCH --(\S+)", text, re.M))
    )
    for kind in ("full", "lora"):
        launch = yaml.safe_load((REPO / f"configs/finetune/mmedbench_{kind}.yaml").read_text())["launch"]
        assert (
            int(header["nodes"]) == launch["nodes"]
            and int(header["ntasks-per-node"]) == launch["tasks_per_node"]
        )
        assert header["time"] == launch["time_limit"] and launch["job_name"].startswith(header["job-name"])
    assert "requeue" in header and header["signal"] == "B:USR1@600"
    from megatron_mmed.training.launch import FINETUNE_ENV_KNOBS

    help_text = run(["bash", "launch/pretrain.sh", "--help"]).stdout
    for names in FINETUNE_ENV_KNOBS.values():  # --help names every knob of the fine-tuning stage too
        assert names[0] in help_text, names[0]
    assert "STAGE" in help_text


@pytest.mark.parametrize(
    "cmd, env, message",
    [
        ([SCRIPT], {"PEFT": "qlora"}, "PEFT must be none or lora"),
        (["launch/pretrain.sh", "configs/finetune/mmedbench_full.yaml"], {"STAGE": "sft"}, "STAGE must be"),
        ([SCRIPT], {"OVERRIDES": "lora.targets=[q_proj]", "PEFT": "lora"}, "lora.targets"),
        ([SCRIPT], {"OVERRIDES": "parallel.cp=2"}, "parallel.cp > 1 is not supported by mmed finetune"),
        ([SCRIPT], {"NODES": "two"}, "NODES must be an integer"),
    ],
)
def test_launch_mistakes_are_one_line_errors(cmd, env, message):
    res = run(["bash", *cmd, "--dry-run"], env=env)
    assert res.returncode == 2 and message in res.stderr, res.stderr
    assert "Traceback" not in res.stderr and len(res.stderr.strip().splitlines()) == 1, res.stderr


# --- a real CPU run under a local slurm: the same requeue cycle as pretraining, for a LoRA fine-tuning job ---


@pytest.fixture(scope="module")
def ft_init(tmp_path_factory) -> Path:
    """A tiny random Llama as `mmed convert hf-to-mcore` writes it (vocab 3072 > the SentencePiece model's)."""
    from convert_helpers import save_llama, tiny_llama

    from conversion import hf_to_mcore

    d = tmp_path_factory.mktemp("ft_init")
    hf_to_mcore(
        save_llama(tiny_llama(vocab_size=3072, max_position_embeddings=512), d / "hf"),
        d / "mcore",
        skip_validation=True,
    )
    return d / "mcore"


def _cpu_lora_env(qa: Path, sp: Path, init: Path, save: Path) -> dict[str, str]:
    """The 7B LoRA recipe shrunk to the tiny init on 2 CPU ranks (DP=2), 8 steps, saving only at the end."""
    overrides = (
        "model.preset=from_init model.seq_length=512 data.max_length=512 precision.dtype=fp32 "
        "data.languages=[en,zh] train.epochs=null train.steps=8 train.global_batch_size=16 "
        "train.micro_batch_size=2 optimizer.lr=3e-3 schedule.warmup_ratio=0.0 schedule.warmup_steps=1 "
        "lora.rank=8 lora.alpha=16 lora.dropout=0.0 logging.log_interval=1 checkpoint.save_interval=1000"
    )
    return {"PEFT": "lora", "DEVICE": "cpu", "TASKS_PER_NODE": "2", "DATA": str(qa), "TOKENIZER": str(sp)} | {
        "INIT_FROM": str(init),
        "SAVE": str(save),
        "OVERRIDES": overrides,
    }


def _losses(save: Path) -> dict[int, float]:
    import json

    lines = (save / "metrics.jsonl").read_text().splitlines() if (save / "metrics.jsonl").exists() else []
    return {r["step"]: r["loss"] for r in map(json.loads, filter(None, lines))}


@pytest.mark.slow
@pytest.mark.slurm
@pytest.mark.timeout(1200)
def test_sbatch_lora_finetune_requeues_and_resumes(slurm, shared_data, sp, ft_init, tmp_path: Path):
    """`sbatch launch/finetune_internlm2_7b.sh` with PEFT=lora on 2 CPU ranks; a second job gets slurm's USR1:
    it checkpoints, requeues itself, resumes from SAVE/latest as the same stage and ends with the same loss."""
    import time

    qa = shared_data / "qa"
    full = tmp_path / "full"
    log = tmp_path / "full.log"
    env = _cpu_lora_env(qa, sp, ft_init, full)
    res = run(["sbatch", "--wait", "-o", str(log), SCRIPT], env=env, timeout=600)
    text = log.read_text() if log.exists() else ""
    assert res.returncode == 0, res.stderr + text[-3000:]
    assert (full / "latest").read_text().strip() == "iter_0000008" and sorted(_losses(full)) == list(
        range(1, 9)
    )
    assert (full / "adapter.yaml").is_file() and "mmed finetune" in text

    pre, log = tmp_path / "pre", tmp_path / "pre.log"
    res = run(["sbatch", "--parsable", "-o", str(log), SCRIPT], env=_cpu_lora_env(qa, sp, ft_init, pre))
    assert res.returncode == 0, res.stderr
    job = res.stdout.strip().split(";")[0]
    deadline = time.time() + 400
    while time.time() < deadline and len(_losses(pre)) < 2:
        time.sleep(0.5)
    assert run(["scancel", "--signal=USR1", "--batch", job]).returncode == 0
    wait_gone(job, 700)
    text = log.read_text()
    assert "requeueing job" in text and "(restart 1)" in text, text[-3000:]
    assert "training exited with code 0" in text, text[-3000:]
    assert _losses(pre)[8] == _losses(full)[8]  # the requeued LoRA job resumed exactly

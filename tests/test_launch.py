"""Launch scripts: dry runs for every size, and real runs under a local slurm (launch/local-slurm).

The slurm tests start the single-node slurm with launch/local-slurm/start.sh when the machine allows it
(root, Debian packages reachable) and are skipped with the reason otherwise.
"""

from __future__ import annotations

import json
import re
import shlex
import time
from pathlib import Path

import pytest
import yaml
from slurm_helpers import REPO, run, wait_gone

from megatron_mmed.demo import SAMPLE
from preprocessing.layout import iter_kept

SIZES = {"1_8b": "internlm2-1.8b", "7b": "internlm2-7b", "20b": "internlm2-20b"}
RECIPES = sorted(p.name for p in (REPO / "configs/train").glob("*.yaml"))


@pytest.mark.parametrize("size", sorted(SIZES))
def test_pretrain_dry_run_8_nodes(size: str, tmp_path: Path):
    res = run(
        ["bash", f"launch/pretrain_internlm2_{size}.sh", "--dry-run"],
        env={"NODES": "8", "SAVE": str(tmp_path / "run"), "DATA": "/data/tok/blend.json"},
    )
    assert res.returncode == 0, res.stderr + res.stdout
    out = res.stdout
    assert "world_size=64" in out
    assert re.search(r"sbatch .*--nodes=8 .*--ntasks-per-node=8 .*--gpus-per-node=8", out)
    assert "srun --ntasks=64 --ntasks-per-node=8" in out
    assert "data.blend=/data/tok/blend.json" in out and "precision.fp8=hybrid" in out
    layout = re.search(r"parallel: TP=(\d+) x PP=(\d+) x CP=(\d+) x DP=(\d+) = (\d+) ranks", out)
    assert layout, out
    tp, pp, cp, dp, world = map(int, layout.groups())
    assert tp * pp * cp * dp == world == 64
    assert SIZES[size] in out


def test_dry_run_rejects_bad_layout_and_args(tmp_path: Path):
    res = run(
        ["bash", "launch/pretrain_internlm2_20b.sh", "--dry-run"], env={"NODES": "1", "TASKS_PER_NODE": "3"}
    )
    assert res.returncode != 0 and "not a multiple" in res.stderr
    res = run(["bash", "launch/pretrain_internlm2_7b.sh", "--bogus"])
    assert res.returncode == 2 and "unknown argument" in res.stderr
    res = run(["bash", "launch/pretrain_internlm2_7b.sh", "--dry-run"], env={"DEVICE": "tpu"})
    assert res.returncode == 2 and "DEVICE must be" in res.stderr


def _flatten(data: dict, prefix: str = "") -> dict[str, object]:
    out: dict[str, object] = {}
    for key, value in data.items():
        if isinstance(value, dict):
            out.update(_flatten(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = value
    return out


def _shown(out: str) -> dict[str, tuple[object, str]]:
    """The dry run's `key=value  # source` lines: key -> (value parsed as YAML, source)."""
    rows = re.findall(r"^([a-z0-9_.]+)=(.*?)\s+# (yaml|override|default|env [A-Z0-9_]+)$", out, re.M)
    return {key: (yaml.safe_load(value), source) for key, value, source in rows}


def _sbatch_options(out: str) -> dict[str, str]:
    line = next(x for x in out.splitlines() if x.startswith("sbatch "))
    opts = [a for a in shlex.split(line) if a.startswith("--")]
    return dict((a[2:].split("=", 1) + [""])[:2] for a in opts)


@pytest.mark.parametrize("recipe", RECIPES)
def test_dry_run_shows_the_recipe_values(recipe: str):
    """Every value the recipe sets is what the launch dry run shows, marked `yaml`; the job is sized from it."""
    data = yaml.safe_load((REPO / "configs/train" / recipe).read_text())
    launch = data.get("launch") or {}
    cpu = {} if launch else {"DEVICE": "cpu", "TASKS_PER_NODE": "2"}  # tiny_cpu: the CPU smoke run's knobs
    res = run(["bash", "launch/pretrain.sh", f"configs/train/{recipe}", "--dry-run"], env=cpu)
    assert res.returncode == 0, res.stderr + res.stdout
    shown = _shown(res.stdout)
    job = launch.get("job_name", f"mmed-{Path(recipe).stem}")
    for key, value in _flatten(data).items():
        if key == "checkpoint.dir" and value is None:  # unset: the launcher's runs/<job name>
            assert shown[key] == (str(REPO / "runs" / job), "default")
        else:
            assert shown.get(key) == (value, "yaml"), key
    nodes, per_node = launch.get("nodes", 1), launch.get("tasks_per_node", int(cpu.get("TASKS_PER_NODE", 8)))
    for key, name in (("launch.device", "DEVICE"), ("launch.tasks_per_node", "TASKS_PER_NODE")):
        if name in cpu:
            assert shown[key] == (yaml.safe_load(cpu[name]), f"env {name}")
    opts = _sbatch_options(res.stdout)
    assert (opts["nodes"], opts["ntasks-per-node"]) == (str(nodes), str(per_node))
    assert opts["job-name"] == job
    assert opts["time"] == launch.get("time_limit", "24:00:00")
    assert f"world_size={nodes * per_node}" in res.stdout
    assert re.search(rf"parallel: TP=\d+ x PP=\d+ x CP=\d+ x DP=\d+ = {nodes * per_node} ranks", res.stdout)
    assert f"srun --ntasks={nodes * per_node} --ntasks-per-node={per_node}" in res.stdout


@pytest.mark.parametrize("size", sorted(SIZES))
def test_size_scripts_are_one_line_wrappers_matching_their_recipe(size: str):
    """The size scripts only name their recipe; their #SBATCH header (for a direct sbatch) is the recipe's job."""
    script = REPO / f"launch/pretrain_internlm2_{size}.sh"
    text = script.read_text()
    body = [x for x in text.splitlines() if x.strip() and not x.startswith("#")]
    assert len(body) == 1 and f"configs/train/internlm2_{size}.yaml" in body[0] and "pretrain.sh" in body[0]
    wrapped = run(["bash", str(script), "--dry-run"])
    direct = run(["bash", "launch/pretrain.sh", f"configs/train/internlm2_{size}.yaml", "--dry-run"])
    assert wrapped.returncode == 0 and wrapped.stdout == direct.stdout, wrapped.stderr
    header = dict(
        (m + [""])[:2] for m in (h.split("=", 1) for h in re.findall(r"^#SBATCH --(\S+)", text, re.M))
    )
    opts = _sbatch_options(wrapped.stdout)
    for key in ("job-name", "nodes", "ntasks-per-node", "gpus-per-node", "time", "signal", "open-mode"):
        assert header[key] == opts[key], key
    assert "requeue" in header and "requeue" in opts and "exclusive" in header and "exclusive" in opts


def test_dry_run_names_where_each_value_came_from(tmp_path: Path):
    env = {
        "NODES": "2",
        "DATA": "/d/blend.json",
        "SAVE": str(tmp_path / "run"),
        "FP8": "",
        "WANDB_PROJECT": "2024",
        "OVERRIDES": "parallel.pp=2 train.steps=700",
    }
    res = run(["bash", "launch/pretrain_internlm2_7b.sh", "--dry-run"], env=env)
    assert res.returncode == 0, res.stderr + res.stdout
    shown = _shown(res.stdout)
    assert shown["launch.nodes"] == (2, "env NODES")
    assert shown["data.blend"] == ("/d/blend.json", "env DATA")
    assert shown["checkpoint.dir"] == (str(tmp_path / "run"), "env SAVE")
    assert shown["precision.fp8"] == (None, "env FP8")  # an empty FP8 turns it off
    assert shown["logging.wandb_project"] == (
        "2024",
        "env WANDB_PROJECT",
    )  # a string, though it looks like a number
    assert shown["parallel.pp"] == (2, "override") and shown["train.steps"] == (700, "override")
    assert shown["parallel.tp"] == (2, "yaml") and shown["launch.tasks_per_node"] == (8, "yaml")
    assert shown["train.seed"] == (1234, "default")
    assert _sbatch_options(res.stdout)["nodes"] == "2" and "world_size=16" in res.stdout
    srun = shlex.split(next(x for x in res.stdout.splitlines() if x.startswith("srun ")))
    for arg in ("launch.nodes=2", "data.blend=/d/blend.json", "precision.fp8=null", "parallel.pp=2"):
        assert arg in srun, arg
    assert "logging.wandb_project='2024'" in srun

    # an override beats the environment, and a launch default fills what nobody set
    env = {"NODES": "2", "OVERRIDES": "launch.nodes=8"}
    res = run(["bash", "launch/pretrain_internlm2_7b.sh", "--dry-run"], env=env)
    assert res.returncode == 0, res.stderr
    shown = _shown(res.stdout)
    assert shown["launch.nodes"] == (8, "override") and _sbatch_options(res.stdout)["nodes"] == "8"
    assert shown["checkpoint.dir"] == (str(REPO / "runs" / "mmed-internlm2-7b"), "default")


@pytest.mark.parametrize(
    "env, message",
    [
        ({"NODES": "two"}, "NODES must be an integer"),
        ({"NODES": "0"}, "launch.nodes must be >= 1"),
        ({"DEVICE": "cpu"}, "precision.fp8"),  # the 7B recipe trains in FP8, which needs GPUs
        ({"FP8": "e5m2"}, "FP8 must be one of"),
        ({"LAYOUT": "parallel.tp=4"}, "LAYOUT"),
        ({"CONFIG": "configs/train/nope.yaml"}, "not found"),
    ],
)
def test_launch_knob_mistakes_are_one_line_errors(env, message):
    res = run(["bash", "launch/pretrain_internlm2_7b.sh", "--dry-run"], env=env)
    assert res.returncode == 2 and message in res.stderr, res.stderr
    assert "Traceback" not in res.stderr


def test_a_recipe_with_fp8_dry_runs_on_cpu_and_a_cpu_run_can_turn_it_off():
    res = run(["bash", "launch/pretrain_internlm2_20b.sh", "--dry-run"], env={"DEVICE": "cpu", "FP8": ""})
    assert res.returncode == 0, res.stderr
    opts = _sbatch_options(res.stdout)
    assert opts["gpus-per-node"] == "0" and "exclusive" not in opts


def test_launch_from_another_folder_and_as_an_sbatch_copy(tmp_path: Path):
    """Run from anywhere, the scripts submit with --chdir=REPO; sbatch runs a spool copy of a size script in
    the job's working directory (the repo), and the copy finds launch/ there. No script locates the repo itself."""
    res = run(["bash", str(REPO / "launch/pretrain_internlm2_7b.sh"), "--dry-run"], cwd=tmp_path)
    assert res.returncode == 0, res.stderr
    assert f"--chdir={REPO}" in res.stdout and str(REPO / "configs/train/internlm2_7b.yaml") in res.stdout
    res = run(
        ["bash", str(REPO / "launch/convert_to_hf.sh"), "--dry-run"],
        env={"RUN": "/r", "OUT": "/h"},
        cwd=tmp_path,
    )
    assert res.returncode == 0, res.stderr
    spool = tmp_path / "spool"
    spool.mkdir()
    for name in ("pretrain_internlm2_7b.sh", "eval_mmedbench.sh"):
        (spool / "slurm_script").write_bytes((REPO / "launch" / name).read_bytes())
        env = {"SLURM_JOB_ID": "7", "DRY_RUN": "1", "MODEL": "/h", "DATA": "/d", "OUT": "/e"}
        res = run(["bash", str(spool / "slurm_script")], env=env)
        assert res.returncode == 0, (name, res.stderr)
    for script in REPO.glob("launch/*.sh"):
        text = script.read_text()
        assert "Command=" not in text and "SLURM_SUBMIT_DIR" not in text, script.name
        assert "DEFAULT_" not in text, script.name  # no model defaults in the launch scripts


def test_readme_and_help_agree_with_the_recipes():
    """The README's table of sizes is the recipes' figures, and --help names every environment knob."""
    from megatron_mmed.training.launch import ENV_KNOBS

    readme = (REPO / "README.md").read_text()
    for size in SIZES:
        data = yaml.safe_load((REPO / f"configs/train/internlm2_{size}.yaml").read_text())
        row = re.search(
            rf"^\| `internlm2_{size}.yaml` \| (\d+) x (\d+) \| TP=(\d+).*?PP=(\d+), DP=(\d+) \|", readme, re.M
        )
        assert row, size
        nodes, per_node, tp, pp, dp = map(int, row.groups())
        launch, parallel = data["launch"], data["parallel"]
        assert (nodes, per_node) == (launch["nodes"], launch["tasks_per_node"])
        assert (tp, pp, dp) == (parallel["tp"], parallel["pp"], nodes * per_node // (tp * pp))
    res = run(["bash", "launch/pretrain.sh", "--help"])
    assert res.returncode == 0
    for names in ENV_KNOBS.values():
        assert names[0] in res.stdout, names[0]


def test_secrets_never_echoed(tmp_path: Path):
    res = run(["bash", "launch/pretrain_internlm2_7b.sh", "--dry-run"], env={"WANDB_API_KEY": "sekrit-123"})
    assert res.returncode == 0
    assert "sekrit-123" not in res.stdout + res.stderr


def test_prep_dry_run_chains_arrays(tmp_path: Path):
    res = run(
        ["bash", "launch/prep_mmedc.sh", "--dry-run"],
        env={"INPUTS": "/raw/en /raw/zh", "OUT": str(tmp_path), "BENCHMARK": "/qa", "TOKENIZER": "/t.model"},
    )
    assert res.returncode == 0, res.stderr
    lines = [x for x in res.stdout.splitlines() if x.startswith("sbatch")]
    assert len(lines) == 7  # prep, 4 dedup stages, decontam, tokenize
    assert "--array=0-63" in lines[0] and "--array=0-15" in lines[1]
    assert all("--dependency=afterok:" in x for x in lines[1:])
    wrapped = [shlex.split(shlex.split(x)[-1]) for x in lines]  # the command each job runs
    stages = [w[w.index("--stage") + 1] for w in wrapped if "--stage" in w]
    assert stages == ["signatures", "buckets", "clusters", "filter"]
    assert all(w[:3] == [w[0], "-m", "megatron_mmed.cli"] for w in wrapped)


def test_convert_and_eval_dry_runs(tmp_path: Path):
    res = run(
        ["bash", "launch/convert_to_hf.sh", "--dry-run"],
        env={"RUN": "/r", "OUT": "/h", "LAYOUT": "internlm2"},
    )
    assert res.returncode == 0, res.stderr
    assert "convert mcore-to-hf --ckpt /r --out /h --layout internlm2 --dtype bf16" in res.stdout
    res = run(
        ["bash", "launch/eval_mmedbench.sh", "--dry-run"], env={"MODEL": "/h", "DATA": "/d", "OUT": "/e"}
    )
    assert res.returncode == 0, res.stderr
    assert "eval mmedbench --model /h --data /d --out /e --mode generate" in res.stdout
    res = run(["bash", "launch/eval_mmedbench.sh", "--dry-run"], env={"MODEL": "/h"})
    assert res.returncode != 0 and "DATA" in res.stderr


def test_dockerfile_pins_base_and_requirements():
    text = (REPO / "Dockerfile").read_text()
    base = re.search(r"^FROM\s+(\S+)", text, re.M).group(1)
    assert base.startswith("nvcr.io/nvidia/pytorch:") and re.search(r":\d\d\.\d\d-py3$", base)
    assert "requirements.txt" in text and "constraints" in text
    assert "pip install" in text and "-e ." not in text.split("requirements.txt")[0]


# ---------------------------------------------------------------- under a real (local) slurm


@pytest.fixture(scope="module")
def demo_tok(tmp_path_factory) -> Path:
    from megatron_mmed.common.config import load_config
    from megatron_mmed.demo import DEMO_RECIPE
    from preprocessing.pipeline import PipelineConfig, run_pipeline

    out = tmp_path_factory.mktemp("demo_data")
    cfg = load_config(
        PipelineConfig,
        DEMO_RECIPE,
        [f"inputs=[{SAMPLE / 'raw'}]", f"output={out}", f"benchmark={SAMPLE / 'qa'}"],
    )
    run_pipeline(cfg, show_progress=False)
    return out


def _cpu_env(tok: Path, save: Path, steps: int) -> dict[str, str]:
    return {
        "DEVICE": "cpu",
        "TASKS_PER_NODE": "2",
        "CONFIG": "configs/train/tiny_cpu.yaml",
        "SAVE": str(save),
        "OVERRIDES": f"data.blend={tok / 'tok' / 'blend.json'} train.steps={steps} logging.log_interval=1 "
        "checkpoint.save_interval=1000 logging.eval_interval=1000",
    }


def _metrics(save: Path) -> list[dict]:
    return [json.loads(x) for x in (save / "metrics.jsonl").read_text().splitlines() if x.strip()]


@pytest.mark.slow
@pytest.mark.slurm
@pytest.mark.timeout(900)
def test_sbatch_wait_cpu_run_and_preemption(slurm, demo_tok: Path, tmp_path: Path):
    steps = 24
    full = tmp_path / "full"
    res = run(  # --nodes=1: the 7B header asks for the recipe's 4 nodes; this smoke run uses one
        [
            "sbatch",
            "--wait",
            "--nodes=1",
            "-o",
            str(tmp_path / "full.log"),
            "launch/pretrain_internlm2_7b.sh",
        ],
        env=_cpu_env(demo_tok, full, steps),
        timeout=600,
    )
    log = (tmp_path / "full.log").read_text() if (tmp_path / "full.log").exists() else ""
    assert res.returncode == 0, res.stderr + log[-3000:]
    assert (full / "latest").is_file() and (full / f"iter_{steps:07d}").is_dir()
    assert [m["step"] for m in _metrics(full) if "loss" in m][-1] == steps

    # the last two steps of a run, as slurm jobs: export to HF, then evaluate
    hf, ev = tmp_path / "hf", tmp_path / "eval"
    env = {"RUN": str(full), "OUT": str(hf), "DTYPE": "fp32", "WAIT": "1", "GPUS_PER_NODE": "0"}
    res = run(["bash", "launch/convert_to_hf.sh"], env=env, timeout=600)
    assert res.returncode == 0 and (hf / "config.json").is_file(), res.stderr[-2000:]
    env = {
        "MODEL": str(hf),
        "DATA": str(SAMPLE / "qa"),
        "OUT": str(ev),
        "WAIT": "1",
        "GPUS_PER_NODE": "0",
        "EXTRA": "--limit 2 --max-new-tokens 8",
    }
    res = run(["bash", "launch/eval_mmedbench.sh"], env=env, timeout=600)
    assert res.returncode == 0, res.stderr[-2000:]
    assert len(json.loads((ev / "results.json").read_text())["accuracy"]) == 6

    # preemption: USR1 to the batch shell -> checkpoint, requeue, resume from latest, same final loss
    pre = tmp_path / "pre"
    res = run(
        [
            "sbatch",
            "--parsable",
            "--nodes=1",
            "-o",
            str(tmp_path / "pre.log"),
            "launch/pretrain_internlm2_7b.sh",
        ],
        env=_cpu_env(demo_tok, pre, steps),
        timeout=60,
    )
    assert res.returncode == 0, res.stderr
    job = res.stdout.strip().split(";")[0]
    deadline = time.time() + 300
    while time.time() < deadline and not ((pre / "metrics.jsonl").is_file() and len(_metrics(pre)) >= 4):
        time.sleep(0.5)
    assert run(["scancel", "--signal=USR1", "--batch", job]).returncode == 0
    wait_gone(job, 600)
    log = (tmp_path / "pre.log").read_text()
    assert "requeueing job" in log, log[-3000:]
    assert "training exited with code 0" in log
    steps_pre = [m["step"] for m in _metrics(pre) if "loss" in m]
    assert steps_pre[-1] == steps and "(restart 1)" in log  # the requeued start resumed and finished
    final = {m["step"]: m["loss"] for m in _metrics(full) if "loss" in m}
    resumed = {m["step"]: m["loss"] for m in _metrics(pre) if "loss" in m}
    assert resumed[steps] == final[steps]


@pytest.mark.slow
@pytest.mark.slurm
@pytest.mark.timeout(600)
def test_self_submission_from_another_folder(slurm, demo_tok: Path, tmp_path: Path):
    """Run from any folder, a size script submits itself with --chdir=REPO, sized from the recipe in use."""
    save = tmp_path / "run"
    env = {**_cpu_env(demo_tok, save, 6), "WAIT": "1"}
    res = run(["bash", str(REPO / "launch/pretrain_internlm2_7b.sh")], env=env, cwd=tmp_path, timeout=500)
    logs = sorted((save / "logs").glob("mmed-tiny_cpu-*.out"))
    assert res.returncode == 0, res.stderr[-2000:] + (logs[-1].read_text()[-3000:] if logs else "")
    assert (save / "latest").is_file() and [m["step"] for m in _metrics(save) if "loss" in m][-1] == 6
    assert "1 node(s) x 2 task(s)" in logs[-1].read_text()


@pytest.mark.slow
@pytest.mark.slurm
@pytest.mark.timeout(900)
def test_prep_arrays_equal_local_pipeline(slurm, demo_tok: Path, tmp_path: Path):
    out = tmp_path / "arrays"
    env = {
        "INPUTS": str(SAMPLE / "raw"),
        "OUT": str(out),
        "BENCHMARK": str(SAMPLE / "qa"),
        "RECIPE": "configs/prep/demo.yaml",
        "PREP_TASKS": "3",
        "DEDUP_TASKS": "2",
        "WORKERS": "2",
        "CPUS_PER_TASK": "1",
        "WAIT": "1",
    }
    res = run(["bash", "launch/prep_mmedc.sh"], env=env, timeout=800)
    assert res.returncode == 0, res.stderr[-3000:]
    for stage in ("prep", "dedup", "decontam"):
        a = sorted(json.dumps(r, sort_keys=True) for r in iter_kept(out / stage))
        b = sorted(json.dumps(r, sort_keys=True) for r in iter_kept(demo_tok / stage))
        assert a == b, stage
    for f in sorted((demo_tok / "tok").glob("*_text_document.*")):
        assert (out / "tok" / f.name).read_bytes() == f.read_bytes(), f.name

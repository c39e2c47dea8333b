"""benchmarks/gpu_check.sh, the prepared GPU check (issue 16): its CPU dry mode end to end, its wheel list,
and the import path it relies on (`mmed train` and `mmed convert` without preprocessing-only packages)."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

#: In requirements.txt but absent from the device image and not carried by gpu_check_wheels.sh: training and
#: conversion must run without them (each is only needed by preprocessing, extraction or W&B logging).
NOT_ON_DEVICE = (
    "datasketch",
    "trafilatura",
    "ftfy",
    "py3langid",
    "pypdfium2",
    "warcio",
    "jieba",
    "janome",
    "wandb",
    "fpdf",
)


def _blocker(folder: Path) -> dict[str, str]:
    """An environment whose Python refuses to import NOT_ON_DEVICE (a sitecustomize on PYTHONPATH)."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "sitecustomize.py").write_text(
        textwrap.dedent(
            f"""
            import sys

            class _Block:
                def find_spec(self, name, path=None, target=None):
                    if name.split(".")[0] in {NOT_ON_DEVICE!r}:
                        raise ModuleNotFoundError(f"{{name}} is blocked (not on the device)", name=name)
                    return None

            sys.meta_path.insert(0, _Block())
            """
        )
    )
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(folder), env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    return env


def test_train_and_convert_import_paths_need_no_preprocessing_packages(repo_root, tmp_path):
    code = textwrap.dedent(
        """
        import sys
        from megatron_mmed.cli import main
        assert main(["train", "--config", "configs/train/tiny_cpu.yaml", "--dry-run"]) == 0
        assert main(["convert", "mcore-to-hf", "--help"]) == 0
        """
    )
    code_run = "import megatron_mmed.training.loop, conversion.run, conversion.validate\n"
    for snippet in (code_run, code):
        out = subprocess.run(
            [sys.executable, "-c", snippet],
            cwd=repo_root,
            env=_blocker(tmp_path / "block"),
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert out.returncode == 0, out.stderr[-3000:]

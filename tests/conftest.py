"""Shared fixtures and hardware gating for the test suite.

Real test data lives in ``../shared/data`` beside the checkout (``MMED_SHARED_DATA`` overrides it); it is read
from there, never copied into the repo.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


def _shared_data_dir() -> Path:
    env = os.environ.get("MMED_SHARED_DATA")
    return Path(env) if env else REPO.parent / "shared" / "data"


@pytest.fixture(scope="session")
def shared_data() -> Path:
    path = _shared_data_dir()
    if not (path / "corpus").is_dir() or not (path / "qa").is_dir():
        pytest.fail(f"real test data not found at {path} (set MMED_SHARED_DATA to the shared/data folder)")
    return path


@pytest.fixture(scope="session")
def repo_root() -> Path:
    return REPO


@pytest.fixture
def mcore():
    """The test body in a one-process megatron-core session (gloo, TP=PP=1, CPU shim without CUDA);
    yields whether it runs on CPU. Tests that need one only part of the way use ``mcore_session`` itself."""
    from megatron_mmed.common.distributed import mcore_session

    with mcore_session(seed=1) as on_cpu:
        yield on_cpu


@pytest.fixture(scope="session")
def sft_llama():
    """The tiny random Llama the fine-tuning numerics tests compare against (vocab/positions of finetune_helpers)."""
    from convert_helpers import tiny_llama
    from finetune_helpers import SFT_SEQ, SFT_VOCAB

    return tiny_llama(vocab_size=SFT_VOCAB, max_position_embeddings=SFT_SEQ)


@pytest.fixture(scope="session")
def sft_mcore_dir(sft_llama, tmp_path_factory):
    """``sft_llama`` converted by ``mmed convert hf-to-mcore`` (read-only: tests load it, never write it)."""
    from convert_helpers import save_llama

    from conversion import hf_to_mcore

    d = tmp_path_factory.mktemp("sft_llama")
    hf_to_mcore(save_llama(sft_llama, d / "hf"), d / "mcore", skip_validation=True)
    return d / "mcore"


def _has_cuda() -> bool:
    try:
        import torch

        return torch.cuda.is_available()
    except Exception:
        return False


@pytest.fixture(scope="session")
def slurm():
    """The single-node slurm of launch/local-slurm (started if needed, shared by parallel test processes, stopped by
    the last one if a test started it); skipped, with the reason, where it cannot run (not root, no packages)."""
    from slurm_helpers import cluster

    if os.geteuid() != 0:
        pytest.skip("local slurm needs root (launch/local-slurm/start.sh starts munged/slurmctld/slurmd)")
    with cluster():
        yield


def pytest_collection_modifyitems(config, items):
    """`gpu`-marked tests are skipped on machines without CUDA (the one place hardware is gated).

    `make test` runs two processes with pytest-xdist `--dist loadfile`: each module runs in one process, so its
    module-scoped fixtures (finished runs, converted checkpoints) are built once. The `slurm` tests (the longest)
    are collected first, so that both processes start on them while the rest follow in order."""
    items.sort(key=lambda item: "slurm" not in item.keywords)  # stable: the order within each part is kept
    if _has_cuda():
        return
    skip = pytest.mark.skip(reason="needs a CUDA GPU")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)

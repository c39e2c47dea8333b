"""Process-group setup: torchrun/slurm-style env (RANK, WORLD_SIZE, LOCAL_RANK) or a lone process.

A single process started without a launcher gets a gloo group of size 1 on a free local port, so
``mmed train`` needs no torchrun on a laptop. Backend: NCCL with CUDA, gloo without.
"""

from __future__ import annotations

import os
import random
from dataclasses import dataclass

import numpy as np
import torch

from megatron_mmed.common.distributed import free_port
from megatron_mmed.training.config import Parallelism, TrainConfig, resolve_parallelism


@dataclass(frozen=True)
class DistEnv:
    """This process's place in the job."""

    rank: int
    world_size: int
    local_rank: int
    parallelism: Parallelism

    @property
    def is_last_rank(self) -> bool:
        return self.rank == self.world_size - 1


def init_distributed(cfg: TrainConfig, vocab_size: int) -> DistEnv:
    """Initialise torch.distributed and megatron-core's parallel state for ``cfg.parallel``."""
    from megatron.core import parallel_state as ps
    from megatron.core.tensor_parallel import model_parallel_cuda_manual_seed

    rank = int(os.environ.get("RANK", "0"))
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    parallelism = resolve_parallelism(cfg, world_size, vocab_size)
    if not torch.distributed.is_initialized():
        backend = "nccl" if torch.cuda.is_available() else "gloo"
        if backend == "nccl":
            torch.cuda.set_device(local_rank)
        if world_size == 1 and "MASTER_PORT" not in os.environ:
            # a lone process: private rendezvous on a free port, leaving the environment untouched
            init = f"tcp://127.0.0.1:{free_port()}"
        else:  # torchrun / slurm / plain RANK+WORLD_SIZE env: the launcher's rendezvous
            os.environ.setdefault("MASTER_ADDR", "127.0.0.1")
            os.environ.setdefault("MASTER_PORT", "29500")
            init = "env://"
        torch.distributed.init_process_group(backend, init_method=init, rank=rank, world_size=world_size)
    p = cfg.parallel
    ps.initialize_model_parallel(
        tensor_model_parallel_size=p.tp,
        pipeline_model_parallel_size=p.pp,
        virtual_pipeline_model_parallel_size=p.vpp,
        context_parallel_size=p.cp,
    )
    # Same seed on every rank: with CPU initialization each TP rank builds the full weight and keeps its
    # slice, so TP=2 starts from exactly the TP=1 weights. The tracker adds the per-TP-rank streams.
    random.seed(cfg.train.seed)
    np.random.seed(cfg.train.seed)
    torch.manual_seed(cfg.train.seed)
    model_parallel_cuda_manual_seed(cfg.train.seed, force_reset_rng=True)
    return DistEnv(rank=rank, world_size=world_size, local_rank=local_rank, parallelism=parallelism)


def destroy_distributed() -> None:
    """Tear down megatron-core's groups and the default group (tests run several jobs per process)."""
    from megatron.core import parallel_state as ps

    ps.destroy_model_parallel()
    if torch.distributed.is_initialized():
        torch.distributed.destroy_process_group()

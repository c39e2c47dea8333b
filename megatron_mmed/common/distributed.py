"""Process-group helpers shared by training, conversion, fine-tuning and the tests.

:func:`free_port` picks a local rendezvous port; :func:`mcore_session` is a one-process megatron-core
session (gloo and the CPU shim without CUDA, TP=PP=1) for code that builds, loads or saves a model outside
a training job: conversion, its logit validation, and tests. :func:`agree` makes a failure on one rank a
failure on all.
"""

from __future__ import annotations

import contextlib
import errno
import socket
from collections.abc import Iterator


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextlib.contextmanager
def mcore_session(seed: int = 1234) -> Iterator[bool]:
    """A TP=1/PP=1 megatron-core context on this process (gloo, CPU shim without CUDA); yields on_cpu.

    Reuses a process group or model-parallel state that is already set up, and tears down only its own.
    """
    import torch
    from megatron.core import parallel_state as ps
    from megatron.core.tensor_parallel import model_parallel_cuda_manual_seed

    from megatron_mmed.common.cpu_shim import cpu_shim

    with cpu_shim() as on_cpu:
        own_group = not torch.distributed.is_initialized()
        if own_group:
            backend = "gloo" if on_cpu else "nccl"
            init = f"tcp://127.0.0.1:{free_port()}"
            torch.distributed.init_process_group(backend, init_method=init, rank=0, world_size=1)
        own_mp = not ps.model_parallel_is_initialized()
        if own_mp:
            ps.initialize_model_parallel()
        model_parallel_cuda_manual_seed(seed, force_reset_rng=True)
        try:
            yield on_cpu
        finally:
            if own_mp:
                ps.destroy_model_parallel()
            if own_group:
                torch.distributed.destroy_process_group()


def agree(error: BaseException | None) -> None:
    """Raise on every rank when any rank failed (a rank-0-only write must not leave the others waiting)."""
    import torch

    flag = torch.tensor([int(error is not None)], dtype=torch.int32)
    if torch.cuda.is_available():
        flag = flag.cuda()
    torch.distributed.all_reduce(flag, op=torch.distributed.ReduceOp.MAX)
    if flag.item():
        raise error or OSError(errno.EIO, "the checkpoint write failed on rank 0")

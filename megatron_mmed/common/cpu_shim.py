"""Run megatron-core's training stack on a CPU over gloo: the CUDA-only spots, redirected in one place.

megatron-core 0.16 hard-codes CUDA in a handful of places that the model, Megatron DDP, the Megatron
optimizer, the pipeline schedules and ``dist_checkpointing`` otherwise run through fine on CPU:

* the model-parallel RNG tracker (``torch.cuda.get_rng_state`` / ``_get/_set_cuda_rng_state`` in
  ``megatron.core.tensor_parallel.random``): replaced by a tracker that forks the CPU generator;
* ``torch.cuda.current_device()`` (RoPE, buffers, p2p shapes) -> ``"cpu"``; ``torch.cuda.synchronize()``
  (checkpoint preload) -> no-op;
* ``device="cuda"`` tensors (optimizer scalars, schedules' token counts, grad-norm buffers) and
  ``tensor.cuda()`` -> CPU, through a ``TorchFunctionMode`` active while :func:`cpu_shim` is entered;
* the ``param.type() == "torch.cuda.FloatTensor"`` checks (``clip_grad_by_total_norm_fp32``, the
  optimizers): under the same mode ``tensor.type()`` reports the CUDA type name of a CPU tensor.

Use ``with cpu_shim():`` around the whole run; it is a no-op when CUDA is available, so GPU runs never go
through it. Callers must also pass an explicit causal attention mask on CPU.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

import torch
from torch.overrides import TorchFunctionMode

_TYPE_NAMES = {
    torch.float32: "torch.cuda.FloatTensor",
    torch.float16: "torch.cuda.HalfTensor",
    torch.bfloat16: "torch.cuda.BFloat16Tensor",
}


def _is_cuda_device(device: Any) -> bool:
    if isinstance(device, torch.device):
        return device.type == "cuda"
    if isinstance(device, str):
        return device.startswith("cuda")
    return isinstance(device, int) and not isinstance(device, bool)


class _CpuDeviceMode(TorchFunctionMode):
    """Rewrites CUDA device requests to CPU and reports CPU float tensors with CUDA type names."""

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func is torch.Tensor.cuda:
            return args[0]
        if func is torch.Tensor.type and len(args) == 1 and not kwargs:
            tensor = args[0]
            if tensor.device.type == "cpu" and tensor.dtype in _TYPE_NAMES:
                return _TYPE_NAMES[tensor.dtype]
        if "device" in kwargs and _is_cuda_device(kwargs["device"]):
            kwargs = {**kwargs, "device": "cpu"}
        if func is torch.Tensor.to and args and len(args) > 1 and _is_cuda_device(args[1]):
            args = (args[0], "cpu", *args[2:])
        return func(*args, **kwargs)


def _cpu_tracker_class() -> type:
    """A ``CudaRNGStatesTracker`` whose named states are CPU generator states."""
    from megatron.core.tensor_parallel import random as mrandom

    base = mrandom.CudaRNGStatesTracker

    class CpuRNGStatesTracker(base):  # type: ignore[misc, valid-type]
        """Named RNG streams for model-parallel regions, kept as CPU generator states."""

        def add(self, name: str, seed: int) -> None:
            self._is_initialized = True
            if seed in self.seeds_:
                raise Exception(f"seed {seed} already exists")
            self.seeds_.add(seed)
            if name in self.states_:
                raise Exception(f"rng state {name} already exists")
            orig = torch.get_rng_state()
            torch.manual_seed(seed)
            self.states_[name] = torch.get_rng_state()
            torch.set_rng_state(orig)

        @contextlib.contextmanager
        def fork(self, name: str = mrandom._MODEL_PARALLEL_RNG_TRACKER_NAME) -> Iterator[None]:
            if name not in self.states_:
                raise Exception(f"rng state {name} is not added")
            orig = torch.get_rng_state()
            torch.set_rng_state(self.states_[name])
            try:
                yield
            finally:
                self.states_[name] = torch.get_rng_state()
                torch.set_rng_state(orig)

    return CpuRNGStatesTracker


@contextlib.contextmanager
def cpu_shim(force: bool = False) -> Iterator[bool]:
    """Redirect megatron-core's CUDA-only calls to CPU while entered; yields whether it is active.

    Does nothing when CUDA is available (unless ``force``), so a GPU run is never shimmed.
    """
    if torch.cuda.is_available() and not force:
        yield False
        return
    from megatron.core.tensor_parallel import random as mrandom

    saved = {
        "current_device": torch.cuda.current_device,
        "synchronize": torch.cuda.synchronize,
        "tracker_cls": mrandom.CudaRNGStatesTracker,
    }
    torch.cuda.current_device = lambda: "cpu"  # type: ignore[assignment]
    torch.cuda.synchronize = lambda device=None: None  # type: ignore[assignment]
    mrandom.CudaRNGStatesTracker = _cpu_tracker_class()
    mode = _CpuDeviceMode()
    try:
        with mode:
            yield True
    finally:
        torch.cuda.current_device = saved["current_device"]  # type: ignore[assignment]
        torch.cuda.synchronize = saved["synchronize"]  # type: ignore[assignment]
        mrandom.CudaRNGStatesTracker = saved["tracker_cls"]

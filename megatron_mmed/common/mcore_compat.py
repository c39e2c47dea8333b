"""Every private megatron-core (and torch) internal this repo reaches into, in one list, with a checker.

These are names no public API promises: a new megatron-core release may rename or drop any of them, and
some call sites guard with ``hasattr`` (so a rename would silently change behaviour rather than fail).
:data:`CHECKED_AGAINST` is the version they were read against; ``tests/test_mcore_compat.py`` fails when
the installed megatron-core is another version or any entry no longer resolves. When bumping the pin,
re-read each use site named here, then update the version.
"""

from __future__ import annotations

import importlib
import inspect
from dataclasses import dataclass
from typing import Any, Literal

#: the megatron-core release every entry below was checked against (``requirements.txt`` pins it).
CHECKED_AGAINST = "0.16.1"


@dataclass(frozen=True)
class Internal:
    """One internal: ``target`` is ``module:attr.path``; ``names`` are what ``kind`` requires of it."""

    target: str
    kind: Literal["attribute", "instance_attributes", "parameters"]
    used_by: str
    why: str
    names: tuple[str, ...] = ()


INTERNALS: tuple[Internal, ...] = (
    Internal(
        "megatron.core.optimizer.distrib_optimizer:DistributedOptimizer._init_optimizer_states_with_dummy_values",
        "attribute",
        "megatron_mmed/training/checkpoint.py (_materialize_optimizer_state, behind a hasattr)",
        "Adam's lazy state must exist before a distributed-optimizer checkpoint can be loaded into it",
    ),
    Internal(
        "megatron.core.optimizer.distrib_optimizer:HAVE_APEX_OR_TE",
        "attribute",
        "megatron_mmed/training/checkpoint.py (the sharding type of the optimizer state)",
        "fully_reshardable needs Apex/TE's optimizer; without them only dp_reshardable loads back",
    ),
    Internal(
        "megatron.core.optimizer.optimizer:ChainedOptimizer",
        "instance_attributes",
        "megatron_mmed/training/checkpoint.py (getattr(optimizer, 'chained_optimizers', ...))",
        "each wrapped optimizer's Adam state is materialised and its step counters untied",
        ("chained_optimizers",),
    ),
    Internal(
        "megatron.core.optimizer.optimizer:MegatronOptimizer",
        "instance_attributes",
        "megatron_mmed/training/checkpoint.py (opt.optimizer.state)",
        "the torch optimizer inside, whose per-parameter Adam state is materialised and untied",
        ("optimizer",),
    ),
    Internal(
        "megatron.core.tensor_parallel.random:CudaRNGStatesTracker",
        "instance_attributes",
        "megatron_mmed/common/cpu_shim.py (subclassed and swapped in process-wide while the shim is on)",
        "the model-parallel RNG streams kept as CPU generator states on a machine without CUDA",
        ("seeds_", "states_", "_is_initialized"),
    ),
    Internal(
        "megatron.core.tensor_parallel.random:CudaRNGStatesTracker.add",
        "parameters",
        "megatron_mmed/common/cpu_shim.py (overridden)",
        "the CPU tracker overrides add(name, seed) and fork(name)",
        ("name", "seed"),
    ),
    Internal(
        "megatron.core.tensor_parallel.random:CudaRNGStatesTracker.fork",
        "parameters",
        "megatron_mmed/common/cpu_shim.py (overridden)",
        "the CPU tracker overrides fork(name) with the same default stream",
        ("name",),
    ),
    Internal(
        "megatron.core.tensor_parallel.random:_MODEL_PARALLEL_RNG_TRACKER_NAME",
        "attribute",
        "megatron_mmed/common/cpu_shim.py",
        "the default stream name of fork()",
    ),
    Internal(
        "torch.cuda:current_device",
        "attribute",
        "megatron_mmed/common/cpu_shim.py (replaced process-wide while the shim is on)",
        "megatron-core asks it for the device of RoPE buffers and p2p shapes",
    ),
    Internal(
        "torch.cuda:synchronize",
        "attribute",
        "megatron_mmed/common/cpu_shim.py (replaced process-wide while the shim is on)",
        "dist_checkpointing's preload synchronises CUDA unconditionally",
    ),
    Internal(
        "megatron.core.dist_checkpointing.strategies.filesystem_async:_results_queue",
        "attribute",
        "megatron_mmed/common/writers.py (writer_processes_safe)",
        "an in-process queue replaces the Manager server a SIGTERM to the process group would kill",
    ),
    Internal(
        "megatron.core.dist_checkpointing.strategies.async_utils:AsyncRequest",
        "parameters",
        "megatron_mmed/common/writers.py (in_process_save_strategy runs the request itself)",
        "the sync save's request: its writer function, arguments, host staging and finalisers",
        ("async_fn", "async_fn_args", "finalize_fns", "preload_fn"),
    ),
    Internal(
        "megatron.core.dist_checkpointing.strategies.filesystem_async:"
        "FileSystemWriterAsync.write_preloaded_data_multiproc",
        "parameters",
        "megatron_mmed/common/writers.py (in_process_save_strategy unpacks its partial and arguments)",
        "the request's async_fn is partial(this, transform_list, use_msc) called with (rank, buckets, queue)",
        ("transform_list", "use_msc", "rank", "write_buckets", "global_results_queue"),
    ),
    Internal(
        "megatron.core.dist_checkpointing.strategies.filesystem_async:FileSystemWriterAsync.write_preloaded_data",
        "parameters",
        "megatron_mmed/common/writers.py (_write_buckets_on_threads calls it on threads, positionally)",
        "the per-file writer megatron-core forks a process for, run on a thread of the saving process",
        ("transform_list", "local_proc_idx", "write_bucket", "results_queue", "count_queue", "use_fsync"),
    ),
    Internal(
        "torch.serialization:_get_layout",
        "attribute",
        "megatron_mmed/common/integrity.py (_RestrictedUnpickler's allowed callables)",
        "a torch_dist .metadata pickles tensor layouts through it",
    ),
    Internal(
        "megatron.core.models.gpt.gpt_model:GPTModel",
        "instance_attributes",
        "megatron_mmed/finetune/step.py (use_example_positions wraps it)",
        "packed fine-tuning examples need RoPE at each example's own positions",
        ("rotary_pos_emb",),
    ),
    Internal(
        "megatron.core.models.common.embeddings.rotary_pos_embedding:RotaryEmbedding.forward",
        "parameters",
        "megatron_mmed/finetune/step.py (ExamplePositionRoPE.forward passes them through)",
        "the wrapper forwards exactly these arguments",
        ("max_seq_len", "offset", "packed_seq", "cp_group"),
    ),
    Internal(
        "megatron.core.transformer.transformer_block:get_num_layers_to_build",
        "parameters",
        "megatron_mmed/models/builder.py (layer_spec)",
        "the local-spec block of one pipeline stage is built with this stage's layer count",
        ("config", "vp_stage"),
    ),
    Internal(
        "megatron.core.transformer.dot_product_attention:DotProductAttention.forward",
        "parameters",
        "megatron_mmed/models/attention.py (SegmentAttention.forward overrides it)",
        "the local spec's core attention slot is called with exactly these arguments",
        ("query", "key", "value", "attention_mask", "attn_mask_type", "attention_bias", "packed_seq_params"),
    ),
    Internal(
        "megatron.core.transformer.dot_product_attention:DotProductAttention",
        "instance_attributes",
        "megatron_mmed/models/attention.py (SegmentAttention's per-segment SDPA)",
        "the per-segment path reads the scale, dropout and softmax variant the parent set up",
        ("softmax_scale", "attention_dropout", "softmax_offset"),
    ),
)


def _resolve(target: str) -> Any:
    module, _, path = target.partition(":")
    obj: Any = importlib.import_module(module)
    for part in path.split("."):
        obj = getattr(obj, part)
    return obj


def check(entry: Internal) -> str | None:
    """What no longer holds for ``entry`` (one line), or None when it still resolves as used."""
    try:
        obj = _resolve(entry.target)
    except (ImportError, AttributeError) as e:
        return f"{entry.target}: gone ({e}); used by {entry.used_by}"
    if entry.kind == "instance_attributes":
        source = inspect.getsource(obj)  # the class body: every method that may set them
        missing = [n for n in entry.names if f"self.{n} =" not in source]
        if missing:
            return f"{entry.target}: no longer sets self.{', self.'.join(missing)}; used by {entry.used_by}"
    elif entry.kind == "parameters":
        params = inspect.signature(obj).parameters
        missing = [n for n in entry.names if n not in params]
        if missing:
            return f"{entry.target}: parameters {missing} gone (now {list(params)}); used by {entry.used_by}"
    return None


def check_all() -> list[str]:
    """One line per listed internal that changed (empty when all resolve as used)."""
    return [problem for problem in map(check, INTERNALS) if problem is not None]


def installed_version() -> str:
    import megatron.core

    return megatron.core.__version__

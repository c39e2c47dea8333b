"""LoRA adapters around megatron-core's parallel linear layers, split across TP the way the base weight is.

Each adapted linear gets, per *part* of its weight, ``A`` ``[rank, in]`` and ``B`` ``[rows, rank]`` and adds
``(alpha / rank) * B @ A @ dropout(x)`` to its output. Parts are the pieces a Hugging Face Llama keeps as
separate modules (``linear_qkv``: q, k, v; ``linear_fc1``: gate, up; one part for ``linear_proj``,
``linear_fc2``), taken from ``conversion.families.LLAMA``, so one LoRA step equals peft's on the converted
model and the adapters export to a PEFT adapter 1:1.

Tensor parallelism: for a column-parallel base (``linear_qkv``, ``linear_fc1``; weight split by output rows)
``A`` is replicated and ``B`` split by rows like the base (per query group for qkv, gate/up halves for fc1);
for a row-parallel base (``linear_proj``, ``linear_fc2``; split by input columns) ``A`` is split by columns and
``B`` replicated. The adapters sit beside the base (``self_attention.linear_qkv_lora``) and join its output
through a forward hook, so the base's parameter and checkpoint names do not change. All other parameters are
frozen (``requires_grad=False``): Megatron's DDP and optimizer never see them.
"""

from __future__ import annotations

import math
import zlib
from dataclasses import dataclass

import torch

from megatron_mmed.finetune.config import LoraConfig

SUFFIX = "_lora"  # adapter module name = base name + SUFFIX, beside the base in its parent


@dataclass(frozen=True)
class Target:
    """A LoRA target: the base module path inside a transformer layer and how TP splits it."""

    name: str  # qkv | proj | fc1 | fc2
    module: str  # path inside TransformerLayer
    parallel: str  # column | row

    @property
    def mcore_weight(self) -> str:
        """The base weight's megatron-core name (``conversion.families`` form, ``{i}`` = layer)."""
        return f"decoder.layers.{{i}}.{self.module}.weight"


TARGETS: dict[str, Target] = {
    t.name: t
    for t in (
        Target("qkv", "self_attention.linear_qkv", "column"),
        Target("proj", "self_attention.linear_proj", "row"),
        Target("fc1", "mlp.linear_fc1", "column"),
        Target("fc2", "mlp.linear_fc2", "row"),
    )
}


def part_names(target: Target) -> tuple[str, ...]:
    """The parts of ``target``: the module names of its HF Llama tensors (q_proj, k_proj, ... from families)."""
    from conversion.families import LLAMA

    rule = next(r for r in LLAMA.rules if r.mcore == target.mcore_weight)
    return tuple(n.split(".")[-2] for n in rule.hf)


def part_rows(target: Target, config) -> tuple[int, ...]:
    """Global output rows of each part for a megatron-core ``TransformerConfig``."""
    d = config.kv_channels
    if target.name == "qkv":
        return (config.num_attention_heads * d, config.num_query_groups * d, config.num_query_groups * d)
    if target.name == "fc1":
        return (config.ffn_hidden_size, config.ffn_hidden_size)
    return (config.hidden_size,)


def _in_features(target: Target, config) -> int:
    if target.name == "proj":
        return config.num_attention_heads * config.kv_channels
    return config.ffn_hidden_size if target.name == "fc2" else config.hidden_size


class LoraAdapter(torch.nn.Module):
    """The adapters of one base linear (TP-local slices); ``forward(x)`` is the delta to add to its output."""

    def __init__(self, target: Target, config, lora: LoraConfig, seed: int, key: str) -> None:
        from megatron.core import parallel_state as ps
        from megatron.core.tensor_parallel.layers import set_tensor_model_parallel_attributes

        super().__init__()
        self.target, self.config = target, config
        self.rank, self.scale = lora.rank, lora.scale
        self.dropout = torch.nn.Dropout(lora.dropout) if lora.dropout > 0 else torch.nn.Identity()
        self.tp, tp_rank = ps.get_tensor_model_parallel_world_size(), ps.get_tensor_model_parallel_rank()
        self.parts = part_names(target)
        self.sequence_parallel = bool(config.sequence_parallel) and self.tp > 1
        in_full = _in_features(target, config)
        dtype = config.params_dtype
        for part, rows in zip(self.parts, part_rows(target, config), strict=True):
            gen = torch.Generator().manual_seed(seed * 1_000_003 + zlib.crc32(f"{key}.{part}".encode()))
            a_full = torch.empty(lora.rank, in_full)
            bound = 1 / math.sqrt(in_full)  # peft's default: kaiming_uniform_(a=sqrt(5)) on A, B = 0
            a_full.uniform_(-bound, bound, generator=gen)
            if target.parallel == "column":
                a = a_full
                b = torch.zeros(rows // self.tp, lora.rank)
            else:
                a = a_full.chunk(self.tp, dim=1)[tp_rank].clone()
                b = torch.zeros(rows, lora.rank)
            pa = torch.nn.Parameter(a.to(dtype))
            pb = torch.nn.Parameter(b.to(dtype))
            if target.parallel == "column":
                set_tensor_model_parallel_attributes(pb, True, 0, 1)
                pa.sequence_parallel = self.sequence_parallel  # partial grads under SP: all-reduced over TP
            else:
                set_tensor_model_parallel_attributes(pa, True, 1, 1)
                pb.sequence_parallel = self.sequence_parallel
            self.register_parameter(f"a_{part}", pa)
            self.register_parameter(f"b_{part}", pb)

    def a(self, part: str) -> torch.nn.Parameter:
        return getattr(self, f"a_{part}")

    def b(self, part: str) -> torch.nn.Parameter:
        return getattr(self, f"b_{part}")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        from megatron.core import tensor_parallel as tp

        if self.target.parallel == "column":
            if self.sequence_parallel:
                x = tp.gather_from_sequence_parallel_region(x)
            x = self.dropout(x)
            # all parts' A in one matmul; the scale on the rank-wide product, not on the output rows
            a_all = (
                torch.cat([self.a(p) for p in self.parts]) if len(self.parts) > 1 else self.a(self.parts[0])
            )
            a = torch.matmul(x, a_all.t()) * self.scale
            if not self.sequence_parallel:
                a = tp.copy_to_tensor_model_parallel_region(a)  # backward: sum A's grad over TP
            outs = [
                torch.matmul(ap, self.b(part).t())
                for ap, part in zip(a.split(self.rank, dim=-1), self.parts, strict=True)
            ]
            return self._assemble(outs)
        with tp.get_cuda_rng_tracker().fork():  # x is this rank's slice: its own dropout stream
            x = self.dropout(x)
        (part,) = self.parts
        a = torch.matmul(x, self.a(part).t())
        if self.sequence_parallel:
            a = tp.reduce_scatter_to_sequence_parallel_region(a)
        else:
            a = tp.reduce_from_tensor_model_parallel_region(a)
        return torch.matmul(a * self.scale, self.b(part).t())

    def _assemble(self, outs: list[torch.Tensor]) -> torch.Tensor:
        """Per-part outputs in the base's local row layout: qkv interleaved per query group, fc1 [gate; up]."""
        if self.target.name != "qkv":
            return torch.cat(outs, dim=-1)
        q, k, v = outs
        groups = self.config.num_query_groups // self.tp
        lead = q.shape[:-1]
        return torch.cat(
            [q.reshape(*lead, groups, -1), k.reshape(*lead, groups, -1), v.reshape(*lead, groups, -1)], dim=-1
        ).reshape(*lead, -1)

    def delta_weight(self) -> torch.Tensor:
        """``scale * B @ A`` in the base weight's local layout (for merging)."""
        with torch.no_grad():
            parts = [self.b(p) @ self.a(p) for p in self.parts]
            if self.target.parallel == "row":
                return parts[0] * self.scale
            return self._assemble([t.t() for t in parts]).t() * self.scale

    def sharded_state_dict(self, prefix: str = "", sharded_offsets: tuple = (), metadata=None):
        """torch_dist entries: TP-split tensors along their split axis, replicated ones once."""
        from megatron.core.transformer.utils import make_sharded_tensors_for_checkpoint

        axis = {}
        for part in self.parts:
            if self.target.parallel == "column":
                axis[f"b_{part}"] = 0
            else:
                axis[f"a_{part}"] = 1
        state = self.state_dict(prefix="", keep_vars=True)
        return make_sharded_tensors_for_checkpoint(state, prefix, axis, sharded_offsets)


def _resolve(root: torch.nn.Module, path: str) -> tuple[torch.nn.Module, str]:
    *parents, leaf = path.split(".")
    for p in parents:
        root = getattr(root, p)
    return root, leaf


def _hook(adapter: LoraAdapter):
    def add_delta(module, args, output):
        out, bias = output
        return out + adapter(args[0]), bias

    return add_delta


def apply_lora(model, lora: LoraConfig, seed: int) -> list[LoraAdapter]:
    """Freeze ``model`` (an unwrapped GPTModel) and add adapters on ``lora.targets`` in every local layer.

    Call before wrapping in DDP / Float16Module and before building the optimizer. The init is the same at
    every TP (each adapter's full ``A`` is drawn from ``seed`` and its name, then sliced).
    """
    for p in model.parameters():
        p.requires_grad_(False)
    adapters = []
    for layer in model.decoder.layers:
        number = layer.layer_number - 1  # global 0-based layer index (the same at any PP)
        for name in lora.targets:
            target = TARGETS[name]
            parent, leaf = _resolve(layer, target.module)
            base = getattr(parent, leaf)
            adapter = LoraAdapter(target, model.config, lora, seed, f"layers.{number}.{target.module}")
            setattr(parent, leaf + SUFFIX, adapter)
            base.register_forward_hook(_hook(adapter))
            adapters.append(adapter)
    return adapters


def lora_adapters(model) -> list[tuple[str, LoraAdapter]]:
    """``(module name, adapter)`` of every adapter in ``model`` (any wrapping)."""
    return [(n, m) for n, m in model.named_modules() if isinstance(m, LoraAdapter)]


def is_adapter_key(key: str) -> bool:
    """Whether a (sharded) state-dict key belongs to a LoRA adapter."""
    return any(f"{t.module}{SUFFIX}." in key for t in TARGETS.values())


def adapter_sharded_state_dict(model) -> dict:
    """The model's sharded state dict restricted to the adapters: what a LoRA checkpoint stores."""
    return {k: v for k, v in model.sharded_state_dict().items() if is_adapter_key(k)}


def merge_lora(model) -> None:
    """Fold every adapter into its base weight (``W += scale * B @ A``, TP-local) and zero its ``B``."""
    for name, adapter in lora_adapters(model):
        parent_name, _, leaf = name.rpartition(".")
        parent = model.get_submodule(parent_name)
        base = getattr(parent, leaf[: -len(SUFFIX)])
        with torch.no_grad():
            base.weight.add_(adapter.delta_weight().to(base.weight.dtype))
            for part in adapter.parts:
                adapter.b(part).zero_()


def trainable_parameters(model) -> dict[str, torch.nn.Parameter]:
    return {n: p for n, p in model.named_parameters() if p.requires_grad}

"""megatron-core ``torch_dist`` checkpoints: write the ``checkpoint.init_from`` format, read any TP/PP save.

Writing builds the TP=1 ``GPTModel`` (no random init), copies the converted tensors in layer by layer and saves
it with :func:`megatron_mmed.models.weights.save_weights`, so the result is exactly what ``mmed train``'s
``load_weights`` reads, at any TP/PP. Reading needs no model and no process group: each tensor of each layer
is read alone from the checkpoint's global tensors, so the TP/PP it was saved at does not matter.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from conversion.families import RowBlocks, checkpoint_key
from megatron_mmed.common.distributed import mcore_session
from megatron_mmed.common.errors import UserError
from megatron_mmed.models import weights
from megatron_mmed.models.internlm2 import ModelPreset

EMBEDDING = "embedding.word_embeddings.weight"
OUTPUT = "output_layer.weight"


def build_model(arch: ModelPreset, padded_vocab: int, dtype: torch.dtype, on_cpu: bool = True):
    """The TP=1 megatron-core ``GPTModel`` of ``arch`` (local spec, parameters left uninitialised)."""
    from megatron_mmed.models.builder import build_gpt_model, transformer_config

    cfg = transformer_config(
        arch,
        params_dtype=dtype,
        bf16=dtype == torch.bfloat16,
        fp16=dtype == torch.float16,
        use_cpu_initialization=on_cpu,
        perform_initialization=False,
    )
    model = build_gpt_model(arch, cfg, padded_vocab, arch.max_position_embeddings, spec="local")
    return model if on_cpu else model.cuda()


# --- writing ------------------------------------------------------------------------------------------------


def write_mcore(
    tensors: Iterable[tuple[str, torch.Tensor | RowBlocks]],
    arch: ModelPreset,
    padded_vocab: int,
    dtype: torch.dtype,
    out: Path,
) -> None:
    """Save ``(mcore name, tensor)`` pairs as weights-only torch_dist in ``out`` (an empty dir), without the
    manifest (the conversion writes it once its other files are in). A :class:`RowBlocks` value is saved
    block by block where the checkpoint splits the tensor the same way (SwiGLU's halves), never concatenated."""
    with mcore_session():
        model = build_model(arch, padded_vocab, dtype)
        params = dict(model.named_parameters())
        seen = set()
        blocks: dict[str, list[torch.Tensor]] = {}
        with torch.no_grad():
            for name, t in tensors:
                dest = params[name]
                if isinstance(t, RowBlocks):
                    blocks[name] = [
                        b if _owns_storage(b, dest.dtype) else _owned_copy(b, dest.dtype) for b in t
                    ]
                    if sum(b.shape[0] for b in blocks[name]) != dest.shape[0]:
                        raise RuntimeError(
                            f"{name}: blocks of {[tuple(b.shape) for b in t]} for {tuple(dest.shape)}"
                        )
                elif name in (EMBEDDING, OUTPUT) and padded_vocab != arch.vocab_size:
                    dest[: arch.vocab_size].copy_(t)
                    dest[arch.vocab_size :].zero_()
                elif _adoptable(t, dest):  # the parameter takes the tensor's storage: no copy
                    dest.data = t
                else:
                    dest.copy_(t)
                seen.add(name)
                del t
        left = sorted(set(params) - seen)
        if left:
            raise RuntimeError(f"megatron-core parameters never filled: {left[:10]}")
        sharded = {weights.model_key(0, 1): model.sharded_state_dict()}
        _save_blocks_as_they_are(sharded, params, blocks)
        _own_storage_for_views(sharded, params)
        del params
        weights.save_weights(out, [model], sharded=sharded, manifest=False)
        del model, sharded


def _adoptable(t: torch.Tensor, dest: torch.Tensor) -> bool:
    """``t`` can become ``dest``'s data as is: same shape and dtype, contiguous, alone in its storage (not a
    view into a bigger tensor, which would keep that alive and be cloned again by the writer)."""
    return t.shape == dest.shape and _owns_storage(t, dest.dtype)


def _owns_storage(t: torch.Tensor, dtype: torch.dtype) -> bool:
    """``t`` is of ``dtype``, contiguous and alone in its storage: the writer saves it without a copy."""
    return (
        t.dtype == dtype
        and t.is_contiguous()
        and t.untyped_storage().nbytes() == t.numel() * t.element_size()
    )


def _owned_copy(t: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    return torch.empty(t.shape, dtype=dtype).copy_(t)


def _save_blocks_as_they_are(sharded: dict, params: dict[str, torch.Tensor], blocks: dict) -> None:
    """Point each sharded view of a :class:`RowBlocks` parameter at the block holding the same rows.

    The parameter itself is never filled (its pages are never touched); should a view not match a block
    (not the TP=1 SwiGLU split), the parameter gets the concatenation and the view stays as it is.
    """
    from megatron.core.dist_checkpointing.dict_utils import nested_values
    from megatron.core.dist_checkpointing.mapping import ShardedTensor, apply_factories

    apply_factories(sharded)
    if not blocks:
        return
    by_ptr = {params[name].untyped_storage().data_ptr(): name for name in blocks}
    unmatched = set()
    for sh in nested_values(sharded):
        if not isinstance(sh, ShardedTensor) or sh.data is None:
            continue
        name = by_ptr.get(sh.data.untyped_storage().data_ptr())
        if name is None:
            continue
        start, row = sh.data.storage_offset(), params[name].stride(0)
        for b in blocks[name]:
            if start == 0 and sh.data.shape == b.shape and sh.data.is_contiguous():
                sh.data = b
                break
            start -= b.shape[0] * row
        else:
            unmatched.add(name)
    for name in unmatched:
        torch.cat(blocks[name], dim=0, out=params[name].data)
    for name in set(blocks) - unmatched:  # no view left on it: free the parameter
        params[name].data = torch.empty(0, dtype=params[name].dtype)


def _own_storage_for_views(sharded: dict, params: dict[str, torch.Tensor]) -> None:
    """Give views (SwiGLU's gate/up halves of ``linear_fc1``) their own storage, freeing the parameter.

    torch_dist's writer clones every CPU view before writing anything, which for all layers' ``linear_fc1``
    is a third of the model at once. Cloning one parameter's views and then releasing that parameter keeps
    the peak at one model plus one layer.
    """
    from megatron.core.dist_checkpointing.dict_utils import nested_values
    from megatron.core.dist_checkpointing.mapping import ShardedTensor

    by_storage: dict[int, list] = {}
    for sh in nested_values(sharded):
        if not isinstance(sh, ShardedTensor) or sh.data is None:
            continue
        if sh.data.untyped_storage().nbytes() != sh.data.numel() * sh.data.element_size():
            by_storage.setdefault(sh.data.untyped_storage().data_ptr(), []).append(sh)
    owners = {p.untyped_storage().data_ptr(): p for p in params.values()}
    for ptr, shards in by_storage.items():
        for sh in shards:
            sh.data = sh.data.detach().clone()
        if ptr in owners:
            owners[ptr].data = torch.empty(0, dtype=owners[ptr].dtype)


# --- reading ------------------------------------------------------------------------------------------------


class _SlicePlanner:  # built lazily: torch.distributed.checkpoint imports are heavy
    cls: Any = None

    @classmethod
    def make(cls, offsets: dict[str, tuple[int, ...]]):
        if cls.cls is None:
            from torch.distributed.checkpoint.default_planner import DefaultLoadPlanner
            from torch.distributed.checkpoint.metadata import ChunkStorageMetadata
            from torch.distributed.checkpoint.planner import LoadPlan
            from torch.distributed.checkpoint.planner_helpers import create_read_items_for_chunk_list

            class SlicePlanner(DefaultLoadPlanner):
                """Reads one chunk (e.g. one layer) of each requested global tensor into a plain buffer."""

                def __init__(self, offsets):
                    super().__init__(flatten_state_dict=False, flatten_sharded_tensors=False)
                    self.offsets = offsets

                def create_local_plan(self):
                    reqs = []
                    for fqn, buf in self.state_dict.items():
                        chunk = ChunkStorageMetadata(offsets=torch.Size(self.offsets[fqn]), sizes=buf.size())
                        reqs += create_read_items_for_chunk_list(
                            fqn, self.metadata.state_dict_metadata[fqn], [chunk]
                        )
                    return LoadPlan(reqs)

                def lookup_tensor(self, index):
                    return self.state_dict[index.fqn]

            cls.cls = SlicePlanner
        return cls.cls(offsets)


@dataclass
class McoreCheckpoint:
    """A torch_dist checkpoint opened for reading one tensor (of one layer) at a time."""

    path: Path
    shapes: dict[str, tuple[int, ...]]  # checkpoint key -> global shape
    dtypes: dict[str, torch.dtype]

    @classmethod
    def open(cls, path: Path) -> McoreCheckpoint:
        import torch.distributed.checkpoint as dcp
        from torch.distributed.checkpoint.metadata import TensorStorageMetadata

        md = dcp.FileSystemReader(str(path)).read_metadata()
        shapes, dtypes = {}, {}
        for key, m in md.state_dict_metadata.items():
            if isinstance(m, TensorStorageMetadata):
                shapes[key] = tuple(m.size)
                dtypes[key] = m.properties.dtype
        return cls(path=path, shapes=shapes, dtypes=dtypes)

    def shape_of(self, mcore_name: str) -> tuple[int, ...]:
        key, layer = checkpoint_key(mcore_name)
        if key not in self.shapes:
            raise UserError(f"{self.path}: checkpoint has no tensor {key!r} (needed for {mcore_name})")
        return self.shapes[key][1:] if layer is not None else self.shapes[key]

    def get(self, mcore_name: str) -> torch.Tensor:
        """One tensor (one layer's slice of a stacked ``decoder.layers.*`` tensor), read from disk alone."""
        import torch.distributed.checkpoint as dcp

        key, layer = checkpoint_key(mcore_name)
        shape = self.shape_of(mcore_name)
        if layer is not None:
            buf = torch.empty((1, *shape), dtype=self.dtypes[key])
            offsets = (layer,) + (0,) * len(shape)
        else:
            buf = torch.empty(shape, dtype=self.dtypes[key])
            offsets = (0,) * len(shape)
        dcp.load(
            {key: buf},
            storage_reader=dcp.FileSystemReader(str(self.path)),
            planner=_SlicePlanner.make({key: offsets}),
            no_dist=True,
        )
        return buf[0] if layer is not None else buf

    @property
    def padded_vocab(self) -> int:
        return self.shapes[EMBEDDING][0]

    def check_arch(self, arch: ModelPreset, what: str) -> None:
        """Refuse a checkpoint whose tensors do not have the shapes ``arch`` implies (a different preset)."""
        h, L = arch.hidden_size, arch.num_layers
        expected = {
            "decoder.layers.self_attention.linear_qkv.weight": (L, arch.qkv_rows, h),
            "decoder.layers.self_attention.linear_proj.weight": (
                L,
                h,
                arch.num_attention_heads * arch.head_dim,
            ),
            "decoder.layers.mlp.linear_fc1.weight": (L, 2 * arch.ffn_hidden_size, h),
            "decoder.layers.mlp.linear_fc2.weight": (L, h, arch.ffn_hidden_size),
            "decoder.final_layernorm.weight": (h,),
        }
        bad = [
            f"{k}: checkpoint {self.shapes.get(k)} vs {v}"
            for k, v in expected.items()
            if self.shapes.get(k) != v
        ]
        for key in (EMBEDDING, OUTPUT):
            shape = self.shapes.get(key)
            if shape is None or shape[1] != h or shape[0] < arch.vocab_size:
                bad.append(
                    f"{key}: checkpoint {shape} vs ({arch.vocab_size}+padding, {h}) (see --vocab-size)"
                )
        if bad:
            raise UserError(f"{self.path}: the checkpoint does not match {what}: " + "; ".join(bad))


def checkpoint_arch(ckpt: Path, vocab_size: int | None = None) -> tuple[ModelPreset, str, dict[str, Any]]:
    """The architecture of a checkpoint: the ``model_config.yaml`` in it or beside it (hf-to-mcore writes
    one beside its weights, ``mmed train`` one into every checkpoint), else an older run's ``config.yaml``.

    Returns ``(arch, name, extras)``; ``extras`` may hold ``init_from`` (a converted folder, whose
    ``tokenizer/`` is the model's tokenizer) and ``tokenizer`` (the training blend's).
    """
    found = weights.find_model_config(ckpt)
    if found is not None:
        saved = weights.read_model_config(found)
        source = saved.source
        trained = "run" in source  # written by mmed train: the source names where the run started
        extras = {
            "source": source,
            "init_from": source.get("init_from") if trained else str(found.parent),
            "tokenizer": source.get("tokenizer"),
        }
        arch = saved.preset
        if vocab_size is not None:
            arch = dataclasses.replace(arch, vocab_size=vocab_size)
        return arch, arch.name, extras
    for d in (ckpt, ckpt.parent):
        if (d / "config.yaml").is_file():
            return _arch_from_train_config(d / "config.yaml", vocab_size)
    raise UserError(
        f"{ckpt}: neither {weights.MODEL_CONFIG} (converted) nor config.yaml (training run) found beside it"
    )


def _arch_from_train_config(path: Path, vocab_size: int | None) -> tuple[ModelPreset, str, dict[str, Any]]:
    from megatron_mmed.common.blend_file import BlendFile
    from megatron_mmed.common.config import load_config
    from megatron_mmed.training.config import TrainConfig

    cfg = load_config(TrainConfig, path)
    extras: dict[str, Any] = {}
    vocab = vocab_size or cfg.model.vocab_size
    if cfg.data.blend and Path(cfg.data.blend).is_file():
        tokenizer = BlendFile.read(cfg.data.blend).tokenizer
        extras["tokenizer"] = tokenizer.path
        vocab = vocab or tokenizer.vocab_size
    arch = cfg.architecture()
    init = cfg.checkpoint.init_from
    if init and (Path(init) / weights.MODEL_CONFIG).is_file():
        base = weights.read_model_config(Path(init) / weights.MODEL_CONFIG)
        extras["init_from"] = init
        extras["source"] = base.source
        arch = dataclasses.replace(
            arch, rope_scaling=base.preset.rope_scaling, token_ids=base.preset.token_ids
        )
    if vocab:
        arch = dataclasses.replace(arch, vocab_size=vocab)
    return arch, cfg.model.preset, extras

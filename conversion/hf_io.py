"""Hugging Face model folders: read config + weights one tensor at a time, write sharded safetensors.

Reading: ``config.json`` plus ``model.safetensors`` / ``model.safetensors.index.json`` shards through
``safetensors.safe_open`` (``.bin`` shards only through ``torch.load(weights_only=True)``). Writing: shards
planned up front from the known shapes, each ``.safetensors`` file's header written first and every tensor
streamed into its slot as it is produced, so a writer never holds more than the tensor in hand.
"""

from __future__ import annotations

import json
import struct
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError, safe_open

from conversion.arch import arch_from_hf_config
from conversion.config import MAX_SHARD_BYTES
from conversion.families import FAMILIES, Family, hf_shapes
from megatron_mmed.common.errors import UserError
from megatron_mmed.models.internlm2 import ModelPreset

INDEX = "model.safetensors.index.json"
#: buffers some old ``.bin`` checkpoints carry that are not weights (recomputed from the config).
IGNORED_SUFFIXES = ("rotary_emb.inv_freq",)
_ST_DTYPES = {torch.float32: "F32", torch.bfloat16: "BF16", torch.float16: "F16"}
DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


def detect_family(cfg: dict[str, Any], asked: str = "auto", where: str = "config.json") -> Family:
    """InternLM2 by ``model_type: internlm2`` or ``InternLM2ForCausalLM``; Llama likewise; else an error."""
    archs = cfg.get("architectures") or []
    model_type = cfg.get("model_type")
    found = None
    for fam in FAMILIES.values():
        if model_type == fam.model_type or any(a in fam.architectures for a in archs):
            found = fam
            break
    if found is None:
        raise UserError(
            f"{where}: model_type={model_type!r} architectures={archs} is neither Llama nor InternLM2 "
            "(supported: model_type llama / internlm2)"
        )
    if asked not in ("auto", found.name):
        raise UserError(f"{where}: --layout {asked} asked, but the folder is in the {found.name} layout")
    return found


@dataclass
class HFSource:
    """A HF model folder opened for streaming: config, family, and where each tensor lives."""

    path: Path
    config: dict[str, Any]
    family: Family
    arch: ModelPreset
    files: dict[str, Path]  # tensor name -> file
    dtype: torch.dtype
    _handles: dict[Path, Any] = field(default_factory=dict)

    def get(self, name: str) -> torch.Tensor:
        """One tensor, read alone from its shard into fresh memory (no mapping of the shard stays resident)."""
        f = self.files[name]
        if f.suffix == ".safetensors":
            return read_safetensor(f, name)
        if f not in self._handles:
            self._handles = {f: _load_bin(f)}  # keep at most one .bin shard open
        return self._handles[f][name]

    def close(self) -> None:
        self._handles.clear()


_FROM_ST = {v: k for k, v in _ST_DTYPES.items()}


def _bad_safetensors(path: Path, reason: str) -> UserError:
    return UserError(f"{path}: not a valid safetensors file ({reason}); is it truncated or corrupt?")


@contextmanager
def open_safetensors(path: Path) -> Iterator[Any]:
    """``safetensors.safe_open`` on ``path``; a file cut short or garbled is a ``UserError`` naming it.

    safetensors checks the header (length, JSON, dtypes, shapes) and that the data section covers every
    tensor's byte range before anything is read, so no traceback or huge allocation comes from a bad file.
    """
    try:
        handle = safe_open(str(path), framework="pt")
    except SafetensorError as e:
        raise _bad_safetensors(path, str(e)) from None
    with handle as f:
        yield f


def safetensors_names(path: Path) -> list[str]:
    """The tensor names of a ``.safetensors`` file (its header only)."""
    with open_safetensors(path) as f:
        return list(f.keys())


def safetensor_shape(path: Path, name: str) -> tuple[int, ...]:
    """The shape of one tensor of a ``.safetensors`` file, from its header (no data read)."""
    with open_safetensors(path) as f:
        return tuple(f.get_slice(name).get_shape())


def read_safetensor(path: Path, name: str) -> torch.Tensor:
    """One tensor of a ``.safetensors`` file, read alone into memory of its own."""
    with open_safetensors(path) as f:
        dtype = f.get_slice(name).get_dtype()
        if dtype not in _FROM_ST:
            raise UserError(f"{path}: {name} has dtype {dtype} (supported: F32, BF16, F16)")
        try:
            return f.get_tensor(name)  # its own storage: nothing of the file stays mapped
        except SafetensorError as e:
            raise _bad_safetensors(path, f"{name}: {e}") from None


def _load_bin(path: Path) -> dict[str, torch.Tensor]:
    try:
        return torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except Exception as e:  # noqa: BLE001 - any unpickling failure is a bad input file
        raise UserError(f"{path}: cannot be read with torch.load(weights_only=True): {e}") from None


def _weight_files(path: Path) -> dict[str, Path]:
    """Tensor name -> file, from the safetensors index, a lone safetensors file, or .bin shards."""
    for index_name in (INDEX, "pytorch_model.bin.index.json"):
        index = path / index_name
        if index.is_file():
            weight_map = json.loads(index.read_text(encoding="utf-8")).get("weight_map") or {}
            missing = sorted({f for f in weight_map.values() if not (path / f).is_file()})
            if missing:
                raise UserError(f"{index}: lists shard files that do not exist: {', '.join(missing)}")
            return {k: path / v for k, v in weight_map.items()}
    single = path / "model.safetensors"
    if single.is_file():
        return dict.fromkeys(safetensors_names(single), single)
    bins = sorted(path.glob("pytorch_model*.bin"))
    if bins:
        return {k: b for b in bins for k in _load_bin(b)}
    raise UserError(f"{path}: no weights (model.safetensors, {INDEX} or pytorch_model*.bin)")


def _shape_of(src: HFSource, name: str) -> tuple[int, ...]:
    f = src.files[name]
    if f.suffix == ".safetensors":
        return safetensor_shape(f, name)
    return tuple(src.get(name).shape)


def open_hf(path: str | Path, family: str = "auto") -> HFSource:
    """Open a HF folder and check it completely (keys and shapes) before anything is converted."""
    path = Path(path)
    if not path.is_dir():
        raise UserError(f"--hf {path}: not a directory")
    cfg_path = path / "config.json"
    if not cfg_path.is_file():
        raise UserError(f"{path}: no config.json")
    try:
        cfg = json.loads(cfg_path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as e:
        raise UserError(f"{cfg_path}: not valid JSON: {e}") from None
    fam = detect_family(cfg, family, str(cfg_path))
    arch = arch_from_hf_config(cfg, str(cfg_path))
    files = {k: v for k, v in _weight_files(path).items() if not k.endswith(IGNORED_SUFFIXES)}
    expected = hf_shapes(fam, arch)
    missing = [k for k in expected if k not in files]
    unexpected = sorted(set(files) - set(expected))
    if missing or unexpected:
        parts = []
        if missing:
            parts.append(f"missing keys ({len(missing)}): {', '.join(missing[:20])}")
        if unexpected:
            parts.append(f"unexpected keys ({len(unexpected)}): {', '.join(unexpected[:20])}")
        raise UserError(
            f"{path}: weights do not match a {fam.name} model of this config.json: " + "; ".join(parts)
        )
    src = HFSource(path=path, config=cfg, family=fam, arch=arch, files=files, dtype=torch.float32)
    for name, shape in expected.items():
        got = _shape_of(src, name)
        if got != shape:
            raise UserError(f"{path}: {name} has shape {got}, config.json implies {shape}")
    first = fam.hf_names(arch.num_layers)[0]
    src.dtype = src.get(first).dtype
    return src


def write_json(path: Path, data: dict[str, Any]) -> None:
    path.write_text(json.dumps(data, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")


def generation_config(arch: ModelPreset) -> dict[str, Any]:
    return {k: v for k, v in arch.token_ids.items() if k in ("bos_token_id", "eos_token_id", "pad_token_id")}


class ShardedSafetensorsWriter:
    """Streams tensors into planned ``model-0000K-of-0000N.safetensors`` shards, then writes the index.

    All names, shapes and the dtype are known up front, so each shard's header is written when the shard
    is opened and every tensor goes straight to its byte range; shards are ≤ ``max_shard_bytes`` (a tensor
    larger than that gets a shard of its own).
    """

    def __init__(
        self,
        out: Path,
        shapes: Iterable[tuple[str, tuple[int, ...]]],
        dtype: torch.dtype,
        max_shard_bytes: int = MAX_SHARD_BYTES,
    ):
        self.out, self.dtype = out, dtype
        item = torch.tensor([], dtype=dtype).element_size()
        shards: list[list[tuple[str, tuple[int, ...], int]]] = [[]]
        size = 0
        for name, shape in shapes:
            nbytes = item * int(torch.Size(shape).numel())
            if shards[-1] and size + nbytes > max_shard_bytes:
                shards.append([])
                size = 0
            shards[-1].append((name, tuple(shape), nbytes))
            size += nbytes
        n = len(shards)
        self.shard_names = [f"model-{k + 1:05d}-of-{n:05d}.safetensors" for k in range(n)]
        self.slots: dict[
            str, tuple[int, int, int, tuple[int, ...]]
        ] = {}  # name -> shard, start, nbytes, shape
        self.headers: list[bytes] = []
        for k, shard in enumerate(shards):
            header: dict[str, Any] = {"__metadata__": {"format": "pt"}}
            offset = 0
            for name, shape, nbytes in shard:
                header[name] = {
                    "dtype": _ST_DTYPES[dtype],
                    "shape": list(shape),
                    "data_offsets": [offset, offset + nbytes],
                }
                self.slots[name] = (k, offset, nbytes, shape)
                offset += nbytes
            raw = json.dumps(header, separators=(",", ":")).encode()
            raw += b" " * (-len(raw) % 8)
            self.headers.append(raw)
        self.total_size = sum(s[2] for s in self.slots.values())
        self.written: set[str] = set()
        self._files: dict[int, Any] = {}

    def _file(self, k: int):
        if k not in self._files:
            fh = open(self.out / self.shard_names[k], "wb")  # noqa: SIM115 - closed in close()
            fh.write(struct.pack("<Q", len(self.headers[k])))
            fh.write(self.headers[k])
            self._files[k] = fh
        return self._files[k]

    def write(self, name: str, tensor: torch.Tensor) -> None:
        if name not in self.slots:
            raise KeyError(f"{name} is not a planned tensor")
        k, start, nbytes, shape = self.slots[name]
        if tuple(tensor.shape) != shape:
            raise UserError(f"{name}: produced shape {tuple(tensor.shape)}, planned {shape}")
        data = tensor.detach().to(self.dtype).contiguous().reshape(-1).view(torch.uint8).numpy()
        fh = self._file(k)
        fh.seek(8 + len(self.headers[k]) + start)
        fh.write(memoryview(data))
        self.written.add(name)

    def close(self) -> None:
        """Close the shards and write ``model.safetensors.index.json``; every planned tensor must be written."""
        missing = sorted(set(self.slots) - self.written)
        for fh in self._files.values():
            fh.close()
        self._files.clear()
        if missing:
            raise RuntimeError(f"tensors never written: {missing[:10]}")
        weight_map = {name: self.shard_names[slot[0]] for name, slot in self.slots.items()}
        write_json(self.out / INDEX, {"metadata": {"total_size": self.total_size}, "weight_map": weight_map})

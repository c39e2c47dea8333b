"""Checkpoint integrity: a manifest of sizes and checksums, and a restricted unpickler for ``.metadata``.

``manifest.json`` is written inside a checkpoint before it is renamed into place and ``latest`` moves, and
lists every file with its size and an xxh3-128 checksum. Loading checks it, so a truncated or missing file,
or a few flipped bytes in a ``.distcp`` (which torch_dist loads without complaint), are found before any
weight is read. Hashing is parallel: each file is cut into 64 MiB blocks hashed on a thread pool (xxhash
and ``readinto`` release the GIL); a file's checksum is the xxh3-128 of its blocks' checksums. In a job,
every rank hashes its share of the files (:func:`verify_on_all_ranks`, :func:`write_manifest_on_all_ranks`).

torch_dist's ``.metadata`` is a pickle that torch and megatron-core load with ``pickle.load``: a foreign
checkpoint can run code. :func:`check_metadata_pickle` unpickles it first with only torch's
distributed-checkpoint and megatron-core's checkpoint types allowed, so the real load never meets anything
else.
"""

from __future__ import annotations

import dataclasses
import enum
import io
import json
import os
import pickle
from collections.abc import Iterable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from megatron_mmed.common.errors import UserError

MANIFEST = "manifest.json"
MANIFEST_FORMAT = "megatron-mmed.checkpoint-manifest/1"
BLOCK = 64 * 1024**2
THREADS = min(8, os.cpu_count() or 1)


# --- checksums ---------------------------------------------------------------------------------------------


def _block_digest(path: Path, offset: int, length: int) -> bytes:
    """xxh3-128 of ``length`` bytes of ``path`` at ``offset``, hashed straight from a read-only mapping of
    the file (no copy into a buffer: that copy cost as much as the hash on a checkpoint in the page cache)."""
    import mmap

    import xxhash

    h = xxhash.xxh3_128()
    if length <= 0:
        return h.digest()
    start = offset - offset % mmap.ALLOCATIONGRANULARITY
    size = length + offset - start
    with (
        open(path, "rb") as fh,
        mmap.mmap(fh.fileno(), size, access=mmap.ACCESS_READ, offset=start) as m,
        memoryview(m) as view,
    ):
        h.update(view[offset - start :])
    return h.digest()


def file_digests(folder: Path, names: Iterable[str], threads: int = THREADS) -> dict[str, list]:
    """``{name: [size, checksum]}`` for files of ``folder``, blocks of all of them hashed in parallel."""
    import xxhash

    names = list(names)
    sizes = {n: (folder / n).stat().st_size for n in names}
    jobs = [(n, off, min(BLOCK, sizes[n] - off)) for n in names for off in range(0, max(sizes[n], 1), BLOCK)]
    with ThreadPoolExecutor(max(1, threads)) as pool:
        blocks = list(pool.map(lambda j: _block_digest(folder / j[0], j[1], j[2]), jobs))
    out: dict[str, list] = {}
    for (name, _, _), digest in zip(jobs, blocks):
        out.setdefault(name, []).append(digest)
    return {n: [sizes[n], xxhash.xxh3_128(b"".join(out[n])).hexdigest()] for n in names}


#: human-readable descriptions a person may edit (their agreement with the tensors is checked on load).
NOT_CHECKSUMMED = (MANIFEST, "config.yaml", "model_config.yaml", "conversion_report.json")


def checkpoint_files(folder: Path) -> list[str]:
    """The files of a checkpoint folder the manifest covers (relative, sorted): everything but the manifest
    and the YAML/JSON descriptions in :data:`NOT_CHECKSUMMED`."""
    return sorted(
        str(p.relative_to(folder))
        for p in folder.rglob("*")
        if p.is_file() and str(p.relative_to(folder)) not in NOT_CHECKSUMMED
    )


def write_manifest(folder: Path, digests: dict[str, list]) -> Path:
    """``folder/manifest.json`` (written to a temp name, fsynced, renamed)."""
    doc = {
        "format": MANIFEST_FORMAT,
        "algorithm": "xxh3_128-of-64MiB-blocks",
        "files": dict(sorted(digests.items())),
    }
    tmp = folder / (MANIFEST + ".tmp")
    with open(tmp, "w", encoding="utf-8") as fh:
        json.dump(doc, fh, indent=1)
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, folder / MANIFEST)
    return folder / MANIFEST


def read_manifest(folder: Path) -> dict[str, list] | None:
    """The manifest's ``{name: [size, checksum]}``; None when there is none; ``UserError`` when unreadable."""
    path = folder / MANIFEST
    if not path.is_file():
        return None
    try:
        doc = json.loads(path.read_text(encoding="utf-8"))
        files = doc["files"]
        if doc.get("format") != MANIFEST_FORMAT or not isinstance(files, dict):
            raise ValueError("unknown format")
        return {str(k): [int(v[0]), str(v[1])] for k, v in files.items()}
    except (OSError, UnicodeDecodeError, ValueError, KeyError, TypeError, IndexError) as e:
        raise UserError(f"{path}: unreadable manifest ({e})") from None


def size_problems(folder: Path, manifest: dict[str, list]) -> list[str]:
    """Files missing or of the wrong size (cheap: no reading)."""
    out = []
    for name, (size, _) in manifest.items():
        p = folder / name
        if not p.is_file():
            out.append(f"{name} missing")
        elif p.stat().st_size != size:
            out.append(f"{name} has {p.stat().st_size} bytes, the manifest says {size}")
    return out


def checksum_problems(folder: Path, manifest: dict[str, list], names: Iterable[str]) -> list[str]:
    """Files among ``names`` whose checksum differs from the manifest (their sizes already match)."""
    names = [n for n in names if (folder / n).is_file() and (folder / n).stat().st_size == manifest[n][0]]
    got = file_digests(folder, names)
    return [f"{n} checksum differs from the manifest (corrupt)" for n in names if got[n][1] != manifest[n][1]]


def verify(folder: Path) -> tuple[list[str], bool]:
    """``(problems, has_manifest)`` of a checkpoint folder checked whole in this process."""
    manifest = read_manifest(folder)
    if manifest is None:
        return [], False
    problems = size_problems(folder, manifest)
    return problems + checksum_problems(folder, manifest, sorted(manifest)), True


def verify_on_all_ranks(path: Path) -> tuple[list[str], bool]:
    """``(problems, has_manifest)`` of ``path``, each rank checksumming its share; the same on every rank.

    Collective: every rank of the default process group calls it.
    """
    import torch

    dist = torch.distributed
    rank, world = dist.get_rank(), dist.get_world_size()
    box: list[Any] = [None]
    if rank == 0:
        try:
            box = [("ok", read_manifest(path) if (path / "metadata.json").is_file() else "missing")]
        except UserError as e:
            box = [("error", str(e))]
    dist.broadcast_object_list(box, src=0)
    kind, manifest = box[0]
    if kind == "error":
        return [manifest], True
    if manifest == "missing":
        return [f"{path} is not a torch_dist checkpoint (no metadata.json)"], False
    if manifest is None:
        return [], False
    problems = size_problems(path, manifest) if rank == 0 else []
    problems += checksum_problems(path, manifest, sorted(manifest)[rank::world])
    gathered: list[Any] = [None] * world
    dist.all_gather_object(gathered, problems)
    return [p for g in gathered for p in g], True


def write_manifest_on_all_ranks(folder: Path) -> None:
    """Every rank checksums its share of ``folder``'s files; rank 0 writes ``manifest.json``. Collective."""
    import torch

    from megatron_mmed.common.distributed import agree

    dist = torch.distributed
    rank, world = dist.get_rank(), dist.get_world_size()
    names: list[Any] = [checkpoint_files(folder) if rank == 0 else None]
    dist.broadcast_object_list(names, src=0)
    mine = file_digests(folder, names[0][rank::world])
    gathered: list[Any] = [None] * world
    dist.all_gather_object(gathered, mine)
    error = None
    if rank == 0:
        try:
            write_manifest(folder, {k: v for part in gathered for k, v in part.items()})
        except OSError as e:
            error = e
    agree(error)


# --- .metadata ----------------------------------------------------------------------------------------------

#: modules whose dataclasses and enums a torch_dist ``.metadata`` may hold.
_TYPE_MODULES = ("torch.distributed.checkpoint.", "megatron.core.dist_checkpointing.")
_ALLOWED_CALLABLES = {
    ("torch.serialization", "_get_layout"),
    ("torch", "Size"),
    ("collections", "OrderedDict"),
}
_BUILTINS = {"set", "frozenset", "slice", "complex"}


class _RestrictedUnpickler(pickle.Unpickler):
    """Resolves only checkpoint metadata types: torch.distributed.checkpoint / megatron-core dataclasses and
    enums, torch dtypes, layouts and memory formats, ``torch.Size`` and plain containers."""

    def find_class(self, module: str, name: str) -> Any:
        import torch

        if (module, name) in _ALLOWED_CALLABLES or (module == "builtins" and name in _BUILTINS):
            return super().find_class(module, name)
        if module == "torch":
            obj = getattr(torch, name, None)
            if isinstance(obj, torch.dtype | torch.layout | torch.memory_format):
                return obj
        if module.startswith(_TYPE_MODULES) and "." not in name:
            obj = super().find_class(module, name)
            if isinstance(obj, type) and (dataclasses.is_dataclass(obj) or issubclass(obj, enum.Enum)):
                return obj
        raise pickle.UnpicklingError(f"refusing to load {module}.{name}")


def check_metadata_pickle(folder: Path) -> None:
    """Unpickle ``folder/.metadata`` with :class:`_RestrictedUnpickler`; ``UserError`` if it holds more."""
    path = folder / ".metadata"
    if not path.is_file():
        return
    try:
        _RestrictedUnpickler(io.BytesIO(path.read_bytes())).load()
    except Exception as e:  # noqa: BLE001 - any failure means we will not hand it to pickle.load
        raise UserError(
            f"{path}: not a torch_dist metadata file this repo will load ({e}); a checkpoint's .metadata "
            "holds only torch.distributed.checkpoint / megatron-core types"
        ) from None


def check_checkpoint(folder: Path, what: str) -> str | None:
    """Verify ``folder`` whole (manifest, then ``.metadata``) before loading it in this process.

    ``UserError`` naming the damaged files; a warning string when there is no manifest to check against.
    """
    problems, has_manifest = verify(folder)
    if problems:
        raise UserError(f"{what} {folder} is damaged: {'; '.join(problems[:5])}")
    check_metadata_pickle(folder)
    if not has_manifest:
        return f"{what} {folder} has no {MANIFEST} (written before checksums existed, or elsewhere): not verified"
    return None

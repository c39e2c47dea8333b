"""The two conversions, end to end: check inputs, stream tensors, write into a temp dir, validate, rename.

Nothing half-written is left behind: the output is built in ``.<name>.tmp-<pid>`` beside ``out`` and renamed
only after the weights are written and (by default) the logits validated.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import shutil
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from conversion import hf_io, lora, mcore_io, validate
from conversion.arch import hf_config
from conversion.config import HfToMcoreConfig, McoreToHfConfig
from conversion.families import (
    FAMILIES,
    LLAMA,
    hf_names_in_order,
    hf_shapes,
    hf_to_mcore_tensors,
    mcore_names_in_order,
    mcore_to_hf_tensors,
)
from conversion.prefetch import Prefetcher
from conversion.tokenizer import copy_tokenizer
from megatron_mmed.common import integrity
from megatron_mmed.common.config import save_config, validate_tree
from megatron_mmed.common.errors import UserError
from megatron_mmed.common.writers import storage_failure
from megatron_mmed.models.internlm2 import ModelPreset, get_preset, padded_vocab_size
from megatron_mmed.models.weights import (
    ARCHITECTURE_FIELDS,
    SavedModel,
    resolve_weights_dir,
    write_model_config,
)
from megatron_mmed.training.flops import parameter_count

REPORT = "conversion_report.json"
#: the typed settings of the conversion (``conversion.config``), beside its output like every command's.
CONFIG = "config.yaml"
_DTYPE_NAME = {torch.float32: "fp32", torch.bfloat16: "bf16", torch.float16: "fp16"}


@dataclass
class ConversionReport:
    """What a conversion did: sizes, dtype, carried settings, validation, time."""

    direction: str
    family: str  # the HF family written or read (--layout)
    out: Path
    arch: ModelPreset
    dtype: str
    seconds: float = 0.0
    validation: validate.ValidationResult | None = None
    notes: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)

    def summary(self) -> str:
        a = self.arch
        lines = [
            f"{self.direction} ({self.family} family, {self.dtype}) -> {self.out}",
            f"  model: {a.num_layers} layers, hidden {a.hidden_size}, heads {a.num_attention_heads}/"
            f"{a.num_query_groups} KV, ffn {a.ffn_hidden_size}, vocab {a.vocab_size}, "
            f"{parameter_count(a, a.vocab_size) / 1e6:.1f}M parameters",
            f"  rope_theta {a.rotary_base:g}; rope_scaling {a.rope_scaling if a.rope_scaling else 'none'}",
        ]
        lines += [f"  note: {n}" for n in self.notes]
        lines += [f"  warning: {w}" for w in self.warnings]
        lines.append("  " + (self.validation.describe() if self.validation else "validation skipped"))
        lines.append(f"  took {self.seconds:.1f} s")
        return "\n".join(lines)

    def to_dict(self) -> dict[str, Any]:
        """The report as ``conversion_report.json`` holds it (written into every converted folder)."""
        v = self.validation
        return {
            "direction": self.direction,
            "family": self.family,
            "dtype": self.dtype,
            "arch": dataclasses.asdict(self.arch),
            "validation": dataclasses.asdict(v) | {"ok": v.ok} if v else None,
            "notes": list(self.notes),
            "warnings": list(self.warnings),
        }

    def write(self, folder: Path) -> None:
        hf_io.write_json(folder / REPORT, self.to_dict())


@contextlib.contextmanager
def staged_output(out: str | Path, force: bool) -> Iterator[Path]:
    """A temp dir beside ``out``, renamed to ``out`` on success and removed on any failure."""
    out = Path(out)
    if out.exists() and not force:
        raise UserError(f"{out} already exists (use --force to overwrite)")
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.parent / f".{out.name}.tmp-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    try:
        yield tmp
    except BaseException as e:
        shutil.rmtree(tmp, ignore_errors=True)
        reason = None if isinstance(e, KeyboardInterrupt | SystemExit) else storage_failure(e, out.parent)
        if reason is not None:  # a full disk: one line, not megatron-core's worker traceback
            raise UserError(f"writing {out} failed: {reason}; nothing was written") from None
        raise
    if out.exists():
        shutil.rmtree(out) if out.is_dir() else out.unlink()
    os.replace(tmp, out)


def _check_preset(arch: ModelPreset, preset_name: str | None, what: str) -> None:
    """Refuse ``arch`` unless it is preset ``preset_name``'s model (the vocabulary aside: a run may set its own)."""
    if preset_name is None:
        return
    preset = get_preset(preset_name)
    diffs = [
        f"{k}: {getattr(arch, k)} vs {getattr(preset, k)}"
        for k, _ in ARCHITECTURE_FIELDS
        if k != "vocab_size" and getattr(arch, k) != getattr(preset, k)
    ]
    if diffs:
        raise UserError(f"{what} does not match preset {preset_name!r}: " + "; ".join(diffs))


def hf_to_mcore(
    hf: str | Path,
    out: str | Path,
    family: str = "auto",
    preset: str | None = None,
    dtype: str | None = None,
    tp: int = 1,
    make_vocab_size_divisible_by: int = 128,
    force: bool = False,
    skip_validation: bool = False,
    atol: float | None = None,
) -> ConversionReport:
    """HF Llama/InternLM2 folder -> weights-only torch_dist checkpoint + ``model_config.yaml`` (+ tokenizer/)."""
    start = time.time()
    cfg = HfToMcoreConfig(
        hf=str(hf),
        out=str(out),
        family=family,  # type: ignore[arg-type]  # checked by validate()
        preset=preset,
        dtype=dtype,  # type: ignore[arg-type]
        tp=tp,
        make_vocab_size_divisible_by=make_vocab_size_divisible_by,
        force=force,
        skip_validation=skip_validation,
        atol=atol,
    )
    validate_tree(cfg)
    src = hf_io.open_hf(hf, family)
    arch = src.arch
    _check_preset(arch, preset, f"{hf}/config.json")
    out_dtype = dtype or _DTYPE_NAME.get(src.dtype, "fp32")
    padded = padded_vocab_size(arch.vocab_size, tp, make_vocab_size_divisible_by)
    report = ConversionReport("hf-to-mcore", src.family.name, Path(out), arch, out_dtype)
    if arch.rope_scaling:
        report.notes.append(
            f"rope_scaling {arch.rope_scaling} carried in model_config.yaml; megatron-core trains without it"
        )
    with staged_output(out, force) as tmp:
        with Prefetcher(src.get, hf_names_in_order(src.family, arch)) as get:
            tensors = hf_to_mcore_tensors(src.family, arch, get, row_blocks=True)
            mcore_io.write_mcore(tensors, arch, padded, hf_io.DTYPES[out_dtype], tmp)
        source = {
            "hf": str(Path(hf).resolve()),
            "layout": src.family.name,  # the family; model_config.yaml's key since its format /1
            "dtype": out_dtype,
            "tp_padding": tp,
        }
        name = preset or f"hf:{Path(hf).resolve().name}"
        converted = dataclasses.replace(arch, name=name, source=f"converted from {source['hf']}")
        write_model_config(tmp, SavedModel(converted, padded, source))
        hf_io.write_json(tmp / "hf_config.json", src.config)
        copied = copy_tokenizer(src.path, tmp / "tokenizer").copied
        if not copied:
            shutil.rmtree(tmp / "tokenizer")
        if not skip_validation:
            ids, how, warning = validate.prompt_ids(arch.vocab_size, src.path)
            report.warnings += [warning] if warning else []
            target = validate.mcore_logits(arch, tmp, padded, ids)
            source_logits = validate.hf_logits_from_family(src.family, arch, src.get, ids)
            tol = (
                atol
                if atol is not None
                else validate.tolerance(_DTYPE_NAME.get(src.dtype, "fp32"), out_dtype)
            )
            report.validation = validate.compare(source_logits, target, how, tol)
            if not report.validation.ok:
                raise UserError(_failed(report))
        src.close()
        report.write(tmp)
        save_config(cfg, tmp / CONFIG)
        integrity.write_manifest(tmp, integrity.file_digests(tmp, integrity.checkpoint_files(tmp)))
    report.seconds = time.time() - start
    return report


def _failed(report: ConversionReport) -> str:
    hint = ""
    if report.arch.rope_scaling:
        hint = (
            f" (rope_scaling {report.arch.rope_scaling} is applied by transformers but not by megatron-core)"
        )
    return f"{report.validation.describe()}{hint}; nothing was written"


def mcore_to_hf(
    ckpt: str | Path,
    out: str | Path,
    family: str = "llama",
    dtype: str = "bf16",
    iteration: int | None = None,
    preset: str | None = None,
    tokenizer: str | Path | None = None,
    vocab_size: int | None = None,
    force: bool = False,
    skip_validation: bool = False,
    atol: float | None = None,
    max_shard_bytes: int = hf_io.MAX_SHARD_BYTES,
) -> ConversionReport:
    """A torch_dist checkpoint saved at any TP/PP -> HF folder (sharded safetensors, configs, tokenizer)."""
    start = time.time()
    cfg = McoreToHfConfig(
        ckpt=str(ckpt),
        out=str(out),
        family=family,  # type: ignore[arg-type]  # checked by validate()
        dtype=dtype,  # type: ignore[arg-type]
        iteration=iteration,
        preset=preset,
        tokenizer=None if tokenizer is None else str(tokenizer),
        vocab_size=vocab_size,
        force=force,
        skip_validation=skip_validation,
        atol=atol,
        max_shard_bytes=max_shard_bytes,
    )
    validate_tree(cfg)
    fam = FAMILIES[family]
    path = resolve_weights_dir(ckpt, iteration, what="--ckpt")
    unverified = integrity.check_checkpoint(path, "--ckpt")  # manifest checksums and a safe .metadata
    adapters = None  # a LoRA checkpoint: adapters here, the frozen base at its adapter.yaml's base
    if lora.read_adapter_meta(path) is not None:
        adapters, meta, path = lora.lora_checkpoint(ckpt, iteration)
        unverified = unverified or integrity.check_checkpoint(path, "the LoRA run's base")
    arch, name, extras = mcore_io.checkpoint_arch(path, vocab_size)
    ck = mcore_io.McoreCheckpoint.open(path)
    ck.check_arch(arch, f"its config (model {name!r})")
    if preset is not None and preset != name:
        _check_preset(arch, preset, f"checkpoint {path} (saved with model {name!r})")
    config = hf_config(family, arch, dtype)  # refuses a rope_scaling the family cannot express, up front
    report = ConversionReport("mcore-to-hf", family, Path(out), arch, dtype)
    report.warnings += [unverified] if unverified else []
    if arch.rope_scaling:
        report.notes.append(
            f"rope_scaling {arch.rope_scaling} written as {config['rope_scaling']} ({family})"
        )
    if family == "internlm2":
        report.notes.append(
            "InternLM2 family: load with InternLM2's remote code (trust_remote_code); validated through the "
            "numerically identical Llama mapping"
        )
    read = Prefetcher(ck.get, mcore_names_in_order(fam, arch))  # the next tensors read while one is written
    get = lambda m: _unpadded(read(m), m, arch)  # noqa: E731
    if adapters is not None:
        get = lora.merged_getter(get, lora.delta_getter(mcore_io.McoreCheckpoint.open(adapters), meta, arch))
        report.notes.append(
            f"LoRA adapters of {adapters} (rank {meta.lora.rank}, alpha {meta.lora.alpha:g}, "
            f"{','.join(meta.lora.targets)}) folded into the base weights of {path}"
        )
    with staged_output(out, force) as tmp:
        shapes = hf_shapes(fam, arch)
        plan = [(n, shapes[n]) for n in hf_names_in_order(fam, arch)]
        writer = hf_io.ShardedSafetensorsWriter(tmp, plan, hf_io.DTYPES[dtype], max_shard_bytes)
        try:
            for n, t in mcore_to_hf_tensors(fam, arch, get):
                writer.write(n, t)
        finally:
            read.close()
            writer.close()
        hf_io.write_json(tmp / "config.json", config)
        hf_io.write_json(tmp / "generation_config.json", hf_io.generation_config(arch))
        tok_src = _tokenizer_source(tokenizer, extras)
        if tok_src is not None:
            files = copy_tokenizer(tok_src, tmp, family)
            report.notes.append(f"tokenizer files from {tok_src}: {', '.join(files.copied) or 'none'}")
            report.notes += files.notes
            report.warnings += files.warnings
        if not skip_validation:
            ids, how, warning = validate.prompt_ids(arch.vocab_size, tmp)
            report.warnings += [warning] if warning else []
            if adapters is None:
                source_logits = validate.mcore_logits(arch, path, ck.padded_vocab, ids)
            else:  # the unmerged model: base + adapters through their hooks
                source_logits = lora.lora_mcore_logits(arch, path, adapters, meta, ck.padded_vocab, ids)
            out_src = hf_io.open_hf(tmp, family)
            target = validate.hf_logits_from_family(fam, arch, out_src.get, ids)
            out_src.close()
            src_dtype = _DTYPE_NAME.get(ck.dtypes[mcore_io.EMBEDDING], "fp32")
            tol = atol if atol is not None else validate.tolerance(src_dtype, dtype)
            report.validation = validate.compare(source_logits, target, how, tol)
            if not report.validation.ok:
                raise UserError(_failed(report))
        report.write(tmp)
        save_config(cfg, tmp / CONFIG)
    report.seconds = time.time() - start
    return report


def _unpadded(t: torch.Tensor, mcore_name: str, arch: ModelPreset) -> torch.Tensor:
    """Embedding/output rows beyond the real vocabulary are Megatron's TP padding: dropped."""
    if mcore_name in (mcore_io.EMBEDDING, mcore_io.OUTPUT):
        return t[: arch.vocab_size]
    return t


def _tokenizer_source(explicit: str | Path | None, extras: dict[str, Any]) -> Path | None:
    """``--tokenizer``, else the blend's tokenizer, else the tokenizer/ saved by hf-to-mcore at init."""
    if explicit is not None:
        p = Path(explicit)
        if not p.exists():
            raise UserError(f"--tokenizer {p}: does not exist")
        return p
    for cand in (
        extras.get("tokenizer"),
        extras.get("init_from") and Path(extras["init_from"]) / "tokenizer",
    ):
        if cand and Path(cand).exists():
            return Path(cand)
    return None


__all__ = ["ConversionReport", "hf_to_mcore", "mcore_to_hf", "staged_output", "LLAMA"]

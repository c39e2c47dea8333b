"""LoRA checkpoints -> Hugging Face: a PEFT adapter for the converted base, or weights with LoRA folded in.

Both directions use ``conversion.families``: an adapter's parts are the Llama rule's HF tensors (q/k/v,
gate/up), so ``scale * B @ A`` per part packs into the megatron-core weight with that rule's ``pack``, and a
PEFT module is the family rule's HF tensor of the same megatron-core weight. Where the family fuses the parts
into one HF tensor (InternLM2 ``wqkv``) the PEFT module gets the parts side by side: ``A`` stacked
(rank ``n * r``) and ``B`` block-diagonal in the fused row layout, with ``alpha`` scaled alike so the delta
is the same ``(alpha / r) * B @ A``.
"""

from __future__ import annotations

import re
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import torch

from conversion import hf_io, mcore_io, validate
from conversion.families import LLAMA, Family, Rule
from megatron_mmed.common.distributed import mcore_session
from megatron_mmed.common.errors import UserError
from megatron_mmed.finetune.adapters import AdapterMeta, read_adapter_meta
from megatron_mmed.finetune.lora import SUFFIX, TARGETS, Target, part_names
from megatron_mmed.models.internlm2 import ModelPreset
from megatron_mmed.models.weights import load_weights, resolve_weights_dir

ADAPTER_CONFIG = "adapter_config.json"
ADAPTER_WEIGHTS = "adapter_model.safetensors"
_WEIGHT = re.compile(r"^decoder\.layers\.(\d+)\.(.+)\.weight$")


def _rule(family: Family, target: Target) -> Rule:
    return next(r for r in family.rules if r.mcore == target.mcore_weight)


def adapter_pair(ck: mcore_io.McoreCheckpoint, layer: int, target: Target, part: str):
    """``(A, B)`` of one part of one layer's adapter, read alone from the checkpoint (global tensors)."""
    base = f"decoder.layers.{layer}.{target.module}{SUFFIX}"
    return ck.get(f"{base}.a_{part}"), ck.get(f"{base}.b_{part}")


def delta_getter(
    ck: mcore_io.McoreCheckpoint, meta: AdapterMeta, arch: ModelPreset
) -> Callable[[str], torch.Tensor | None]:
    """``mcore weight name -> scale * B @ A`` in that weight's layout (None for weights without adapters)."""
    by_module = {TARGETS[t].module: TARGETS[t] for t in meta.lora.targets}

    def delta(name: str) -> torch.Tensor | None:
        m = _WEIGHT.match(name)
        if not m or m.group(2) not in by_module:
            return None
        target, layer = by_module[m.group(2)], int(m.group(1))
        mats = []
        for part in part_names(target):
            a, b = adapter_pair(ck, layer, target, part)
            mats.append(b.float() @ a.float())
        rule = _rule(LLAMA, target)
        packed = rule.pack(*mats, arch) if rule.pack else mats[0]
        return packed * meta.lora.scale

    return delta


def merged_getter(
    get: Callable[[str], torch.Tensor], delta: Callable[[str], torch.Tensor | None]
) -> Callable[[str], torch.Tensor]:
    """Base tensors with the LoRA delta added where there is one (what ``mcore-to-hf`` writes for LoRA runs)."""

    def fetch(name: str) -> torch.Tensor:
        t = get(name)
        d = delta(name)
        return t if d is None else (t.float() + d).to(t.dtype)

    return fetch


def peft_modules(
    family: Family, arch: ModelPreset, ck: mcore_io.McoreCheckpoint, meta: AdapterMeta
) -> Iterator[tuple[str, torch.Tensor, torch.Tensor, int]]:
    """``(HF module name, lora_A, lora_B, parts fused)`` for every adapted module of ``family``."""
    r = meta.lora.rank
    for i in range(arch.num_layers):
        for tname in meta.lora.targets:
            target = TARGETS[tname]
            parts = part_names(target)
            pairs = [adapter_pair(ck, i, target, p) for p in parts]
            rule = _rule(family, target)
            modules = [n.format(i=i).removesuffix(".weight") for n in rule.hf]
            if len(modules) == len(parts):
                for mod, (a, b) in zip(modules, pairs, strict=True):
                    yield mod, a, b, 1
                continue
            n = len(parts)  # one fused HF tensor: parts side by side at rank n * r
            blocks = []
            for k, (_, b) in enumerate(pairs):
                ext = torch.zeros(b.shape[0], n * r, dtype=b.dtype)
                ext[:, k * r : (k + 1) * r] = b
                blocks.append(ext)
            fused = _rule(LLAMA, target).pack(*blocks, arch)
            (hf_b,) = rule.unpack(fused, arch) if rule.unpack else (fused,)
            yield modules[0], torch.cat([a for a, _ in pairs]), hf_b, n


def _check_same_model(arch: ModelPreset, base_arch: ModelPreset, where: str) -> None:
    keys = (
        "hidden_size",
        "num_layers",
        "num_attention_heads",
        "num_query_groups",
        "ffn_hidden_size",
        "vocab_size",
    )
    diffs = [
        f"{k} {getattr(arch, k)} vs {getattr(base_arch, k)}"
        for k in keys
        if getattr(arch, k) != getattr(base_arch, k)
    ]
    if diffs:
        raise UserError(f"{where} is not the model the adapters were trained on: " + "; ".join(diffs))


def lora_checkpoint(ckpt: str | Path, iteration: int | None = None) -> tuple[Path, AdapterMeta, Path]:
    """``(adapter torch_dist dir, meta, base torch_dist dir)`` of a LoRA run / checkpoint, or a one-line error."""
    path = resolve_weights_dir(ckpt, iteration, what="--ckpt")
    meta = read_adapter_meta(path)
    if meta is None:
        raise UserError(f"{path}: not a LoRA checkpoint (no adapter.yaml beside it or in its run dir)")
    try:
        base = resolve_weights_dir(meta.base, what="base")
    except UserError as e:
        raise UserError(f"the LoRA base recorded in {path}/adapter.yaml: {e}") from None
    return path, meta, base


def lora_mcore_logits(
    arch: ModelPreset, base: Path, adapters: Path, meta: AdapterMeta, padded: int, ids: list[int]
):
    """Logits of the TP=1 megatron-core model: base weights + LoRA adapters (unmerged), fp32."""
    from megatron_mmed.finetune.adapters import load_adapters
    from megatron_mmed.finetune.lora import apply_lora

    with mcore_session() as on_cpu:
        model = mcore_io.build_model(arch, padded, torch.float32, on_cpu=on_cpu)
        load_weights(base, [model], what="the LoRA run's base", verify=False)
        apply_lora(model, meta.lora, meta.seed)
        load_adapters(adapters, model)
        model.eval()
        s = len(ids)
        mask = torch.triu(torch.ones(s, s, dtype=torch.bool), diagonal=1)[None, None]
        with torch.no_grad():
            logits = model(torch.tensor([ids]), torch.arange(s)[None], mask)[0, :, : arch.vocab_size].float()
    return logits.cpu()


def peft_logits(base_hf: Path, adapter_dir: Path, ids: list[int]) -> torch.Tensor:
    """Logits of ``transformers`` Llama at ``base_hf`` with the PEFT adapter loaded by ``peft`` (fp32)."""
    from peft import PeftModel
    from transformers import LlamaForCausalLM

    model = LlamaForCausalLM.from_pretrained(str(base_hf), dtype=torch.float32)
    model = PeftModel.from_pretrained(model, str(adapter_dir)).eval()
    with torch.no_grad():
        return model(torch.tensor([ids])).logits[0].float()


def lora_to_peft(
    ckpt: str | Path,
    base: str | Path,
    out: str | Path,
    iteration: int | None = None,
    force: bool = False,
    skip_validation: bool = False,
    atol: float | None = None,
):
    """A LoRA checkpoint -> ``adapter_config.json`` + ``adapter_model.safetensors`` for the HF base at ``base``."""
    from safetensors.torch import save_file

    from conversion.config import LoraToPeftConfig
    from conversion.run import CONFIG, ConversionReport, staged_output
    from megatron_mmed.common.config import save_config, validate_tree

    start = time.time()
    cfg = LoraToPeftConfig(
        ckpt=str(ckpt),
        base=str(base),
        out=str(out),
        iteration=iteration,
        force=force,
        skip_validation=skip_validation,
        atol=atol,
    )
    validate_tree(cfg)
    path, meta, base_ckpt = lora_checkpoint(ckpt, iteration)
    src = hf_io.open_hf(base)
    arch, family = src.arch, src.family
    src.close()
    base_arch, _, _ = mcore_io.checkpoint_arch(base_ckpt)
    _check_same_model(arch, base_arch, f"--base {base}")
    ck = mcore_io.McoreCheckpoint.open(path)
    report = ConversionReport("lora-to-peft", family.name, Path(out), arch, _dtype_name(ck))
    lo = meta.lora
    report.notes.append(
        f"adapters of {path} (rank {lo.rank}, alpha {lo.alpha}, dropout {lo.dropout}, targets "
        f"{','.join(lo.targets)}) for the base weights {base_ckpt}, converted as {Path(base).resolve()}"
    )
    tensors, rank_pattern, alpha_pattern, short = {}, {}, {}, set()
    for module, a, b, fused in peft_modules(family, arch, ck, meta):
        tensors[f"base_model.model.{module}.lora_A.weight"] = a.contiguous()
        tensors[f"base_model.model.{module}.lora_B.weight"] = b.contiguous()
        short.add(module.split(".")[-1])
        if fused > 1:
            rank_pattern[module] = fused * meta.lora.rank
            alpha_pattern[module] = fused * meta.lora.alpha
    if rank_pattern:
        report.notes.append(
            f"{len(rank_pattern)} fused modules carry their parts side by side (rank_pattern)"
        )
    with staged_output(out, force) as tmp:
        save_file(tensors, str(tmp / ADAPTER_WEIGHTS), metadata={"format": "pt"})
        hf_io.write_json(
            tmp / ADAPTER_CONFIG,
            {
                "peft_type": "LORA",
                "task_type": "CAUSAL_LM",
                "base_model_name_or_path": str(Path(base).resolve()),
                "r": meta.lora.rank,
                "lora_alpha": meta.lora.alpha,
                "lora_dropout": meta.lora.dropout,
                "target_modules": sorted(short),
                "rank_pattern": rank_pattern,
                "alpha_pattern": alpha_pattern,
                "bias": "none",
                "fan_in_fan_out": False,
                "inference_mode": True,
                "use_rslora": False,
                "use_dora": False,
            },
        )
        save_config(cfg, tmp / CONFIG)
        if skip_validation:
            pass
        elif family is not LLAMA:
            report.notes.append(
                "InternLM2 family: not validated (its modeling code is remote code); use --layout llama to validate"
            )
        else:
            ids, how, _ = validate.prompt_ids(arch.vocab_size, Path(base))
            padded = mcore_io.McoreCheckpoint.open(base_ckpt).padded_vocab
            ours = lora_mcore_logits(arch, base_ckpt, path, meta, padded, ids)
            theirs = peft_logits(Path(base), tmp, ids)
            tol = atol if atol is not None else validate.tolerance(_dtype_name(ck), "fp32")
            report.validation = validate.compare(ours, theirs, how, tol)
            if not report.validation.ok:
                raise UserError(f"{report.validation.describe()}; nothing was written")
        report.write(tmp)
    report.seconds = time.time() - start
    return report


def _dtype_name(ck: mcore_io.McoreCheckpoint) -> str:
    dtype = next((d for k, d in ck.dtypes.items() if SUFFIX + "." in k), torch.float32)
    return {torch.float32: "fp32", torch.bfloat16: "bf16", torch.float16: "fp16"}[dtype]

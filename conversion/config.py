"""The typed settings of ``mmed convert``, one frozen dataclass per direction, saved as ``OUT/config.yaml``.

Like every other command's config, each is checked by ``validate()`` (``ConfigError`` naming the CLI flag)
and written beside the output it made, so a converted folder says how it was made.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from megatron_mmed.common.config import ConfigError

DTYPE_NAMES = ("fp32", "bf16", "fp16")
#: the HF families (``--layout``): ``auto`` reads it from the source's ``config.json``.
FAMILY_NAMES = ("llama", "internlm2")
#: shards of at most this many bytes (a tensor larger than that gets a shard of its own).
MAX_SHARD_BYTES = 5 * 1024**3


def _check_common(dtype: str | None, atol: float | None) -> None:
    if dtype is not None and dtype not in DTYPE_NAMES:
        raise ConfigError(f"--dtype {dtype!r}: choose one of {', '.join(DTYPE_NAMES)}")
    if atol is not None and not atol > 0:
        raise ConfigError(f"--atol must be > 0, got {atol}")


@dataclass(frozen=True)
class HfToMcoreConfig:
    """``mmed convert hf-to-mcore``: a HF folder -> a weights folder for ``checkpoint.init_from``."""

    hf: str
    out: str
    family: Literal["auto", "llama", "internlm2"] = "auto"  # --layout
    preset: str | None = None  # refuse unless the HF config is this preset's model
    dtype: Literal["fp32", "bf16", "fp16"] | None = None  # None: the weights' own dtype
    tp: int = 1  # pad the vocabulary for this TP (any power of two up to 128 needs nothing)
    make_vocab_size_divisible_by: int = 128
    force: bool = False
    skip_validation: bool = False
    atol: float | None = None  # None: by dtype

    def validate(self) -> None:
        if self.family not in ("auto", *FAMILY_NAMES):
            raise ConfigError(f"--layout {self.family!r}: choose one of auto, {', '.join(FAMILY_NAMES)}")
        _check_common(self.dtype, self.atol)
        for name, value in (
            ("tp", self.tp),
            ("make-vocab-size-divisible-by", self.make_vocab_size_divisible_by),
        ):
            if value < 1:
                raise ConfigError(f"--{name} must be >= 1, got {value}")


@dataclass(frozen=True)
class McoreToHfConfig:
    """``mmed convert mcore-to-hf``: a torch_dist checkpoint (any TP/PP) -> a HF folder of ``family``."""

    ckpt: str
    out: str
    family: Literal["llama", "internlm2"] = "llama"  # --layout
    dtype: Literal["fp32", "bf16", "fp16"] = "bf16"
    iteration: int | None = None  # None: the run's latest
    preset: str | None = None  # refuse unless the checkpoint was saved with this preset
    tokenizer: str | None = None  # None: the training blend's, else the one saved by hf-to-mcore
    vocab_size: int | None = None  # None: from the run's config
    force: bool = False
    skip_validation: bool = False
    atol: float | None = None
    max_shard_bytes: int = MAX_SHARD_BYTES

    def validate(self) -> None:
        if self.family not in FAMILY_NAMES:
            raise ConfigError(f"--layout {self.family!r}: choose one of {', '.join(FAMILY_NAMES)}")
        _check_common(self.dtype, self.atol)
        if self.vocab_size is not None and self.vocab_size < 1:
            raise ConfigError(f"--vocab-size must be >= 1, got {self.vocab_size}")
        if self.max_shard_bytes < 1:
            raise ConfigError(f"max_shard_bytes must be >= 1, got {self.max_shard_bytes}")


@dataclass(frozen=True)
class LoraToPeftConfig:
    """``mmed convert lora-to-peft``: a LoRA run's adapters -> a PEFT adapter for the HF base ``base``."""

    ckpt: str
    base: str  # the HF folder of the base weights (mcore-to-hf of the run's checkpoint.init_from)
    out: str
    iteration: int | None = None  # None: the run's latest
    force: bool = False
    skip_validation: bool = False
    atol: float | None = None

    def validate(self) -> None:
        _check_common(None, self.atol)

"""The typed ``mmed finetune`` config: the training sections reused, plus SFT data, epochs and LoRA.

``model``, ``parallel``, ``precision``, ``optimizer``, ``checkpoint`` and ``logging`` are ``mmed train``'s own
sections; ``schedule`` adds ``warmup_ratio`` (the paper's 3 %), ``train`` counts epochs or steps and batches in
*examples* (the paper's global batch of 128 question/answer examples, packed into sequences of
``model.seq_length``), ``data`` names the MMedBench training files and the tokenizer, ``peft``/``lora`` choose
full or LoRA fine-tuning. :meth:`FinetuneConfig.train_config` gives the ``TrainConfig`` that the training
stack (``build_model_and_optimizer``, ``init_distributed``) takes, once the step count is known.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Literal

from megatron_mmed.common.config import ConfigError
from megatron_mmed.training.config import (
    CheckpointConfig,
    LaunchConfig,
    LoggingConfig,
    ModelConfig,
    OptimizerConfig,
    ParallelConfig,
    PrecisionConfig,
    ScheduleConfig,
    TrainConfig,
    TrainLoopConfig,
)

#: LoRA targets: megatron-core's four linear layers of a transformer layer.
LORA_TARGETS: tuple[str, ...] = ("qkv", "proj", "fc1", "fc2")


@dataclass(frozen=True)
class SFTDataConfig:
    """MMedBench training items -> tokenized (prompt, target) examples, packed into sequences."""

    train: str | None = None  # <Language>.jsonl files, or an MMedBench root with Train/
    tokenizer: str | None = None  # SentencePiece .model or HF tokenizer.json (or a folder with one)
    max_length: int = (
        2048  # tokens per example (BOS + prompt + target + EOS); longer ones are truncated, counted
    )
    languages: tuple[str, ...] = ()  # names or ISO codes; empty: every language file present
    prompt_style: Literal["paper", "clean"] = "paper"  # eval.prompts style (paper: MMedLM finetune/train.py)
    add_bos: bool = True  # the paper's HF tokenizers put BOS first
    pack: bool = True  # pack examples into model.seq_length sequences; False: one example per padded row
    pad_to_multiple_of: int = 8  # unpacked rows are padded to the longest of the micro-batch, rounded up

    def validate(self) -> None:
        if self.max_length < 8:
            raise ConfigError("data.max_length must be >= 8")
        if self.pad_to_multiple_of < 1:
            raise ConfigError("data.pad_to_multiple_of must be >= 1")


@dataclass(frozen=True)
class FinetuneScheduleConfig(ScheduleConfig):
    """``mmed train``'s schedule plus ``warmup_ratio``: warmup as a share of the total steps (overrides steps)."""

    warmup_ratio: float | None = None

    def validate(self) -> None:
        super().validate()
        if self.warmup_ratio is not None and not 0 <= self.warmup_ratio < 1:
            raise ConfigError("schedule.warmup_ratio must be in [0, 1)")

    def resolved(self, total_steps: int) -> ScheduleConfig:
        """The plain ``ScheduleConfig`` for a run of ``total_steps`` (warmup_ratio turned into steps)."""
        warmup = self.warmup_steps
        if self.warmup_ratio is not None:
            warmup = round(self.warmup_ratio * total_steps)
        fields = {f.name: getattr(self, f.name) for f in dataclasses.fields(ScheduleConfig)}
        # megatron-core's scheduler needs warmup < decay steps; a ratio rounding up to the whole run stops short
        warmup = min(warmup, total_steps - 1) if self.warmup_ratio is not None else warmup
        return ScheduleConfig(**{**fields, "warmup_steps": max(warmup, 0)})


@dataclass(frozen=True)
class FinetuneLoopConfig:
    """Epochs or steps; batches counted in examples (global) and packed sequences (micro)."""

    epochs: int | None = None  # passes over the examples; exactly one of epochs / steps
    steps: int | None = None
    global_batch_size: int = 128  # examples per optimizer step (the paper's 4 GPUs x 1 x 32 accumulation)
    micro_batch_size: int = 1  # packed sequences (rows) per micro-batch; 1 for the GPU packed (THD) path
    seed: int = 42  # model init, LoRA init and the epoch order of the examples
    exit_at_step: int | None = None

    def validate(self) -> None:
        if (self.epochs is None) == (self.steps is None):
            raise ConfigError("set exactly one of train.epochs and train.steps (the other to null)")
        if (self.epochs is not None and self.epochs < 1) or (self.steps is not None and self.steps < 1):
            raise ConfigError("train.epochs / train.steps must be >= 1")
        if self.global_batch_size < 1 or self.micro_batch_size < 1:
            raise ConfigError("train.global_batch_size and train.micro_batch_size must be >= 1")
        if self.exit_at_step is not None and self.exit_at_step < 1:
            raise ConfigError("train.exit_at_step must be >= 1")

    def total_steps(self, num_examples: int) -> int:
        """Optimizer steps of the run: ``steps``, or ``epochs`` x ceil(examples / global batch)."""
        if self.steps is not None:
            return self.steps
        return self.epochs * steps_per_epoch(num_examples, self.global_batch_size)  # type: ignore[operator]


def steps_per_epoch(num_examples: int, global_batch_size: int) -> int:
    """Steps of one pass; the last step of an epoch takes the remaining (fewer) examples."""
    return max(1, -(-num_examples // global_batch_size))


@dataclass(frozen=True)
class LoraConfig:
    """LoRA adapters ``W + (alpha / rank) * B @ A`` on the chosen linear layers of every transformer layer."""

    rank: int = 16
    alpha: float = (
        32.0  # the paper's script never defines lora_alpha (a NameError); 2 x rank is the usual choice
    )
    dropout: float = 0.05
    targets: tuple[str, ...] | str = LORA_TARGETS  # subset of qkv, proj, fc1, fc2 (a list or "qkv,proj")

    def __post_init__(self) -> None:
        if isinstance(self.targets, str):  # `lora.targets=qkv,proj` on the command line
            object.__setattr__(
                self, "targets", tuple(t.strip() for t in self.targets.split(",") if t.strip())
            )

    def validate(self) -> None:
        unknown = [t for t in self.targets if t not in LORA_TARGETS]
        if unknown:
            raise ConfigError(
                f"lora.targets: unknown target(s) {', '.join(map(repr, unknown))} (choose from {', '.join(LORA_TARGETS)})"
            )
        if not self.targets:
            raise ConfigError("lora.targets must name at least one of " + ", ".join(LORA_TARGETS))
        if len(set(self.targets)) != len(self.targets):
            raise ConfigError("lora.targets lists a target twice")
        if self.rank < 1:
            raise ConfigError("lora.rank must be >= 1")
        if self.alpha <= 0:
            raise ConfigError("lora.alpha must be > 0")
        if not 0 <= self.dropout < 1:
            raise ConfigError("lora.dropout must be in [0, 1)")

    @property
    def scale(self) -> float:
        return self.alpha / self.rank


@dataclass(frozen=True)
class FinetuneConfig:
    """The whole ``mmed finetune`` config (the YAML under configs/finetune/)."""

    model: ModelConfig = field(default_factory=lambda: ModelConfig(seq_length=2048))
    parallel: ParallelConfig = field(default_factory=ParallelConfig)
    precision: PrecisionConfig = field(default_factory=PrecisionConfig)
    data: SFTDataConfig = field(default_factory=SFTDataConfig)
    optimizer: OptimizerConfig = field(default_factory=OptimizerConfig)
    schedule: FinetuneScheduleConfig = field(default_factory=FinetuneScheduleConfig)
    checkpoint: CheckpointConfig = field(default_factory=CheckpointConfig)
    logging: LoggingConfig = field(default_factory=LoggingConfig)
    train: FinetuneLoopConfig = field(default_factory=lambda: FinetuneLoopConfig(epochs=1))
    peft: Literal["none", "lora"] = "none"
    lora: LoraConfig = field(default_factory=LoraConfig)
    launch: LaunchConfig | None = (
        None  # the slurm job of launch/finetune_internlm2_7b.sh (as in configs/train/)
    )

    def validate(self) -> None:
        p = self.parallel
        if p.cp > 1:  # packed rows would need per-example splitting across CP ranks
            raise ConfigError("parallel.cp > 1 is not supported by mmed finetune (use TP/PP/DP)")
        if p.vpp:  # the interleaved schedule needs a fixed micro-batch count; SFT steps vary
            raise ConfigError(
                "parallel.vpp is not supported by mmed finetune (a step's micro-batch count varies)"
            )
        if self.data.max_length > self.model.seq_length:
            raise ConfigError(
                f"data.max_length {self.data.max_length} exceeds model.seq_length {self.model.seq_length} "
                "(the packed sequence length)"
            )
        if self.peft == "lora" and self.precision.fp8 is not None:
            raise ConfigError("peft=lora with precision.fp8 is not supported (the adapters run in bf16/fp32)")
        # the parallel checks of mmed train (heads, ffn and layers divisible by TP/PP, seq for SP/CP)
        # (the step count is known once the data is loaded; a run with train.steps is checked with it)
        self.train_config(total_steps=self.train.steps or self.schedule.warmup_steps + 1).validate()

    def train_config(self, total_steps: int, world_size: int | None = None) -> TrainConfig:
        """The ``TrainConfig`` the training stack builds model, optimizer and scheduler from.

        ``total_steps`` is known once the data is loaded (:meth:`FinetuneLoopConfig.total_steps`); the
        global batch is set to one micro-batch per DP rank because SFT steps have a data-dependent number
        of micro-batches (``SFTBatches.step`` says how many).
        """
        p = self.parallel
        dp = max(1, (world_size or p.tp * p.pp * p.cp) // (p.tp * p.pp * p.cp))
        t = self.train
        exit_at = t.exit_at_step if t.exit_at_step is not None and t.exit_at_step <= total_steps else None
        return TrainConfig(
            model=self.model,
            parallel=self.parallel,
            precision=self.precision,
            optimizer=self.optimizer,
            schedule=self.schedule.resolved(total_steps),
            checkpoint=self.checkpoint,
            logging=self.logging,
            launch=self.launch,
            train=TrainLoopConfig(
                steps=total_steps,
                micro_batch_size=t.micro_batch_size,
                global_batch_size=t.micro_batch_size * dp,
                seed=t.seed,
                exit_at_step=exit_at,
            ),
        )

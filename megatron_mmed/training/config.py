"""The typed ``mmed train`` config: one frozen dataclass per section, checked by ``validate()``.

Cross-section checks that need the world size (TP x PP x CP x DP) live in :func:`resolve_parallelism`, so a
config can be validated on a laptop and laid out for any cluster in a dry run.
"""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass, field
from typing import Literal

from megatron_mmed.common.config import ConfigError
from megatron_mmed.models.internlm2 import ModelPreset, get_preset, padded_vocab_size

#: H100 SXM dense peaks (TFLOP/s) used for MFU when ``logging.peak_tflops`` is not set.
H100_PEAK_TFLOPS = {"bf16": 989.0, "fp32": 989.0, "fp8": 1979.0}


#: ``model.preset`` value that takes the architecture from ``checkpoint.init_from``'s ``model_config.yaml``.
FROM_INIT = "from_init"


@dataclass(frozen=True)
class ModelConfig:
    """Which preset, plus the few knobs a run may change (depth for benchmarks, sequence length).

    ``preset: from_init`` trains the model ``checkpoint.init_from`` holds, as it is (RoPE base, norm eps,
    sizes and vocabulary from its ``model_config.yaml``).
    """

    preset: str = "tiny"
    num_layers: int | None = None  # None: the preset's depth
    vocab_size: int | None = None  # None: blend.json's "vocab_size" if declared, else the preset's
    seq_length: int = 4096
    make_vocab_size_divisible_by: int = 128
    spec: Literal["auto", "local", "te"] = "auto"  # auto: Transformer Engine when importable with CUDA
    fusions: bool = (
        True  # GPU kernel fusions with the TE spec (SwiGLU, RoPE, cross-entropy, wgrad); off on CPU
    )

    def validate(self) -> None:
        if self.preset != FROM_INIT:
            get_preset(self.preset)
        if self.num_layers is not None and self.num_layers < 1:
            raise ConfigError("model.num_layers must be >= 1")
        if self.vocab_size is not None and self.vocab_size < 2:
            raise ConfigError("model.vocab_size must be >= 2")
        if self.seq_length < 2:
            raise ConfigError("model.seq_length must be >= 2")

    def architecture(self, init_from: str | None = None) -> ModelPreset:
        """The preset (or with ``from_init``, the architecture of ``init_from``) with this run's overrides."""
        if self.preset == FROM_INIT:
            if not init_from:
                raise ConfigError(
                    "model.preset=from_init needs checkpoint.init_from (the hf-to-mcore output or run whose "
                    "model_config.yaml gives the architecture)"
                )
            from megatron_mmed.training.architecture import init_saved_model

            preset = init_saved_model(init_from).preset
            if self.num_layers is not None and self.num_layers != preset.num_layers:
                raise ConfigError(
                    f"model.num_layers={self.num_layers} differs from the {preset.num_layers} layers of "
                    f"checkpoint.init_from ({init_from}); leave it unset with model.preset=from_init"
                )
        else:
            preset = get_preset(self.preset)
        if self.seq_length > preset.max_position_embeddings:
            raise ConfigError(
                f"model.seq_length {self.seq_length} exceeds the max positions {preset.max_position_embeddings} "
                f"of {preset.name}"
            )
        if self.num_layers is not None:
            preset = dataclasses.replace(preset, num_layers=self.num_layers)
        if self.vocab_size is not None:
            preset = dataclasses.replace(preset, vocab_size=self.vocab_size)
        return preset


@dataclass(frozen=True)
class ParallelConfig:
    """Model/data parallelism; DP is derived as world_size / (TP x PP x CP)."""

    tp: int = 1
    pp: int = 1
    vpp: int | None = None  # virtual pipeline stages per rank (interleaved schedule)
    cp: int = 1
    sequence_parallel: bool = False
    use_distributed_optimizer: bool = False
    overlap_grad_reduce: bool = False
    overlap_param_gather: bool = False
    world_size: int | None = None  # planning only (dry run) when there is no launch section

    def validate(self) -> None:
        for name in ("tp", "pp", "cp"):
            if getattr(self, name) < 1:
                raise ConfigError(f"parallel.{name} must be >= 1")
        if self.vpp is not None and (self.vpp < 2 or self.pp < 2):
            raise ConfigError("parallel.vpp needs parallel.pp >= 2 and vpp >= 2 (or leave it null)")
        if self.sequence_parallel and self.tp < 2:
            raise ConfigError("parallel.sequence_parallel needs parallel.tp >= 2")
        if self.overlap_param_gather and not self.use_distributed_optimizer:
            raise ConfigError("parallel.overlap_param_gather needs parallel.use_distributed_optimizer")
        if self.world_size is not None and self.world_size < 1:
            raise ConfigError("parallel.world_size must be >= 1")


@dataclass(frozen=True)
class PrecisionConfig:
    """Parameter/compute dtype and FP8 (Transformer Engine, GPU only)."""

    dtype: Literal["fp32", "bf16"] = "bf16"
    fp8: Literal["hybrid", "e4m3"] | None = None
    fp8_recipe: Literal["delayed", "tensorwise"] = "delayed"
    fp8_amax_history_len: int = 1024
    fp8_amax_compute_algo: Literal["max", "most_recent"] = "max"
    first_last_layers_bf16: bool = False
    num_layers_at_start_in_bf16: int = 1
    num_layers_at_end_in_bf16: int = 1

    def validate(self) -> None:
        if self.fp8 is not None and self.dtype != "bf16":
            raise ConfigError("precision.fp8 needs precision.dtype=bf16 (FP8 GEMMs with BF16 master weights)")
        if self.fp8_amax_history_len < 1:
            raise ConfigError("precision.fp8_amax_history_len must be >= 1")
        if self.first_last_layers_bf16 and self.fp8 is None:
            raise ConfigError("precision.first_last_layers_bf16 only makes sense with precision.fp8")


@dataclass(frozen=True)
class DataConfig:
    """Tokenized data: the ``blend.json`` written by ``mmed tokenize``."""

    blend: str | None = None
    split: str = "98,2,0"  # train, valid, test shares of every prefix
    cache_dir: str | None = None  # GPTDataset index cache; default <checkpoint.dir>/data_cache

    def validate(self) -> None:
        parts = self.split.split(",")
        try:
            shares = [float(p) for p in parts]
        except ValueError:
            shares = []
        if len(shares) != 3 or any(s < 0 for s in shares) or sum(shares) <= 0:
            raise ConfigError(
                f"data.split must be three non-negative numbers like '98,2,0', got {self.split!r}"
            )


@dataclass(frozen=True)
class OptimizerConfig:
    """AdamW as megatron-core's ``get_megatron_optimizer`` builds it."""

    lr: float = 3e-4
    min_lr: float = 3e-5
    weight_decay: float = 0.1
    adam_beta1: float = 0.9
    adam_beta2: float = 0.95
    adam_eps: float = 1e-8
    clip_grad: float = 1.0

    def validate(self) -> None:
        if not 0 < self.lr < 1:
            raise ConfigError("optimizer.lr must be in (0, 1)")
        if not 0 <= self.min_lr <= self.lr:
            raise ConfigError("optimizer.min_lr must be in [0, optimizer.lr]")
        if self.weight_decay < 0 or self.clip_grad < 0:
            raise ConfigError("optimizer.weight_decay and optimizer.clip_grad must be >= 0")
        if not (0 <= self.adam_beta1 < 1 and 0 <= self.adam_beta2 < 1):
            raise ConfigError("optimizer.adam_beta1/2 must be in [0, 1)")


@dataclass(frozen=True)
class ScheduleConfig:
    """Learning-rate schedule for ``OptimizerParamScheduler`` (in steps)."""

    warmup_steps: int = 0
    decay_style: Literal["cosine", "linear", "constant", "WSD"] = "cosine"
    decay_steps: int | None = None  # None: train.steps
    wsd_decay_steps: int | None = None  # WSD: length of the final decay phase
    wsd_decay_style: Literal["linear", "cosine", "exponential", "minus_sqrt"] = "linear"

    def validate(self) -> None:
        if self.warmup_steps < 0:
            raise ConfigError("schedule.warmup_steps must be >= 0")
        if self.decay_style == "WSD" and not self.wsd_decay_steps:
            raise ConfigError("schedule.decay_style=WSD needs schedule.wsd_decay_steps")


@dataclass(frozen=True)
class CheckpointConfig:
    """Where and when torch_dist checkpoints are written; ``init_from`` starts from converted weights."""

    dir: str | None = None  # run dir: iter_XXXXXXX/, latest, metrics.jsonl, config.yaml
    save: bool = True  # False: never write checkpoints (benchmarks, throwaway smoke runs)
    save_interval: int = 1000
    init_from: str | None = None  # weights-only torch_dist dir (see training/checkpoint.py)
    exit_duration_minutes: float | None = None  # training minutes (after setup), then save and exit
    save_on_signal: bool = True  # SIGTERM/SIGUSR1: save and exit cleanly
    keep_last: int = 0  # keep the newest K iter_* after each save (0: all); the one `latest` names is kept

    def validate(self) -> None:
        if self.save_interval < 1:
            raise ConfigError("checkpoint.save_interval must be >= 1")
        if self.keep_last < 0:
            raise ConfigError("checkpoint.keep_last must be >= 0 (0 keeps every checkpoint)")
        if self.exit_duration_minutes is not None and self.exit_duration_minutes <= 0:
            raise ConfigError("checkpoint.exit_duration_minutes must be > 0")


@dataclass(frozen=True)
class LoggingConfig:
    """Console + metrics.jsonl every ``log_interval`` steps; W&B when ``wandb_project`` is set."""

    log_interval: int = 10
    eval_interval: int = 500
    eval_iters: int = 10  # global batches per language per evaluation (0: no validation)
    peak_tflops: float | None = None  # per-GPU peak for MFU; None: H100 dense (989 BF16, 1979 FP8)
    wandb_project: str | None = None
    wandb_mode: Literal["offline", "online", "disabled"] = "offline"
    wandb_run_name: str | None = None

    def validate(self) -> None:
        if self.log_interval < 1 or self.eval_interval < 1 or self.eval_iters < 0:
            raise ConfigError("logging.log_interval/eval_interval must be >= 1 and eval_iters >= 0")


@dataclass(frozen=True)
class TrainLoopConfig:
    """Step count, batch sizes (in sequences) and the seed."""

    steps: int = 1000
    micro_batch_size: int = 1
    global_batch_size: int = 8
    seed: int = 1234
    exit_at_step: int | None = None  # stop with a checkpoint after this step; the schedule still spans steps

    def validate(self) -> None:
        if self.exit_at_step is not None and not 1 <= self.exit_at_step <= self.steps:
            raise ConfigError("train.exit_at_step must be in [1, train.steps]")
        if self.steps < 1 or self.micro_batch_size < 1 or self.global_batch_size < 1:
            raise ConfigError("train.steps, train.micro_batch_size and train.global_batch_size must be >= 1")
        if self.global_batch_size % self.micro_batch_size:
            raise ConfigError("train.global_batch_size must be a multiple of train.micro_batch_size")


@dataclass(frozen=True)
class LaunchConfig:
    """How ``launch/pretrain.sh`` sizes the slurm job; the training itself reads WORLD_SIZE, not this."""

    nodes: int = 1
    tasks_per_node: int = 8  # one task per GPU
    device: Literal["cuda", "cpu"] = "cuda"  # cpu: no GPU request, gloo (smoke runs)
    job_name: str | None = None  # None: mmed-<recipe file name>
    time_limit: str = "24:00:00"  # sbatch --time

    def validate(self) -> None:
        if self.nodes < 1:
            raise ConfigError("launch.nodes must be >= 1")
        if self.tasks_per_node < 1:
            raise ConfigError("launch.tasks_per_node must be >= 1")


@dataclass(frozen=True)
class TrainConfig:
    """The whole ``mmed train`` config (the YAML under configs/train/)."""

    model: ModelConfig = field(default_factory=ModelConfig)
    parallel: ParallelConfig = field(default_factory=ParallelConfig)
    precision: PrecisionConfig = field(default_factory=PrecisionConfig)
    data: DataConfig = field(default_factory=DataConfig)
    optimizer: OptimizerConfig = field(default_factory=OptimizerConfig)
    schedule: ScheduleConfig = field(default_factory=ScheduleConfig)
    checkpoint: CheckpointConfig = field(default_factory=CheckpointConfig)
    logging: LoggingConfig = field(default_factory=LoggingConfig)
    train: TrainLoopConfig = field(default_factory=TrainLoopConfig)
    launch: LaunchConfig | None = None  # recipes for launch/pretrain.sh say how many nodes they need

    def architecture(self) -> ModelPreset:
        """The model this run trains: ``model`` resolved (``from_init`` reads ``checkpoint.init_from``)."""
        return self.model.architecture(self.checkpoint.init_from)

    def validate(self) -> None:
        arch = self.architecture()
        p = self.parallel
        if self.launch is not None and p.world_size is not None:
            launched = self.launch.nodes * self.launch.tasks_per_node
            if p.world_size != launched:
                raise ConfigError(
                    f"parallel.world_size={p.world_size} contradicts launch.nodes x launch.tasks_per_node = "
                    f"{launched} (leave parallel.world_size out of recipes with a launch section)"
                )
        if arch.num_attention_heads % p.tp or arch.num_query_groups % p.tp:
            raise ConfigError(
                f"parallel.tp={p.tp} must divide the attention heads ({arch.num_attention_heads}) "
                f"and KV heads ({arch.num_query_groups}) of {arch.name}"
            )
        if arch.ffn_hidden_size % p.tp:
            raise ConfigError(f"parallel.tp={p.tp} must divide ffn_hidden_size {arch.ffn_hidden_size}")
        stages = p.pp * (p.vpp or 1)
        if arch.num_layers % stages:
            raise ConfigError(f"{arch.num_layers} layers do not split into pp x vpp = {stages} stages")
        if self.model.seq_length % (2 * p.cp) and p.cp > 1:
            raise ConfigError("model.seq_length must be divisible by 2 x parallel.cp")
        if p.sequence_parallel and self.model.seq_length % p.tp:
            raise ConfigError("model.seq_length must be divisible by parallel.tp with sequence_parallel")
        s = self.schedule
        decay, named = (
            (s.decay_steps, "schedule.decay_steps") if s.decay_steps else (self.train.steps, "train.steps")
        )
        if s.warmup_steps >= decay:  # megatron-core's scheduler asserts warmup < decay steps
            raise ConfigError(
                f"schedule.warmup_steps ({s.warmup_steps}) must be below the decay steps ({named} = {decay})"
            )
        if s.decay_style == "WSD" and s.wsd_decay_steps and s.wsd_decay_steps > decay:
            raise ConfigError(
                f"schedule.wsd_decay_steps {s.wsd_decay_steps} exceeds the decay steps ({named} = {decay})"
            )

    def peak_tflops(self) -> float:
        """Per-GPU peak for MFU: the configured one or the H100 dense peak for this precision."""
        if self.logging.peak_tflops:
            return self.logging.peak_tflops
        return H100_PEAK_TFLOPS["fp8" if self.precision.fp8 else self.precision.dtype]


@dataclass(frozen=True)
class Parallelism:
    """How a run is spread over its ranks: TP x PP x CP x DP = world size, and micro-batches per step."""

    world_size: int
    tp: int
    pp: int
    cp: int
    dp: int
    num_microbatches: int
    padded_vocab_size: int

    def describe(self) -> str:
        return (
            f"TP={self.tp} x PP={self.pp} x CP={self.cp} x DP={self.dp} = {self.world_size} ranks; "
            f"{self.num_microbatches} micro-batches per step per DP rank"
        )


def world_size_from_env(cfg: TrainConfig, override: int | None = None) -> int:
    """World size: an explicit override, then WORLD_SIZE, then parallel.world_size, then the launch section's
    nodes x tasks per node, then TP x PP x CP (DP=1)."""
    if override is not None:
        return override
    if os.environ.get("WORLD_SIZE"):
        return int(os.environ["WORLD_SIZE"])
    p = cfg.parallel
    if p.world_size:
        return p.world_size
    if cfg.launch is not None:
        return cfg.launch.nodes * cfg.launch.tasks_per_node
    return p.tp * p.pp * p.cp


def resolve_parallelism(cfg: TrainConfig, world_size: int, vocab_size: int | None = None) -> Parallelism:
    """Check that the config fits ``world_size`` ranks and derive DP and the micro-batch count."""
    p = cfg.parallel
    model_parallel = p.tp * p.pp * p.cp
    if world_size % model_parallel:
        raise ConfigError(
            f"world size {world_size} is not a multiple of TP x PP x CP = {p.tp} x {p.pp} x {p.cp} = {model_parallel}"
        )
    dp = world_size // model_parallel
    t = cfg.train
    if t.global_batch_size % (t.micro_batch_size * dp):
        raise ConfigError(
            f"train.global_batch_size {t.global_batch_size} must be a multiple of "
            f"micro_batch_size x DP = {t.micro_batch_size} x {dp}"
        )
    if p.vpp and (t.global_batch_size // (t.micro_batch_size * dp)) % p.pp:
        raise ConfigError(
            "the interleaved schedule needs the micro-batch count to be a multiple of parallel.pp"
        )
    vocab = vocab_size or cfg.architecture().vocab_size
    return Parallelism(
        world_size=world_size,
        tp=p.tp,
        pp=p.pp,
        cp=p.cp,
        dp=dp,
        num_microbatches=t.global_batch_size // (t.micro_batch_size * dp),
        padded_vocab_size=padded_vocab_size(vocab, p.tp, cfg.model.make_vocab_size_divisible_by),
    )

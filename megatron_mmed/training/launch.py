"""A training recipe as ``launch/pretrain.sh`` runs it: YAML, then environment knobs, then dot-list overrides.

The shell never parses YAML: it asks ``mmed train --from-env --launch-values`` (``mmed finetune`` for a
fine-tuning recipe) for the resolved job size, save dir and training arguments, and ``--dry-run`` prints the
source of every value (yaml, env NAME, override, default), so a launch cannot silently contradict its recipe.
"""

from __future__ import annotations

import re
import types
import typing
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, is_dataclass
from pathlib import Path
from typing import Any, Literal

import yaml

from megatron_mmed.common.config import ConfigError, apply_overrides, load_config, to_dict
from megatron_mmed.training.config import LaunchConfig, TrainConfig, resolve_parallelism

#: config key -> the environment variables that set it, first one set wins (the launch knobs). Inside a slurm
#: job the allocation's SLURM_NNODES stands in for NODES. An empty value sets a nullable key to null (FP8= is
#: BF16) and is ignored otherwise.
ENV_KNOBS: dict[str, tuple[str, ...]] = {
    "launch.nodes": ("NODES", "SLURM_NNODES"),
    "launch.tasks_per_node": ("TASKS_PER_NODE",),
    "launch.device": ("DEVICE",),
    "launch.job_name": ("JOB_NAME",),
    "launch.time_limit": ("TIME_LIMIT",),
    "precision.fp8": ("FP8",),
    "data.blend": ("DATA",),
    "checkpoint.dir": ("SAVE",),
    "checkpoint.init_from": ("INIT_FROM",),
    "logging.wandb_project": ("WANDB_PROJECT",),
}

#: ``mmed finetune``'s knobs: pretraining's, with the MMedBench folder, the tokenizer and PEFT for the blend.
FINETUNE_ENV_KNOBS: dict[str, tuple[str, ...]] = {
    **{k: v for k, v in ENV_KNOBS.items() if k != "data.blend"},
    "data.train": ("DATA",),
    "data.tokenizer": ("TOKENIZER",),
    "peft": ("PEFT",),
}

Source = str  # "yaml" | "env NAME" | "override" | "default"


def command_config(command: str) -> tuple[type, dict[str, tuple[str, ...]]]:
    """The config class and the launch knobs of ``mmed <command>`` (train or finetune)."""
    if command == "finetune":
        from megatron_mmed.finetune.config import FinetuneConfig

        return FinetuneConfig, FINETUNE_ENV_KNOBS
    if command == "train":
        return TrainConfig, ENV_KNOBS
    raise ConfigError(f"no launch recipe kind {command!r} (train or finetune)")


@dataclass(frozen=True)
class Resolved:
    """A validated config, where each of its values came from, and the arguments that rebuild it."""

    config: Any  # TrainConfig, or FinetuneConfig for `mmed finetune`
    recipe: Path
    sources: dict[str, Source]  # every leaf key of the config
    train_args: tuple[
        str, ...
    ]  # dot-list for `mmed train --config RECIPE`: environment first, then overrides

    @property
    def launch(self) -> LaunchConfig:
        return self.config.launch or LaunchConfig()

    @property
    def job_name(self) -> str:
        return self.launch.job_name or f"mmed-{self.recipe.stem}"

    @property
    def world_size(self) -> int:
        return self.launch.nodes * self.launch.tasks_per_node

    def shell_values(self) -> str:
        """``key=value`` lines for launch/pretrain.sh (one ``arg=`` line per training argument)."""
        save = self.config.checkpoint.dir
        values = {
            "recipe": str(self.recipe),
            "job_name": self.job_name,
            "nodes": self.launch.nodes,
            "tasks_per_node": self.launch.tasks_per_node,
            "device": self.launch.device,
            "world_size": self.world_size,
            "time_limit": self.launch.time_limit,
            "save": str(Path(save).absolute()) if save else "",
        }
        lines = [f"{k}={v}" for k, v in values.items()] + [f"arg={a}" for a in self.train_args]
        if any("\n" in line for line in lines):
            raise ConfigError("launch values must not contain newlines")
        return "\n".join(lines)

    def describe_sources(self) -> str:
        """Every value as a ``key=value  # source`` line (copy-pastable as an override)."""
        leaves = _leaves(to_dict(self.config))
        rows = [(f"{k}={_scalar(v)}", self.sources[k]) for k, v in leaves.items()]
        width = max(len(r[0]) for r in rows) + 2
        head = (
            f"# where each value comes from (yaml: {self.recipe}; env: a launch knob; override: command line)"
        )
        return "\n".join([head] + [f"{text:<{width}}# {src}" for text, src in rows])


def resolve(
    recipe: str | Path,
    overrides: Sequence[str] = (),
    environ: Mapping[str, str] | None = None,
    command: str = "train",
) -> Resolved:
    """Load ``recipe`` (a ``command`` config) with the knobs of ``environ`` (None: none), then ``overrides``.

    With an environment (the launcher), ``checkpoint.dir`` left unset by everyone defaults to
    ``runs/<job name>`` under the working directory, and a CPU launch of an FP8 recipe is refused before any job
    is submitted. ``ConfigError`` names the environment variable when one supplied the bad value.
    """
    recipe = Path(recipe).absolute()
    cls, knobs = command_config(command)
    env_args, env_sources = _env_overrides(environ, knobs, cls) if environ is not None else ([], {})
    args = [*env_args, *overrides]
    try:
        cfg = load_config(cls, recipe, args)
    except ConfigError as e:
        raise _blame_env(e, env_sources) from None
    extra: list[str] = []
    if environ is not None and cfg.checkpoint.dir is None:
        launch = cfg.launch or LaunchConfig()
        save = Path("runs", launch.job_name or f"mmed-{recipe.stem}").absolute()
        extra = [f"checkpoint.dir={_scalar(str(save))}"]
        cfg = load_config(cls, recipe, [*env_args, *extra, *overrides])
    sources = _sources(recipe, cfg, env_sources, overrides, extra)
    if environ is not None:
        _check_launchable(cfg)
    return Resolved(cfg, recipe, sources, tuple([*env_args, *extra, *overrides]))


def _check_launchable(cfg) -> None:
    """What only a launch can get wrong: FP8 on CPU, and a job size the parallelism does not divide."""
    launch = cfg.launch or LaunchConfig()
    if not isinstance(cfg, TrainConfig):  # a fine-tuning config: its training view at this job size
        cfg = cfg.train_config(
            cfg.train.steps or cfg.schedule.warmup_steps + 1, launch.nodes * launch.tasks_per_node
        )
    if launch.device == "cpu" and cfg.precision.fp8 is not None:
        raise ConfigError(
            f"launch.device=cpu cannot train with precision.fp8={cfg.precision.fp8} (FP8 needs H100s with "
            "Transformer Engine): set FP8= (empty) or precision.fp8=null"
        )
    try:
        resolve_parallelism(cfg, launch.nodes * launch.tasks_per_node)
    except ConfigError as e:
        raise ConfigError(
            f"{launch.nodes} node(s) x {launch.tasks_per_node} task(s) (launch.*): {e}"
        ) from None


def _env_overrides(
    environ: Mapping[str, str], knobs: dict[str, tuple[str, ...]] = ENV_KNOBS, cls: type = TrainConfig
) -> tuple[list[str], dict[str, tuple[str, str]]]:
    """The launch knobs set in ``environ`` as dot-list overrides, and key -> (variable, raw value)."""
    args, sources = [], {}
    for key, names in knobs.items():
        for name in (n for n in names if n in environ):
            value = _env_value(name, key, environ[name], cls)
            if value is not None:
                args.append(f"{key}={value}")
                sources[key] = (name, environ[name])
                break
    return args, sources


def _env_value(name: str, key: str, raw: str, cls: type = TrainConfig) -> str | None:
    """``raw`` as override text for ``key`` (None: ignore it), checked so errors name the variable."""
    tp, nullable = _field_type(key, cls)
    if raw == "":
        return "null" if nullable else None
    if typing.get_origin(tp) is Literal:
        choices = typing.get_args(tp)
        if raw not in choices:
            raise ConfigError(f"{name} must be one of {', '.join(map(str, choices))}, got {raw!r}")
        return raw
    if tp is int:
        if not re.fullmatch(r"[+-]?\d+", raw):
            raise ConfigError(f"{name} must be an integer, got {raw!r}")
        return raw
    if tp is str:
        return _scalar(raw)  # quoted when YAML would read it as something else ("2024", "yes")
    return raw


def _field_type(key: str, cls: type = TrainConfig) -> tuple[Any, bool]:
    """The annotated type of a dotted config key, Optional unwrapped, and whether it accepts null."""
    tp: Any = cls
    nullable = False
    for part in key.split("."):
        tp = typing.get_type_hints(tp)[part]
        nullable = False
        if typing.get_origin(tp) in (typing.Union, types.UnionType):
            args = [a for a in typing.get_args(tp) if a is not type(None)]
            nullable = len(args) < len(typing.get_args(tp))
            tp = args[0]
    return tp, nullable


def _blame_env(err: ConfigError, env_sources: dict[str, tuple[str, str]]) -> ConfigError:
    """``err`` with the environment variable that supplied the offending key, when one did."""
    msg = str(err)
    for key, (name, raw) in env_sources.items():
        if msg.startswith(key):
            return ConfigError(f"{msg} (from {name}={raw!r})")
    return err


def _sources(
    recipe: Path,
    cfg: Any,
    env_sources: dict[str, tuple[str, str]],
    overrides: Sequence[str],
    extra: Sequence[str],
) -> dict[str, Source]:
    """Leaf key -> source; later layers win: default < yaml < env < launcher default < override."""
    loaded = yaml.safe_load(recipe.read_text(encoding="utf-8")) or {}
    layers: list[tuple[set[str], Source]] = [(set(_leaves(loaded)), "yaml")]
    layers += [({key}, f"env {name}") for key, (name, _) in env_sources.items()]
    layers.append(({a.split("=", 1)[0] for a in extra}, "default"))
    layers.append((set(_leaves(apply_overrides({}, overrides))), "override"))
    sources = {}
    for leaf in _leaves(to_dict(cfg)):
        sources[leaf] = "default"
        for keys, source in layers:
            if any(leaf == k or leaf.startswith(k + ".") or k.startswith(leaf + ".") for k in keys):
                sources[leaf] = source
    return sources


def _leaves(data: Any, prefix: str = "") -> dict[str, Any]:
    """Nested mapping -> {dotted key: value} for every non-mapping value (a null section is one leaf)."""
    if not isinstance(data, dict) or (prefix and not data):
        return {prefix.rstrip("."): data} if prefix else {}
    out: dict[str, Any] = {}
    for key, value in data.items():
        out.update(_leaves(value, f"{prefix}{key}."))
    return out


def _scalar(value: Any) -> str:
    """``value`` as the YAML text an override parses back to the same value."""
    if is_dataclass(value):
        value = to_dict(value)
    text = yaml.safe_dump(value, default_flow_style=True, width=1 << 30)
    return text.removesuffix("\n...\n").rstrip("\n")

"""Typed dataclass configs: load from YAML, override with dot-lists, validate, save next to outputs.

A config is a (possibly nested) dataclass. ``load_config(Cls, path, ["a.b=3"])`` reads YAML, applies
overrides (values parsed as YAML scalars), builds the dataclasses with type checks, and calls every
``validate()`` it finds. Unknown keys and wrong types are ``ConfigError`` with the dotted path.
"""

from __future__ import annotations

import dataclasses
import re
import types
import typing
from collections.abc import Iterable
from pathlib import Path
from typing import Any, TypeVar

import yaml

T = TypeVar("T")

#: A YAML 1.2 (core schema) float. PyYAML implements YAML 1.1, which needs a dot and a signed exponent, so
#: ``1e-4`` or ``1.0e4`` reach a config as strings; a ``float`` field accepts them as the numbers they are.
_YAML12_FLOAT = re.compile(
    r"[-+]?(\.[0-9]+|[0-9]+(\.[0-9]*)?)([eE][-+]?[0-9]+)?|[-+]?\.(inf|Inf|INF)|\.(nan|NaN|NAN)"
)


def _yaml12_float(value: str) -> float | None:
    """``value`` as a YAML 1.2 float, or None when it is not spelled as one."""
    text = value.strip()
    if not _YAML12_FLOAT.fullmatch(text):
        return None
    if text.lstrip("+-").lower() in (".inf", ".nan"):
        text = text.replace(".", "", 1)  # Python spells them inf / nan
    return float(text)


class ConfigError(ValueError):
    """A user-facing configuration mistake (bad key, type or value)."""


def _is_dataclass_type(tp: Any) -> bool:
    return isinstance(tp, type) and dataclasses.is_dataclass(tp)


def _coerce(value: Any, tp: Any, where: str) -> Any:
    """Check/convert ``value`` to the annotated type ``tp``."""
    if tp is Any:
        return value
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        errors = []
        for arg in args:
            if arg is type(None):
                continue
            try:
                return _coerce(value, arg, where)
            except ConfigError as e:
                errors.append(str(e))
        raise ConfigError(errors[0] if errors else f"{where}: invalid value {value!r}")
    if origin is typing.Literal:
        if value not in args:
            raise ConfigError(f"{where}: {value!r} is not one of {list(args)}")
        return value
    if _is_dataclass_type(tp):
        if isinstance(value, tp):
            return value
        if not isinstance(value, dict):
            raise ConfigError(f"{where}: expected a mapping, got {value!r}")
        return from_dict(tp, value, where)
    if origin in (list, tuple) or tp in (list, tuple):
        if not isinstance(value, list | tuple):
            raise ConfigError(f"{where}: expected a list, got {value!r}")
        item_tp = args[0] if args else Any
        items = [_coerce(v, item_tp, f"{where}[{i}]") for i, v in enumerate(value)]
        return tuple(items) if (origin is tuple or tp is tuple) else items
    if origin is dict or tp is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"{where}: expected a mapping, got {value!r}")
        vt = args[1] if len(args) == 2 else Any
        return {k: _coerce(v, vt, f"{where}.{k}") for k, v in value.items()}
    if tp is float:
        if isinstance(value, str) and (number := _yaml12_float(value)) is not None:
            return number
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise ConfigError(f"{where}: expected a number, got {value!r}")
        return float(value)
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{where}: expected an integer, got {value!r}")
        return value
    if tp is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{where}: expected true/false, got {value!r}")
        return value
    if tp is str:
        if not isinstance(value, str):
            raise ConfigError(f"{where}: expected a string, got {value!r}")
        return value
    return value


def from_dict(cls: type[T], data: dict[str, Any], where: str = "") -> T:
    """Build dataclass ``cls`` from a mapping, rejecting unknown keys."""
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls) if f.init}
    unknown = sorted(set(data) - names)
    if unknown:
        prefix = f"{where}." if where else ""
        raise ConfigError(
            f"unknown config key(s): {', '.join(prefix + k for k in unknown)} (valid: {', '.join(sorted(names))})"
        )
    kwargs = {}
    for name, value in data.items():
        kwargs[name] = _coerce(value, hints[name], f"{where}.{name}" if where else name)
    try:
        return cls(**kwargs)
    except TypeError as e:  # missing required fields
        raise ConfigError(f"{where or cls.__name__}: {e}") from None


def to_dict(cfg: Any) -> Any:
    """Plain-python view of a config (tuples as lists) for YAML/JSON."""
    if dataclasses.is_dataclass(cfg) and not isinstance(cfg, type):
        return {f.name: to_dict(getattr(cfg, f.name)) for f in dataclasses.fields(cfg)}
    if isinstance(cfg, list | tuple):
        return [to_dict(v) for v in cfg]
    if isinstance(cfg, dict):
        return {k: to_dict(v) for k, v in cfg.items()}
    if isinstance(cfg, Path):
        return str(cfg)
    return cfg


def apply_overrides(data: dict[str, Any], overrides: Iterable[str]) -> dict[str, Any]:
    """Apply ``a.b.c=value`` overrides (value parsed as YAML) to a nested mapping, in place."""
    for item in overrides:
        if "=" not in item:
            raise ConfigError(f"override {item!r} must look like key.path=value")
        key, raw = item.split("=", 1)
        try:
            value = yaml.safe_load(raw) if raw != "" else ""
        except yaml.YAMLError:
            value = raw
        parts = key.strip().split(".")
        node = data
        for p in parts[:-1]:
            nxt = node.get(p)
            if nxt is None:
                nxt = node[p] = {}
            if not isinstance(nxt, dict):
                raise ConfigError(f"override {item!r}: {p} is not a section")
            node = nxt
        node[parts[-1]] = value
    return data


def validate_tree(cfg: Any) -> None:
    """Call ``validate()`` on every dataclass in the tree, children first."""
    if dataclasses.is_dataclass(cfg) and not isinstance(cfg, type):
        for f in dataclasses.fields(cfg):
            validate_tree(getattr(cfg, f.name))
        fn = getattr(cfg, "validate", None)
        if callable(fn):
            fn()
    elif isinstance(cfg, list | tuple):
        for v in cfg:
            validate_tree(v)
    elif isinstance(cfg, dict):
        for v in cfg.values():
            validate_tree(v)


def _yaml_problem(e: yaml.YAMLError) -> str:
    """A YAML error in one line: the problem and where (PyYAML's own text spans several lines)."""
    mark = getattr(e, "problem_mark", None)
    problem = getattr(e, "problem", None) or " ".join(str(e).split())
    return f"{problem} (line {mark.line + 1}, column {mark.column + 1})" if mark is not None else problem


def read_config_file(path: str | Path) -> dict[str, Any]:
    """The mapping in a YAML config file (empty file: ``{}``); ``ConfigError`` naming the file otherwise."""
    p = Path(path)
    if not p.is_file():
        raise ConfigError(f"config file not found: {p}")
    try:
        loaded = yaml.safe_load(p.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError) as e:
        raise ConfigError(f"cannot read config {p}: {e}") from None
    except yaml.YAMLError as e:
        raise ConfigError(f"{p}: not valid YAML: {_yaml_problem(e)}") from None
    if loaded is None:
        return {}
    if not isinstance(loaded, dict):
        raise ConfigError(f"{p}: top level must be a mapping")
    return loaded


def load_config(
    cls: type[T], path: str | Path | None = None, overrides: Iterable[str] = (), section: str | None = None
) -> T:
    """YAML file (optional) + dot-list overrides -> validated dataclass.

    With ``section``, a file that is not itself a ``cls`` config (a pipeline recipe such as
    ``configs/prep/mmedc.yaml``: it has that key, or keys ``cls`` does not know) contributes only that
    section (defaults when absent), so every stage command can read the same recipe.
    """
    data: dict[str, Any] = {}
    if path is not None:
        p = Path(path)
        loaded = read_config_file(p)
        names = {f.name for f in dataclasses.fields(cls)}
        recipe = section in loaded or not set(loaded) <= names  # a recipe: take its section (maybe absent)
        if section is not None and section not in names and recipe:
            loaded = loaded.get(section) or {}
            if not isinstance(loaded, dict):
                raise ConfigError(f"{p}: section {section!r} must be a mapping")
        data = loaded
    apply_overrides(data, overrides)
    cfg = from_dict(cls, data)
    validate_tree(cfg)
    return cfg


def replace_with(cfg: T, overrides: Iterable[str]) -> T:
    """A copy of ``cfg`` with dot-list overrides applied and validated."""
    data = to_dict(cfg)
    apply_overrides(data, overrides)
    new = from_dict(type(cfg), data)
    validate_tree(new)
    return new


def save_config(cfg: Any, path: str | Path) -> Path:
    """Write ``cfg`` as YAML (the ``config.yaml`` that sits next to every output)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(yaml.safe_dump(to_dict(cfg), sort_keys=False, allow_unicode=True), encoding="utf-8")
    tmp.replace(path)
    return path

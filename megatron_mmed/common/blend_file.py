"""``blend.json``: the tokenized corpus ``mmed tokenize`` writes and ``mmed train`` reads, as one type.

Format ``megatron-mmed.blend/1``; :class:`BlendFile` is its only reader and writer (tokenize, the training data
setup, conversion's tokenizer lookup and the test fixtures all go through it)::

    {"format": "megatron-mmed.blend/1",
     "root": "/abs/TOK",                      # the folder holding the .bin/.idx files
     "temperature": 1.0, "multipliers": {"en": 1.0, ...},
     "tokenizer": {"kind", "path", "eod_id", "bos_id", "vocab_size", "dtype"},
     "datasets": [{"lang": "en", "prefix": "/abs/TOK/en_text_document", "name": "en_text_document",
                   "tokens": 123, "documents": 45, "multiplier": 1.0, "weight": 0.31}, ...],
     "blend": [["/abs/TOK/en_text_document", ...], [0.31, ...]]}

``prefix`` is absolute (without ``.bin``/``.idx``) so megatron-core's ``blend`` takes ``data["blend"]`` as is;
``name`` is the same prefix relative to the blend file's folder, where a reader looks first (so a copied or
moved folder reads its own files). ``tokens`` counts the appended EOD too. ``temperature`` is null when the weights were set directly rather
than derived from token counts. A weight-0 dataset stays in ``datasets`` and is left out of ``blend``. A file
of any other shape is refused in one line naming the field. No heavy imports: every stage can read it.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from megatron_mmed.common.errors import UserError
from megatron_mmed.common.io import atomic_write_json, atomic_write_text

FORMAT = "megatron-mmed.blend/1"
BLEND_JSON = "blend.json"
BLEND_YAML = "blend.yaml"


@dataclass(frozen=True)
class BlendTokenizer:
    """The tokenizer that made the token files (``path`` None for the byte-level test data)."""

    kind: str
    path: str | None
    eod_id: int
    bos_id: int | None
    vocab_size: int
    dtype: str  # numpy dtype of the token files


@dataclass(frozen=True)
class BlendDataset:
    """One language's indexed dataset and its sampling weight."""

    lang: str
    prefix: str
    name: str
    tokens: int
    documents: int
    multiplier: float
    weight: float


@dataclass(frozen=True)
class BlendFile:
    """A ``blend.json``: where the datasets are, how they are weighted, and the tokenizer behind them."""

    root: str
    temperature: float | None
    multipliers: dict[str, float]
    tokenizer: BlendTokenizer
    datasets: tuple[BlendDataset, ...]
    path: Path | None = field(default=None, compare=False)  # the file it was read from (not written)

    # --- writing -----------------------------------------------------------------------------------------

    def to_dict(self) -> dict[str, Any]:
        """The JSON document, keys in the format's order."""
        used = [d for d in self.datasets if d.weight > 0]
        t = self.tokenizer
        return {
            "format": FORMAT,
            "root": self.root,
            "temperature": self.temperature,
            "multipliers": dict(self.multipliers),
            "tokenizer": {
                "kind": t.kind,
                "path": t.path,
                "eod_id": t.eod_id,
                "bos_id": t.bos_id,
                "vocab_size": t.vocab_size,
                "dtype": t.dtype,
            },
            "datasets": [
                {
                    "lang": d.lang,
                    "prefix": d.prefix,
                    "name": d.name,
                    "tokens": d.tokens,
                    "documents": d.documents,
                    "multiplier": d.multiplier,
                    "weight": d.weight,
                }
                for d in self.datasets
            ],
            "blend": [[d.prefix for d in used], [d.weight for d in used]],
        }

    def write(self, out_dir: str | Path) -> Path:
        """Write ``out_dir/blend.json`` and the same content as ``blend.yaml``; returns the JSON path."""
        self.validate(str(Path(out_dir) / BLEND_JSON))
        doc = self.to_dict()
        out = Path(out_dir)
        atomic_write_text(out / BLEND_YAML, yaml.safe_dump(doc, sort_keys=False, allow_unicode=True))
        return atomic_write_json(out / BLEND_JSON, doc)

    # --- reading -----------------------------------------------------------------------------------------

    @classmethod
    def read(cls, path: str | Path) -> BlendFile:
        """Read and validate a ``blend.json`` (or the folder holding one); ``UserError`` naming the field."""
        p = Path(path)
        if p.is_dir():
            p = p / BLEND_JSON
        if not p.is_file():
            raise UserError(f"{p} not found (the {BLEND_JSON} written by `mmed tokenize`)")
        try:
            data = json.loads(p.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError) as e:
            raise UserError(f"cannot read blend file {p}: {e}") from None
        except json.JSONDecodeError as e:
            raise UserError(f"{p} is not valid JSON: {e}") from None
        return cls.from_dict(data, str(p), path=p)

    @classmethod
    def from_dict(cls, data: Any, where: str, path: Path | None = None) -> BlendFile:
        """Build from the JSON document, refusing any other shape with the field it lacks or has wrong."""
        if not isinstance(data, dict):
            raise UserError(f"{where} must hold a JSON object")
        if data.get("format") != FORMAT:
            raise UserError(
                f"{where}: field 'format' is {data.get('format')!r}, not {FORMAT!r} (rewrite it with `mmed tokenize`)"
            )
        known = {"format", "root", "temperature", "multipliers", "tokenizer", "datasets", "blend"}
        unknown = sorted(set(data) - known)
        if unknown:
            raise UserError(f"{where}: unknown field(s) {', '.join(map(repr, unknown))} in a {FORMAT} file")
        tok = _object(data, "tokenizer", where)
        entries = data.get("datasets")
        if not isinstance(entries, list) or not entries:
            raise UserError(f"{where} has no non-empty 'datasets' list")
        datasets = []
        for i, e in enumerate(entries):
            at = f"datasets[{i}]"
            if not isinstance(e, dict):
                raise UserError(f"{where}: {at} is not an object")
            if not isinstance(e.get("prefix"), str):
                raise UserError(f"{where}: {at} has no 'prefix' string")
            datasets.append(
                BlendDataset(
                    lang=_get(e, "lang", str, where, at),
                    prefix=e["prefix"],
                    name=_get(e, "name", str, where, at),
                    tokens=_get(e, "tokens", int, where, at),
                    documents=_get(e, "documents", int, where, at),
                    multiplier=_get(e, "multiplier", float, where, at),
                    weight=_get(e, "weight", float, where, at),
                )
            )
        multipliers = _object(data, "multipliers", where)
        blend = cls(
            root=_get(data, "root", str, where),
            temperature=_get(data, "temperature", float, where, nullable=True),
            multipliers={k: _get(multipliers, k, float, where, "multipliers") for k in multipliers},
            tokenizer=BlendTokenizer(
                kind=_get(tok, "kind", str, where, "tokenizer"),
                path=_get(tok, "path", str, where, "tokenizer", nullable=True),
                eod_id=_get(tok, "eod_id", int, where, "tokenizer"),
                bos_id=_get(tok, "bos_id", int, where, "tokenizer", nullable=True),
                vocab_size=_get(tok, "vocab_size", int, where, "tokenizer"),
                dtype=_get(tok, "dtype", str, where, "tokenizer"),
            ),
            datasets=tuple(datasets),
            path=path,
        )
        blend.validate(where)
        if data.get("blend") != blend.to_dict()["blend"]:
            raise UserError(
                f"{where}: field 'blend' disagrees with the prefixes and weights under 'datasets'"
            )
        return blend

    def validate(self, where: str) -> None:
        """Values a reader relies on: positive vocabulary, ids inside it, weights >= 0 summing above 0."""
        t = self.tokenizer
        if t.vocab_size < 1:
            raise UserError(f"{where}: tokenizer.vocab_size must be >= 1, got {t.vocab_size}")
        for name in ("eod_id", "bos_id"):
            v = getattr(t, name)
            if v is not None and not 0 <= v < t.vocab_size:
                raise UserError(f"{where}: tokenizer.{name} {v} is outside the vocabulary ({t.vocab_size})")
        for i, d in enumerate(self.datasets):
            if not (d.weight >= 0 and math.isfinite(d.weight)):
                raise UserError(f"{where}: datasets[{i}] ({d.lang}) has a negative weight {d.weight}")
        if sum(d.weight for d in self.datasets) <= 0:
            raise UserError(f"{where}: weights sum to zero")
        langs = [d.lang for d in self.datasets]
        if len(set(langs)) != len(langs):
            raise UserError(f"{where}: duplicate languages {langs}")

    def prefix_on_disk(self, d: BlendDataset) -> str:
        """Where ``d``'s ``.bin``/``.idx`` are: ``name`` beside this file (so a copied or moved folder reads
        its own files), else the absolute ``prefix`` (a blend file kept apart from its data)."""
        if self.path is not None:
            beside = str(self.path.parent.resolve() / d.name)
            if Path(beside + ".idx").is_file():
                return beside
        if Path(d.prefix + ".idx").is_file() or self.path is None:
            return d.prefix
        raise UserError(f"{self.path}: dataset {d.name} not found beside it or at {d.prefix}")


_TYPE_NAMES = {str: "a string", int: "an integer", float: "a number"}


def _object(node: dict[str, Any], key: str, where: str) -> dict[str, Any]:
    value = node.get(key)
    if not isinstance(value, dict):
        raise UserError(f"{where}: field '{key}' must be an object, got {value!r}")
    return value


def _get(node: dict[str, Any], key: str, tp: type, where: str, at: str = "", nullable: bool = False) -> Any:
    """``node[key]`` checked to be of type ``tp`` (ints count as numbers; bools as neither)."""
    name = f"{at}.{key}" if at else key
    if key not in node:
        raise UserError(f"{where}: field '{name}' is missing")
    value = node[key]
    if value is None and nullable:
        return None
    ok = isinstance(value, tp) and not isinstance(value, bool)
    if tp is float and isinstance(value, int) and not isinstance(value, bool):
        ok, value = True, float(value)
    if not ok:
        raise UserError(f"{where}: field '{name}' must be {_TYPE_NAMES[tp]}, got {value!r}")
    return value

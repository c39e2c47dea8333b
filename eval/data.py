"""MMedBench loading and validation: ``<Language>.jsonl`` files, flat or under ``Test/`` and ``Train/``.

Bad items (no options, an answer letter that is not an option, broken JSON) are counted with a reason and
skipped; file-level mistakes (missing folder or language file, empty file) are ``UserError``.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from megatron_mmed.common.errors import UserError
from preprocessing.document import LANGS, LANGUAGE_NAMES

#: The six MMedBench languages in the paper's table order (en, zh, ja, fr, ru, es).
LANGUAGES: tuple[str, ...] = tuple(LANGUAGE_NAMES[c] for c in LANGS)

_LETTER = re.compile(r"^[A-Z]$")


@dataclass(frozen=True)
class QAItem:
    """One valid multiple-choice question; ``index`` is its 0-based line number in the language file."""

    language: str
    index: int
    id: str
    question: str
    options: dict[str, str]
    answers: tuple[str, ...]  # sorted gold letters; several for multi-answer items
    rationale: str = ""
    human_checked: bool | None = None
    human_check_passed: bool | None = None

    @property
    def multi(self) -> bool:
        return len(self.answers) > 1


@dataclass(frozen=True)
class BadItem:
    """A record that could not be used, kept for the report."""

    language: str
    index: int
    reason: str


@dataclass
class LanguageSet:
    """The valid items and the rejected records of one language file."""

    language: str
    path: Path
    items: list[QAItem] = field(default_factory=list)
    bad: list[BadItem] = field(default_factory=list)


def parse_answer_idx(raw: Any) -> tuple[str, ...]:
    """``"C"`` / ``"A,C"`` / ``["A", "C"]`` -> sorted unique letters (empty tuple when malformed)."""
    if isinstance(raw, list):
        parts = [str(p) for p in raw]
    elif isinstance(raw, str):
        parts = re.split(r"[,;/\s]+", raw.strip())
    else:
        return ()
    letters = [p.strip().upper() for p in parts if p.strip()]
    if not letters or not all(_LETTER.match(x) for x in letters):
        return ()
    return tuple(sorted(set(letters)))


def validate_record(rec: Any, language: str, index: int) -> QAItem | BadItem:
    """Check one decoded JSON record against the MMedBench schema."""
    if not isinstance(rec, dict):
        return BadItem(language, index, "record is not a JSON object")
    question = rec.get("question")
    if not isinstance(question, str) or not question.strip():
        return BadItem(language, index, "missing or empty question")
    options = rec.get("options")
    if not isinstance(options, dict) or not options:
        return BadItem(language, index, "missing or empty options")
    clean: dict[str, str] = {}
    for k, v in options.items():
        key = str(k).strip().upper()
        if not _LETTER.match(key):
            return BadItem(language, index, f"option key {k!r} is not a single letter")
        if not isinstance(v, str) or not v.strip():
            return BadItem(language, index, f"option {key} is empty")
        clean[key] = v.strip()
    if len(clean) < 2:
        return BadItem(language, index, "fewer than two options")
    answers = parse_answer_idx(rec.get("answer_idx"))
    if not answers:
        return BadItem(language, index, f"answer_idx {rec.get('answer_idx')!r} is not a letter list")
    missing = [a for a in answers if a not in clean]
    if missing:
        return BadItem(language, index, f"answer_idx {','.join(missing)} not among options {''.join(clean)}")
    rationale = rec.get("rationale")
    hc, hcp = rec.get("human_checked"), rec.get("human_check_passed")
    return QAItem(
        language=language,
        index=index,
        id=str(rec.get("source_id") or rec.get("id") or f"{language}-{index}"),
        question=question.strip(),
        options=dict(sorted(clean.items())),
        answers=answers,
        rationale=rationale.strip() if isinstance(rationale, str) else "",
        human_checked=hc if isinstance(hc, bool) else None,
        human_check_passed=hcp if isinstance(hcp, bool) else None,
    )


def load_language(path: str | Path, language: str) -> LanguageSet:
    """Read one ``<Language>.jsonl``; blank lines keep their line number but are not items."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"MMedBench file for {language} not found: {path}")
    out = LanguageSet(language=language, path=path)
    with open(path, encoding="utf-8") as fh:
        for index, line in enumerate(fh):
            if not line.strip():
                continue
            try:
                rec = json.loads(line)
            except json.JSONDecodeError as e:
                out.bad.append(BadItem(language, index, f"not valid JSON ({e.msg})"))
                continue
            res = validate_record(rec, language, index)
            (out.items if isinstance(res, QAItem) else out.bad).append(res)
    if not out.items and not out.bad:
        raise UserError(f"MMedBench file for {language} is empty: {path}")
    return out


def split_dir(data_dir: str | Path, split: str) -> Path:
    """The folder holding ``<Language>.jsonl`` for ``split`` (``Test``/``Train``), flat layout allowed for Test."""
    root = Path(data_dir)
    if not root.is_dir():
        raise UserError(f"MMedBench folder not found: {root}")
    sub = root / split
    if sub.is_dir():
        return sub
    if split == "Test":
        return root
    raise UserError(f"{root} has no {split}/ folder (needed for few-shot examples)")


def available_languages(folder: Path) -> list[str]:
    """Languages (paper order) with a ``<Language>.jsonl`` in ``folder``."""
    return [lang for lang in LANGUAGES if (folder / f"{lang}.jsonl").is_file()]


def resolve_languages(folder: Path, requested: tuple[str, ...] | list[str] = ()) -> list[str]:
    """Requested languages (names or ISO codes) that must exist, or every language present."""
    if requested:
        names = []
        for r in requested:
            name = LANGUAGE_NAMES.get(r.lower(), r[:1].upper() + r[1:].lower())
            if name not in LANGUAGES:
                raise UserError(
                    f"unknown language {r!r} (choose from {', '.join(LANGUAGES)} or {', '.join(LANGS)})"
                )
            if not (folder / f"{name}.jsonl").is_file():
                raise UserError(f"MMedBench file for {name} not found: {folder / (name + '.jsonl')}")
            names.append(name)
        return [lang for lang in LANGUAGES if lang in names]
    found = available_languages(folder)
    if not found:
        raise UserError(
            f"no MMedBench language files (<Language>.jsonl for {', '.join(LANGUAGES)}) in {folder}"
        )
    return found


def load_benchmark(
    data_dir: str | Path, split: str = "Test", languages: tuple[str, ...] | list[str] = ()
) -> dict[str, LanguageSet]:
    """Language -> validated items of ``split``, in the paper's language order."""
    folder = split_dir(data_dir, split)
    return {
        lang: load_language(folder / f"{lang}.jsonl", lang) for lang in resolve_languages(folder, languages)
    }

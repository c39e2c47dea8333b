"""MMedBench items: the one loader used by ``mmed eval``, ``mmed decontam`` and fine-tuning.

``<Language>.jsonl`` files, either flat in a folder or under MMedBench's ``Test/`` and ``Train/``; options as a
mapping (kept in file order, as the official template lists them) or as a list (lettered A, B, ...); question,
option and rationale text kept raw (the paper's prompt uses it as written). Records are read as bytes, so a
UTF-8 BOM, an undecodable line or broken JSON is counted as a bad item with its reason, never a traceback.
This module stays light (no torch/transformers) so preprocessing and training can import it.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from megatron_mmed.common.errors import UserError
from preprocessing.document import LANGS, LANGUAGE_NAMES

#: The six MMedBench languages in the paper's table order (en, zh, ja, fr, ru, es).
LANGUAGES: tuple[str, ...] = tuple(LANGUAGE_NAMES[c] for c in LANGS)

_LETTER = re.compile(r"^[A-Z]$")
_BOM = b"\xef\xbb\xbf"


@dataclass(frozen=True)
class QAItem:
    """One multiple-choice question; ``index`` is its 0-based line number in the language file."""

    language: str
    index: int
    id: str  # the record's source_id / id, else "<Language>-<index>"
    question: str  # raw text
    options: dict[str, str]  # letter -> raw text, in file order
    answers: tuple[str, ...]  # sorted gold letters; several for multi-answer items
    rationale: str = ""  # raw text
    human_checked: bool | None = None
    human_check_passed: bool | None = None
    source_id: str | None = None  # the record's own source_id, as a string

    @property
    def multi(self) -> bool:
        return len(self.answers) > 1

    @property
    def qid(self) -> str:
        """``"<Language>:<index>"``: unique within a benchmark folder (decontam reports matches by it)."""
        return f"{self.language}:{self.index}"


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


def iter_json_lines(path: str | Path) -> Iterator[tuple[int, Any, str | None]]:
    """``(0-based line, record, None)`` or ``(line, None, reason)`` per non-blank line of a JSONL file.

    Read as bytes: a leading UTF-8 BOM is dropped, a line that is not UTF-8 or not JSON gives its reason.
    """
    with open(path, "rb") as fh:
        for index, raw in enumerate(fh):
            if index == 0 and raw.startswith(_BOM):
                raw = raw[len(_BOM) :]
            try:
                line = raw.decode("utf-8")
            except UnicodeDecodeError:
                yield index, None, "not valid UTF-8"
                continue
            if not line.strip():
                continue
            try:
                yield index, json.loads(line), None
            except json.JSONDecodeError as e:
                yield index, None, f"not valid JSON ({e.msg})"
            except RecursionError:
                yield index, None, "not valid JSON (nested too deeply)"


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


def _options(raw: Any) -> dict[str, Any] | None:
    """The options as a mapping in file order (a list is lettered A, B, ...); ``None`` if neither."""
    if isinstance(raw, list):
        return {chr(ord("A") + k): v for k, v in enumerate(raw)}
    return dict(raw) if isinstance(raw, dict) else None


def validate_record(rec: Any, language: str, index: int, strict: bool = True) -> QAItem | BadItem:
    """Check one decoded JSON record against the MMedBench schema.

    ``strict`` (evaluation, fine-tuning) needs >= 2 lettered, non-empty options and a gold answer among them;
    otherwise (decontamination) a question with string options is enough: it must not leak either way.
    """
    if not isinstance(rec, dict):
        return BadItem(language, index, "record is not a JSON object")
    question = rec.get("question")
    if not isinstance(question, str) or not question.strip():
        return BadItem(language, index, "missing or empty question")
    options = _options(rec.get("options", None if strict else {}))
    if options is None or (strict and not options):
        return BadItem(language, index, "missing or empty options")
    clean: dict[str, str] = {}
    for k, v in options.items():
        if not strict:
            if not isinstance(v, str):
                return BadItem(language, index, "options are not a mapping of strings")
            clean[str(k)] = v
            continue
        key = str(k).strip().upper()
        if not _LETTER.match(key):
            return BadItem(language, index, f"option key {k!r} is not a single letter")
        if not isinstance(v, str) or not v.strip():
            return BadItem(language, index, f"option {key} is empty")
        clean[key] = v
    answers = parse_answer_idx(rec.get("answer_idx"))
    if strict:
        if len(clean) < 2:
            return BadItem(language, index, "fewer than two options")
        if not answers:
            return BadItem(language, index, f"answer_idx {rec.get('answer_idx')!r} is not a letter list")
        missing = [a for a in answers if a not in clean]
        if missing:
            return BadItem(
                language, index, f"answer_idx {','.join(missing)} not among options {''.join(clean)}"
            )
    rationale = rec.get("rationale")
    hc, hcp = rec.get("human_checked"), rec.get("human_check_passed")
    return QAItem(
        language=language,
        index=index,
        id=str(rec.get("source_id") or rec.get("id") or f"{language}-{index}"),
        question=question,
        options=clean,
        answers=answers,
        rationale=rationale if isinstance(rationale, str) else "",
        human_checked=hc if isinstance(hc, bool) else None,
        human_check_passed=hcp if isinstance(hcp, bool) else None,
        source_id=None if rec.get("source_id") is None else str(rec["source_id"]),
    )


def load_language(path: str | Path, language: str, strict: bool = True) -> LanguageSet:
    """Read one ``<Language>.jsonl``; blank lines keep their line number but are not items."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"MMedBench file for {language} not found: {path}")
    out = LanguageSet(language=language, path=path)
    try:
        for index, rec, reason in iter_json_lines(path):
            res = (
                BadItem(language, index, reason) if reason else validate_record(rec, language, index, strict)
            )
            (out.items if isinstance(res, QAItem) else out.bad).append(res)
    except OSError as e:
        raise UserError(f"cannot read MMedBench file {path}: {e.strerror or e}") from None
    if strict and not out.items and not out.bad:
        raise UserError(f"MMedBench file for {language} is empty: {path}")
    return out


def split_dir(data_dir: str | Path, split: str) -> Path:
    """The folder holding ``<Language>.jsonl`` for ``split`` (``Test``/``Train``); a flat folder counts as Test.

    A folder with both flat language files and a ``Test/`` is refused: which one is the test set is a guess.
    """
    root = Path(data_dir)
    if not root.is_dir():
        raise UserError(f"MMedBench folder not found: {root}")
    sub = root / split
    if sub.is_dir():
        if split == "Test" and available_languages(root) and available_languages(sub):
            raise UserError(
                f"{root} has both <Language>.jsonl files and a Test/ folder with them; point at one of the two"
            )
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
    data_dir: str | Path,
    split: str = "Test",
    languages: tuple[str, ...] | list[str] = (),
    strict: bool = True,
) -> dict[str, LanguageSet]:
    """Language -> validated items of ``split``, in the paper's language order."""
    folder = split_dir(data_dir, split)
    return {
        lang: load_language(folder / f"{lang}.jsonl", lang, strict)
        for lang in resolve_languages(folder, languages)
    }


def find_item(data_dir: str | Path, language: str, index: int, split: str = "Test") -> QAItem:
    """The valid item at line ``index`` of ``language`` (a ``UserError`` saying why when there is none)."""
    ls = load_benchmark(data_dir, split, [language])
    lang = next(iter(ls))
    for it in ls[lang].items:
        if it.index == index:
            return it
    for b in ls[lang].bad:
        if b.index == index:
            raise UserError(f"{lang} item {index} is not usable: {b.reason}")
    raise UserError(f"{lang} has no item at line index {index}")


def data_digest(sets: Iterable[LanguageSet]) -> str:
    """``sha256:…`` of the language files scored (name and bytes, in the given order): which data made a result."""
    h = hashlib.sha256()
    for ls in sets:
        h.update(f"{ls.path.name}\n".encode() + ls.path.read_bytes())
    return "sha256:" + h.hexdigest()

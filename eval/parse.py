"""Answer parsing that survives real model outputs in six languages.

Order of evidence: ``\\boxed{X}``; the paper's ``OPTION X IS CORRECT`` line; the last answer marker
(``Answer:``, ``答案：``, ``正解は``, ``Ответ:``, ``Respuesta:``, ``Réponse :`` …) followed by letters or an
option's text; a response that starts with letters (``B.``, ``(B)``, ``A, C``) or with an option's text
(``да``). Anything after an end-of-text token or a new ``###Question``/``### Instruction`` block is ignored.
"""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Mapping
from dataclasses import dataclass

#: End-of-text tokens of common tokenizers; callers may pass others (``extra_eot``).
EOT_MARKERS: tuple[str, ...] = (
    "</s>",
    "<|endoftext|>",
    "<|im_end|>",
    "<|eot_id|>",
    "<|end_of_text|>",
    "<|end|>",
    "<eos>",
    "<end_of_turn>",
    "<|action_end|>",
)
#: Any ``<|...|>`` special token (ChatML, Llama 3, InternLM2 …) also ends the answer.
_PIPE_TOKEN = re.compile(r"<\|[^|<>\s]{1,40}\|>")
_NEXT_BLOCK = re.compile(
    r"###\s*Question\s*:|###\s*Instruction\s*:|### Input:|\nBelow is an instruction", re.I
)

_SEP = re.compile(r"\s*(?:,|、|，|;|/|&|\+|と|及び|和|及|\band\b|\bet\b|\by\b|\bи\b|\bund\b)\s*|\s+")
_ONE_LETTER = re.compile(r"[\(\[（]?([A-Z])[\)\]）]?(?![A-Za-z0-9])")
#: what may follow a bare leading letter ("B.", "B)", "B:", "B" alone) so that "A patient" is not read as A.
_LEADING_END = re.compile(r"\s*(?:$|[.\):：、,，。;\n<\[]|-\s)")
_OPTION_LINE = re.compile(
    r"(?:OPTIONS?|OPCI[OÓ]N(?:ES)?|R[EÉ]PONSES?)\s*:?\s*([A-Z](?:\s*(?:,|、|，|AND|Y|ET)\s*[A-Z])*)\s+(?:IS|ARE|ES|SON|EST|SONT)\s+CORRECT",
    re.I,
)
_MARKERS = re.compile(
    r"(?:###\s*)?(?:the\s+)?(?:correct\s+|right\s+|best\s+|final\s+)?answers?(?:\s+(?:is|are))?\s*[:：]?"
    r"|(?:correct|right|best)\s+(?:option|choice)s?\s+(?:is|are)\s*[:：]?"
    r"|答案(?:是|为|為)?\s*[:：]?|正确答案(?:是|为)?\s*[:：]?|答\s*[:：]"
    r"|正解(?:は|：|:)|答え(?:は|：|:)|解答(?:は|：|:)"
    r"|(?:правильный\s+)?ответ\s*[:：-]?"
    r"|(?:la\s+)?respuesta(?:\s+correcta)?(?:\s+es)?\s*[:：]?"
    r"|(?:la\s+)?(?:bonne\s+)?r[ée]ponses?(?:\s+(?:correctes?|exactes?|justes?))?(?:\s+est|\s+sont)?\s*[:：]?",
    re.I,
)

_BOXED = re.compile(r"\\boxed\{\s*([A-Z](?:\s*,\s*[A-Z])*)\s*\}")
_LOWER_LETTER = re.compile(r"[\(\[]?([a-z])[\)\]]?(?=\s*(?:$|[.,;:)\n]))")
#: Words between a marker and the letter: "respuesta correcta es la D", "the answer is option C".
_FILLER = re.compile(r"^(?:(?:is|es|est|la|le|el|the|option|opci[oó]n|choice|letter|letra)\s+)*", re.I)


@dataclass(frozen=True)
class Parsed:
    """Parsed letters (``None`` when unparseable) and which rule matched, for the report."""

    letters: tuple[str, ...] | None
    rule: str


def strip_eot(text: str, extra_eot: tuple[str, ...] = ()) -> str:
    """Cut at the first end-of-text token or the start of a new prompt block the model invented."""
    cut = len(text)
    for marker in (*EOT_MARKERS, *extra_eot):
        if marker:
            pos = text.find(marker)
            if pos != -1:
                cut = min(cut, pos)
    for rx in (_PIPE_TOKEN, _NEXT_BLOCK):
        m = rx.search(text, 1 if rx is _NEXT_BLOCK else 0)
        if m:
            cut = min(cut, m.start())
    return text[:cut]


def _letters_at(segment: str, options: Mapping[str, str], strict: bool = False) -> tuple[str, ...] | None:
    """Option letters listed at the very start of ``segment`` (``B``, ``(B)``, ``A, C``, ``D and E``).

    ``strict`` (no answer marker before it) also asks that the letters be followed by punctuation or the end,
    so that "A patient with…" is not read as answer A.
    """
    pos, found = 0, []
    seg = segment.lstrip()
    while True:
        m = _ONE_LETTER.match(seg, pos)
        if not m or m.group(1) not in options:
            break
        found.append(m.group(1))
        pos = m.end()
        sep = _SEP.match(seg, pos)
        if (
            not sep
            or not _ONE_LETTER.match(seg, sep.end())
            or _ONE_LETTER.match(seg, sep.end()).group(1) not in options
        ):
            break
        pos = sep.end()
    if not found:
        return None
    if strict and seg[pos - 1] not in ")]）" and not _LEADING_END.match(seg, pos):
        return None
    return tuple(sorted(set(found)))


def _option_text_at(segment: str, options: Mapping[str, str]) -> tuple[str, ...] | None:
    """The option whose text opens ``segment``, followed by punctuation or the end (``да``, ``Metformin.``)."""
    seg = segment.strip().casefold()
    hits = []
    for k, v in options.items():
        nv = v.strip().casefold().rstrip(".。")
        if nv and seg.startswith(nv) and re.match(r"\s*(?:$|[.,;:!?。、，！？)\]»\"'])", seg[len(nv) :]):
            hits.append((len(nv), k))
    if not hits:
        return None
    hits.sort(reverse=True)
    if len(hits) > 1 and hits[0][0] == hits[1][0]:
        return None
    return (hits[0][1],)


def parse_answer(text: str, options: Mapping[str, str], extra_eot: tuple[str, ...] = ()) -> Parsed:
    """Letters chosen by a raw model output, or ``Parsed(None, "unparsed")``."""
    body = unicodedata.normalize("NFKC", strip_eot(text or "", extra_eot))
    body = re.sub(r"\*+|`+", "", body).strip()  # markdown emphasis around letters
    if not body:
        return Parsed(None, "empty")
    lines = list(_OPTION_LINE.finditer(body))
    for m in reversed(list(_BOXED.finditer(body))):
        letters = tuple(sorted(set(re.findall(r"[A-Z]", m.group(1)))))
        if all(x in options for x in letters):
            return Parsed(letters, "boxed")
    for m in reversed(lines):
        words = re.sub(r"(?i)\b(?:and|et|y)\b", " ", m.group(1))
        letters = tuple(sorted({x.upper() for x in re.findall(r"[A-Za-z]", words)}))
        if letters and all(x in options for x in letters):
            return Parsed(letters, "option_is_correct")
    for m in reversed(list(_MARKERS.finditer(body))):
        rest = body[m.end() :]
        rest = _FILLER.sub("", rest.lstrip(" \t:：-—"))
        got = _letters_at(rest, options)
        if got:
            return Parsed(got, "answer_marker")
        lower = _LOWER_LETTER.match(rest)
        if lower and lower.group(1).upper() in options:
            return Parsed((lower.group(1).upper(),), "answer_marker")
        got = _option_text_at(rest.split("\n", 1)[0], options)
        if got:
            return Parsed(got, "answer_marker_text")
    got = _letters_at(_FILLER.sub("", body), options, strict=True)
    if got:
        return Parsed(got, "leading_letters")
    got = _option_text_at(body.split("\n", 1)[0], options)
    if got:
        return Parsed(got, "option_text")
    return Parsed(None, "unparsed")

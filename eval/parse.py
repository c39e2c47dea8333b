"""Answer parsing that survives real model outputs in six languages, and never reads a wrong letter.

Order of evidence: ``\\boxed{X}``; the paper's ``OPTION X IS CORRECT`` line; the last answer marker
(``Answer:``, ``答案：``, ``选``, ``正解は``, ``Ответ:``, ``Respuesta:``, ``Réponse :``, ``I would choose`` …) followed
by letters (upper- or lower-case lists read whole, Oxford commas, brackets such as ``「e」``, a negation skipped:
"not D; it is A") or an option's text; ``B is correct``; a response that starts with letters (``B.``, ``(B)``,
``A, C``) or with an option's text (``да``). Cyrillic ``А``/``Б`` count as A/B; ``В`` (third letter, Latin-B
look-alike) does not. When unsure (a hesitation "A or B", a bare negation, prose after a lower-case letter) the
answer is unparsed, and counted, never guessed. Anything after an end-of-text token or a new
``###Question``/``### Instruction`` block is ignored.
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

#: between two letters of a list: "A, C", "A、C", "AとC", "D and E", Oxford-comma "A, B, and C", "A y C" ...
_SEP = re.compile(
    r"\s*(?:(?:,|、|，|;|/|&|\+|と|及び|和|及)\s*(?:(?:and|et|y|и|und)\s+)?|(?:and|et|y|и|und)\s+)|\s+", re.I
)
_OPEN, _CLOSE = "([（「『【", ")]）」』】"
_ONE_LETTER = re.compile(rf"[{re.escape(_OPEN)}]?([A-Z])[{re.escape(_CLOSE)}]?(?![A-Za-z0-9])")
_ANY_LETTER = re.compile(rf"[{re.escape(_OPEN)}]?([A-Za-z])[{re.escape(_CLOSE)}]?(?![A-Za-z0-9])")
#: what may follow a bare leading letter ("B.", "B)", "B:", "B" alone) so that "A patient" is not read as A.
_LEADING_END = re.compile(r"\s*(?:$|[.\):：、,，。;\n<\[]|-\s)")
#: after lower-case letters: the end, or anything but a Latin word ("c です", "b, d." but not "a patient")
_LOWER_END = re.compile(r"\s*(?:$|[^\sA-Za-z0-9])")
#: "A or B": a hesitation between letters is not an answer
_HESITATION = re.compile(r"\s*,?\s*(?:or|ou|o|или|或|または|か)\s*[\(\[]?[A-Za-z]\b", re.I)
_OPTION_LINE = re.compile(
    r"(?:OPTIONS?|OPCI[OÓ]N(?:ES)?|R[EÉ]PONSES?)\s*:?\s*([A-Z](?:\s*(?:,|、|，|AND|Y|ET)\s*[A-Z])*)\s+(?:IS|ARE|ES|SON|EST|SONT)\s+CORRECT",
    re.I,
)
#: "B is correct.", "A and C are the correct answers" (capital letters only: "a is correct" is prose)
_IS_CORRECT = re.compile(
    r"(?<![A-Za-z0-9])([A-Z](?:(?:\s*,\s*(?:and\s+)?|\s+and\s+)[A-Z])*)\s+(?i:is|are)\s+(?i:the\s+)?(?i:correct|right)\b"
)
_MARKERS = re.compile(
    r"(?:###\s*)?(?:the\s+)?(?:correct\s+|right\s+|best\s+|final\s+)?answers?(?:\s+(?:is|are))?\s*[:：]?"
    r"|(?:correct|right|best)\s+(?:option|choice)s?\s+(?:is|are)\s*[:：]?"
    r"|\bI\s+(?:would\s+|will\s+|'d\s+)?(?:choose|pick|select|go\s+with)\b|\bmy\s+(?:final\s+)?(?:answer|choice)\s+is\b"
    r"|答案(?:是|为|為)?\s*[:：]?|正确答案(?:是|为)?\s*[:：]?|答\s*[:：]|(?:故|应|應|所以)?选(?!项)(?:择)?\s*[:：]?"
    r"|正解(?:は|：|:)|答え(?:は|：|:)|解答(?:は|：|:)"
    r"|(?:правильный\s+)?ответ\s*[:：-]?"
    r"|(?:la\s+)?respuesta(?:\s+correcta)?(?:\s+es)?\s*[:：]?|(?:la\s+)?opci[oó]n\s+correcta(?:\s+es)?\s*[:：]?"
    r"|(?:la\s+)?(?:bonne\s+)?r[ée]ponses?(?:\s+(?:correctes?|exactes?|justes?))?(?:\s+est|\s+sont)?\s*[:：]?",
    re.I,
)
#: "not D; it is A" after a marker: the negated letter is skipped, what is stated after it is the answer
_NEGATION = re.compile(
    r"^(?:not|no\s+es|n'est\s+pas|не)\s+(?:option\s+)?[\(\[]?[A-Za-z]\b[\)\]]?[\s.,;:!—-]*"
    r"(?:(?:but|rather|instead|it\s+is|it's|that\s+is|sino|mais)\s*)*",
    re.I,
)
#: Cyrillic capitals that can only be the first two option letters (В looks like B but is the third letter)
_CYRILLIC_AB = re.compile(r"(?<![^\W\d_])([АБ])(?![^\W\d_])")

_BOXED = re.compile(r"\\boxed\{\s*([A-Z](?:\s*,\s*[A-Z])*)\s*\}")
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


def _letters_at(
    segment: str, options: Mapping[str, str], strict: bool = False, lower_ok: bool = False
) -> tuple[str, ...] | None | bool:
    """Option letters listed at the very start of ``segment`` (``B``, ``(B)``, ``A, C``, ``D and E``).

    ``strict`` (no answer marker before it) also asks that the letters be followed by punctuation or the end,
    so that "A patient with…" is not read as answer A. ``lower_ok`` (right after a marker) accepts lower-case
    letters when the whole list is followed by the end or something that is not a Latin word. Returns
    ``False`` for a hesitation ("A or B"), which must not be read at all.
    """
    one = _ANY_LETTER if lower_ok else _ONE_LETTER
    pos, found = 0, []
    seg = segment.lstrip()
    while True:
        m = one.match(seg, pos)
        if not m or m.group(1).upper() not in options:
            break
        found.append(m.group(1))
        pos = m.end()
        sep = _SEP.match(seg, pos)
        nxt = one.match(seg, sep.end()) if sep else None
        if not nxt or nxt.group(1).upper() not in options:
            break
        pos = sep.end()
    if not found:
        return None
    if _HESITATION.match(seg, pos):
        return False
    if any(x.islower() for x in found) and not _LOWER_END.match(seg, pos):
        return None
    if strict and seg[pos - 1] not in _CLOSE and not _LEADING_END.match(seg, pos):
        return None
    return tuple(sorted({x.upper() for x in found}))


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


def _marker_answer(body: str, options: Mapping[str, str]) -> Parsed | None:
    """The answer after the last answer marker that names one; ``Parsed(None, …)`` when it is unsure."""
    for m in reversed(list(_MARKERS.finditer(body))):
        rest = body[m.end() :].lstrip(" \t:：-—")
        neg = _NEGATION.match(rest)
        if neg:
            got = _letters_at(_FILLER.sub("", rest[neg.end() :]), options)
            return Parsed(got, "answer_marker_negation") if got else Parsed(None, "negated")
        rest = _FILLER.sub("", rest)
        got = _letters_at(rest, options, lower_ok=True)
        if got is False:
            return Parsed(None, "hesitation")
        if got:
            return Parsed(got, "answer_marker")
        got = _option_text_at(rest.split("\n", 1)[0], options)
        if got:
            return Parsed(got, "answer_marker_text")
    return None


def parse_answer(text: str, options: Mapping[str, str], extra_eot: tuple[str, ...] = ()) -> Parsed:
    """Letters chosen by a raw model output, or ``Parsed(None, rule)`` when no answer can be read for sure."""
    body = unicodedata.normalize("NFKC", strip_eot(text or "", extra_eot))
    body = re.sub(r"\*+|`+", "", body).strip()  # markdown emphasis around letters
    body = _CYRILLIC_AB.sub(lambda m: "AB"["АБ".index(m.group(1))], body)
    if not body:
        return Parsed(None, "empty")
    for m in reversed(list(_BOXED.finditer(body))):
        letters = tuple(sorted(set(re.findall(r"[A-Z]", m.group(1)))))
        if all(x in options for x in letters):
            return Parsed(letters, "boxed")
    for m in reversed(list(_OPTION_LINE.finditer(body))):
        words = re.sub(r"(?i)\b(?:and|et|y)\b", " ", m.group(1))
        letters = tuple(sorted({x.upper() for x in re.findall(r"[A-Za-z]", words)}))
        if letters and all(x in options for x in letters):
            return Parsed(letters, "option_is_correct")
    got = _marker_answer(body, options)
    if got:
        return got
    for m in reversed(list(_IS_CORRECT.finditer(body))):
        letters = tuple(sorted(set(re.findall(r"[A-Z]", re.sub(r"\band\b", " ", m.group(1))))))
        if letters and all(x in options for x in letters):
            return Parsed(letters, "letter_is_correct")
    got = _letters_at(_FILLER.sub("", body), options, strict=True)
    if got is False:
        return Parsed(None, "hesitation")
    if got:
        return Parsed(got, "leading_letters")
    got = _option_text_at(body.split("\n", 1)[0], options)
    if got:
        return Parsed(got, "option_text")
    return Parsed(None, "unparsed")

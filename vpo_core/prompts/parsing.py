"""Reading the judge's and teacher's answers.

Every parser returns a :class:`Parsed` with a status: ``ok``, ``refusal`` (the model
declined: the paper counts these; GPT-4o refuses even queries like "20 - 11 coins = 9
coins"), ``unparseable``, or for prompts ``cut-off`` (``[[start]]`` without ``[[end]]``:
the answer hit its token budget).

``strict`` (the paper's setting) decides as the official ``src/process_data.py`` does:
a verdict is Yes when "Yes" occurs after the first ``Final Judgement (Yes or No)``
marker (up to a second one), else No; a prompt needs both markers exactly as written
(``[[start]]`` and ``[[end]]`` anywhere in the answer: no case, spacing or spelling
variants) and is ``answer.split('[[start]]')[1].split('[[end]]')[0].strip()``: the text
after the first ``[[start]]`` up to the next ``[[start]]`` or ``[[end]]``, whitespace
trimmed, quotes and code fences kept. ``[[start]]`` without ``[[end]]`` is ``cut-off``.

``lenient`` is the documented fallback for small local models that ignore the format:
an answer without ``[[start]]`` is taken as the prompt itself once preambles ("Sure,
here is...") are removed and it has at least eight words; a judgement without the
``Final Judgement (Yes or No):`` line is read from a leading yes/no, else from the first
statement about alignment ("is well aligned" = yes; "is not aligned", "misaligned",
"does not align" = no: SmolLM2-135M writes critiques like these and never the verdict
line), else from the last standalone yes/no. ``strict`` accepts only the template's
format (the paper's setting).
"""

from __future__ import annotations

import re
from dataclasses import dataclass

_START = re.compile(r"\[\[\s*start\s*\]\]", re.I)
_END = re.compile(r"\[\[\s*end\s*\]\]", re.I)
_FENCE = re.compile(r"```[a-zA-Z]*\n?")
VERDICT_MARKERS = {"judgement": "Final Judgement (Yes or No)", "unsafe": "Unsafe (Yes or No)"}
_VERDICT_LINE = {
    "judgement": re.compile(r"final\s+judge?ment\s*\(\s*yes\s+or\s+no\s*\)", re.I),
    "unsafe": re.compile(r"unsafe\s*\(\s*yes\s+or\s+no\s*\)", re.I),
}
_REFUSAL = re.compile(
    r"^\W*(i'?m sorry|i am sorry|sorry,? (but )?i|i apologi[sz]e|i (cannot|can ?not|can't|"
    r"won't|will not|am unable|'m unable|am not able)|as an ai\b|i must decline|"
    r"unfortunately,? i (cannot|can't))", re.I)
# Near misses of the markers small models write ("[Video Prompt: [start]]", "[start]]"),
# read in lenient mode only.
_LOOSE_START = re.compile(r"\[?\s*(?:(?:the\s+)?video\s+prompt\s*:\s*)?\[{1,2}\s*start\s*\]{1,2}",
                          re.I)
_LOOSE_END = re.compile(r"\[{1,2}\s*end\s*\]{1,2}", re.I)
_PREAMBLE = re.compile(
    r"^\s*((sure|okay|ok|certainly|of course|absolutely)[!,.]?\s*)?"
    r"((here\s+is|here's|below\s+is)[^:\n]*:|(final\s+refined\s+prompt|refined\s+prompt|"
    r"video\s+prompt|prompt)\s*:)\s*", re.I)
_YES_NO = re.compile(r"\b(yes|no)\b", re.I)
_ALIGNS = re.compile(r"(?P<neg>\bnot\s+|n't\s+|\bmis-?|\bpoorly\s+|\bfails?\s+to\s+)?"
                     r"(?:(?:well|fully|properly|really|be)[\s-]+)?(?:(?<=mis)|(?<=mis-)|\b)"
                     r"align(?:ed|s)?\b", re.I)
MIN_FALLBACK_WORDS = 8


@dataclass(frozen=True)
class Parsed:
    """``status`` is ok / refusal / unparseable; ``fallback`` marks lenient parses."""

    status: str
    value: str | None = None
    fallback: bool = False


def is_refusal(text: str) -> bool:
    """The model declined to answer (checked on the answer's opening)."""
    return bool(_REFUSAL.search(text.strip()[:200]))


_QUOTES = {'"': '"', "“": "”", "'": "'"}


def unquote(text: str) -> str:
    """A prompt without the quotes wrapping all of it; quotes inside it, or closing a
    quoted word at its end ('a sign reading "OPEN"'), stay."""
    text = text.strip()
    close = _QUOTES.get(text[:1])
    if close and len(text) > 1 and text.endswith(close) and text[:1] not in text[1:-1] \
            and close not in text[1:-1]:
        return text[1:-1].strip()
    return text


OFFICIAL_START, OFFICIAL_END = "[[start]]", "[[end]]"


def extract_strict(text: str) -> Parsed:
    """The official reading (src/process_data.py, ``process_dpo_data``): both markers
    present, then the text after the first ``[[start]]`` up to the next marker."""
    if OFFICIAL_START in text and OFFICIAL_END in text:
        value = text.split(OFFICIAL_START)[1].split(OFFICIAL_END)[0].strip()
        return Parsed("ok", value) if value else Parsed("unparseable")
    if OFFICIAL_START in text:
        value = text.split(OFFICIAL_START)[1].strip()
        return Parsed("cut-off", value) if value else Parsed("unparseable")
    return Parsed("refusal") if is_refusal(text) else Parsed("unparseable")


def extract_prompt(text: str | None, lenient: bool = False) -> Parsed:
    """The prompt of an answer: :func:`extract_strict`, or in lenient mode the text
    between the first ``[[start]]`` and the ``[[end]]`` after it (any case or spacing),
    code fences and wrapping quotes removed; without ``[[end]]`` the text is kept, marked
    as a fallback, and the near misses of the module docstring are read."""
    if not text or not text.strip():
        return Parsed("unparseable")
    if not lenient:
        return extract_strict(text)
    text = _FENCE.sub("", text)
    start = _START.search(text)
    if start:
        body = text[start.end():]
        end = _END.search(body)
        value = unquote(body[:end.start()] if end else body)
        if not value:
            return Parsed("unparseable")
        if end is None:
            return Parsed("ok", value, fallback=True)
        return Parsed("ok", value)
    if is_refusal(text):
        return Parsed("refusal")
    loose = _LOOSE_START.search(text)
    if loose:
        body = text[loose.end():]
        end = _LOOSE_END.search(body)
        value = " ".join(unquote(body[:end.start()] if end else body).split())
        if len(value.split()) >= MIN_FALLBACK_WORDS:
            return Parsed("ok", value, fallback=True)
    body = _END.sub("", _PREAMBLE.sub("", text.strip(), count=1))
    paragraphs = [unquote(p) for p in re.split(r"\n\s*\n", body)]
    value = max(paragraphs, key=lambda p: len(p.split()), default="")
    if len(value.split()) < MIN_FALLBACK_WORDS:
        return Parsed("unparseable")
    return Parsed("ok", " ".join(value.split()), fallback=True)


def parse_verdict(text: str | None, kind: str, lenient: bool = False) -> Parsed:
    """``yes``/``no`` after the ``Final Judgement (Yes or No)`` marker (kind
    ``judgement``) or ``Unsafe (Yes or No)`` (kind ``unsafe``), decided as the official
    code does: Yes when "Yes" occurs between the first marker and the next, else No."""
    if not text or not text.strip():
        return Parsed("unparseable")
    if not lenient:   # the marker exactly as written, as the official code splits on it
        parts = text.split(VERDICT_MARKERS[kind])
        if len(parts) > 1:
            return Parsed("ok", "yes" if "Yes" in parts[1] else "no")
        return Parsed("refusal") if is_refusal(text) else Parsed("unparseable")
    parts = _VERDICT_LINE[kind].split(text)
    if len(parts) > 1:
        first = _YES_NO.search(parts[1])   # small models write "yes" in lower case
        return Parsed("ok", first.group(1).lower() if first else "no",
                      fallback=first is None or first.group(1) != first.group(1).title())
    if is_refusal(text):
        return Parsed("refusal")
    lead = _YES_NO.match(text.strip().lstrip("*_\"'“ "))
    if lead:
        return Parsed("ok", lead.group(1).lower(), fallback=True)
    aligns = _ALIGNS.search(text) if kind == "judgement" else None
    if aligns:
        return Parsed("ok", "no" if aligns.group("neg") else "yes", fallback=True)
    words = _YES_NO.findall(text)
    if not words:
        return Parsed("unparseable")
    return Parsed("ok", words[-1].lower(), fallback=True)

"""Values copied from the input: what an extractive field may hold for one document, and its decoding schema.

A task field declared ``extract: verbatim`` (or ``spans``) holds a value copied from the request's input, so
decoding is constrained to the values that input offers (``decoding_schema``), on every backend, through the
same grammar machinery as the output schema (``serve/grammar.py``):

- a **number** field may hold a number printed in the input (``$1,234.50``, ``RM 28.15``, ``1.234,50``);
- a **date** field (``compare: date``) a date printed in the input in one of the task's ``formats``, written
  in its ``canonical`` form (ISO when the schema says ``format: date``; as printed otherwise);
- a string field with a ``pattern`` a substring of the input that matches it;
- any other **string** field a span of the input (``x-tuneloop-span`` in the schema, which the grammar builder
  turns into a substring automaton), or, with ``spans``, several spans joined by single spaces.

The input is read after the task's ``extraction`` normalisation: runs of whitespace (line breaks too) read as
one space unless ``whitespace: exact``; ``case: any`` lets a span be written in lower, UPPER or Title case.
A nullable field may always be null (the document does not say); a field with no candidate at all in its
input can only be null, and a required non-nullable one keeps its plain schema (there is nothing to copy),
as does a free string field over an input longer than ``MAX_SPAN_TEXT`` characters.

Formats constrain generation too, extractive or not: a date field with ``formats`` gets a ``pattern`` of its
canonical form (or of the formats), a numeric string field a number pattern. ``value_in_input`` is the same
rule applied after the fact, for scoring answers of any model (an API model's included).
"""

from __future__ import annotations

import calendar
import math
import re
from collections.abc import Iterable, Sequence
from datetime import date
from functools import lru_cache
from typing import TYPE_CHECKING, Any

from tuneloop.comparators import DEFAULT_DATE_FORMATS, normalize_text, parse_date, parse_number

if TYPE_CHECKING:
    from tuneloop.task import Extraction, FieldSpec, Task

# The schema keyword the grammar builder reads: {"x-tuneloop-span": {"text": ..., "join": bool, "case": ...}}.
SPAN_KEYWORD = "x-tuneloop-span"
# More candidates than this and an enum stops being a useful constraint (and a cheap grammar): span instead.
MAX_CANDIDATES = 2000
# A span grammar grows with its text (llama.cpp: ~2 rules per character, ~0.2 s per 10k characters to build
# and parse); beyond this many characters a free string field is left to its plain schema.
MAX_SPAN_TEXT = 32_000

_MONTHS = [name.lower() for name in calendar.month_name[1:]]  # strptime reads English names
_DIRECTIVE_PATTERNS = {
    "d": r"(?:0?[1-9]|[12][0-9]|3[01])(?:st|nd|rd|th)?",
    "m": r"(?:0?[1-9]|1[0-2])",
    "Y": r"(?:1[89][0-9]{2}|2[01][0-9]{2})",
    "y": r"[0-9]{2}",
    "b": "(?:" + "|".join(month[:3] for month in _MONTHS) + r")\.?",
    "B": "(?:" + "|".join(_MONTHS) + ")",
}
_NUMBER = re.compile(
    r"(?<![0-9])"
    r"(?:[0-9]{1,3}(?:\.[0-9]{3})+,[0-9]{1,2}"  # 1.234,50
    r"|[0-9]{1,3}(?:,[0-9]{3})+(?:\.[0-9]+)?"  # 1,234.50
    r"|[0-9]+,[0-9]{1,2}(?![0-9])"  # 28,15
    r"|[0-9]+(?:\.[0-9]+)?)"  # 28.15, 28
    r"(?![0-9])"
)
NUMERIC_STRING_PATTERN = r"^-?[0-9][0-9,. ]*$"


def source_text(messages: Iterable[Any]) -> str:
    """The text values may be copied from: the request's user messages, in order."""
    parts: list[str] = []
    for message in messages:
        role = message.get("role") if isinstance(message, dict) else getattr(message, "role", None)
        content = message.get("content") if isinstance(message, dict) else getattr(message, "content", None)
        if role != "user" or content is None:
            continue
        if isinstance(content, str):
            parts.append(content)
        elif isinstance(content, list):  # content parts: only the text ones carry copyable values
            parts.extend(str(part.get("text", "")) for part in content if isinstance(part, dict))
    return "\n".join(parts)


def normalise_input(text: str, extraction: Extraction) -> str:
    """The input as extractive values are matched against it (the task's ``extraction`` settings)."""
    return " ".join(text.split()) if extraction.whitespace == "collapse" else text


def is_constrained(task: Task) -> bool:
    """Whether any field of the task constrains decoding beyond its plain schema (extraction or formats)."""
    return any(_constrains(task, name) for name in task.field_names)


def _constrains(task: Task, name: str) -> bool:
    spec = task.field_spec(name)
    types = _types(task.output_schema["properties"][name])
    numeric_string = spec.compare == "number" and types & {"string"} and not types & {"number", "integer"}
    return bool(spec.extract or spec.formats or spec.canonical or numeric_string)


def decoding_schema(task: Task, text: str) -> dict[str, Any]:
    """The task's output schema with each constrained field narrowed to what ``text`` offers it.

    Validation after decoding stays on the task's own schema; this one only steers generation.
    """
    if not is_constrained(task):
        return task.output_schema
    normalised = normalise_input(text, task.extraction)
    properties = dict(task.output_schema["properties"])
    for name in task.field_names:
        if _constrains(task, name):
            properties[name] = constrained_property(task, name, normalised)
    return {**task.output_schema, "properties": properties}


def constrained_property(task: Task, name: str, text: str) -> dict[str, Any]:
    """One field's schema narrowed to ``text`` (already normalised); see the module docstring."""
    prop = task.output_schema["properties"][name]
    spec = task.field_spec(name)
    types = _types(prop)
    nullable = "null" in types
    if not spec.extract:
        pattern = _format_pattern(task, name)
        return {**prop, "pattern": pattern} if pattern and "pattern" not in prop else prop
    candidates = field_candidates(task, name, text)
    if candidates is None and "string" not in types:
        return prop  # more numbers than an enum can usefully hold: the plain schema
    if candidates is None:  # a free string: any span of the input
        if len(text) > MAX_SPAN_TEXT:
            return prop
        if not text.strip():
            return {"enum": [None]} if nullable else prop
        span = {"text": text, "join": spec.extract == "spans", "case": task.extraction.case}
        branch = {"type": "string", SPAN_KEYWORD: span}
        return {"anyOf": [branch, {"type": "null"}]} if nullable else branch
    if not candidates and not nullable:
        return prop  # nothing to copy, and null is not allowed: the plain schema is all we can ask
    return {"enum": [*candidates, None] if nullable else candidates}


def field_candidates(task: Task, name: str, text: str) -> list[Any] | None:
    """The values an extractive field may take from ``text``, as JSON values; None for a free string."""
    prop = task.output_schema["properties"][name]
    spec = task.field_spec(name)
    types = _types(prop)
    values: list[Any]
    if spec.compare == "date" or prop.get("format") == "date" or spec.formats:
        values = [_render_date(task, name, printed, parsed) for printed, parsed in find_dates(text, spec.formats)]
    elif types & {"number", "integer"}:
        numbers = [number for _, number in find_numbers(text)]
        if "number" not in types:
            numbers = [number for number in numbers if float(number).is_integer()]
        values = [_json_number(number) for number in numbers]
    elif spec.compare == "number":  # a numeric string, as printed
        values = [printed for printed, _ in find_numbers(text)]
    elif isinstance(prop.get("pattern"), str):
        values = find_pattern(text, prop["pattern"])
    else:
        return None
    unique = list(dict.fromkeys(values))
    return unique if len(unique) <= MAX_CANDIDATES else None


def value_in_input(task: Task, name: str, value: Any, text: str) -> bool:
    """Whether ``value`` of an extractive field could have been copied from ``text`` (null always could)."""
    if value is None:
        return True
    spec = task.field_spec(name)
    normalised = normalise_input(text, task.extraction)
    candidates = field_candidates(task, name, normalised)
    if candidates is not None:
        if isinstance(value, int | float) and not isinstance(value, bool):
            return any(isinstance(c, int | float) and abs(c - value) < 1e-9 for c in candidates)
        return value in candidates
    if not isinstance(value, str):
        return not _types(task.output_schema["properties"][name]) & {"string"}  # unconstrained: too many numbers
    pieces = [value] if spec.extract != "spans" else value.split(" ")
    return all(_is_span(piece, normalised, task.extraction.case) for piece in pieces if piece)


def _is_span(piece: str, text: str, case: str) -> bool:
    if piece in text:
        return True
    return case == "any" and any(piece in variant for variant in case_variants(text))


def case_variants(text: str) -> list[str]:
    """The forms a span may be written in under ``case: any``: as printed, lower, UPPER, Title."""
    return list(dict.fromkeys([text, text.lower(), text.upper(), text.title()]))


# --- finding values in text ------------------------------------------------------------------------


def find_numbers(text: str) -> list[tuple[str, float]]:
    """Every number printed in ``text``: (as printed, value), a minus sign right before it kept."""
    found: list[tuple[str, float]] = []
    for match in _NUMBER.finditer(text):
        printed = match.group(0)
        value = parse_number(printed)
        if value is None or not math.isfinite(value):  # 400 digits in a row parse to infinity: not JSON
            continue
        found.append((printed, value))
        if match.start() > 0 and text[match.start() - 1] == "-":
            found.append(("-" + printed, -value))
    return found


def find_dates(text: str, formats: Sequence[str] | None = None) -> list[tuple[str, date]]:
    """Every date printed in ``text`` in one of ``formats`` (default: the comparator's), with its value."""
    found: list[tuple[str, date]] = []
    for fmt in formats or DEFAULT_DATE_FORMATS:
        for match in _date_regex(fmt).finditer(text):
            printed = match.group(0)
            parsed = parse_date(printed, [fmt])
            if parsed is not None:
                found.append((printed, parsed))
    return found


def find_pattern(text: str, pattern: str) -> list[str]:
    """Substrings of ``text`` that the JSON Schema ``pattern`` accepts whole: at each position, the longest
    (greedy) match starting there, so overlapping values (the last four digits of a longer number) are found."""
    compiled = _lookahead(pattern)
    return [match.group(1) for match in compiled.finditer(text) if match.group(1)]


def date_pattern(formats: Sequence[str]) -> str:
    """A JSON Schema ``pattern`` (anchored) that accepts a date written in any of ``formats``."""
    return "^(?:" + "|".join(_date_body(fmt, anchored=True) for fmt in formats) + ")$"


def _format_pattern(task: Task, name: str) -> str | None:
    prop = task.output_schema["properties"][name]
    spec = task.field_spec(name)
    if spec.canonical or spec.formats:
        if prop.get("format") == "date":
            return None  # the schema's own format already holds it to ISO
        return date_pattern([spec.canonical] if spec.canonical else list(spec.formats or []))
    if spec.compare == "number":
        return NUMERIC_STRING_PATTERN
    return None


def _render_date(task: Task, name: str, printed: str, parsed: date) -> str:
    spec = task.field_spec(name)
    if spec.canonical:
        return parsed.strftime(spec.canonical)
    if task.output_schema["properties"][name].get("format") == "date":
        return parsed.isoformat()
    return printed


def _json_number(value: float) -> int | float:
    return int(value) if float(value).is_integer() and abs(value) < 2**53 else value


def _types(prop: dict[str, Any]) -> set[str]:
    kind = prop.get("type")
    if kind is None and "enum" in prop:
        return {"enum"}
    return {kind} if isinstance(kind, str) else set(kind or ["string"])


@lru_cache(maxsize=64)
def _date_regex(fmt: str) -> re.Pattern[str]:
    return re.compile(r"(?<![0-9A-Za-z])" + _date_body(fmt, anchored=False) + r"(?![0-9A-Za-z])", re.IGNORECASE)


def _date_body(fmt: str, *, anchored: bool) -> str:
    """A regex for what ``fmt`` prints; a space or comma in it matches as the comparator reads them."""
    out: list[str] = []
    index = 0
    while index < len(fmt):
        char = fmt[index]
        if char == "%" and index + 1 < len(fmt):
            directive = fmt[index + 1]
            # In a pattern (an answer's own form) the day is strict: two digits where the format writes two.
            if anchored and directive == "d":
                out.append(r"(?:0[1-9]|[12][0-9]|3[01])")
            elif anchored and directive == "m":
                out.append(r"(?:0[1-9]|1[0-2])")
            else:
                out.append(_DIRECTIVE_PATTERNS[directive])
            index += 2
            continue
        if char == " " and not anchored:
            out.append(r",? +")
        elif char == "," and not anchored:
            out.append(",?")
        else:
            out.append(re.escape(char))
        index += 1
    return "".join(out)


@lru_cache(maxsize=64)
def _lookahead(pattern: str) -> re.Pattern[str]:
    # JSON Schema patterns are unanchored searches; a field's value is the whole match, so the anchors go,
    # and a zero-width lookahead finds a match at every position (overlapping ones too).
    body = pattern.removeprefix("^").removesuffix("$")
    return re.compile(f"(?=({body}))")


def gold_coverage(task: Task, rows: Iterable[tuple[str, dict[str, Any]]]) -> dict[str, tuple[int, int]]:
    """Per extractive field: (gold values a constrained decoder could write, gold values), over ``rows`` of
    (input text, gold fields). What share of the right answers the constraint leaves reachable."""
    counts: dict[str, list[int]] = {}
    for text, gold in rows:
        for name in task.field_names:
            if not task.field_spec(name).extract or gold.get(name) is None:
                continue
            tally = counts.setdefault(name, [0, 0])
            tally[1] += 1
            tally[0] += _reachable(task, name, gold[name], text)
    return {name: (reached, total) for name, (reached, total) in counts.items()}


def _reachable(task: Task, name: str, gold: Any, text: str) -> bool:
    """Whether some value the constraint allows is judged equal to ``gold`` by the field's comparator."""
    from tuneloop.comparators import Verdict, compare_field

    spec: FieldSpec = task.field_spec(name)
    candidates = field_candidates(task, name, normalise_input(text, task.extraction))
    if candidates is None:
        return value_in_input(task, name, gold, text) or any(
            compare_field(spec, piece, gold) is Verdict.CORRECT for piece in _spans_like(gold, text, task)
        )
    return any(compare_field(spec, candidate, gold) is Verdict.CORRECT for candidate in candidates)


def _spans_like(gold: Any, text: str, task: Task) -> list[str]:
    """The input's windows of the gold's length (in words): the spans a fuzzy comparator could accept."""
    words = normalise_input(text, task.extraction).split(" ")
    size = max(1, len(normalize_text(gold).split(" ")))
    return [" ".join(words[i : i + size]) for i in range(0, max(1, len(words) - size + 1))]

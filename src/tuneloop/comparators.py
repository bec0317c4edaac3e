"""Field comparators: is a predicted value the same as the human-verified one?

Each field of a task has one comparator (``exact``, ``number``, ``date``, ``fuzzy``, ``enum``, ``list``),
declared in the task spec or inferred from the output schema (``Task.field_spec``). Both null is correct;
a value where the gold is null is a *hallucination*; null where the gold has a value is a *miss*; a wrong
value of an extractive field that its input does not hold is *invented* (``evals/scoring.py`` decides it).
"""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Sequence
from datetime import date, datetime
from difflib import SequenceMatcher
from enum import StrEnum
from typing import Any

from tuneloop.task import FieldSpec


class Verdict(StrEnum):
    CORRECT = "correct"
    WRONG = "wrong"
    HALLUCINATION = "hallucination"  # a value where the gold is null
    MISS = "miss"  # null where the gold has a value
    INVALID = "invalid"  # the whole output was not valid JSON for the schema
    INVENTED = "invented"  # a wrong value of a field copied from the input (extract) that its input does not hold

    @property
    def is_error(self) -> bool:
        return self is not Verdict.CORRECT


def normalize_text(value: Any) -> str:
    """Case-folded, accents and punctuation runs kept, whitespace collapsed."""
    text = unicodedata.normalize("NFKC", str(value)).casefold()
    return " ".join(text.split())


_CURRENCY = re.compile(r"(?i)\b(usd|us\$|dollars?)\b|[$€£]")
_US_NUMBER = re.compile(r"^[+-]?(\d{1,3}(,\d{3})+|\d+)(\.\d+)?$")
_EU_NUMBER = re.compile(r"^[+-]?\d{1,3}(\.\d{3})+,\d{1,2}$|^[+-]?\d+,\d{1,2}$")


def parse_number(value: Any) -> float | None:
    """A number from ``1234.56``, ``"$1,234.56"``, ``"1234.56 USD"``, ``"(1,234.56)"``, ``"6.125%"``."""
    if isinstance(value, bool):
        return None
    if isinstance(value, int | float):
        return float(value)
    if not isinstance(value, str):
        return None
    text = value.strip()
    negative = text.startswith("(") and text.endswith(")")
    text = _CURRENCY.sub("", text.strip("()")).replace("%", "").replace(" ", "").replace("\u00a0", "")
    if text.startswith("-$") or text.startswith("$-"):
        text = "-" + text[2:]
    if _US_NUMBER.match(text):
        number = float(text.replace(",", ""))
    elif _EU_NUMBER.match(text):
        number = float(text.replace(".", "").replace(",", "."))
    else:
        return None
    return -number if negative else number


DEFAULT_DATE_FORMATS = (
    "%Y-%m-%d", "%Y/%m/%d", "%m/%d/%Y", "%m/%d/%y", "%m-%d-%Y", "%m-%d-%y", "%m.%d.%Y",
    "%B %d %Y", "%b %d %Y", "%d %B %Y", "%d %b %Y", "%Y%m%d",
)  # fmt: skip
# The strftime directives a task's date formats may use (each one findable in text: extraction.py).
DATE_DIRECTIVES = ("d", "m", "b", "B", "Y", "y")
_ORDINAL = re.compile(r"(?<=\d)(st|nd|rd|th)\b", re.IGNORECASE)


def parse_date(value: Any, formats: Sequence[str] | None = None) -> date | None:
    """A date from ISO, US numeric (``04/15/2026``, ``4/15/26``) or written (``April 15th, 2026``) forms.

    ``formats`` (a task field's ``formats``) are tried first and win: "03/04/2018" is 3 April under
    ``%d/%m/%Y``, while the defaults read it American. ISO is always understood (it is the canonical form).
    """
    if isinstance(value, datetime):
        return value.date()
    if isinstance(value, date):
        return value
    if not isinstance(value, str):
        return None
    text = _ORDINAL.sub("", value.strip()).replace(",", " ").strip()
    text = " ".join(text.split())
    if re.fullmatch(r"\d{4}-\d{2}-\d{2}T.*", text):
        text = text[:10]
    candidates = [*(formats or ()), "%Y-%m-%d"] if formats else DEFAULT_DATE_FORMATS
    for fmt in candidates:
        parsed = _strptime(text, fmt)
        if parsed is not None:
            return parsed
    return None


def _strptime(text: str, fmt: str) -> date | None:
    """``text`` read with ``fmt``, a comma in the format read as the space it became, ``Sept.`` as ``Sep``."""
    fmt = " ".join(fmt.replace(",", " ").split())
    for attempt in (text, text.replace(".", " ").strip(), re.sub(r"(?i)\b([a-z]{3})[a-z]*\.?", r"\1", text)):
        attempt = " ".join(attempt.split())
        for form in (fmt, fmt.replace(".", " ")):
            try:
                return datetime.strptime(attempt, form).date()
            except ValueError:
                continue
    return None


def similarity(a: str, b: str) -> float:
    """Similarity in [0, 1] of two normalised strings (difflib's ratio)."""
    return SequenceMatcher(None, normalize_text(a), normalize_text(b)).ratio()


def _same(spec: FieldSpec, predicted: Any, gold: Any) -> bool:
    match spec.compare:
        case "number":
            p, g = parse_number(predicted), parse_number(gold)
            if p is None or g is None:
                return False
            return abs(p - g) <= max(spec.tolerance, spec.relative_tolerance * abs(g)) + 1e-9
        case "date":
            p, g = parse_date(predicted, spec.formats), parse_date(gold, spec.formats)
            return p is not None and p == g
        case "fuzzy":
            return similarity(str(predicted), str(gold)) >= spec.threshold
        case "list":
            if not isinstance(predicted, list) or not isinstance(gold, list):
                return False
            return sorted(map(normalize_text, predicted)) == sorted(map(normalize_text, gold))
        case "enum":
            allowed = {normalize_text(v) for v in spec.values or []}
            p = normalize_text(predicted)
            return (not allowed or p in allowed) and p == normalize_text(gold)
        case _:  # exact, after normalisation
            return normalize_text(predicted) == normalize_text(gold)


def compare_field(spec: FieldSpec, predicted: Any, gold: Any) -> Verdict:
    """The verdict for one field: correct, wrong, hallucination or miss."""
    if gold is None:
        return Verdict.CORRECT if predicted is None else Verdict.HALLUCINATION
    if predicted is None:
        return Verdict.MISS
    return Verdict.CORRECT if _same(spec, predicted, gold) else Verdict.WRONG

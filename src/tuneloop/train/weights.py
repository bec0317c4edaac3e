"""Value-weighted loss: which answer tokens are the answer's values, and the loss weight of each token.

Every backend decodes a task's answers under a grammar built from its JSON schema, so an answer's structure
(braces, keys, colons, commas, whitespace) is forced; what the model decides is each value: which of the
amounts, dates or names in the document the answer is. ``value_weight: w`` (``config.py``) weights the loss
of the tokens inside the answer's JSON values by ``w`` and every other answer token (structure, the
end-of-turn token) by 1; ``trainer.py`` takes the weighted mean.

A value is a scalar: a string with its quotes (the opening quote is where the answer chooses a string
over ``null``; the closing one is where the copy stops, and an empty string has nothing else), a number,
``true``, ``false`` or ``null``. Scalars inside arrays are values; object keys anywhere are structure. A
token is a value token when its characters overlap a value's. An answer that is not JSON has no values:
every token of it keeps weight 1.
"""

from __future__ import annotations

import json
import re
from json.decoder import scanstring

_WHITESPACE = re.compile(r"[ \t\n\r]*")
# What json.loads reads as a scalar other than a string (NaN and Infinity are Python's extensions).
_LITERAL = re.compile(r"-?(?:0|[1-9]\d*)(?:\.\d+)?(?:[eE][-+]?\d+)?|true|false|null|NaN|-?Infinity")


def value_spans(text: str) -> list[tuple[int, int]]:
    """Character spans ``[start, end)`` of the JSON scalar values in ``text``, in order; [] for non-JSON."""
    try:
        json.loads(text)
    except ValueError:
        return []
    spans: list[tuple[int, int]] = []
    _scan_value(text, _skip(text, 0), spans)
    return spans


def _skip(text: str, index: int) -> int:
    return _WHITESPACE.match(text, index).end()  # type: ignore[union-attr]  # always matches


def _scan_value(text: str, index: int, spans: list[tuple[int, int]]) -> int:
    """Record the scalar values of the (valid) JSON value at ``index``; return the index just after it."""
    opening = text[index]
    if opening in "{[":
        closing = "}" if opening == "{" else "]"
        index = _skip(text, index + 1)
        while text[index] != closing:
            if opening == "{":
                _, index = scanstring(text, index + 1)  # the key: structure
                index = _skip(text, _skip(text, index) + 1)  # past the colon
            index = _skip(text, _scan_value(text, index, spans))
            if text[index] == ",":
                index = _skip(text, index + 1)
        return index + 1
    if opening == '"':
        _, end = scanstring(text, index + 1)
    else:
        end = _LITERAL.match(text, index).end()  # type: ignore[union-attr]  # valid JSON: it matches
    spans.append((index, end))
    return end


def answer_value_spans(full: str, content: object, start: int, end: int) -> list[tuple[int, int]]:
    """The JSON values of an answer whose turn is ``full[start:end]``; none when the template changed the
    answer's text (nothing to locate it by) or the answer is not JSON."""
    if not isinstance(content, str):
        return []
    for text in (content, content.strip()):
        at = full.find(text, start, end) if text else -1
        if at >= 0:
            return [(at + first, at + last) for first, last in value_spans(text)]
    return []


def overlapping_tokens(offsets: list[tuple[int, int]], spans: list[tuple[int, int]]) -> list[bool]:
    """Per token (its ``(start, end)`` character offsets, in order): whether it overlaps one of ``spans``."""
    marks: list[bool] = []
    current = 0
    for start, end in offsets:
        while current < len(spans) and spans[current][1] <= start:
            current += 1
        marks.append(end > start and current < len(spans) and spans[current][0] < end)
    return marks


def loss_weights(value_mask: list[bool], value_weight: float) -> list[float]:
    """``value_weight`` at value tokens, 1 elsewhere (labels decide which positions count at all)."""
    return [value_weight if is_value else 1.0 for is_value in value_mask]

"""Redaction of personal data from logged calls, before anything reaches the store.

Applied to every string inside the logged request, response and error (keys of JSON objects are
left alone). Emails become ``[EMAIL]``; card numbers (13–19 digits, optionally grouped by spaces or
dashes, that pass the Luhn check, so amounts and account numbers are not caught) become ``[CARD]``;
each custom pattern becomes its ``replace`` text or ``[REDACTED:<name>]``.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any

from tuneloop.capture.config import RedactConfig

EMAIL = re.compile(r"[A-Za-z0-9._%+-]+@[A-Za-z0-9.-]+\.[A-Za-z]{2,}")
# 13 to 19 digits, groups separated by single spaces or dashes; word-bounded so longer numbers don't match.
CARD_CANDIDATE = re.compile(r"(?<![\d-])\d(?:[ -]?\d){12,18}(?![\d-])")


def luhn_valid(digits: str) -> bool:
    total = 0
    for position, char in enumerate(reversed(digits)):
        value = int(char)
        if position % 2 == 1:
            value *= 2
            if value > 9:
                value -= 9
        total += value
    return total % 10 == 0


def _redact_card(match: re.Match[str]) -> str:
    digits = re.sub(r"[ -]", "", match.group(0))
    return "[CARD]" if 13 <= len(digits) <= 19 and luhn_valid(digits) else match.group(0)


class Redactor:
    """Applies the configured redactions to strings and, recursively, to JSON values."""

    def __init__(self, config: RedactConfig) -> None:
        self._steps: list[Callable[[str], str]] = []
        if config.emails:
            self._steps.append(lambda text: EMAIL.sub("[EMAIL]", text))
        if config.card_numbers:
            self._steps.append(lambda text: CARD_CANDIDATE.sub(_redact_card, text))
        for pattern in config.patterns:
            compiled = re.compile(pattern.regex)
            replacement = pattern.replace if pattern.replace is not None else f"[REDACTED:{pattern.name}]"
            self._steps.append(lambda text, c=compiled, r=replacement: c.sub(r, text))

    @property
    def enabled(self) -> bool:
        return bool(self._steps)

    def text(self, value: str) -> str:
        for step in self._steps:
            value = step(value)
        return value

    def json(self, value: Any) -> Any:
        """A copy of ``value`` with every string redacted (dict keys untouched)."""
        if not self._steps:
            return value
        if isinstance(value, str):
            return self.text(value)
        if isinstance(value, dict):
            return {key: self.json(item) for key, item in value.items()}
        if isinstance(value, list):
            return [self.json(item) for item in value]
        return value

"""A receipt as lines of pieces: answer pieces carry their field, so noise can leave them alone.

A layout writes lines through :class:`Writer`; the answer values go in as :class:`Piece` objects made by
``company``/``address``/``date``/``total``, so the gold answer is read back from what was actually printed
(an answer a layout leaves out is null). :func:`check_printed` re-reads every gold value from the final
text, so a generator bug that breaks the task's ``extract`` promises fails loudly instead of shipping.
"""

from __future__ import annotations

import datetime as dt
import random
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

FIELD_NAMES = ("company", "address", "date", "total")


@dataclass
class Piece:
    text: str
    field: str | None = None  # the answer field this piece prints; None for everything else
    value: Any = None  # date: the date; total: the amount


Line = list[Piece]


def collapse(text: str) -> str:
    """Runs of whitespace (line breaks too) read as one space: the task's ``extraction.whitespace``."""
    return " ".join(text.split())


@dataclass
class Writer:
    """What a layout writes with: lines of pieces, random choices, and the receipt's date format."""

    rng: random.Random
    date_format: str
    center_width: int = 0  # > 0: header lines are centred on a receipt this many characters wide
    lines: list[Line] = field(default_factory=list)

    def add(self, *parts: str | Piece | None) -> None:
        """One line; ``None`` parts are skipped (an optional piece the layout left out)."""
        pieces = [part if isinstance(part, Piece) else Piece(part) for part in parts if part is not None]
        if pieces:
            self.lines.append(pieces)

    def centered(self, *parts: str | Piece | None) -> None:
        self.add(*parts)
        if self.center_width and self.lines:
            width = sum(len(piece.text) for piece in self.lines[-1])
            self.lines[-1].insert(0, Piece(" " * max(0, (self.center_width - width) // 2)))

    def pair(self, label: str, value: str | Piece, width: int = 32) -> None:
        """``label ....... value`` padded to the receipt width, as a till prints a totals line."""
        text = value.text if isinstance(value, Piece) else value
        gap = max(1, width - len(label) - len(text))
        self.add(label, " " * gap, value)

    def blank(self) -> None:
        self.lines.append([Piece("")])

    def chance(self, probability: float) -> bool:
        return self.rng.random() < probability

    def pick(self, options: Sequence[Any]) -> Any:
        return options[self.rng.randrange(len(options))]

    def dated(self, day: dt.date) -> str:
        """A distractor date, printed in the receipt's own format."""
        return day.strftime(self.date_format)


def company(text: str) -> Piece:
    return Piece(text, "company")


def address(text: str) -> Piece:
    return Piece(text, "address")


def date(day: dt.date, fmt: str) -> Piece:
    return Piece(day.strftime(fmt), "date", day)


def total(value: float, printed: str) -> Piece:
    return Piece(printed, "total", value)


def render(lines: Sequence[Line]) -> str:
    return "\n".join("".join(piece.text for piece in line).rstrip() for line in lines).strip("\n")


def gold_fields(lines: Sequence[Line]) -> dict[str, Any]:
    """The answer as printed: each field from its pieces, null where none was printed."""
    pieces = [piece for line in lines for piece in line if piece.field is not None]

    def joined(name: str) -> str | None:
        texts = [collapse(piece.text) for piece in pieces if piece.field == name]
        return " ".join(text for text in texts if text) or None

    def first_value(name: str) -> Any:
        return next((piece.value for piece in pieces if piece.field == name), None)

    day = first_value("date")
    return {
        "company": joined("company"),
        "address": joined("address"),
        "date": day.isoformat() if day is not None else None,
        "total": first_value("total"),
    }


def check_printed(text: str, fields: dict[str, Any], lines: Sequence[Line]) -> None:
    """Raise if a gold value is not printed the way the task's ``extract`` declarations promise."""
    flat = collapse(text)
    if fields["company"] is not None and fields["company"] not in flat:
        raise AssertionError(f"company {fields['company']!r} is not one span of the text")
    if fields["address"] is not None:
        position = 0
        for piece in (p for line in lines for p in line if p.field == "address"):
            found = flat.find(collapse(piece.text), position)
            if found < 0:
                raise AssertionError(f"address line {piece.text!r} is not in the text in order")
            position = found + len(collapse(piece.text))
    for name in ("date", "total"):
        for piece in (p for line in lines for p in line if p.field == name):
            if piece.text not in text:
                raise AssertionError(f"{name} {piece.text!r} was damaged")

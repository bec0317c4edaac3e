"""OCR damage on a receipt's lines, never on its answer pieces.

Character confusions (O/0, l/1, S/5, B/8, rn/m), spurious spaces and specks of punctuation, misspelt
labels, lines broken in two and neighbouring lines run together. The first and last character of every
non-answer piece are left as they are, so damage never glues a letter or digit onto a printed total or
date (``TOTAL RM28.15`` stays readable as 28.15); breaking or merging lines only moves whitespace, which
the task collapses, so company names and addresses stay one span of the text.
"""

from __future__ import annotations

import random

from tuneloop.demo.receipts.document import Line, Piece
from tuneloop.demo.synth.noise import add_typos

_SWAPS = {
    "O": "0", "0": "O", "o": "0", "l": "1", "1": "l", "I": "1", "i": "l",
    "S": "5", "5": "S", "B": "8", "8": "B", "Z": "2", ",": ".", ".": ",", ":": ";",
}  # fmt: skip
_MULTI = (("rn", "m"), ("m", "rn"), ("cl", "d"), ("nn", "m"))
_SPECKS = (".", ",", "'", "`", ":", "-")
_JUNK_LINES = (".", "'", "|", ": .", "~", "..", "i", "-")


def add_ocr_noise(rng: random.Random, lines: list[Line], rate: float) -> list[Line]:
    """A damaged copy of ``lines``: about ``rate`` of the characters outside answers changed."""
    copied = [[Piece(piece.text, piece.field, piece.value) for piece in line] for line in lines]
    for line in copied:
        for piece in line:
            if piece.field is None and len(piece.text) > 2 and piece.text.strip():  # not the layout's spacing
                inner = add_typos(rng, _confuse(rng, piece.text[1:-1], rate), rate * 2)
                piece.text = piece.text[0] + inner + piece.text[-1]
    for _ in range(rng.randint(1, 3)):
        copied = _break_line(rng, copied)
    for _ in range(rng.randint(0, 2)):
        copied = _merge_lines(rng, copied)
    copied = [line for line in copied if "".join(piece.text for piece in line).strip() or rng.random() < 0.5]
    for _ in range(rng.choice([0, 0, 1, 2])):
        gaps = [row for row in range(len(copied) + 1) if not _splits_an_answer(copied, row)]
        copied.insert(rng.choice(gaps), [Piece(rng.choice(_JUNK_LINES))])
    return copied


def _splits_an_answer(lines: list[Line], row: int) -> bool:
    """Whether a line inserted before ``row`` would fall inside a name or address printed over several lines."""
    before = {piece.field for line in lines[:row] for piece in line}
    after = {piece.field for line in lines[row:] for piece in line}
    return bool(before & after & {"company", "address"})


def _confuse(rng: random.Random, text: str, rate: float) -> str:
    out: list[str] = []
    i = 0
    while i < len(text):
        char = text[i]
        if rng.random() >= rate:
            out.append(char)
            i += 1
            continue
        confusion = next(((old, new) for old, new in _MULTI if text.startswith(old, i)), None)
        if confusion is not None and rng.random() < 0.7:
            out.append(confusion[1])
            i += len(confusion[0])
            continue
        if char == " ":
            out.append(rng.choice(["", "  ", " . ", "   "]))
        elif char in _SWAPS and rng.random() < 0.7:
            out.append(_SWAPS[char])
        elif char.isalnum():
            out.append(char + rng.choice([" ", " ", *_SPECKS]))  # a speck or a gap inside a word
        else:
            out.append(char)
        i += 1
    return "".join(out)


def _break_line(rng: random.Random, lines: list[Line]) -> list[Line]:
    """Split one line in two: at a space, or between a label and its value; never inside a date or total."""
    candidates = []
    for row, line in enumerate(lines):
        for column, piece in enumerate(line):
            if column > 0 and piece.text.strip():
                candidates.append((row, column, -1))  # before this piece
            if piece.field in ("date", "total"):
                continue
            candidates += [(row, column, at) for at in range(1, len(piece.text) - 1) if piece.text[at] == " "]
    if not candidates:
        return lines
    row, column, at = rng.choice(candidates)
    line = lines[row]
    if at < 0:
        first, second = line[:column], line[column:]
    else:
        piece = line[column]
        left = Piece(piece.text[:at], piece.field, piece.value)
        right = Piece(piece.text[at + 1 :], piece.field, piece.value)
        first, second = [*line[:column], left], [right, *line[column + 1 :]]
    return [*lines[:row], first, second, *lines[row + 1 :]]


def _merge_lines(rng: random.Random, lines: list[Line]) -> list[Line]:
    """Run two neighbouring lines together, as OCR does with a two-column till slip."""
    if len(lines) < 2:
        return lines
    row = rng.randrange(len(lines) - 1)
    merged = [*lines[row], Piece(" " * rng.randint(1, 6)), *lines[row + 1]]
    return [*lines[:row], merged, *lines[row + 2 :]]

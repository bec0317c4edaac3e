"""Human typos and OCR damage, applied only outside protected answer spans.

Answer values are never corrupted, so the gold stays exactly what the text states; everything
around them (labels, distractor numbers, names) may be damaged, as in real scans and notes.
"""

from __future__ import annotations

import random
import re

from tuneloop.demo.synth.doc import protected_segments

_WORD = re.compile(r"[A-Za-z]{3,}")

# Character confusions typical of OCR on fax-quality scans.
_OCR_SWAPS = {
    "l": "1",
    "1": "l",
    "I": "l",
    "O": "0",
    "0": "O",
    "o": "0",
    "S": "5",
    "5": "S",
    "B": "8",
    "e": "c",
    "a": "o",
    ",": ".",
    ".": ",",
    "g": "q",
    "t": "f",
    "i": "í",
}
_OCR_MULTI = (("rn", "m"), ("m", "rn"), ("cl", "d"), ("li", "h"), ("vv", "w"), ("w", "vv"))


def add_typos(rng: random.Random, text: str, rate: float) -> str:
    """Typing slips on roughly ``rate`` of the words outside protected spans."""
    return _map_unprotected(text, lambda segment: _WORD.sub(lambda m: _typo(rng, m.group(0), rate), segment))


def _typo(rng: random.Random, word: str, rate: float) -> str:
    if rng.random() >= rate:
        return word
    i = rng.randrange(1, len(word) - 1)
    kind = rng.randrange(5)
    if kind == 0:  # transposed letters
        return word[: i - 1] + word[i] + word[i - 1] + word[i + 1 :]
    if kind == 1:  # dropped letter
        return word[:i] + word[i + 1 :]
    if kind == 2:  # doubled letter
        return word[:i] + word[i] + word[i:]
    if kind == 3:
        return word.lower()
    return word[:i] + rng.choice("asdfghjkleiou") + word[i + 1 :]


def add_ocr_noise(rng: random.Random, text: str, rate: float) -> str:
    """Scanner damage on roughly ``rate`` of the characters outside protected spans."""
    return _map_unprotected(text, lambda segment: _ocr_segment(rng, segment, rate))


def _ocr_segment(rng: random.Random, segment: str, rate: float) -> str:
    out: list[str] = []
    i = 0
    while i < len(segment):
        char = segment[i]
        if rng.random() >= rate:
            out.append(char)
            i += 1
            continue
        confusion = next(((old, new) for old, new in _OCR_MULTI if segment.startswith(old, i)), None)
        roll = rng.random()
        if confusion is not None and roll < 0.6:
            out.append(confusion[1])
            i += len(confusion[0])
            continue
        if char == " ":
            out.append(rng.choice(["", "", "  ", " . "]))  # dropped or smeared spaces
        elif char.isalpha() and roll < 0.3 and segment[i + 1 : i + 2].isalpha():
            out.append(char + rng.choice(["\n", "-\n", " ", "'"]))  # broken lines and specks mid-word
        else:
            out.append(_OCR_SWAPS.get(char, char))
        i += 1
    return "".join(out)


def speech_to_text(text: str) -> str:
    """Automatic transcription look: no casing, no punctuation (answers untouched)."""
    return _map_unprotected(text, lambda segment: segment.lower().replace(",", "").replace(".", ""))


def shout(text: str) -> str:
    """ALL-CAPS notes, as some call-center systems store them (answers untouched)."""
    return _map_unprotected(text, str.upper)


def _map_unprotected(text: str, change) -> str:  # type: ignore[no-untyped-def]
    return "".join(segment if protected else change(segment) for segment, protected in protected_segments(text))

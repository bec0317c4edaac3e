"""Text that someone else chose (a client's model name, tags, an answer, an upstream's error), made safe to
print on the operator's terminal.

Two dangers: rich reads ``[...]`` as markup (``[/bold]`` crashes the listing, ``[link=...]`` makes a link),
and control characters reach the terminal as they are (ESC sequences move the cursor, retitle the window,
hide text; bidi overrides reorder what is shown). :func:`printable` shows every such character as its
escape (``\\x1b``, ``\\u202e``) instead, so nothing is hidden and nothing is executed; :func:`plain` makes
that a rich ``Text``, which rich prints as it is, never as markup. (Escaping the markup instead is not
enough: rich's ``escape`` cannot protect a text that ends in backslashes from the tag that follows it.)
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from typing import Any

from rich.text import Text

# C0 and C1 controls and DEL (category Cc), lone surrogates (can't be encoded for the terminal), and the
# bidi embeddings, overrides, isolates and marks (they reorder how the rest of the line is shown).
_UNSAFE = re.compile("[\x00-\x1f\x7f-\x9f\ud800-\udfff\u061c\u200e\u200f\u202a-\u202e\u2066-\u2069]")
# What json.dumps(ensure_ascii=False) leaves raw of those (it escapes C0 controls itself).
_UNSAFE_IN_JSON = re.compile("[\x7f-\x9f\ud800-\udfff\u061c\u200e\u200f\u202a-\u202e\u2066-\u2069]")


def _visible(match: re.Match[str]) -> str:
    code = ord(match.group())
    return f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}"


def printable(text: object) -> str:
    """``text`` (``str()`` of it) with every control, bidi and surrogate character shown as its escape."""
    return _UNSAFE.sub(_visible, text if isinstance(text, str) else str(text))


def plain(text: object, style: str = "") -> Text:
    """:func:`printable` as a rich ``Text``: a table cell or a part of ``Text.assemble`` that is never markup."""
    return Text(printable(text), style=style)


def json_text(value: Any, *, indent: int | None = 2, default: Callable[[Any], Any] | None = None) -> str:
    """``value`` as JSON for the terminal: readable non-ASCII text, but every control, bidi and surrogate
    character as a ``\\uXXXX`` escape (still valid JSON, the same value when parsed)."""
    text = json.dumps(value, indent=indent, ensure_ascii=False, default=default)
    return _UNSAFE_IN_JSON.sub(lambda match: f"\\u{ord(match.group()):04x}", text)

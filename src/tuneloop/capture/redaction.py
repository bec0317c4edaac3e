"""Redaction of personal data from logged calls, before anything reaches the store or the durable journal.

Applied to every string inside the logged request, response and error (keys of JSON objects are
left alone), to the tags and metadata, to the error text of every try, and to the requested and
resolved model names (:func:`tuneloop.capture.records.redacted_record`). Emails become ``[EMAIL]``;
card numbers (13–19 digits, optionally grouped by spaces or dashes, that pass the Luhn check, so
amounts and account numbers are not caught) become ``[CARD]``; each custom pattern becomes its
``replace`` text or ``[REDACTED:<name>]``.

Time: redaction runs on the log writer's thread (and, in durable mode, on the request path), which
shares the process's GIL with every call in flight, so its cost must be linear in the text with a small
constant whatever a client sends. Python's ``re`` backtracks: a pattern such as ``[A-Za-z0-9._%+-]+@…``
rescans a run of letters from each of its positions, which is quadratic (a 60 KB message took seconds, a
30 MB one more than ten minutes). So:

- Emails are found from the start of each run of address characters only (a lookbehind), with a
  possessive local part and one anchored try at the domain: each character is looked at a bounded
  number of times. The few matches that the old pattern started inside a run (right where a previous
  match ended) are handled by one anchored try there. The matches are exactly the old pattern's
  (tests/test_redaction.py compares the two on random text).
- Card numbers: the pattern may only start where a digit group starts and reads at most 19 digits, so
  each position costs a bounded number of steps (the same matches as before: tests compare them).
- Custom patterns (``redact.patterns``) are the operator's, but the text is the client's, so a pattern
  that can backtrack without bound is refused when the config is loaded, with an error that names it
  (:func:`check_pattern`): no unbounded repetition (``*``, ``+``, ``{n,}``: each start position could read
  to the end of the text: quadratic; write ``{1,64}``), no backreferences, and at most
  :data:`MAX_PATTERN_STEPS` backtracking steps from any one start position by a worst-case count over the
  parsed pattern (optional parts and variable runs multiply); a repeated part that can match in several ways
  (``(\\w{1,10}){1,10}``, ``(a|ab){1,9}``) is refused outright, as its tries multiply with each repetition.
  Every pattern that loads therefore costs at most that many steps per character of text. We chose
  refusing over applying patterns in windows: windows cut matches at their edges and bound nothing for
  an exponential pattern, whereas a refused pattern is fixed once, by the person who wrote it, with the
  error's advice. benchmarks/redaction_bench.py measures all three on hostile and ordinary text.
"""

from __future__ import annotations

import re
import re._constants as sre_constants  # the parsed form of a pattern: what check_pattern counts over
import re._parser as sre_parser
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from tuneloop.capture.config import RedactConfig

# The characters of an address as the original pattern [A-Za-z0-9._%+-]+@[A-Za-z0-9.-]+\.[A-Za-z]{2,} read
# them; that pattern (EMAIL_REFERENCE) is kept as the definition the fast scan must agree with.
_LOCAL = r"[A-Za-z0-9._%+-]"
_DOMAIN = r"[A-Za-z0-9.-]+\.[A-Za-z]{2,}"  # one anchored try after an '@': linear in the domain's length
EMAIL_REFERENCE = re.compile(rf"{_LOCAL}+@{_DOMAIN}")
# A match starts where a run of local-part characters starts; the possessive ++ reads the run once.
EMAIL_AT_RUN_START = re.compile(rf"(?<!{_LOCAL}){_LOCAL}++@{_DOMAIN}")
EMAIL_HERE = re.compile(rf"{_LOCAL}++@{_DOMAIN}")  # anchored (.match) where the previous match ended
_LOCAL_CHARS = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789._%+-")
EMAIL_REPLACEMENT = "[EMAIL]"

# 13 to 19 digits, groups separated by single spaces or dashes; word-bounded so longer numbers don't match.
CARD_REFERENCE = re.compile(r"(?<![\d-])\d(?:[ -]?\d){12,18}(?![\d-])")
# The same matches, but starting with \d lets re skip to the next digit in C (ordinary prose 15.7 → 86.5 MB/s
# with emails, benchmarks/redaction_bench.py).
CARD_CANDIDATE = re.compile(r"\d(?<![\d-]\d)(?:[ -]?\d){12,18}(?![\d-])")
CARD_REPLACEMENT = "[CARD]"
_CARD_SEPARATORS = str.maketrans("", "", " -")

# Backtracking steps a custom pattern may take from one start position, by check_pattern's count: near this
# limit the hardest text took ~1.2 µs per character (benchmarks/redaction_bench.py,
# docs/benchmarks.md → Redaction). Realistic patterns count under it: an SSN 13, an IBAN 55, an API key of
# 32–64 characters 101, an IPv4 address written out 241.
MAX_PATTERN_STEPS = 300


def redact_emails(text: str) -> str:
    """``text`` with every email address replaced by ``[EMAIL]``; the same matches as :data:`EMAIL_REFERENCE`,
    in time linear in ``len(text)``."""
    if "@" not in text:
        return text
    pieces: list[str] = []
    done = 0  # text[:done] is handled: copied to pieces or replaced
    position = 0
    length = len(text)
    while True:
        match = None
        # The reference pattern, scanning on after a match, may start one right there, inside a run of
        # local-part characters (where the lookbehind refuses): one anchored try covers that case.
        if 0 < position < length and text[position] in _LOCAL_CHARS and text[position - 1] in _LOCAL_CHARS:
            match = EMAIL_HERE.match(text, position)
        if match is None:
            match = EMAIL_AT_RUN_START.search(text, position)
            if match is None:
                break
        pieces.append(text[done : match.start()])
        pieces.append(EMAIL_REPLACEMENT)
        done = position = match.end()
    if not pieces:
        return text
    pieces.append(text[done:])
    return "".join(pieces)


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
    digits = match.group(0).translate(_CARD_SEPARATORS)
    return CARD_REPLACEMENT if 13 <= len(digits) <= 19 and luhn_valid(digits) else match.group(0)


def redact_cards(text: str) -> str:
    """``text`` with every card number (Luhn-valid, 13–19 digits, grouped by spaces or dashes) as ``[CARD]``."""
    return CARD_CANDIDATE.sub(_redact_card, text)


# --- custom patterns: a bound on their backtracking ---------------------------------------------------


class PatternTooCostly(ValueError):
    """A custom pattern whose matching time could grow faster than the text (the message says why and how
    to rewrite it)."""


_UNBOUNDED_ADVICE = (
    "it repeats without an upper bound ({what}), so each position of a message may be read to its end: time "
    "grows with the square of the message's length. Give the repetition an upper bound, e.g. {{1,64}} instead "
    "of + or {{0,64}} instead of *"
)


def check_pattern(regex: str) -> int:
    """The worst-case backtracking steps ``regex`` may take from one start position (see the module's
    docstring); raises :class:`PatternTooCostly` for a pattern that is unbounded or over
    :data:`MAX_PATTERN_STEPS`, and ``re.error`` for one that does not compile."""
    parsed = sre_parser.parse(regex)
    _, cost = _ways_and_cost(parsed)
    if cost > MAX_PATTERN_STEPS:
        raise PatternTooCostly(
            f"it may take up to {_shown_count(cost)} backtracking steps at each position of a message (the limit "
            f"is {MAX_PATTERN_STEPS}): repetitions inside repetitions, alternatives inside repetitions and long "
            "optional runs multiply. Use smaller upper bounds ({1,64} rather than {1,1000}), do not nest "
            "repetitions, and make alternatives start with different characters"
        )
    return cost


_CAP = MAX_PATTERN_STEPS * 1000  # counts beyond this are all "too many"; keeps the arithmetic small


def _shown_count(value: int) -> str:
    return f"more than {_CAP:,}" if value >= _CAP else f"{value:,}"


def _capped(value: int) -> int:
    return min(value, _CAP)


def _ways_and_cost(items: Any) -> tuple[int, int]:
    """For a sequence of parsed items: how many ways it can match from one position (the paths a failure
    after it backtracks into) and the steps it may take to try them all."""
    ways, cost = 1, 0
    for op, argument in items:
        item_ways, item_cost = _item_ways_and_cost(op, argument)
        cost = _capped(cost + ways * item_cost)
        ways = _capped(ways * item_ways)
    return ways, cost


def _item_ways_and_cost(op: Any, argument: Any) -> tuple[int, int]:
    c = sre_constants
    if op in (c.LITERAL, c.NOT_LITERAL, c.ANY, c.IN, c.AT):
        return 1, 1
    if op is c.SUBPATTERN:
        return _ways_and_cost(argument[3])
    if op is c.BRANCH:
        ways = cost = 0
        for branch in argument[1]:
            branch_ways, branch_cost = _ways_and_cost(branch)
            ways, cost = _capped(ways + branch_ways), _capped(cost + branch_cost)
        return ways, cost
    if op in (c.MAX_REPEAT, c.MIN_REPEAT, c.POSSESSIVE_REPEAT):
        low, high, body = argument
        if high == c.MAXREPEAT:
            marks = {c.MAX_REPEAT: "*, + or {n,}", c.MIN_REPEAT: "*?, +? or {n,}?", c.POSSESSIVE_REPEAT: "*+ or ++"}
            raise PatternTooCostly(_UNBOUNDED_ADVICE.format(what=marks[op]))
        body_ways, body_cost = _ways_and_cost(body)
        if high > 1 and body_ways > 1:
            # Each iteration can end in several places: the paths multiply with every iteration (exponential).
            raise PatternTooCostly(
                "it repeats a part that can match in more than one way (an alternative, an optional part or a "
                "variable-length run inside a repetition), so the tries multiply with every repetition; write "
                "the repetition out (\\d{1,3}\\.\\d{1,3} rather than (?:\\d{1,3}\\.){2}) or repeat a single "
                "character class ([-\\d]{1,20} rather than (?:-?\\d){1,10})"
            )
        # Iteration k is tried once for each way the first k-1 iterations matched.
        ways, cost, paths = 0, 0, 1
        for iteration in range(1, high + 1):
            cost = _capped(cost + paths * body_cost)
            paths = _capped(paths * body_ways)
            if iteration >= low:
                ways = _capped(ways + paths)
            if cost >= _CAP:
                break
        if low == 0:
            ways = _capped(ways + 1)
        return (1 if op is c.POSSESSIVE_REPEAT else max(ways, 1)), max(cost, 1)
    if op is c.ATOMIC_GROUP:
        return 1, _ways_and_cost(argument)[1]
    if op in (c.ASSERT, c.ASSERT_NOT):
        return 1, _ways_and_cost(argument[1])[1]
    if op in (c.GROUPREF, c.GROUPREF_EXISTS):
        raise PatternTooCostly(
            "it uses a backreference (\\1, (?P=name) or (?(1)...)), which regular expressions cannot match in "
            "bounded time; write the text out instead"
        )
    raise PatternTooCostly(f"it uses {op}, which tuneloop cannot bound the matching time of")


class Redactor:
    """Applies the configured redactions to strings and, recursively, to JSON values."""

    def __init__(self, config: RedactConfig) -> None:
        self._steps: list[Callable[[str], str]] = []
        if config.emails:
            self._steps.append(redact_emails)
        if config.card_numbers:
            self._steps.append(redact_cards)
        for pattern in config.patterns:
            check_pattern(pattern.regex)  # config validation did this already; a RedactPattern built unchecked
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
        """A copy of ``value`` with every string redacted (dict keys untouched).

        Iterative, not recursive: a request may nest JSON as deep as the parser allows (1024 levels).
        """
        if not self._steps:
            return value
        if isinstance(value, str):
            return self.text(value)
        if not isinstance(value, dict | list):
            return value
        root: list[Any] = [None]
        stack: list[tuple[Any, Any, Any]] = [(value, root, 0)]  # (value, the container to put its copy in, key)
        while stack:
            item, parent, key = stack.pop()
            if isinstance(item, str):
                parent[key] = self.text(item)
            elif isinstance(item, dict):
                copy: dict[Any, Any] = dict.fromkeys(item)  # keeps the keys' order
                parent[key] = copy
                stack.extend((child, copy, child_key) for child_key, child in item.items())
            elif isinstance(item, list):
                items: list[Any] = [None] * len(item)
                parent[key] = items
                stack.extend((child, items, index) for index, child in enumerate(item))
            else:
                parent[key] = item
        return root[0]

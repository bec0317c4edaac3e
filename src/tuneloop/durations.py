"""Durations as people write them on a command line or in a config: ``90s``, ``20m``, ``1h30m``, ``7d``, ``2w``.

The one parser of them (training's ``--time-budget``, drift's windows, a canary guard's window, the
gateway's ``watch:`` section): whole numbers with units in decreasing order, weeks to seconds.
"""

from __future__ import annotations

import re

from tuneloop.errors import TuneloopError

_DURATION = re.compile(r"^(?:(\d+)w)?(?:(\d+)d)?(?:(\d+)h)?(?:(\d+)m)?(?:(\d+)s)?$")
_SECONDS = (7 * 86400, 86400, 3600, 60, 1)
HINT = "write it as 90s, 20m, 1h30m, 7d or 2w (weeks, days, hours, minutes, seconds)"


def parse_duration(text: str | float | int, where: str) -> float:
    """``text`` in seconds (a number from Python is taken as seconds); TuneloopError naming ``where`` and the
    syntax otherwise."""
    if isinstance(text, int | float) and not isinstance(text, bool):
        if text > 0:
            return float(text)
        raise TuneloopError(f"{text!r} is not a positive number of seconds", where=where)
    value = str(text).strip().lower().replace(" ", "")
    match = _DURATION.match(value)
    if not value or match is None or not any(match.groups()):
        raise TuneloopError(f"{text!r} is not a duration", where=where, hint=HINT)
    total = sum(int(group or 0) * unit for group, unit in zip(match.groups(), _SECONDS, strict=True))
    if total <= 0:
        raise TuneloopError(f"{text!r} is no time at all", where=where, hint="give a positive duration, e.g. 20m")
    return float(total)

"""The one exception type a user sees: what was wrong, where, and what to do."""

from __future__ import annotations


class TuneloopError(Exception):
    """An error caused by input or set-up, reported without a stack trace.

    ``where`` names the place (``file:line``, a field, a model id); ``hint`` says what to do.
    """

    def __init__(self, message: str, *, where: str | None = None, hint: str | None = None) -> None:
        self.message = message
        self.where = where
        self.hint = hint
        super().__init__(str(self))

    def __str__(self) -> str:
        text = f"{self.where}: {self.message}" if self.where else self.message
        if self.hint:
            text += f"\n  fix: {self.hint}"
        return text

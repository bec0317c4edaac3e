"""What a generation is asked: chat messages and decoding settings, shared by the backends, evals and data.

The serving backends take these, the evals runner sends them to local and remote models alike, and
relabelling turns a task's decoding settings into them; they live in the core so that none of those stages
has to import another to speak the same language.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

from tuneloop.errors import TuneloopError

FinishReason = Literal["stop", "length"]
Message = dict[str, Any]  # {"role": "system"|"user"|"assistant", "content": str}

MAX_TOP_LOGPROBS = 20  # OpenAI's limit for top_logprobs


@dataclass(frozen=True)
class GenerationParams:
    """Decoding settings; the defaults are greedy, which is what evals and extraction tasks want."""

    max_tokens: int = 256
    temperature: float = 0.0
    top_p: float = 1.0
    stop: list[str] | None = None
    seed: int | None = None
    # Constrain decoding to JSON matching this schema, through the engine's grammar support (serve/grammar.py);
    # engines without one decode freely and the caller validates after.
    json_schema: dict[str, Any] | None = field(default=None, hash=False)
    # Report each chosen token's log probability, and the ``top_logprobs`` likeliest alternatives.
    logprobs: bool = False
    top_logprobs: int = 0

    def __post_init__(self) -> None:
        if self.max_tokens < 1:
            raise TuneloopError(f"must be at least 1, got {self.max_tokens}", where="max_tokens")
        if not 0 <= self.top_logprobs <= MAX_TOP_LOGPROBS:
            raise TuneloopError(
                f"must be between 0 and {MAX_TOP_LOGPROBS}, got {self.top_logprobs}", where="top_logprobs"
            )
        if self.top_logprobs and not self.logprobs:
            raise TuneloopError("needs logprobs to be true", where="top_logprobs")
        if self.temperature < 0:
            raise TuneloopError(f"must be >= 0, got {self.temperature}", where="temperature")
        if not 0 < self.top_p <= 1:
            raise TuneloopError(f"must be in (0, 1], got {self.top_p}", where="top_p")

    @property
    def greedy(self) -> bool:
        return self.temperature == 0

"""The one small interface every generation engine sits behind.

A backend turns chat messages into an assistant reply: ``generate`` returns it whole with token counts
and timings, ``stream`` yields text deltas. Engines that produce one token at a time (llama.cpp,
transformers) subclass ``TokenStreamBackend`` and only implement ``_start``; stop strings, counting and
timing are done once here, identically for all of them.
"""

from __future__ import annotations

import threading
import time
from abc import ABC, abstractmethod
from collections.abc import Generator, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, Literal, Protocol, runtime_checkable

from tuneloop.errors import TuneloopError

FinishReason = Literal["stop", "length"]
Message = dict[str, Any]  # {"role": "system"|"user"|"assistant", "content": str}


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

    def __post_init__(self) -> None:
        if self.max_tokens < 1:
            raise TuneloopError(f"must be at least 1, got {self.max_tokens}", where="max_tokens")
        if self.temperature < 0:
            raise TuneloopError(f"must be >= 0, got {self.temperature}", where="temperature")
        if not 0 < self.top_p <= 1:
            raise TuneloopError(f"must be in (0, 1], got {self.top_p}", where="top_p")

    @property
    def greedy(self) -> bool:
        return self.temperature == 0


@dataclass(frozen=True)
class Adapter:
    """A fine-tune applied over the backend's base for one request (many adapters share one base).

    ``id`` is the resolved immutable version id (``task@3``), the key of each backend's adapter cache.
    ``peft_dir`` is the PEFT adapter folder; ``gguf_path`` its GGUF LoRA export, which llama.cpp needs.
    """

    id: str
    peft_dir: Path
    gguf_path: Path | None = None


@dataclass(frozen=True)
class Generation:
    """A finished reply. Token counts exclude the end-of-turn token; ``ttft_ms`` is None if none came."""

    text: str
    finish_reason: FinishReason
    prompt_tokens: int
    completion_tokens: int
    latency_ms: float
    ttft_ms: float | None

    @property
    def tokens_per_second(self) -> float:
        """Decoding speed after the first token (prefill excluded)."""
        if self.ttft_ms is None or self.completion_tokens < 2 or self.latency_ms <= self.ttft_ms:
            return 0.0
        return (self.completion_tokens - 1) / ((self.latency_ms - self.ttft_ms) / 1000)


@runtime_checkable
class Backend(Protocol):
    """What the server, evals and relabeling call. Implementations are not safe to call concurrently
    unless they say so; ``TokenStreamBackend`` serialises calls with a lock."""

    name: str

    def generate(
        self, messages: list[Message], params: GenerationParams | None = None, adapter: Adapter | None = None
    ) -> Generation: ...

    def stream(
        self, messages: list[Message], params: GenerationParams | None = None, adapter: Adapter | None = None
    ) -> Iterator[str]: ...

    def close(self) -> None:
        """Free the engine's memory now rather than at garbage collection."""


def chat_template_error(exc: Exception, base_id: str) -> TuneloopError:
    """A chat the model's template refuses (e.g. roles that don't alternate) is the caller's mistake."""
    return TuneloopError(
        f"the model's chat template refused these messages: {exc}",
        where=f"{base_id}: messages",
        hint="check the roles and their order (system first, then user/assistant turns)",
    )


@dataclass(frozen=True)
class TokenRun:
    """One generation as an engine produces it.

    ``pieces`` yields the text of each new token, one item per token ("" while a multi-byte character
    is incomplete), and returns "stop" when it ends at the end of the turn or "length" when it ran out
    of tokens. Closing ``pieces`` must stop the engine's work.
    """

    prompt_tokens: int
    pieces: Generator[str, None, FinishReason]


@dataclass
class _Tally:
    completion_tokens: int = 0
    first_token_at: float | None = None
    finish_reason: FinishReason = "length"


@dataclass
class StopStrings:
    """Cuts text at the first stop string, holding back any tail that could be the start of one.

    Needed when streaming: the text of a stop string may arrive split over several tokens, and none of
    it may reach the client.
    """

    stops: list[str]
    _pending: str = field(default="", init=False)

    def __post_init__(self) -> None:
        self.stops = [stop for stop in self.stops if stop]

    def feed(self, text: str) -> tuple[str, bool]:
        """(text safe to emit, whether a stop string was reached)."""
        self._pending += text
        if not self.stops:
            emitted, self._pending = self._pending, ""
            return emitted, False
        found = [index for stop in self.stops if (index := self._pending.find(stop)) >= 0]
        if found:
            emitted, self._pending = self._pending[: min(found)], ""
            return emitted, True
        keep = self._longest_stop_prefix_at_end()
        cut = len(self._pending) - keep
        emitted, self._pending = self._pending[:cut], self._pending[cut:]
        return emitted, False

    def flush(self) -> str:
        emitted, self._pending = self._pending, ""
        return emitted

    def _longest_stop_prefix_at_end(self) -> int:
        longest = min(len(self._pending), max(len(stop) for stop in self.stops) - 1)
        for size in range(longest, 0, -1):
            tail = self._pending[-size:]
            if any(stop.startswith(tail) for stop in self.stops):
                return size
        return 0


class TokenStreamBackend(ABC):
    """Base for engines that generate token by token in-process. Subclasses implement ``_start``."""

    name: ClassVar[str]

    def __init__(self) -> None:
        # One generation at a time: neither llama.cpp contexts nor a model's KV cache can be shared.
        self._lock = threading.Lock()

    @abstractmethod
    def _start(self, messages: list[Message], params: GenerationParams, adapter: Adapter | None) -> TokenRun:
        """Apply the adapter (None: the bare base), format and tokenize the chat, and begin generating
        (lazily, as ``pieces`` is consumed)."""

    def generate(
        self, messages: list[Message], params: GenerationParams | None = None, adapter: Adapter | None = None
    ) -> Generation:
        params = params or GenerationParams()
        with self._lock:
            started = time.perf_counter()
            run = self._start(messages, params, adapter)
            tally = _Tally()
            text = "".join(self._deltas(run, params, tally))
            finished = time.perf_counter()
        return Generation(
            text=text,
            finish_reason=tally.finish_reason,
            prompt_tokens=run.prompt_tokens,
            completion_tokens=tally.completion_tokens,
            latency_ms=(finished - started) * 1000,
            ttft_ms=None if tally.first_token_at is None else (tally.first_token_at - started) * 1000,
        )

    def stream(
        self, messages: list[Message], params: GenerationParams | None = None, adapter: Adapter | None = None
    ) -> Iterator[str]:
        """Text deltas as they are generated. Lazy: a refused chat or an over-long prompt raises at the
        first ``next()``, so a server should take the first delta before sending its response headers."""
        yield from self.stream_generation(messages, params, adapter)

    def stream_generation(
        self, messages: list[Message], params: GenerationParams | None = None, adapter: Adapter | None = None
    ) -> Generator[str, None, Generation]:
        """Like ``stream``, and returns the finished ``Generation`` (text, counts, finish reason, timings)
        when exhausted: what a server needs for a stream's last chunk and usage."""
        params = params or GenerationParams()
        with self._lock:
            started = time.perf_counter()
            run = self._start(messages, params, adapter)
            tally = _Tally()
            parts: list[str] = []
            for delta in self._deltas(run, params, tally):
                parts.append(delta)
                yield delta
            finished = time.perf_counter()
        return Generation(
            text="".join(parts),
            finish_reason=tally.finish_reason,
            prompt_tokens=run.prompt_tokens,
            completion_tokens=tally.completion_tokens,
            latency_ms=(finished - started) * 1000,
            ttft_ms=None if tally.first_token_at is None else (tally.first_token_at - started) * 1000,
        )

    def close(self) -> None:  # noqa: B027 - optional hook, deliberately not abstract
        """Nothing to free by default; engines holding native memory override this."""

    def _deltas(self, run: TokenRun, params: GenerationParams, tally: _Tally) -> Iterator[str]:
        stops = StopStrings(params.stop or [])
        try:
            while True:
                try:
                    piece = next(run.pieces)
                except StopIteration as end:
                    tally.finish_reason = end.value or "length"
                    break
                tally.completion_tokens += 1
                if tally.first_token_at is None:
                    tally.first_token_at = time.perf_counter()
                emitted, stopped = stops.feed(piece)
                if emitted:
                    yield emitted
                if stopped:
                    tally.finish_reason = "stop"
                    return
            if tail := stops.flush():
                yield tail
        finally:
            run.pieces.close()  # stops the engine when the caller stopped early or a stop string hit

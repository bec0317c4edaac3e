"""The one small interface every generation engine sits behind.

A backend turns chat messages into an assistant reply: ``generate`` returns it whole with token counts
and timings, ``stream`` yields text deltas. Engines that produce one token at a time (llama.cpp,
transformers) subclass ``TokenStreamBackend`` and only implement ``_start``; stop strings, counting and
timing are done once here, identically for all of them. A version trained with a short system prompt in
place of its task's instructions is served with that prompt: ``served_messages`` rewrites the chat, here
for every token-stream engine and in the vLLM backend for its requests.
"""

from __future__ import annotations

import threading
import time
from abc import ABC, abstractmethod
from collections.abc import Callable, Generator, Iterator
from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, Protocol, runtime_checkable

from tuneloop.errors import TuneloopError
from tuneloop.generation import FinishReason, GenerationParams, Message


@dataclass(frozen=True)
class TrainedPrompt:
    """The system prompt a version was trained with in place of its task's instructions (prompt
    distillation, ``tuneloop train --system-prompt``): ``system`` ("" when trained with no system message)
    stands for ``replaces``, the task's full instructions, which clients keep sending."""

    system: str
    replaces: str

    @classmethod
    def of(cls, version: Any) -> TrainedPrompt | None:
        """A registered version's (``ModelVersionInfo``) trained prompt; None when it was trained with the
        task's own instructions, whose chats are served as sent."""
        distilled_from = getattr(version, "distilled_from", None)
        if distilled_from is None:
            return None
        return cls(system=version.system_prompt, replaces=distilled_from)


@dataclass(frozen=True)
class Adapter:
    """A fine-tune applied over the backend's base for one request (many adapters share one base).

    ``id`` is the resolved immutable version id (``task@3``), the key of each backend's adapter cache.
    ``peft_dir`` is the PEFT adapter folder; ``gguf_path`` its GGUF LoRA export, which llama.cpp needs;
    ``content_hash`` the registered version's hash (vLLM loads the adapter under it).
    ``prompt``: the version's trained prompt when it was distilled (``served_messages`` applies it).
    ``before_load``, when set, is called right before a backend reads the adapter's files (first use, and
    again after its LRU evicted it) and may raise to refuse them: the server checks the content hash there,
    which a batching backend does only when a batch forms, long after the request arrived.
    """

    id: str
    peft_dir: Path
    gguf_path: Path | None = None
    content_hash: str | None = None
    prompt: TrainedPrompt | None = None
    before_load: Callable[[], None] | None = field(default=None, compare=False, repr=False)


SYSTEM_ROLES = ("system", "developer")


def served_messages(messages: list[Message], adapter: Adapter | None) -> list[Message]:
    """The chat as ``adapter``'s version was trained to see it: the one place a trained prompt is applied
    (every backend calls it where a request starts, so the server and evals get the same).

    When the version was trained with a short system prompt (or none) in place of its task's instructions,
    and the chat opens with a system/developer message holding exactly those instructions (whitespace at the
    ends aside), that message gets the trained prompt, or is dropped when the trained prompt is empty. Any
    other chat is returned as it is: a client sending other instructions gets what it sent.
    """
    if adapter is None or adapter.prompt is None or not messages:
        return messages
    first = messages[0]
    content = first.get("content")
    if first.get("role") not in SYSTEM_ROLES or not isinstance(content, str):
        return messages
    if content.strip() != adapter.prompt.replaces.strip():
        return messages
    if not adapter.prompt.system:
        return list(messages[1:])
    return [{**first, "content": adapter.prompt.system}, *messages[1:]]


def uses_trained_prompt(messages: list[Message], adapter: Adapter | None) -> bool:
    """Whether ``served_messages`` changes this chat (the server reports it with the answer)."""
    return served_messages(messages, adapter) is not messages


@dataclass(frozen=True)
class TokenLogprob:
    """One generated token with its log probability under the model, and the likeliest alternatives.

    Log probabilities are the model's own (log-softmax of its logits), before temperature, top_p or a
    grammar reshape the distribution: what the model believed, which is what a confidence check wants.
    Under a grammar the chosen token therefore need not be among ``top``. ``data`` is the token's raw
    bytes: a token can hold part of a UTF-8 character, so only the bytes of all tokens join to the text.
    """

    data: bytes
    logprob: float
    top: tuple[tuple[bytes, float], ...] = ()

    def openai(self) -> dict[str, Any]:
        """OpenAI's ``choices[].logprobs.content[]`` item: token, logprob, bytes, top_logprobs."""
        return {
            **_token_entry(self.data, self.logprob),
            "top_logprobs": [_token_entry(data, logprob) for data, logprob in self.top],
        }


def _token_entry(data: bytes, logprob: float) -> dict[str, Any]:
    return {"token": data.decode("utf-8", errors="replace"), "logprob": logprob, "bytes": list(data)}


def top_logprobs_of(logits: Any, chosen: int, k: int, token_bytes: Any) -> TokenLogprob:
    """The chosen token's entry from one step's raw logits (a 1-D float array of the vocabulary).

    ``token_bytes(id)`` gives a token's bytes. Computed in float64: log-softmax over ~50k logits in
    float32 loses digits that matter for near-certain tokens (logprob -1e-6 vs 0).
    """
    import numpy as np

    values = np.asarray(logits, dtype=np.float64).reshape(-1)
    shifted = values - values.max()
    log_total = np.log(np.exp(shifted).sum())
    logprobs = shifted - log_total
    top: tuple[tuple[bytes, float], ...] = ()
    if k:
        best = np.argpartition(-logprobs, k - 1)[:k]
        best = best[np.argsort(-logprobs[best], kind="stable")]
        top = tuple((token_bytes(int(index)), min(float(logprobs[index]), 0.0)) for index in best)
    return TokenLogprob(token_bytes(chosen), min(float(logprobs[chosen]), 0.0), top)


@dataclass(frozen=True)
class Delta:
    """A piece of streamed text, with the tokens that make it up when logprobs were asked for."""

    text: str
    logprobs: list[TokenLogprob] | None = None


@dataclass(frozen=True)
class Generation:
    """A finished reply. Token counts exclude the end-of-turn token; ``ttft_ms`` is None if none came.
    ``logprobs`` (when asked for) has one entry per token of ``text``."""

    text: str
    finish_reason: FinishReason
    prompt_tokens: int
    completion_tokens: int
    latency_ms: float
    ttft_ms: float | None
    logprobs: list[TokenLogprob] | None = None

    @property
    def tokens_per_second(self) -> float:
        """Decoding speed after the first token (prefill excluded)."""
        if self.ttft_ms is None or self.completion_tokens < 2 or self.latency_ms <= self.ttft_ms:
            return 0.0
        return (self.completion_tokens - 1) / ((self.latency_ms - self.ttft_ms) / 1000)


@runtime_checkable
class Backend(Protocol):
    """What the server, evals and relabeling call. Implementations are not safe to call concurrently
    unless they say so with ``concurrent`` True (optional; read with ``takes_concurrent_calls``): they are
    then safe to call from many threads and gain from it (they batch concurrent calls), so the server
    hands them every admitted request at once. ``TokenStreamBackend`` serialises calls with a lock unless
    its ``max_batch_size`` is above 1 (the transformers backend's batching)."""

    name: str

    def generate(
        self, messages: list[Message], params: GenerationParams | None = None, adapter: Adapter | None = None
    ) -> Generation: ...

    def stream(
        self, messages: list[Message], params: GenerationParams | None = None, adapter: Adapter | None = None
    ) -> Iterator[str]: ...

    def close(self) -> None:
        """Free the engine's memory now rather than at garbage collection."""


def takes_concurrent_calls(backend: Any) -> bool:
    """A backend's ``concurrent`` (False when it doesn't say): whether the server runs its calls at once."""
    return bool(getattr(backend, "concurrent", False))


def delta_texts(deltas: Generator[Delta, None, Generation]) -> Generator[str, None, Generation]:
    """The text of each delta of ``stream_deltas``, returning its finished ``Generation`` at the end."""
    try:
        while True:
            yield next(deltas).text
    except StopIteration as end:
        return end.value
    finally:
        deltas.close()


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
    of tokens. Closing ``pieces`` must stop the engine's work. When the params asked for logprobs, the
    engine appends each token's ``TokenLogprob`` to ``logprobs`` before yielding its piece.
    """

    prompt_tokens: int
    pieces: Generator[str, None, FinishReason]
    logprobs: list[TokenLogprob] = field(default_factory=list)


@dataclass
class _Tally:
    completion_tokens: int = 0
    first_token_at: float | None = None
    finish_reason: FinishReason = "length"
    logprobs: list[TokenLogprob] | None = None  # the tokens of the text emitted so far


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
    # How many calls the engine decodes together. 1: one generation at a time, calls serialised here.
    # Above 1 the engine gathers concurrent calls into batches itself, so callers (the server) should run
    # that many or more at once.
    max_batch_size: int = 1

    def __init__(self) -> None:
        # One generation at a time: neither llama.cpp contexts nor a model's KV cache can be shared.
        self._lock = threading.Lock()

    @property
    def concurrent(self) -> bool:
        """Whether to call it from many threads at once: when it gathers concurrent calls into batches."""
        return self.max_batch_size > 1

    def _exclusive(self) -> AbstractContextManager[Any]:
        """Held around ``_start`` and the consumption of its pieces: the lock, unless the engine
        arbitrates between concurrent calls itself (a batching engine overrides this)."""
        return self._lock

    @abstractmethod
    def _start(self, messages: list[Message], params: GenerationParams, adapter: Adapter | None) -> TokenRun:
        """Apply the adapter (None: the bare base), format and tokenize the chat, and begin generating
        (lazily, as ``pieces`` is consumed). ``messages`` come with the adapter's trained prompt applied
        (``served_messages``, by ``generate``/``stream_deltas``)."""

    def generate(
        self, messages: list[Message], params: GenerationParams | None = None, adapter: Adapter | None = None
    ) -> Generation:
        params = params or GenerationParams()
        messages = served_messages(messages, adapter)
        with self._exclusive():
            started = time.perf_counter()
            run = self._start(messages, params, adapter)
            tally = _Tally(logprobs=[] if params.logprobs else None)
            text = "".join(delta.text for delta in self._deltas(run, params, tally))
            finished = time.perf_counter()
        return _generation(text, run, tally, started, finished)

    def stream(
        self, messages: list[Message], params: GenerationParams | None = None, adapter: Adapter | None = None
    ) -> Iterator[str]:
        """Text deltas as they are generated. Lazy: a refused chat or an over-long prompt raises at the
        first ``next()``, so a server should take the first delta before sending its response headers."""
        for delta in self.stream_deltas(messages, params, adapter):
            yield delta.text

    def stream_generation(
        self, messages: list[Message], params: GenerationParams | None = None, adapter: Adapter | None = None
    ) -> Generator[str, None, Generation]:
        """Like ``stream``, and returns the finished ``Generation`` (text, counts, finish reason, timings)
        when exhausted: what a server needs for a stream's last chunk and usage."""
        return (yield from delta_texts(self.stream_deltas(messages, params, adapter)))

    def stream_deltas(
        self, messages: list[Message], params: GenerationParams | None = None, adapter: Adapter | None = None
    ) -> Generator[Delta, None, Generation]:
        """Like ``stream_generation``, each delta with the ``TokenLogprob`` of its tokens when
        ``params.logprobs`` is set (a delta may then carry tokens but no text: part of a character)."""
        params = params or GenerationParams()
        messages = served_messages(messages, adapter)
        with self._exclusive():
            started = time.perf_counter()
            run = self._start(messages, params, adapter)
            tally = _Tally(logprobs=[] if params.logprobs else None)
            parts: list[str] = []
            for delta in self._deltas(run, params, tally):
                parts.append(delta.text)
                yield delta
            finished = time.perf_counter()
        return _generation("".join(parts), run, tally, started, finished)

    def close(self) -> None:  # noqa: B027 - optional hook, deliberately not abstract
        """Nothing to free by default; engines holding native memory override this."""

    def _deltas(self, run: TokenRun, params: GenerationParams, tally: _Tally) -> Iterator[Delta]:
        stops = StopStrings(params.stop or [])
        # Logprobs follow the text: a token is released with the delta that emits its first character
        # (or, holding part of a character, with the one that completes it). Tokens held back as the
        # possible start of a stop string are released with the text, or dropped with it at a stop.
        held: list[tuple[int, TokenLogprob]] = []  # (offset of the token's text in all text fed, entry)
        fed = emitted = 0

        def release(upto: int | None) -> list[TokenLogprob] | None:
            nonlocal held
            if tally.logprobs is None:
                return None
            ready = [entry for start, entry in held if upto is None or start < upto]
            held = [] if upto is None else [(start, entry) for start, entry in held if start >= upto]
            tally.logprobs.extend(ready)
            return ready

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
                if tally.logprobs is not None:
                    held.append((fed, run.logprobs[tally.completion_tokens - 1]))
                fed += len(piece)
                text, stopped = stops.feed(piece)
                emitted += len(text)
                ready = release(emitted)
                if text or ready:
                    yield Delta(text, ready)
                if stopped:
                    tally.finish_reason = "stop"
                    return  # tokens still held belong to the stop string: dropped
            tail = stops.flush()
            ready = release(None)
            if tail or ready:
                yield Delta(tail, ready)
        finally:
            run.pieces.close()  # stops the engine when the caller stopped early or a stop string hit


def _generation(text: str, run: TokenRun, tally: _Tally, started: float, finished: float) -> Generation:
    return Generation(
        text=text,
        finish_reason=tally.finish_reason,
        prompt_tokens=run.prompt_tokens,
        completion_tokens=tally.completion_tokens,
        latency_ms=(finished - started) * 1000,
        ttft_ms=None if tally.first_token_at is None else (tally.first_token_at - started) * 1000,
        logprobs=tally.logprobs,
    )

"""The serving engine's request side: plan a request, admit it, generate, stream, build the response.

The HTTP layer (``app.py``) parses a request and calls :meth:`ServeEngine.complete` or
:meth:`ServeEngine.stream`; everything else happens here and in ``served_models.py`` (which model a
request names, its integrity check, ``/v1/models``), so the demo, benchmarks and tests drive the same code
as the server. ``build_engine`` builds one as ``tuneloop serve`` does, the backend through the registry.

- **Plan.** A request's parameters become generation settings (``Plan``), or a 400 naming the parameter.
- **Queue.** A backend that runs one generation at a time (llama.cpp; transformers with
  ``max_batch_size`` 1) gets requests from one FIFO worker (fair: first come, first served, whichever
  version they name). A concurrent backend (``concurrent`` True: transformers batching, vLLM) gets every
  admitted request at once, each on its own worker, and schedules them itself (FIFO batches mixing
  versions; vLLM's continuous batching). At most ``max_queue`` requests are admitted (running + waiting);
  one more is refused with 429 and ``Retry-After``.
- **Structured output.** A task version decodes under its task's output schema by default (llama.cpp's
  grammar, llguidance for transformers, vLLM's guided decoding), its extractive fields held to values of
  the request's own input and its date/number formats enforced (``extraction.py``); a request's
  ``response_format`` ``json_schema`` replaces it, ``json_object`` asks for the task schema (or any JSON
  object on a base), ``text`` turns it off. The answer is always validated afterwards; a violation is
  reported in the response (``tuneloop.schema_valid`` / ``schema_errors``) and counted, never hidden.
- **Trained prompts.** A version trained with a short system prompt (or none) in place of its task's
  instructions is served with it: a chat opening with exactly those instructions gets the trained prompt
  (``served_messages``, applied by every backend), reported as ``tuneloop.prompt: "trained"``.
- **Log probabilities.** ``logprobs`` / ``top_logprobs`` (0..20) come back in OpenAI's shape, whole or per
  streamed chunk (each chunk with the tokens of its own text); see ``TokenLogprob``.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import functools
import logging
import threading
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, Literal

from tuneloop.bases import Base
from tuneloop.errors import TuneloopError
from tuneloop.protocol import ChatCompletion, ChatCompletionChunk, ChatCompletionRequest, OpenAIError, sse_event
from tuneloop.registry.ids import BaseRef, VersionRef, parse_model_id
from tuneloop.serve.backends import MAX_TOP_LOGPROBS, Backend, Delta, Generation, GenerationParams, Message
from tuneloop.serve.backends.base import uses_trained_prompt
from tuneloop.serve.errors import invalid_parameter
from tuneloop.serve.grammar import ANY_JSON_OBJECT, Validation, check_schema, validate_answer
from tuneloop.serve.metrics import ServeMetrics
from tuneloop.serve.pool import BaseSlot, ModelPool
from tuneloop.serve.served_models import ServedModel, ServedModels

log = logging.getLogger("tuneloop.serve")

MAX_STOP_SEQUENCES = 4
# Checks a streamed answer before its finish chunk: the whole chat.completion in, the same annotated out.
StreamReview = Callable[[dict[str, Any]], Awaitable[dict[str, Any]]]
_ROLES = {"system": "system", "developer": "system", "user": "user", "assistant": "assistant"}


@dataclass(frozen=True)
class Plan:
    """A validated request: what to generate and how."""

    served: ServedModel
    messages: list[Message]
    params: GenerationParams
    schema: dict[str, Any] | None  # validated against afterwards; also the grammar when the engine has one


class ServeEngine:
    """Every base of a pool and the versions on them, behind one request path."""

    def __init__(
        self,
        pool: ModelPool,
        default_base: Base,
        *,
        models: list[str] | None = None,
        max_queue: int = 16,
        max_queue_per_model: int | None = None,
        alias_refresh_s: float = 1.0,
        retry_after_s: int = 1,
        metrics: ServeMetrics | None = None,
    ) -> None:
        self.pool = pool
        self.base = default_base
        self.backend_name = pool.backend_name
        self.max_queue = max_queue
        # A model may hold at most this many places, so a burst for one leaves room for the others.
        self.max_queue_per_model = max_queue_per_model or max(1, max_queue - max_queue // 4)
        self.retry_after_s = retry_after_s
        self.metrics = metrics or ServeMetrics()
        self.served_models = ServedModels(pool, models=models, alias_refresh_s=alias_refresh_s, metrics=self.metrics)
        pool.on_load = self._loaded
        pool.on_evict = self._evicted
        self._admitted = 0
        self._admitted_by_model: dict[str, int] = {}
        self._admitted_lock = threading.Lock()

    def _loaded(self, slot: BaseSlot, load_s: float) -> None:
        self.served_models.forget_base(slot.id)  # its versions are checked against its files again
        self.metrics.observe_base_load(slot.id, load_s)
        self._publish_states()

    def _evicted(self, slot: BaseSlot) -> None:
        self.metrics.base_evictions.labels(slot.id).inc()
        self._publish_states()

    def _publish_states(self) -> None:
        for slot in self.pool.slots():
            self.metrics.set_base_state(slot.id, slot.state)

    # --- the models served (served_models.py, pool.py) ---------------------------------------------

    @property
    def models(self) -> list[str]:
        """The ``--models`` it was started for (see ``ServedModels``)."""
        return self.served_models.models

    @property
    def backend(self) -> Backend:
        """The default base's engine (loaded now if it was evicted)."""
        slot = self.pool.slot(self.base)
        with self.pool.lease(slot) as lease:
            return lease.backend

    def preload(self) -> list[ServedModel]:
        """``ServedModels.preload``: every ``--models`` entry, ready, its base loaded and pinned."""
        try:
            ready = self.served_models.preload()
        except OpenAIError as exc:  # at startup, said as the CLI says errors (no traceback)
            raise TuneloopError(exc.message, where="--models") from None
        self._publish_states()
        return ready

    def resolve(self, name: str) -> ServedModel:
        """``ServedModels.resolve``: the model a request names, verified, or a 404/409."""
        return self.served_models.resolve(name)

    def list_models(self) -> list[dict[str, Any]]:
        """``ServedModels.list_models``: the ``/v1/models`` cards."""
        return self.served_models.list_models()

    # --- requests --------------------------------------------------------------------------------

    def plan(self, request: ChatCompletionRequest, served: ServedModel) -> Plan:
        """Turn the request's parameters into generation settings; 400 naming the parameter otherwise."""
        if request.n not in (None, 1):
            raise invalid_parameter("only n=1 is supported", "n")
        if request.tools:
            raise invalid_parameter("tools are not supported by tuneloop serve", "tools")
        logprobs = bool(request.logprobs)
        top_logprobs = request.top_logprobs or 0
        if request.top_logprobs is not None:
            if not logprobs:
                raise invalid_parameter("needs logprobs: true", "top_logprobs")
            if not 0 <= request.top_logprobs <= MAX_TOP_LOGPROBS:
                raise invalid_parameter(
                    f"must be between 0 and {MAX_TOP_LOGPROBS}, got {request.top_logprobs}", "top_logprobs"
                )
        defaults = served.decoding
        temperature = _number(request.temperature, defaults.get("temperature", 0.0), "temperature", 0.0, 2.0)
        top_p = _number(request.top_p, defaults.get("top_p", 1.0), "top_p", 0.0, 1.0)
        if top_p == 0:
            raise invalid_parameter("top_p must be greater than 0", "top_p")
        max_tokens_name = "max_completion_tokens" if request.max_completion_tokens is not None else "max_tokens"
        max_tokens = request.max_completion_tokens if request.max_completion_tokens is not None else request.max_tokens
        if max_tokens is None:
            max_tokens = int(defaults.get("max_tokens", 256))
        if max_tokens < 1:
            raise invalid_parameter(f"{max_tokens_name} must be at least 1", max_tokens_name)
        stop = [request.stop] if isinstance(request.stop, str) else list(request.stop or [])
        if len(stop) > MAX_STOP_SEQUENCES:
            raise invalid_parameter(f"at most {MAX_STOP_SEQUENCES} stop sequences", "stop")
        if request.seed is not None and not 0 <= request.seed < 2**63:
            raise invalid_parameter("seed must be a non-negative 64-bit integer", "seed")
        schema = self._schema_for(request.response_format, served)
        messages = _messages(request)
        if schema is not None and served.engine in ("llamacpp", "transformers"):
            from tuneloop.serve.grammar import llama_grammar, llguidance_grammar

            grammar = llama_grammar if served.engine == "llamacpp" else llguidance_grammar
            try:
                grammar(schema)  # built (and cached) now, so a schema the engine can't express is a 400
            except TuneloopError as exc:
                raise invalid_parameter(exc.message, "response_format.json_schema.schema") from None
        params = GenerationParams(
            max_tokens=max_tokens,
            temperature=temperature,
            top_p=top_p,
            stop=stop or None,
            seed=request.seed,
            json_schema=_decoding_schema(schema, served, messages),
            logprobs=logprobs,
            top_logprobs=top_logprobs,
        )
        return Plan(served, messages, params, schema)

    def _schema_for(self, response_format: dict[str, Any] | None, served: ServedModel) -> dict[str, Any] | None:
        if response_format is None:
            return served.task_schema
        kind = response_format.get("type")
        if kind == "text":
            return None
        if kind == "json_object":
            return served.task_schema or ANY_JSON_OBJECT
        if kind == "json_schema":
            spec = response_format.get("json_schema")
            if not isinstance(spec, dict) or "schema" not in spec:
                raise invalid_parameter("json_schema needs a 'schema' object", "response_format.json_schema")
            try:
                return check_schema(spec["schema"], "response_format.json_schema.schema")
            except TuneloopError as exc:
                raise invalid_parameter(exc.message, exc.where or "response_format.json_schema.schema") from None
        raise invalid_parameter(f"type must be text, json_object or json_schema, not {kind!r}", "response_format.type")

    @contextmanager
    def admitted(self, model: str) -> Iterator[None]:
        """Hold one of ``max_queue`` places (at most ``max_queue_per_model`` of them for one model);
        429 with Retry-After when none is free."""
        with self._admitted_lock:
            held = self._admitted_by_model.get(model, 0)
            if self._admitted >= self.max_queue or held >= self.max_queue_per_model:
                self.metrics.queue_rejections.inc()
                why = (
                    f"the server's queue is full ({self.max_queue} requests)"
                    if self._admitted >= self.max_queue
                    else f"{model} holds its share of the server's queue ({self.max_queue_per_model} requests)"
                )
                raise OpenAIError(
                    429,
                    f"{why}; retry after {self.retry_after_s} s",
                    code="queue_full",
                    headers={"Retry-After": str(self.retry_after_s)},
                )
            self._admitted += 1
            self._admitted_by_model[model] = held + 1
            self.metrics.queue_depth.set(self._admitted)
        try:
            yield
        finally:
            with self._admitted_lock:
                self._admitted -= 1
                left = self._admitted_by_model[model] - 1
                if left:
                    self._admitted_by_model[model] = left
                else:
                    del self._admitted_by_model[model]
                self.metrics.queue_depth.set(self._admitted)

    async def _start_leased(
        self, served: ServedModel, work: Callable[[Backend], Any]
    ) -> tuple[concurrent.futures.Future[Any], float]:
        """``work(backend)`` queued on the worker of ``served``'s base, the base held hot (loaded first when
        it isn't: other bases' requests go on meanwhile) until the work ends. Returns the work's future
        and the seconds spent loading the base."""
        slot = self.pool.slot(self.served_models.base_of(served))
        holding = self.pool.lease(slot)
        acquiring = asyncio.ensure_future(asyncio.to_thread(holding.__enter__))
        try:
            lease = await asyncio.shield(acquiring)
        except asyncio.CancelledError:  # the client left while the base loaded: let go once it is held

            def release(done: asyncio.Future[Any]) -> None:
                if not done.cancelled() and done.exception() is None:
                    holding.__exit__(None, None, None)

            acquiring.add_done_callback(release)
            raise
        try:
            future = lease.slot.submit(served.id, functools.partial(work, lease.backend))
        except BaseException:
            holding.__exit__(None, None, None)
            raise
        # Released when the work ends (or is cancelled before it starts), not when the caller stops waiting:
        # a base must not be evicted under a generation.
        future.add_done_callback(lambda _: holding.__exit__(None, None, None))
        return future, lease.load_s

    async def complete(self, request: ChatCompletionRequest) -> dict[str, Any]:
        """A whole ``chat.completion`` (as a dict, ``model`` = the resolved version)."""
        served = await asyncio.to_thread(self.resolve, request.model)
        plan = self.plan(request, served)
        with self.admitted(served.id):
            admitted_at = time.perf_counter()

            def generate(backend: Backend) -> Generation:
                return backend.generate(plan.messages, plan.params, adapter=plan.served.adapter)

            try:
                future, load_s = await self._start_leased(served, generate)
                generation = await asyncio.wrap_future(future)
            except TuneloopError as exc:
                raise invalid_parameter(str(exc), "messages") from None
        latency_s = time.perf_counter() - admitted_at
        validation = validate_answer(generation.text, plan.schema) if plan.schema is not None else None
        self._record(plan, generation, latency_s, validation, request, load_s=load_s)
        extension = _extension(plan, request, validation, latency_s, generation, load_s)
        return _completion(plan, generation, extension, _completion_id(), int(time.time()))

    async def stream(
        self, request: ChatCompletionRequest, review: StreamReview | None = None
    ) -> tuple[ServedModel, AsyncIterator[bytes], float]:
        """Server-sent events of ``chat.completion.chunk``s, with the model that answers and the seconds its
        base took to load. Errors before the first token are raised here, so the HTTP layer can still
        answer with a status; later ones end the stream with an error event.

        ``review`` sees the whole answer once generated, before the finish chunk, and returns it with the
        ``tuneloop`` fields that chunk carries (the checks' result); an OpenAIError it raises is sent as
        the stream's last event instead."""
        served = await asyncio.to_thread(self.resolve, request.model)
        plan = self.plan(request, served)
        admission = self.admitted(served.id)
        admission.__enter__()
        admitted_at = time.perf_counter()
        loop = asyncio.get_running_loop()
        events: asyncio.Queue[tuple[str, Any]] = asyncio.Queue()
        cancelled = threading.Event()

        def push(kind: str, value: Any) -> None:
            loop.call_soon_threadsafe(events.put_nowait, (kind, value))

        def work(backend: Backend) -> None:
            try:
                deltas = _stream_generation(backend, plan)
                while True:
                    if cancelled.is_set():
                        deltas.close()  # the client went away: stop the engine
                        return
                    try:
                        push("delta", next(deltas))
                    except StopIteration as end:
                        push("end", end.value)
                        return
            except BaseException as exc:
                push("error", exc)

        try:
            _, load_s = await self._start_leased(served, work)  # the work reports through events
            first = await events.get()
        except BaseException:
            cancelled.set()
            admission.__exit__(None, None, None)
            raise
        if first[0] == "error":
            admission.__exit__(None, None, None)
            exc = first[1]
            if isinstance(exc, OpenAIError):
                raise exc
            if isinstance(exc, TuneloopError):
                raise invalid_parameter(str(exc), "messages") from None
            raise exc
        include_usage = request.include_usage

        async def sse() -> AsyncIterator[bytes]:
            completion_id, created = _completion_id(), int(time.time())

            def chunk(delta: dict[str, Any], finish: str | None = None, logprobs: Any = None, **extra: Any) -> bytes:
                body = ChatCompletionChunk(
                    id=completion_id,
                    created=created,
                    model=served.id,
                    system_fingerprint=served.fingerprint,
                    choices=[{"index": 0, "delta": delta, "finish_reason": finish, "logprobs": logprobs}],
                    **extra,
                )
                return sse_event(body.model_dump(mode="json", exclude_none=True))

            try:
                yield chunk({"role": "assistant", "content": ""})
                kind, value = first
                while kind == "delta":
                    if value.text or value.logprobs:
                        yield chunk(
                            {"content": value.text},
                            logprobs=_logprobs(value.logprobs) if plan.params.logprobs else None,
                        )
                    kind, value = await events.get()
                if kind == "error":
                    log.error("stream for %s failed: %s", served.id, value)
                    self.metrics.observe_error(served.id, 500, "stream_error")
                    yield sse_event({"error": {"message": f"generation failed: {value}", "type": "server_error"}})
                    return
                generation: Generation = value
                latency_s = time.perf_counter() - admitted_at
                validation = validate_answer(generation.text, plan.schema) if plan.schema is not None else None
                self._record(plan, generation, latency_s, validation, request, streamed=True, load_s=load_s)
                extension = _extension(plan, request, validation, latency_s, generation, load_s)
                if review is not None:
                    try:
                        whole = _completion(plan, generation, extension, completion_id, created)
                        extension = (await review(whole)).get("tuneloop") or extension
                    except OpenAIError as exc:
                        self.metrics.observe_error(served.id, exc.status, exc.code or exc.type)
                        yield sse_event(exc.body())
                        return
                yield chunk({}, generation.finish_reason, tuneloop=extension)
                if include_usage:
                    body = ChatCompletionChunk(
                        id=completion_id, created=created, model=served.id, choices=[], usage=_usage(generation)
                    )
                    yield sse_event(body.model_dump(mode="json", exclude_none=True))
                yield sse_event("[DONE]")
            finally:
                cancelled.set()
                admission.__exit__(None, None, None)

        return served, sse(), load_s

    def _record(
        self,
        plan: Plan,
        generation: Generation,
        latency_s: float,
        validation: Validation | None,
        request: ChatCompletionRequest,
        *,
        streamed: bool = False,
        load_s: float = 0.0,
    ) -> None:
        served = plan.served
        queue_s = latency_s - generation.latency_ms / 1000 - load_s
        first_token_s = None if generation.ttft_ms is None else load_s + queue_s + generation.ttft_ms / 1000
        self.metrics.observe_success(
            served.id,
            latency_s=latency_s,
            ttft_s=first_token_s,
            prompt_tokens=generation.prompt_tokens,
            completion_tokens=generation.completion_tokens,
        )
        if validation is not None and not validation.valid:
            self.metrics.schema_violations.labels(served.id).inc()
            log.warning("%s answered outside its schema: %s", served.id, "; ".join(validation.errors[:3]))
        log.info(
            "chat.completion model=%s requested=%s stream=%s tokens=%d+%d latency_ms=%.1f queue_ms=%.1f "
            "load_ms=%.1f schema=%s",
            served.id,
            request.model,
            streamed,
            generation.prompt_tokens,
            generation.completion_tokens,
            latency_s * 1000,
            queue_s * 1000,
            load_s * 1000,
            "-" if validation is None else ("valid" if validation.valid else "INVALID"),
        )

    def health(self) -> dict[str, Any]:
        default = self.pool.slot(self.base)
        return {
            "status": "ok",
            "backend": self.backend_name,
            "base": self.base.id,
            "queue": {"admitted": self._admitted, "max": self.max_queue, "max_per_model": self.max_queue_per_model},
            "loaded_adapters": list(getattr(default.backend, "loaded_adapters", [])),
            "memory": {"budget_bytes": self.pool.memory_budget, "hot_bytes": self.pool.hot_bytes()},
            "bases": {
                slot.id: {
                    "state": slot.state,
                    "engine": slot.backend_name,
                    "pinned": slot.pinned,
                    "in_flight": slot.in_flight,
                    "memory_bytes": slot.footprint_bytes,
                    "loads": slot.loads,
                    "last_load_s": None if slot.last_load_s is None else round(slot.last_load_s, 3),
                    "loaded_adapters": list(getattr(slot.backend, "loaded_adapters", [])),
                    **({"error": slot.error} if slot.error else {}),
                }
                for slot in self.pool.slots()
            },
        }

    def close(self) -> None:
        self.pool.close()


# --- helpers ---------------------------------------------------------------------------------------


def _stream_generation(backend: Backend, plan: Plan) -> Any:
    """``Delta``s, then the Generation: the backend's ``stream_deltas`` (text with token logprobs), else
    its ``stream_generation`` (text only), else its ``generate`` result as one delta."""
    if hasattr(backend, "stream_deltas"):
        return backend.stream_deltas(plan.messages, plan.params, adapter=plan.served.adapter)
    if hasattr(backend, "stream_generation"):
        texts = backend.stream_generation(plan.messages, plan.params, adapter=plan.served.adapter)

        def wrapped() -> Any:
            try:
                while True:
                    yield Delta(next(texts))
            except StopIteration as end:
                return end.value
            finally:
                texts.close()

        return wrapped()

    def whole() -> Any:
        generation = backend.generate(plan.messages, plan.params, adapter=plan.served.adapter)
        yield Delta(generation.text, generation.logprobs)
        return generation

    return whole()


def _completion(
    plan: Plan, generation: Generation, extension: dict[str, Any], completion_id: str, created: int
) -> dict[str, Any]:
    """The whole ``chat.completion`` of a generation (as a dict)."""
    completion = ChatCompletion(
        id=completion_id,
        created=created,
        model=plan.served.id,
        choices=[
            {
                "index": 0,
                "message": {"role": "assistant", "content": generation.text},
                "finish_reason": generation.finish_reason,
                "logprobs": _logprobs(generation.logprobs) if plan.params.logprobs else None,
            }
        ],
        usage=_usage(generation),
        system_fingerprint=plan.served.fingerprint,
        tuneloop=extension,
    )
    return completion.model_dump(mode="json")


def _logprobs(tokens: list[Any] | None) -> dict[str, Any]:
    """OpenAI's ``choices[].logprobs``: ``{"content": [{token, logprob, bytes, top_logprobs}], "refusal"}``."""
    return {"content": [token.openai() for token in tokens or []], "refusal": None}


def _decoding_schema(schema: dict[str, Any] | None, served: ServedModel, messages: list[Message]) -> Any:
    """What generation is held to: under the task's own schema, its extractive fields narrowed to this
    request's input and its formats enforced (``extraction.decoding_schema``); a request's schema as given."""
    if schema is None or served.task is None or schema is not served.task.output_schema:
        return schema
    from tuneloop.extraction import decoding_schema, source_text

    return decoding_schema(served.task, source_text(messages))


def _messages(request: ChatCompletionRequest) -> list[Message]:
    messages: list[Message] = []
    for index, message in enumerate(request.messages):
        role = _ROLES.get(message.role)
        if role is None:
            raise invalid_parameter(
                f"role {message.role!r} is not supported (system, developer, user, assistant)",
                f"messages[{index}].role",
            )
        content = message.content
        if isinstance(content, list):
            texts = []
            for part_index, part in enumerate(content):
                if part.get("type") != "text" or not isinstance(part.get("text"), str):
                    raise invalid_parameter(
                        "only text content parts are supported", f"messages[{index}].content[{part_index}]"
                    )
                texts.append(part["text"])
            content = "".join(texts)
        if content is None:
            raise invalid_parameter("content is required", f"messages[{index}].content")
        try:
            content.encode("utf-8")
        except UnicodeEncodeError:  # JSON may escape a lone surrogate (\ud800), which no tokenizer can take
            raise invalid_parameter(
                "is not valid Unicode (it holds a lone surrogate)", f"messages[{index}].content"
            ) from None
        messages.append({"role": role, "content": content})
    return messages


def _number(value: float | None, default: float, name: str, low: float, high: float) -> float:
    chosen = float(default if value is None else value)
    if not low <= chosen <= high:
        raise invalid_parameter(f"{name} must be between {low:g} and {high:g}, got {chosen:g}", name)
    return chosen


def _usage(generation: Generation) -> dict[str, int]:
    return {
        "prompt_tokens": generation.prompt_tokens,
        "completion_tokens": generation.completion_tokens,
        "total_tokens": generation.prompt_tokens + generation.completion_tokens,
    }


def _extension(
    plan: Plan,
    request: ChatCompletionRequest,
    validation: Validation | None,
    latency_s: float,
    generation: Generation,
    load_s: float = 0.0,
) -> dict[str, Any]:
    """tuneloop's own fields on a response: the resolved version, and what validation found."""
    served = plan.served
    extension: dict[str, Any] = {
        "model": served.id,
        "requested_model": request.model,
        "base": served.base_id,
        "content_hash": f"sha256:{served.version.content_hash}" if served.version else None,
        "latency_ms": round(latency_s * 1000, 2),
        "queue_ms": round(latency_s * 1000 - generation.latency_ms - load_s * 1000, 2),
        "load_ms": round(load_s * 1000, 2),
    }
    if uses_trained_prompt(plan.messages, served.adapter):
        # A distilled version: the task's instructions the client sent were swapped for the prompt it was
        # trained with (serve/backends/base.py), which is why usage.prompt_tokens is below the chat's length.
        extension["prompt"] = "trained"
    if validation is not None:
        extension["schema_valid"] = validation.valid
        extension["schema_errors"] = validation.errors
    return extension


def _completion_id() -> str:
    return f"chatcmpl-{uuid.uuid4().hex[:24]}"


def build_engine(
    *,
    backend: str = "llamacpp",
    models: list[str] | None = None,
    base: str | None = None,
    max_adapters: int = 8,
    max_queue: int = 16,
    max_queue_per_model: int | None = None,
    threads: int | Literal["auto"] | None = None,
    n_ctx: int = 2048,
    prefix_cache_mb: int = 256,
    forced_tokens: bool = False,
    device: str = "cpu",
    tensor_parallel_size: int = 1,
    pipeline_parallel_size: int = 1,
    alias_refresh_s: float = 1.0,
    max_batch_size: int = 8,
    llamacpp_weights: str = "native",
    vllm_python: str | None = None,
    memory_budget: int | None = None,
    warm: list[str] | None = None,
    bases: list[str] | None = None,
    load_default: bool = True,
) -> ServeEngine:
    """An engine as ``tuneloop serve`` builds it: a pool over every base (pool.py) with a default base
    (given, else the one the first ``--models`` entry was trained on, else the bundled one), loaded now
    (``load_default``), and pinned when it was named. ``max_batch_size``: requests the transformers backend
    decodes together (1: one at a time). ``llamacpp_weights``: the GGUF as it is (``native``) or its float
    rewrite (``f16``/``f32``, bases/widen.py). ``prefix_cache_mb`` and ``forced_tokens``: llama.cpp's
    LlamaCppOptions (serve/backends/options.py). ``vllm_python``: the interpreter that runs vLLM (None: found as
    serve/backends/vllm.py says). ``memory_budget``: bytes the hot bases may take (None: 80 % of the
    machine's). ``warm``: bases to prepare and read into the page cache now, without loading them.
    ``bases``: more bases clients may name (paths; bundled and HF-cache bases need not be listed)."""
    from tuneloop.bases import DEFAULT_BASE, resolve_base
    from tuneloop.registry.versions import resolve_version
    from tuneloop.serve.backends import options_type

    options_type(backend)  # an unknown --backend fails here, with the list
    models = list(models or [])
    for name in models:
        if not isinstance(parse_model_id(name), VersionRef | BaseRef):
            raise TuneloopError("serve takes task versions and bases only", where=f"--models {name}")
    named = base is not None
    if base is None:
        versions = [ref for ref in map(parse_model_id, models) if isinstance(ref, VersionRef)]
        base = resolve_version(versions[0], verify=False).base_id if versions else DEFAULT_BASE
    resolved_base = resolve_base(base)
    # Every flag goes to each base's engine; each backend takes the options it has (the rest are another's).
    flags = {
        "max_adapters": max_adapters,
        "n_ctx": n_ctx,
        "n_threads": threads,
        "prefix_cache_mb": prefix_cache_mb,
        "forced_tokens": forced_tokens,
        "weights": llamacpp_weights,
        "device": device,
        "max_batch_size": max_batch_size,
        "tensor_parallel_size": tensor_parallel_size,
        "pipeline_parallel_size": pipeline_parallel_size,
        "python": vllm_python,
    }
    pool = ModelPool(backend_name=backend, flags=flags, memory_budget=memory_budget, max_queue=max_queue)
    engine = ServeEngine(
        pool,
        resolved_base,
        models=models,
        max_queue=max_queue,
        max_queue_per_model=max_queue_per_model,
        alias_refresh_s=alias_refresh_s,
    )
    try:
        for name in bases or []:
            pool.slot(resolve_base(name))
        for name in warm or []:
            pool.warm(resolve_base(name))
        if named:
            pool.pin(resolved_base)
        elif load_default:
            with pool.lease(pool.slot(resolved_base)):
                pass
    except OpenAIError as exc:  # a load at startup: say it as the CLI says errors
        engine.close()
        raise TuneloopError(exc.message, where=resolved_base.id) from None
    except BaseException:
        engine.close()
        raise
    engine._publish_states()
    return engine

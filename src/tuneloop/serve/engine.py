"""The serving engine: which model a request names, its adapter, the queue, generation, validation.

The HTTP layer (``app.py``) parses a request and calls :meth:`ServeEngine.complete` or
:meth:`ServeEngine.stream`; everything else happens here, so the demo, benchmarks and tests drive the
same code as the server.

- **Resolution.** ``task@3`` and ``task@sha256:…`` name immutable versions and are looked up once;
  ``task@prod`` is re-read from the store at most every ``alias_refresh_s`` (1 s by default), so
  ``tuneloop models promote``/``rollback`` reach a running server without a restart. A base name serves
  the bare base. Every response, log line and metric names the resolved version (``task@4``).
- **Integrity.** Before a version's adapter is loaded into the backend (the first time, and again after
  the backend's LRU evicted it), its files are hashed and compared with the registered content hash; a
  tampered version is refused (409 ``model_integrity_error``) and nothing of it is loaded.
- **Queue.** Most backends run one generation at a time, so requests wait in one FIFO worker (fair: first
  come, first served, whichever version they name). A batching backend (transformers, ``max_batch_size``
  > 1) gets every admitted request at once and decodes them in FIFO batches, mixing versions. At most
  ``max_queue`` requests are admitted (running + waiting); one more is refused with 429 and ``Retry-After``.
- **Structured output.** A task version decodes under its task's output schema by default (llama.cpp's
  grammar, llguidance for transformers, vLLM's guided decoding); a request's
  ``response_format`` ``json_schema`` replaces it, ``json_object`` asks for the task schema (or any JSON
  object on a base), ``text`` turns it off. The answer is always validated afterwards; a violation is
  reported in the response (``tuneloop.schema_valid`` / ``schema_errors``) and counted, never hidden.
- **Log probabilities.** ``logprobs`` / ``top_logprobs`` (0..20) come back in OpenAI's shape, whole or per
  streamed chunk (each chunk with the tokens of its own text); see ``TokenLogprob``.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import threading
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

from tuneloop.bases import Base
from tuneloop.errors import TuneloopError
from tuneloop.protocol import ChatCompletion, ChatCompletionChunk, ChatCompletionRequest, OpenAIError, sse_event
from tuneloop.registry.ids import BaseRef, EndpointRef, VersionRef, parse_model_id
from tuneloop.registry.versions import ModelVersionInfo
from tuneloop.serve.backends import (
    MAX_TOP_LOGPROBS,
    Adapter,
    Backend,
    Delta,
    Generation,
    GenerationParams,
    Message,
)
from tuneloop.serve.grammar import ANY_JSON_OBJECT, Validation, check_schema, validate_answer
from tuneloop.serve.metrics import ServeMetrics

log = logging.getLogger("tuneloop.serve")

MAX_STOP_SEQUENCES = 4
# Checks a streamed answer before its finish chunk: the whole chat.completion in, the same annotated out.
StreamReview = Callable[[dict[str, Any]], Awaitable[dict[str, Any]]]
_ROLES = {"system": "system", "developer": "system", "user": "user", "assistant": "assistant"}


@dataclass(frozen=True)
class ServedModel:
    """A request's model after resolution: ``id`` is immutable (``task@4`` or the base id)."""

    id: str
    base_id: str
    version: ModelVersionInfo | None = None
    adapter: Adapter | None = None
    task_schema: dict[str, Any] | None = None
    decoding: dict[str, Any] = field(default_factory=dict)

    @property
    def fingerprint(self) -> str:
        """``system_fingerprint``: what the answer depends on (content hash, or the base)."""
        return f"tl-{self.version.content_hash[:12]}" if self.version else f"tl-base-{self.base_id}"


@dataclass(frozen=True)
class Plan:
    """A validated request: what to generate and how."""

    served: ServedModel
    messages: list[Message]
    params: GenerationParams
    schema: dict[str, Any] | None  # validated against afterwards; also the grammar when the engine has one


class ServeEngine:
    """Many versions over one loaded base, behind one backend."""

    def __init__(
        self,
        backend: Backend,
        base: Base,
        *,
        models: list[str] | None = None,
        max_queue: int = 16,
        alias_refresh_s: float = 1.0,
        retry_after_s: int = 1,
        metrics: ServeMetrics | None = None,
        backend_name: str | None = None,
    ) -> None:
        self.backend = backend
        self.base = base
        self.backend_name = backend_name or getattr(backend, "name", "llamacpp")
        self.models = list(models or [])
        # --models restricts the server to those tasks (any of their versions) and the base.
        self.allowed_tasks: set[str] | None = None
        if self.models:
            self.allowed_tasks = set()
            for name in self.models:
                ref = parse_model_id(name)
                if isinstance(ref, VersionRef):
                    self.allowed_tasks.add(ref.task)
        self.max_queue = max_queue
        self.alias_refresh_s = alias_refresh_s
        self.retry_after_s = retry_after_s
        self.metrics = metrics or ServeMetrics()
        # A batching backend (max_batch_size > 1) takes concurrent calls and gathers them itself: every
        # admitted request gets a worker, so a waiting one is in the backend's queue, ready for the next batch.
        self._batching = getattr(backend, "max_batch_size", 1) > 1
        workers = max_queue if self._batching else 1
        self._executor = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="tuneloop-generate")
        self._admitted = 0
        self._admitted_lock = threading.Lock()
        self._immutable: dict[str, ModelVersionInfo] = {}  # "task@3" / "task@sha256:…" → version
        self._aliases: dict[str, tuple[float, ModelVersionInfo]] = {}  # "task@prod" → (read at, version)
        self._served: dict[str, ServedModel] = {}  # content hash → ready ServedModel
        self._resolve_lock = threading.Lock()
        self._base_weights_hash: str | None = None
        self._task_schemas: dict[str, dict[str, Any] | None] = {}

    # --- resolution ------------------------------------------------------------------------------

    def preload(self) -> list[ServedModel]:
        """Resolve, verify and export every ``--models`` entry now, so a bad one fails at startup."""
        return [self.resolve(name) for name in self.models]

    def resolve(self, name: str) -> ServedModel:
        """The model ``name`` names, verified and ready; OpenAIError 404/409 when it can't be served."""
        try:
            ref = parse_model_id(name)
        except TuneloopError as exc:
            raise _not_found(name, exc.message) from None
        except (OSError, ValueError):  # probing the name as a path failed (e.g. a name too long for one)
            raise _not_found(name, "not a model name this server knows") from None
        if isinstance(ref, EndpointRef):
            raise _not_found(name, "this server serves its own models only, not upstream ones")
        if isinstance(ref, BaseRef):
            return self._resolve_base(name)
        if self.allowed_tasks is not None and ref.task not in self.allowed_tasks:
            raise _not_found(name, f"this server was started for {', '.join(sorted(self.allowed_tasks))}")
        info = self._lookup_version(ref)
        with self._resolve_lock:
            served = self._served.get(info.content_hash)
            if served is None or served.id != info.id:
                served = self._prepare_version(info)
                self._served[info.content_hash] = served
        return served

    def _resolve_base(self, name: str) -> ServedModel:
        if name != self.base.id:
            from tuneloop.bases import resolve_base

            try:
                same = resolve_base(name).id == self.base.id
            # A client's model name is any string; as a path it can fail in any way (no home directory
            # for "~x", a NUL byte, a name too long): each means "not this server's base", a 404.
            except (TuneloopError, OSError, RuntimeError, ValueError):
                same = False
            if not same:
                raise _not_found(name, f"this server runs the base {self.base.id} and its fine-tunes")
        return ServedModel(id=self.base.id, base_id=self.base.id)

    def _lookup_version(self, ref: VersionRef) -> ModelVersionInfo:
        from tuneloop.registry.versions import resolve_version

        key = str(ref)
        now = time.monotonic()
        if ref.is_immutable:
            cached = self._immutable.get(key)
            if cached is not None:
                return cached
        else:
            entry = self._aliases.get(key)
            if entry is not None and now - entry[0] < self.alias_refresh_s:
                return entry[1]
        try:
            info = resolve_version(ref, verify=False)  # the files are verified when loaded (below)
        except TuneloopError as exc:
            raise _not_found(key, exc.message, exc.hint) from None
        if ref.is_immutable:
            self._immutable[key] = info
        else:
            previous = self._aliases.get(key)
            if previous is not None and previous[1].id != info.id:
                log.info("alias %s moved: %s -> %s", key, previous[1].id, info.id)
            self._aliases[key] = (now, info)
        return info

    def _prepare_version(self, info: ModelVersionInfo) -> ServedModel:
        """Check a version belongs on this base and its files are intact; export what the backend needs."""
        if info.base_id != self.base.id:
            raise _not_found(info.id, f"it is a fine-tune of {info.base_id}, and this server runs {self.base.id}")
        if info.base_weights_hash and info.base_weights_hash != self._base_hash():
            raise _integrity_error(
                info.id, f"it was trained on other weights of {info.base_id} than the ones this server loaded"
            )
        self._verify(info)
        gguf_path = None
        if self.backend_name == "llamacpp":
            from tuneloop.registry.exports import ensure_gguf_lora

            try:
                gguf_path = ensure_gguf_lora(info)
            except TuneloopError as exc:
                raise _integrity_error(info.id, f"its adapter can't be exported for llama.cpp: {exc.message}") from None
        # A batching backend loads an adapter when a batch forms, so it checks the files then (before_load);
        # the others are checked right before their one generation (_ensure_loaded).
        before_load = functools.partial(self._verify, info) if self._batching else None
        return ServedModel(
            id=info.id,
            base_id=info.base_id,
            version=info,
            adapter=Adapter(id=info.id, peft_dir=info.adapter_path, gguf_path=gguf_path, before_load=before_load),
            task_schema=self._task_schema(info.task),
            decoding=dict(info.decoding),
        )

    def _verify(self, info: ModelVersionInfo) -> None:
        from tuneloop.registry.versions import verify_version

        try:
            verify_version(info, check_base=False)  # the base was checked once, against the loaded one
        except TuneloopError as exc:
            log.error("refusing %s: %s", info.id, exc)
            raise _integrity_error(info.id, exc.message, exc.hint) from None
        self.metrics.adapter_loads.labels(info.id).inc()

    def _base_hash(self) -> str:
        if self._base_weights_hash is None:
            from tuneloop.bases import base_weights_hash

            self._base_weights_hash = base_weights_hash(self.base)
        return self._base_weights_hash

    def _task_schema(self, task_name: str) -> dict[str, Any] | None:
        if task_name not in self._task_schemas:
            from tuneloop.task import load_task

            try:
                self._task_schemas[task_name] = load_task(task_name).output_schema
            except TuneloopError:
                log.warning("task %s has no spec here; its versions decode without a schema", task_name)
                self._task_schemas[task_name] = None
        return self._task_schemas[task_name]

    def list_models(self) -> list[dict[str, Any]]:
        """``/v1/models``: the base, and every registered version on it (with its aliases)."""
        from tuneloop.registry.versions import aliases_of, list_versions

        created = int(self.base.path.stat().st_mtime) if self.base.path.exists() else 0
        cards = [{"id": self.base.id, "object": "model", "created": created, "owned_by": "tuneloop", "parent": None}]
        for info in list_versions():
            if info.base_id != self.base.id:
                continue
            if self.allowed_tasks is not None and info.task not in self.allowed_tasks:
                continue
            cards.append(
                {
                    "id": info.id,
                    "object": "model",
                    "created": int(info.created_at.timestamp()) if info.created_at else 0,
                    "owned_by": "tuneloop",
                    "parent": info.base_id,
                    "root": info.hash_ref,
                    "aliases": [f"{info.task}@{alias}" for alias in aliases_of(info)],
                }
            )
        return cards

    # --- requests --------------------------------------------------------------------------------

    def plan(self, request: ChatCompletionRequest, served: ServedModel) -> Plan:
        """Turn the request's parameters into generation settings; 400 naming the parameter otherwise."""
        if request.n not in (None, 1):
            raise _invalid("only n=1 is supported", "n")
        if request.tools:
            raise _invalid("tools are not supported by tuneloop serve", "tools")
        logprobs = bool(request.logprobs)
        top_logprobs = request.top_logprobs or 0
        if request.top_logprobs is not None:
            if not logprobs:
                raise _invalid("needs logprobs: true", "top_logprobs")
            if not 0 <= request.top_logprobs <= MAX_TOP_LOGPROBS:
                raise _invalid(f"must be between 0 and {MAX_TOP_LOGPROBS}, got {request.top_logprobs}", "top_logprobs")
        if logprobs and self.backend_name == "vllm":
            raise _invalid("log probabilities are not supported by the vllm backend yet", "logprobs")
        defaults = served.decoding
        temperature = _number(request.temperature, defaults.get("temperature", 0.0), "temperature", 0.0, 2.0)
        top_p = _number(request.top_p, defaults.get("top_p", 1.0), "top_p", 0.0, 1.0)
        if top_p == 0:
            raise _invalid("top_p must be greater than 0", "top_p")
        max_tokens_name = "max_completion_tokens" if request.max_completion_tokens is not None else "max_tokens"
        max_tokens = request.max_completion_tokens if request.max_completion_tokens is not None else request.max_tokens
        if max_tokens is None:
            max_tokens = int(defaults.get("max_tokens", 256))
        if max_tokens < 1:
            raise _invalid(f"{max_tokens_name} must be at least 1", max_tokens_name)
        stop = [request.stop] if isinstance(request.stop, str) else list(request.stop or [])
        if len(stop) > MAX_STOP_SEQUENCES:
            raise _invalid(f"at most {MAX_STOP_SEQUENCES} stop sequences", "stop")
        if request.seed is not None and not 0 <= request.seed < 2**63:
            raise _invalid("seed must be a non-negative 64-bit integer", "seed")
        schema = self._schema_for(request.response_format, served)
        if schema is not None and self.backend_name in ("llamacpp", "transformers"):
            from tuneloop.serve.grammar import llama_grammar, llguidance_grammar

            grammar = llama_grammar if self.backend_name == "llamacpp" else llguidance_grammar
            try:
                grammar(schema)  # built (and cached) now, so a schema the engine can't express is a 400
            except TuneloopError as exc:
                raise _invalid(exc.message, "response_format.json_schema.schema") from None
        params = GenerationParams(
            max_tokens=max_tokens,
            temperature=temperature,
            top_p=top_p,
            stop=stop or None,
            seed=request.seed,
            json_schema=schema,
            logprobs=logprobs,
            top_logprobs=top_logprobs,
        )
        return Plan(served, _messages(request), params, schema)

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
                raise _invalid("json_schema needs a 'schema' object", "response_format.json_schema")
            try:
                return check_schema(spec["schema"], "response_format.json_schema.schema")
            except TuneloopError as exc:
                raise _invalid(exc.message, exc.where or "response_format.json_schema.schema") from None
        raise _invalid(f"type must be text, json_object or json_schema, not {kind!r}", "response_format.type")

    @contextmanager
    def admitted(self, model: str) -> Iterator[None]:
        """Hold one of ``max_queue`` places; 429 with Retry-After when none is free."""
        with self._admitted_lock:
            if self._admitted >= self.max_queue:
                self.metrics.queue_rejections.inc()
                raise OpenAIError(
                    429,
                    f"the server's queue is full ({self.max_queue} requests); retry after {self.retry_after_s} s",
                    code="queue_full",
                    headers={"Retry-After": str(self.retry_after_s)},
                )
            self._admitted += 1
            self.metrics.queue_depth.set(self._admitted)
        try:
            yield
        finally:
            with self._admitted_lock:
                self._admitted -= 1
                self.metrics.queue_depth.set(self._admitted)

    def _ensure_loaded(self, served: ServedModel) -> None:
        """Right before generating (in the worker): re-verify a version the backend doesn't hold, since
        loading it reads its files again."""
        if served.adapter is None or served.version is None or served.adapter.before_load is not None:
            return
        loaded = getattr(self.backend, "loaded_adapters", None)
        if loaded is not None and served.id not in loaded:
            self._verify(served.version)

    def _generate(self, plan: Plan) -> Generation:
        self._ensure_loaded(plan.served)
        return self.backend.generate(plan.messages, plan.params, adapter=plan.served.adapter)

    async def complete(self, request: ChatCompletionRequest) -> dict[str, Any]:
        """A whole ``chat.completion`` (as a dict, ``model`` = the resolved version)."""
        served = await asyncio.to_thread(self.resolve, request.model)
        plan = self.plan(request, served)
        loop = asyncio.get_running_loop()
        with self.admitted(served.id):
            admitted_at = time.perf_counter()
            try:
                generation = await loop.run_in_executor(self._executor, self._generate, plan)
            except TuneloopError as exc:
                raise _invalid(str(exc), "messages") from None
        latency_s = time.perf_counter() - admitted_at
        validation = validate_answer(generation.text, plan.schema) if plan.schema is not None else None
        self._record(plan, generation, latency_s, validation, request)
        extension = _extension(plan, request, validation, latency_s, generation)
        return _completion(plan, generation, extension, _completion_id(), int(time.time()))

    async def stream(
        self, request: ChatCompletionRequest, review: StreamReview | None = None
    ) -> tuple[ServedModel, AsyncIterator[bytes]]:
        """Server-sent events of ``chat.completion.chunk``s. Errors before the first token are raised here,
        so the HTTP layer can still answer with a status; later ones end the stream with an error event.

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

        def work() -> None:
            try:
                self._ensure_loaded(served)
                deltas = _stream_generation(self.backend, plan)
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

        loop.run_in_executor(self._executor, work)
        try:
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
                raise _invalid(str(exc), "messages") from None
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
                self._record(plan, generation, latency_s, validation, request, streamed=True)
                extension = _extension(plan, request, validation, latency_s, generation)
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

        return served, sse()

    def _record(
        self,
        plan: Plan,
        generation: Generation,
        latency_s: float,
        validation: Validation | None,
        request: ChatCompletionRequest,
        *,
        streamed: bool = False,
    ) -> None:
        served = plan.served
        queue_s = latency_s - generation.latency_ms / 1000
        first_token_s = None if generation.ttft_ms is None else queue_s + generation.ttft_ms / 1000
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
            "chat.completion model=%s requested=%s stream=%s tokens=%d+%d latency_ms=%.1f queue_ms=%.1f schema=%s",
            served.id,
            request.model,
            streamed,
            generation.prompt_tokens,
            generation.completion_tokens,
            latency_s * 1000,
            queue_s * 1000,
            "-" if validation is None else ("valid" if validation.valid else "INVALID"),
        )

    def health(self) -> dict[str, Any]:
        return {
            "status": "ok",
            "backend": self.backend_name,
            "base": self.base.id,
            "queue": {"admitted": self._admitted, "max": self.max_queue},
            "loaded_adapters": list(getattr(self.backend, "loaded_adapters", [])),
        }

    def close(self) -> None:
        self._executor.shutdown(wait=True, cancel_futures=True)
        self.backend.close()


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


def _messages(request: ChatCompletionRequest) -> list[Message]:
    messages: list[Message] = []
    for index, message in enumerate(request.messages):
        role = _ROLES.get(message.role)
        if role is None:
            raise _invalid(
                f"role {message.role!r} is not supported (system, developer, user, assistant)",
                f"messages[{index}].role",
            )
        content = message.content
        if isinstance(content, list):
            texts = []
            for part_index, part in enumerate(content):
                if part.get("type") != "text" or not isinstance(part.get("text"), str):
                    raise _invalid("only text content parts are supported", f"messages[{index}].content[{part_index}]")
                texts.append(part["text"])
            content = "".join(texts)
        if content is None:
            raise _invalid("content is required", f"messages[{index}].content")
        try:
            content.encode("utf-8")
        except UnicodeEncodeError:  # JSON may escape a lone surrogate (\ud800), which no tokenizer can take
            raise _invalid("is not valid Unicode (it holds a lone surrogate)", f"messages[{index}].content") from None
        messages.append({"role": role, "content": content})
    return messages


def _number(value: float | None, default: float, name: str, low: float, high: float) -> float:
    chosen = float(default if value is None else value)
    if not low <= chosen <= high:
        raise _invalid(f"{name} must be between {low:g} and {high:g}, got {chosen:g}", name)
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
) -> dict[str, Any]:
    """tuneloop's own fields on a response: the resolved version, and what validation found."""
    served = plan.served
    extension: dict[str, Any] = {
        "model": served.id,
        "requested_model": request.model,
        "content_hash": f"sha256:{served.version.content_hash}" if served.version else None,
        "latency_ms": round(latency_s * 1000, 2),
        "queue_ms": round(latency_s * 1000 - generation.latency_ms, 2),
    }
    if validation is not None:
        extension["schema_valid"] = validation.valid
        extension["schema_errors"] = validation.errors
    return extension


def _completion_id() -> str:
    return f"chatcmpl-{uuid.uuid4().hex[:24]}"


def _invalid(message: str, param: str) -> OpenAIError:
    return OpenAIError(400, f"{param}: {message}", param=param, code="invalid_parameter")


def _not_found(model: str, why: str, hint: str | None = None) -> OpenAIError:
    text = f"model {model!r} not found: {why}"
    if hint:
        text += f" ({hint})"
    return OpenAIError(404, text, param="model", code="model_not_found")


def _integrity_error(model: str, why: str, hint: str | None = None) -> OpenAIError:
    text = f"refusing to serve {model}: {why}"
    if hint:
        text += f" (fix: {hint})"
    return OpenAIError(409, text, param="model", code="model_integrity_error")


def build_engine(
    *,
    backend: str = "llamacpp",
    models: list[str] | None = None,
    base: str | None = None,
    max_adapters: int = 8,
    max_queue: int = 16,
    threads: int | None = None,
    n_ctx: int = 2048,
    device: str = "cpu",
    tensor_parallel_size: int = 1,
    pipeline_parallel_size: int = 1,
    alias_refresh_s: float = 1.0,
    max_batch_size: int = 8,
    llamacpp_weights: str = "native",
) -> ServeEngine:
    """An engine as ``tuneloop serve`` builds it: the base (given, else the one the first ``--models``
    entry was trained on, else the bundled one), loaded once into the chosen backend. ``max_batch_size``:
    requests the transformers backend decodes together (1: one at a time). ``llamacpp_weights``: the GGUF
    as it is (``native``) or its float rewrite (``f16``/``f32``, bases/widen.py)."""
    from tuneloop.bases import DEFAULT_BASE, resolve_base
    from tuneloop.registry.versions import resolve_version
    from tuneloop.serve.backends import BACKEND_NAMES, get_backend

    models = list(models or [])
    for name in models:
        if not isinstance(parse_model_id(name), VersionRef | BaseRef):
            raise TuneloopError("serve takes task versions and bases only", where=f"--models {name}")
    if base is None:
        versions = [ref for ref in map(parse_model_id, models) if isinstance(ref, VersionRef)]
        base = resolve_version(versions[0], verify=False).base_id if versions else DEFAULT_BASE
    resolved_base = resolve_base(base)
    if backend == "vllm":
        from tuneloop.serve.vllm import VllmBackend

        engine_backend: Backend = VllmBackend(
            resolved_base,
            max_adapters=max_adapters,
            tensor_parallel_size=tensor_parallel_size,
            pipeline_parallel_size=pipeline_parallel_size,
        )
    elif backend == "llamacpp":
        engine_backend = get_backend(
            backend,
            resolved_base,
            n_ctx=n_ctx,
            n_threads=threads,
            max_adapters=max_adapters,
            weights=llamacpp_weights,
        )
    elif backend == "transformers":
        engine_backend = get_backend(
            backend, resolved_base, device=device, max_adapters=max_adapters, max_batch_size=max_batch_size
        )
    else:
        raise TuneloopError(
            f"unknown backend {backend!r}", where="--backend", hint="use one of: " + ", ".join((*BACKEND_NAMES, "vllm"))
        )
    return ServeEngine(
        engine_backend,
        resolved_base,
        models=models,
        max_queue=max_queue,
        alias_refresh_s=alias_refresh_s,
        backend_name=backend,
    )

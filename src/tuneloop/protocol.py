"""The OpenAI chat API as pydantic models: requests, responses, stream chunks, errors.

Shared by everything that speaks the protocol (the capture gateway, the SDK wrapper, serve), so there is
one definition of each shape. Requests accept unknown fields (``extra="allow"``): providers add their
own, and a proxy must pass them through untouched. Responses are modelled loosely for the same reason.

Errors are always the OpenAI shape ``{"error": {"message", "type", "param", "code"}}``;
:func:`install_error_handlers` makes a FastAPI app answer every failure that way, so a client's mistake
is a 4xx it can read, never a 500 with a stack trace.

Streams: :class:`SSEDecoder` splits ``text/event-stream`` bytes into events, and
:class:`StreamAccumulator` folds ``chat.completion.chunk`` objects back into one ``chat.completion``
(content, tool calls by index, finish reasons, usage, tuneloop's extension): what a log stores for a
streamed call. :func:`completion_sse` goes the other way: a whole answer sent as a stream (a streamed
request whose answer had to be checked before any of it left).
"""

from __future__ import annotations

import json
import logging
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, StrictBool, field_validator

log = logging.getLogger(__name__)

# --- requests ------------------------------------------------------------------------------------


class _Open(BaseModel):
    """A protocol object: known fields are typed, unknown ones are kept as they came."""

    model_config = ConfigDict(extra="allow", populate_by_name=True)


class ChatMessage(_Open):
    role: str
    # str, a list of content parts, or None (an assistant turn that only calls tools)
    content: str | list[dict[str, Any]] | None = None
    name: str | None = None
    tool_calls: list[dict[str, Any]] | None = None
    tool_call_id: str | None = None


class StreamOptions(_Open):
    include_usage: bool | None = None


class ChatCompletionRequest(_Open):
    """``POST /v1/chat/completions``. Only what a proxy must understand is typed; the rest passes through."""

    model: str = Field(min_length=1)
    messages: list[ChatMessage] = Field(min_length=1)
    # JSON booleans only, as OpenAI takes them: a proxy that read "false" or 0 one way while the upstream
    # (or the log) read it the other would stream, or log, against the caller's word.
    stream: StrictBool | None = False
    stream_options: StreamOptions | None = None
    # OpenAI's "store this completion" flag and its tags. tuneloop reads them as: log this call (default
    # yes) and label it with these key/values.
    store: StrictBool | None = None
    metadata: dict[str, str] | None = None
    tools: list[dict[str, Any]] | None = None
    tool_choice: str | dict[str, Any] | None = None
    response_format: dict[str, Any] | None = None
    temperature: float | None = None
    top_p: float | None = None
    max_tokens: int | None = None
    max_completion_tokens: int | None = None
    n: int | None = None
    stop: str | list[str] | None = None
    seed: int | None = None
    logprobs: bool | None = None
    top_logprobs: int | None = None

    @property
    def include_usage(self) -> bool:
        """A streamed reply ends with a usage chunk."""
        return bool(self.stream_options and self.stream_options.include_usage)

    @field_validator("metadata")
    @classmethod
    def _metadata_shape(cls, metadata: dict[str, str] | None) -> dict[str, str] | None:
        # OpenAI's limits: 16 pairs, keys up to 64 characters, values up to 512.
        if metadata is None:
            return None
        if len(metadata) > 16:
            raise ValueError("at most 16 key/value pairs")
        for key, value in metadata.items():
            if len(key) > 64:
                raise ValueError(f"key {key[:20]!r}… is longer than 64 characters")
            if len(value) > 512:
                raise ValueError(f"value of {key!r} is longer than 512 characters")
        return metadata


# --- responses -----------------------------------------------------------------------------------


class Usage(_Open):
    prompt_tokens: int = 0
    completion_tokens: int = 0
    total_tokens: int = 0
    prompt_tokens_details: dict[str, Any] | None = None
    completion_tokens_details: dict[str, Any] | None = None


class ResponseMessage(_Open):
    role: str = "assistant"
    content: str | None = None
    tool_calls: list[dict[str, Any]] | None = None
    refusal: str | None = None


class Choice(_Open):
    index: int = 0
    message: ResponseMessage
    finish_reason: str | None = None
    logprobs: dict[str, Any] | None = None


class ChatCompletion(_Open):
    id: str
    object: Literal["chat.completion"] = "chat.completion"
    created: int
    model: str
    choices: list[Choice]
    usage: Usage | None = None
    system_fingerprint: str | None = None


class ChunkDelta(_Open):
    role: str | None = None
    content: str | None = None
    tool_calls: list[dict[str, Any]] | None = None
    refusal: str | None = None


class ChunkChoice(_Open):
    index: int = 0
    delta: ChunkDelta
    finish_reason: str | None = None
    logprobs: dict[str, Any] | None = None


class ChatCompletionChunk(_Open):
    id: str
    object: Literal["chat.completion.chunk"] = "chat.completion.chunk"
    created: int
    model: str
    choices: list[ChunkChoice]
    usage: Usage | None = None
    system_fingerprint: str | None = None


class Model(_Open):
    id: str
    object: Literal["model"] = "model"
    created: int = 0
    owned_by: str = "tuneloop"


class ModelList(_Open):
    object: Literal["list"] = "list"
    data: list[Model]


def usage_counts(usage: dict[str, Any] | None) -> tuple[int | None, int | None, int | None]:
    """(prompt, completion, cached prompt) tokens from a response's ``usage``; None where not reported."""
    if not isinstance(usage, dict):
        return None, None, None
    details = usage.get("prompt_tokens_details") or {}
    cached = details.get("cached_tokens") if isinstance(details, dict) else None
    return _int_or_none(usage.get("prompt_tokens")), _int_or_none(usage.get("completion_tokens")), _int_or_none(cached)


def _int_or_none(value: Any) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) else None


# --- errors --------------------------------------------------------------------------------------

# OpenAI's error types by HTTP status; clients (the official SDKs) map the status to an exception class.
ERROR_TYPES = {
    400: "invalid_request_error",
    401: "authentication_error",
    403: "permission_error",
    404: "not_found_error",
    409: "conflict_error",
    413: "invalid_request_error",
    422: "invalid_request_error",
    429: "rate_limit_error",
}


class ErrorDetail(_Open):
    message: str
    type: str
    param: str | None = None
    code: str | None = None


class ErrorResponse(_Open):
    error: ErrorDetail


def error_type_for(status: int) -> str:
    return ERROR_TYPES.get(status, "server_error" if status >= 500 else "invalid_request_error")


def error_body(
    message: str, type: str | None = None, *, status: int = 400, param: str | None = None, code: str | None = None
) -> dict[str, Any]:
    """``{"error": {"message", "type", "param", "code"}}``, with the type following the status by default."""
    return {"error": {"message": message, "type": type or error_type_for(status), "param": param, "code": code}}


def error_bytes(
    message: str, type: str | None = None, *, status: int = 400, param: str | None = None, code: str | None = None
) -> bytes:
    return json.dumps(error_body(message, type, status=status, param=param, code=code)).encode()


def is_error_body(payload: Any) -> bool:
    """Whether a decoded JSON body already has OpenAI's error shape."""
    return isinstance(payload, dict) and isinstance(payload.get("error"), dict) and "message" in payload["error"]


class OpenAIError(Exception):
    """Raise inside a handler to answer with an OpenAI-shaped error and this status."""

    def __init__(
        self,
        status: int,
        message: str,
        *,
        type: str | None = None,
        param: str | None = None,
        code: str | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.type = type or error_type_for(status)
        self.param = param
        self.code = code
        self.headers = headers or {}

    def body(self) -> dict[str, Any]:
        return error_body(self.message, self.type, status=self.status, param=self.param, code=self.code)


def validation_error_param(loc: tuple[Any, ...] | list[Any]) -> str | None:
    """``("body", "messages", 0, "role")`` → ``messages[0].role``: the ``param`` of an invalid field."""
    parts: list[str] = []
    for item in loc:
        if item in ("body", "query", "path", "header"):
            continue
        if isinstance(item, int):
            parts.append(f"[{item}]")
        else:
            parts.append(("." if parts else "") + str(item))
    return "".join(parts) or None


def describe_validation_error(errors: list[dict[str, Any]]) -> tuple[str, str | None]:
    """One readable sentence for pydantic's errors, and the ``param`` of the first."""
    first = errors[0]
    param = validation_error_param(first.get("loc", ()))
    message = str(first.get("msg", "invalid value")).removeprefix("Value error, ")
    text = f"{param}: {message}" if param else message
    if len(errors) > 1:
        text += f" (and {len(errors) - 1} more problem{'s' if len(errors) > 2 else ''})"
    return text, param


def openai_error_response(exc: OpenAIError) -> Any:
    """The JSON response for an :class:`OpenAIError`, as raised."""
    from starlette.responses import JSONResponse

    return JSONResponse(exc.body(), status_code=exc.status, headers=exc.headers)


def unexpected_error_response(exc: Exception) -> Any:
    """A 500 ``server_error`` for a bug: the traceback goes to the server log only."""
    from starlette.responses import JSONResponse

    log.exception("unhandled error while serving a request", exc_info=exc)
    return JSONResponse(
        error_body("internal error in tuneloop; see the server log", "server_error", status=500), status_code=500
    )


def install_error_handlers(app: Any) -> None:
    """Make a FastAPI/Starlette app answer every error in OpenAI's shape.

    Request validation → 400 naming the field; ``HTTPException`` → its status; ``OpenAIError`` → as raised;
    anything else → 500 ``server_error`` with a generic message (the traceback goes to the server log only).
    """
    from fastapi.exceptions import RequestValidationError
    from fastapi.responses import JSONResponse
    from starlette.exceptions import HTTPException as StarletteHTTPException

    async def openai_error(_request: Any, exc: OpenAIError) -> JSONResponse:
        return openai_error_response(exc)

    async def validation_error(_request: Any, exc: RequestValidationError) -> JSONResponse:
        message, param = describe_validation_error(list(exc.errors()))
        return JSONResponse(error_body(message, status=400, param=param), status_code=400)

    async def http_error(_request: Any, exc: StarletteHTTPException) -> JSONResponse:
        message = exc.detail if isinstance(exc.detail, str) else json.dumps(exc.detail)
        return JSONResponse(
            error_body(message, status=exc.status_code), status_code=exc.status_code, headers=exc.headers
        )

    async def unexpected_error(_request: Any, exc: Exception) -> JSONResponse:
        return unexpected_error_response(exc)

    app.add_exception_handler(OpenAIError, openai_error)
    app.add_exception_handler(RequestValidationError, validation_error)
    app.add_exception_handler(StarletteHTTPException, http_error)
    app.add_exception_handler(Exception, unexpected_error)


# --- streams -------------------------------------------------------------------------------------


class SSEDecoder:
    """Incremental ``text/event-stream`` parser: feed bytes as they arrive, get the ``data`` of each event.

    Events end at a blank line; ``data:`` lines of one event are joined with newlines (the SSE spec).
    Comments and other fields (``event:``, ``id:``) are ignored, as OpenAI clients ignore them.
    """

    def __init__(self) -> None:
        self._buffer = b""
        self._data: list[str] = []

    def feed(self, chunk: bytes) -> list[str]:
        self._buffer += chunk
        events: list[str] = []
        while True:
            newline = self._buffer.find(b"\n")
            if newline < 0:
                break
            line = self._buffer[:newline].rstrip(b"\r")
            self._buffer = self._buffer[newline + 1 :]
            self._line(line, events)
        return events

    def close(self) -> list[str]:
        """Events left when the stream ends without a final blank line."""
        events: list[str] = []
        if self._buffer:
            self._line(self._buffer.rstrip(b"\r"), events)
            self._buffer = b""
        self._line(b"", events)
        return events

    def _line(self, line: bytes, events: list[str]) -> None:
        if not line:
            if self._data:
                events.append("\n".join(self._data))
                self._data = []
            return
        if line.startswith(b"data:"):
            value = line[5:]
            self._data.append((value[1:] if value.startswith(b" ") else value).decode("utf-8", "replace"))


class StreamAccumulator:
    """Folds ``chat.completion.chunk`` objects into the ``chat.completion`` they add up to."""

    def __init__(self) -> None:
        self.id: str | None = None
        self.model: str | None = None
        self.created: int | None = None
        self.system_fingerprint: str | None = None
        self.usage: dict[str, Any] | None = None
        self.error: dict[str, Any] | None = None
        self.extension: dict[str, Any] = {}  # tuneloop's fields (checks, review…), merged over the chunks
        self.chunks = 0
        self._choices: dict[int, dict[str, Any]] = {}

    def add_event(self, data: str) -> None:
        """One SSE ``data`` payload: a chunk, ``[DONE]``, or an error object sent mid-stream."""
        if data.strip() == "[DONE]":
            return
        try:
            chunk = json.loads(data)
        except json.JSONDecodeError:
            return
        if isinstance(chunk, dict):
            self.add_chunk(chunk)

    def add_chunk(self, chunk: dict[str, Any]) -> None:
        if is_error_body(chunk):
            self.error = chunk["error"]
            return
        self.chunks += 1
        self.id = self.id or chunk.get("id")
        self.model = self.model or chunk.get("model")
        self.created = self.created or chunk.get("created")
        self.system_fingerprint = self.system_fingerprint or chunk.get("system_fingerprint")
        if chunk.get("usage"):
            self.usage = chunk["usage"]
        if isinstance(chunk.get("tuneloop"), dict):
            self.extension.update(chunk["tuneloop"])
        for choice in chunk.get("choices") or []:
            self._add_choice(choice)

    def _add_choice(self, choice: dict[str, Any]) -> None:
        index = choice.get("index", 0)
        state = self._choices.setdefault(
            index,
            {
                "role": "assistant",
                "content": [],
                "refusal": [],
                "tool_calls": {},
                "finish_reason": None,
                "logprobs": None,
            },
        )
        logprobs = choice.get("logprobs")
        if isinstance(logprobs, dict) and isinstance(logprobs.get("content"), list):
            # each chunk carries the tokens of its own text; the whole reply's list is their concatenation
            state["logprobs"] = (state["logprobs"] or []) + logprobs["content"]
        delta = choice.get("delta") or {}
        if delta.get("role"):
            state["role"] = delta["role"]
        if delta.get("content"):
            state["content"].append(delta["content"])
        if delta.get("refusal"):
            state["refusal"].append(delta["refusal"])
        for call in delta.get("tool_calls") or []:
            slot = state["tool_calls"].setdefault(
                call.get("index", 0), {"id": None, "type": "function", "function": {"name": "", "arguments": ""}}
            )
            if call.get("id"):
                slot["id"] = call["id"]
            if call.get("type"):
                slot["type"] = call["type"]
            function = call.get("function") or {}
            if function.get("name"):
                slot["function"]["name"] += function["name"]
            if function.get("arguments"):
                slot["function"]["arguments"] += function["arguments"]
        if choice.get("finish_reason"):
            state["finish_reason"] = choice["finish_reason"]

    def completion(self) -> dict[str, Any]:
        """The reassembled ``chat.completion`` (as a plain dict, ready to store)."""
        choices = []
        for index in sorted(self._choices):
            state = self._choices[index]
            message: dict[str, Any] = {"role": state["role"], "content": "".join(state["content"]) or None}
            if state["tool_calls"]:
                message["tool_calls"] = [state["tool_calls"][i] for i in sorted(state["tool_calls"])]
            if state["refusal"]:
                message["refusal"] = "".join(state["refusal"])
            folded: dict[str, Any] = {"index": index, "message": message, "finish_reason": state["finish_reason"]}
            if state["logprobs"] is not None:
                folded["logprobs"] = {"content": state["logprobs"], "refusal": None}
            choices.append(folded)
        completion: dict[str, Any] = {
            "id": self.id,
            "object": "chat.completion",
            "created": self.created,
            "model": self.model,
            "choices": choices,
        }
        if self.usage is not None:
            completion["usage"] = self.usage
        if self.system_fingerprint:
            completion["system_fingerprint"] = self.system_fingerprint
        if self.extension:
            completion["tuneloop"] = self.extension
        return completion


def reassemble_sse(body: bytes) -> tuple[dict[str, Any], dict[str, Any] | None]:
    """A whole SSE body → (the reassembled completion, an error object sent mid-stream or None)."""
    decoder, accumulator = SSEDecoder(), StreamAccumulator()
    for event in decoder.feed(body) + decoder.close():
        accumulator.add_event(event)
    return accumulator.completion(), accumulator.error


def sse_event(payload: dict[str, Any] | str) -> bytes:
    """One SSE event carrying ``payload`` (a dict is sent as JSON)."""
    data = payload if isinstance(payload, str) else json.dumps(payload, separators=(",", ":"))
    return f"data: {data}\n\n".encode()


def completion_sse(completion: dict[str, Any], *, include_usage: bool = False) -> bytes:
    """A whole ``chat.completion`` as the ``chat.completion.chunk`` stream that adds up to it: a role chunk,
    a content chunk (with its logprobs), a finish chunk (with tuneloop's extension), the usage chunk
    when asked for, then ``[DONE]``. :func:`reassemble_sse` gives the completion back."""
    head = {key: completion.get(key) for key in ("id", "created", "model")}
    head["object"] = "chat.completion.chunk"
    if completion.get("system_fingerprint"):
        head["system_fingerprint"] = completion["system_fingerprint"]
    choices = [(choice.get("index", 0), choice) for choice in completion.get("choices") or []]

    def chunk(deltas: list[dict[str, Any]], **extra: Any) -> bytes:
        return sse_event({**head, "choices": deltas, **extra})

    events = [
        chunk([{"index": i, "delta": {"role": "assistant", "content": ""}, "finish_reason": None} for i, _ in choices])
    ]
    content = []
    for index, choice in choices:
        part = {"index": index, "delta": _message_delta(choice.get("message") or {}), "finish_reason": None}
        if choice.get("logprobs"):
            part["logprobs"] = choice["logprobs"]
        content.append(part)
    events.append(chunk(content))
    finish = [{"index": i, "delta": {}, "finish_reason": choice.get("finish_reason")} for i, choice in choices]
    extension = completion.get("tuneloop")
    events.append(chunk(finish, **({"tuneloop": extension} if extension else {})))
    if include_usage and completion.get("usage"):
        events.append(chunk([], usage=completion["usage"]))
    events.append(sse_event("[DONE]"))
    return b"".join(events)


def _message_delta(message: dict[str, Any]) -> dict[str, Any]:
    """A whole message as one delta (a delta's tool calls carry their index)."""
    delta = {key: message[key] for key in ("content", "refusal") if message.get(key) is not None}
    if message.get("tool_calls"):
        delta["tool_calls"] = [{"index": i, **call} for i, call in enumerate(message["tool_calls"])]
    return delta

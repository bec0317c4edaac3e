"""The OpenAI-compatible HTTP surface of ``tuneloop serve``: routes parse, call the engine, and answer.

``/v1/chat/completions`` (whole or streamed), ``/v1/models``, ``/health``, ``/metrics``. Every error is
OpenAI-shaped (``protocol.install_error_handlers``): no or a wrong key 401 ``invalid_api_key`` (see
serve/auth.py: the gateway's keys and ``auth`` modes), unknown model 404 ``model_not_found``, a bad
parameter 400 naming it, a body over ``max_body_bytes`` 413, a full queue 429 with ``Retry-After``.

:func:`start_background_server` runs the app on a free loopback port in a thread: the demo, the tests
and the benchmarks use it, so they exercise the real server.
"""

from __future__ import annotations

import asyncio
import functools
import json
from collections.abc import Awaitable, Callable, MutableMapping
from dataclasses import dataclass
from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response, StreamingResponse

from tuneloop.background import ThreadedServer, start_in_thread
from tuneloop.protocol import (
    ChatCompletionRequest,
    ModelList,
    OpenAIError,
    completion_sse,
    error_bytes,
    install_error_handlers,
)
from tuneloop.review.policy import SHADOW_HEADER, ReviewPolicy
from tuneloop.serve.auth import AuthMode, KeyAuth, ServeKeys
from tuneloop.serve.engine import ServeEngine

DEFAULT_MAX_BODY_BYTES = 1 << 20  # 1 MiB: far above any chat a small model's context holds

Scope = MutableMapping[str, Any]
ASGIApp = Callable[[Scope, Callable[[], Awaitable[dict]], Callable[[dict], Awaitable[None]]], Awaitable[None]]


class BodySizeLimit:
    """Refuse request bodies over ``limit`` bytes with 413, by Content-Length or while reading a chunked one."""

    def __init__(self, app: ASGIApp, limit: int) -> None:
        self.app = app
        self.limit = limit

    async def __call__(self, scope: Scope, receive: Callable[[], Awaitable[dict]], send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared = dict(scope.get("headers") or []).get(b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > self.limit:
            await self._refuse(send)
            return
        seen = 0
        too_large = False

        async def counting_receive() -> dict:
            nonlocal seen, too_large
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > self.limit:
                    too_large = True
                    raise _BodyTooLarge
            return message

        refused = False

        async def guarded_send(message: dict) -> None:
            # The framework turns a failed body read into its own 400; answer 413 instead.
            nonlocal refused
            if too_large:
                if not refused:
                    refused = True
                    await self._refuse(send)
                return
            await send(message)

        try:
            await self.app(scope, counting_receive, guarded_send)
        except _BodyTooLarge:
            if not refused:
                await self._refuse(send)

    async def _refuse(self, send: Any) -> None:
        body = error_bytes(f"the request body is larger than {self.limit} bytes", status=413, code="body_too_large")
        await send(
            {
                "type": "http.response.start",
                "status": 413,
                "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())],
            }
        )
        await send({"type": "http.response.body", "body": body})


class _BodyTooLarge(Exception):
    pass


def create_app(
    engine: ServeEngine,
    *,
    max_body_bytes: int = DEFAULT_MAX_BODY_BYTES,
    review: ReviewPolicy | None = None,
    auth: AuthMode | ServeKeys = "auto",
    protect_metrics: bool = False,
) -> FastAPI:
    """The FastAPI app over ``engine``; each structured answer, streamed or not, goes through ``review``
    (the task's checks and ``on_check_failure``, see tuneloop.review.policy; default: a policy on the
    default store). ``auth``: who may call it (a mode over the default store's keys, or the keys the CLI
    loaded); ``protect_metrics``: ``/metrics`` needs a key too."""
    review = review or ReviewPolicy(metrics=engine.metrics.review)
    app = FastAPI(
        title="tuneloop serve",
        version="1",
        summary="OpenAI-compatible chat completions over pinned fine-tune versions",
    )
    app.state.engine = engine
    install_error_handlers(app)
    app.add_middleware(BodySizeLimit, limit=max_body_bytes)
    # Added last, so it runs first: the key is checked from the headers before any of the body is read.
    keys = auth if isinstance(auth, ServeKeys) else ServeKeys(auth)
    app.add_middleware(
        KeyAuth,
        keys=keys,
        protect_metrics=protect_metrics,
        on_refused=lambda exc: engine.metrics.observe_error(None, exc.status, exc.code or exc.type),
    )

    async def record_errors(request: Request, exc: OpenAIError) -> JSONResponse:
        engine.metrics.observe_error(None, exc.status, exc.code or exc.type)
        return JSONResponse(exc.body(), status_code=exc.status, headers=exc.headers)

    app.add_exception_handler(OpenAIError, record_errors)

    @app.post("/v1/chat/completions", response_model=None)
    async def chat_completions(body: ChatCompletionRequest, http: Request) -> Response:
        request = body.model_dump(mode="json", exclude_none=True)
        if body.stream:
            served = await asyncio.to_thread(engine.resolve, body.model)
            mode = review.stream_mode(served.id, request)
            if mode != "buffered":
                check = functools.partial(_check_streamed, review, request) if mode == "live" else None
                served, events, load_s = await engine.stream(body, review=check)
                return StreamingResponse(
                    events,
                    media_type="text/event-stream",
                    headers={
                        "X-Tuneloop-Model": served.id,
                        "X-Tuneloop-Load-Ms": f"{load_s * 1000:.1f}",
                        "Cache-Control": "no-cache",
                    },
                )
        completion = await engine.complete(body)
        outcome = await review.apply(
            request,
            completion,
            model=completion["model"],
            retry=lambda model: _complete_elsewhere(engine, body, model),
            # A gateway's shadow call (tuneloop.capture.rollouts): checked, never acted on.
            observe_only=SHADOW_HEADER in http.headers,
        )
        if outcome.error is not None:
            raise outcome.error
        headers = {
            "X-Tuneloop-Model": outcome.completion["model"],
            # What this request waited for its base to load (0 when it was hot): from its own answer, even
            # when a fallback answered.
            "X-Tuneloop-Load-Ms": f"{(completion.get('tuneloop') or {}).get('load_ms', 0.0):.1f}",
            **outcome.headers,
        }
        if body.stream:  # buffered: checked whole, now sent as the stream the client asked for
            sse = completion_sse(outcome.completion, include_usage=body.include_usage)
            return Response(sse, media_type="text/event-stream", headers={**headers, "Cache-Control": "no-cache"})
        return JSONResponse(outcome.completion, headers=headers)

    @app.get("/v1/models")
    async def models() -> dict[str, Any]:
        cards = await asyncio.to_thread(engine.list_models)
        return ModelList(data=cards).model_dump(mode="json")

    @app.get("/v1/models/{model_id:path}")
    async def model(model_id: str) -> dict[str, Any]:
        served = await asyncio.to_thread(engine.resolve, model_id)
        for card in await asyncio.to_thread(engine.list_models):
            if card["id"] == served.id:
                return card
        raise OpenAIError(404, f"model {model_id!r} not found", param="model", code="model_not_found")

    @app.get("/health")
    async def health() -> dict[str, Any]:
        return engine.health()

    @app.get("/metrics")
    async def metrics() -> Response:
        return Response(engine.metrics.exposition(), media_type=engine.metrics.content_type)

    return app


async def _check_streamed(review: ReviewPolicy, request: dict[str, Any], completion: dict[str, Any]) -> dict[str, Any]:
    """A live stream's whole answer, checked before its finish chunk; no fallback (its tokens are out)."""
    outcome = await review.apply(request, completion, model=completion["model"])
    if outcome.error is not None:  # the task turned to reject while this answer streamed
        raise outcome.error
    return outcome.completion


async def _complete_elsewhere(engine: ServeEngine, body: ChatCompletionRequest, model: str) -> dict[str, Any]:
    """A fallback answer: from this engine when it serves ``model``, else from the upstream it names."""
    from tuneloop.registry.ids import EndpointRef, parse_model_id
    from tuneloop.upstreams import call_endpoint

    ref = parse_model_id(model)
    if isinstance(ref, EndpointRef):
        return await call_endpoint(ref, body.model_dump(mode="json", exclude_none=True))
    return await engine.complete(body.model_copy(update={"model": model}))


@dataclass
class BackgroundServer:
    """A server running in a thread of this process; ``base_url`` is what an ``openai`` client takes."""

    base_url: str
    engine: ServeEngine
    _running: ThreadedServer

    def stop(self, *, close_engine: bool = True) -> None:
        self._running.stop(timeout=30)
        if close_engine:
            self.engine.close()


def start_background_server(
    engine: ServeEngine,
    *,
    host: str = "127.0.0.1",
    port: int = 0,
    max_body_bytes: int = DEFAULT_MAX_BODY_BYTES,
    review: ReviewPolicy | None = None,
    auth: AuthMode | ServeKeys = "auto",
    protect_metrics: bool = False,
) -> BackgroundServer:
    """Serve ``engine`` on ``host:port`` (0: a free port) in a daemon thread; returns once it accepts."""
    import uvicorn

    app = create_app(engine, max_body_bytes=max_body_bytes, review=review, auth=auth, protect_metrics=protect_metrics)
    config = uvicorn.Config(app, log_level="warning", lifespan="off")
    running = start_in_thread(config, host=host, port=port, name="tuneloop-serve")
    return BackgroundServer(f"http://{host}:{running.port}/v1", engine, running)


def openapi_json(engine: ServeEngine) -> str:
    """The server's OpenAPI document (schemathesis and client generators read it)."""
    return json.dumps(create_app(engine).openapi(), indent=1)

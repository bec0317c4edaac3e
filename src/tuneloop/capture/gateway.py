"""The gateway: an OpenAI-compatible proxy that routes by model name and logs every call to the store.

Endpoints:

- ``POST /v1/chat/completions`` (streamed and not): authenticated with a tuneloop key, routed
  (:mod:`routing`), sent upstream with retries and fallbacks (:mod:`forwarding`), logged (:mod:`logwriter`).
  Streams are passed through chunk by chunk as they arrive and reassembled for the log off the path;
  a task's checks apply to them too (tuneloop.review.policy: ``ReviewPolicy.stream_mode``).
- ``GET /v1/models``: the exact routes, and every configured upstream's own models as ``upstream/model``.
- ``POST /v1/tuneloop/logs``: calls captured elsewhere (the SDK wrapper with ``log_to=<gateway URL>``).
- ``GET /metrics`` (Prometheus), ``GET /healthz``.

What the gateway reads from a request and does not pass upstream: ``metadata`` and ``store`` (tags and
"log this call"; ``store: false`` means the call is not logged), the ``x-tuneloop-tags`` header, and the
client's ``Authorization`` (upstreams get the gateway's own provider keys).

Limits (``limits:`` in the config): a body over ``max_request_bytes`` (chat) or ``max_upload_bytes`` (logs) is
refused with 413 as soon as that is known, from its Content-Length before any of it is read, else while
it arrives; the caller's key is checked from the headers before the body is read at all.

Overhead: the time a call spent in the gateway minus the time it waited on upstreams (including
backoff between retries), on the client reading a stream, and on the task's checks (with what they led to:
a review item written durably before the answer goes back, so it can carry the item's id, or a fallback
asked). It is in the log row and in the response header ``x-tuneloop-overhead-ms``; the checks' time is in
``x-tuneloop-checks-ms``. For a stream the header is sent before the body, so it holds the overhead up to
the first byte, and the log has the whole.
"""

from __future__ import annotations

import asyncio
import gc
import json
import logging
import os
import time
from collections.abc import AsyncIterator, Callable, Mapping
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import anyio
import orjson
from fastapi import FastAPI, Request
from fastapi.openapi.utils import get_openapi
from fastapi.responses import JSONResponse, Response, StreamingResponse
from prometheus_client import CONTENT_TYPE_LATEST, REGISTRY, CollectorRegistry, Counter, Histogram, generate_latest
from pydantic import ValidationError
from starlette.datastructures import Headers
from starlette.requests import ClientDisconnect
from starlette.types import Receive, Scope, Send

from tuneloop.capture.config import GatewayConfig
from tuneloop.capture.forwarding import UPSTREAM_ERRORS, UpstreamClient, UpstreamReply
from tuneloop.capture.logwriter import LogWriter, StoreSink
from tuneloop.capture.records import (
    MAX_JSON_DEPTH,
    TAGS_HEADER,
    CallRecord,
    InvalidRecord,
    answering_model,
    check_depth,
    parse_tags,
    record_from_upload,
    resolved_model,
)
from tuneloop.capture.redaction import Redactor
from tuneloop.capture.replicas import ReplicaCollector
from tuneloop.capture.rollouts import ROLLOUT_HEADER, MirroredCall, RolloutChoice, RolloutTable
from tuneloop.capture.routing import Router, Target
from tuneloop.cost import load_price_table
from tuneloop.monitor.watch import Watcher
from tuneloop.protocol import (
    ChatCompletion,
    ChatCompletionRequest,
    ErrorResponse,
    ModelList,
    OpenAIError,
    completion_sse,
    describe_validation_error,
    error_body,
    install_error_handlers,
    openai_error_response,
    reassemble_sse,
    sse_event,
    unexpected_error_response,
    usage_counts,
)
from tuneloop.review.metrics import ModelLabels, ReviewMetrics
from tuneloop.review.policy import REVIEW_HEADER, ReviewPolicy
from tuneloop.store.keys import ActiveKey, KeyRing, authenticate, rate_limit_message

log = logging.getLogger(__name__)

OVERHEAD_HEADER = "x-tuneloop-overhead-ms"
CHECKS_HEADER = "x-tuneloop-checks-ms"
CHAT_PATH = "/v1/chat/completions"
NOT_FORWARDED = ("metadata", "store")
MODELS_CACHE_S = 60.0
MODELS_LISTING_WAIT_S = 1.0  # at start, for the upstreams' model listings (the metrics' labels)

CALLS = Counter(
    "tuneloop_gateway_calls_total", "Chat completion calls by upstream and HTTP status", ["upstream", "status"]
)
OVERHEAD = Histogram(
    "tuneloop_gateway_overhead_seconds",
    "Time a call spent in the gateway itself, upstream waits excluded",
    buckets=(0.0001, 0.00025, 0.0005, 0.001, 0.002, 0.005, 0.01, 0.025, 0.05, 0.1),
)
UPSTREAM_TRIES = Counter(
    "tuneloop_gateway_upstream_tries_total", "Tries sent upstream, by outcome", ["upstream", "outcome"]
)
# By the model that answered (``upstream/model``; a tuneloop server upstream names the resolved version).
REQUESTS = Counter(
    "tuneloop_gateway_requests_total", "Chat completion calls by answering model and HTTP status", ["model", "status"]
)
LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)
LATENCY = Histogram(
    "tuneloop_gateway_latency_seconds", "Whole-call latency by answering model", ["model"], buckets=LATENCY_BUCKETS
)
TTFT = Histogram(
    "tuneloop_gateway_time_to_first_token_seconds",
    "Time to the first streamed byte, by answering model",
    ["model"],
    buckets=LATENCY_BUCKETS,
)
TOKENS = Counter("tuneloop_gateway_tokens_total", "Tokens by answering model and kind", ["model", "kind"])

# Set for the workers of `tuneloop gateway --workers N` (capture/server.py): prometheus_client then keeps
# every metric's value in a file per process under it, and /metrics sums them (all_workers_metrics).
MULTIPROCESS_DIR_ENV = "PROMETHEUS_MULTIPROC_DIR"
PER_PROCESS_METRICS = ("process_", "python_")  # one process's CPU, memory, GC: not the gateway's


def all_workers_metrics(registries: list[CollectorRegistry]) -> bytes:
    """``/metrics`` of a worker of ``tuneloop gateway --workers N``: the figures of every worker, whichever one
    the scrape reached. Counters and histograms are summed over the workers, those that died included (so
    totals never go back); a gauge follows its ``multiprocess_mode`` (the log queue's depth: the sum over the
    live workers; one left at "all" shows a sample per worker, labelled ``pid``). What a registry computes at
    scrape time (the review queue's depth, from the store) comes from this worker, once; per-process
    collectors (``process_*``, ``python_*``) are left out."""
    from prometheus_client.multiprocess import MultiProcessCollector, mark_process_dead

    directory = os.environ[MULTIPROCESS_DIR_ENV]
    for path in Path(directory).glob("gauge_live*_*.db"):  # a dead worker's live gauges must not count
        pid = path.stem.rsplit("_", 1)[1]
        if not pid.isdigit():
            continue
        try:
            os.kill(int(pid), 0)
        except ProcessLookupError:
            mark_process_dead(int(pid), directory)
        except PermissionError:  # alive, another user's
            pass
    shared = list(MultiProcessCollector(None, directory).collect())
    names = {family.name for family in shared}
    local = [
        family
        for registry in registries
        for family in registry.collect()
        if family.name not in names and not family.name.startswith(PER_PROCESS_METRICS)
    ]
    merged = CollectorRegistry()
    merged.register(_Families([*shared, *local]))
    return generate_latest(merged)


class _Families:
    """Metric families already collected, as a collector (for generate_latest)."""

    def __init__(self, families: list[Any]) -> None:
        self.families = families

    def collect(self) -> list[Any]:
        return self.families

    def describe(self) -> list[Any]:
        return []


class Gateway:
    """The running gateway's state: config, router, upstream client, keys and log writer."""

    def __init__(self, config: GatewayConfig, url: str | None = None) -> None:
        self.config = config
        self.url = url
        self.router = Router(config)
        self.redactor = Redactor(config.redact)
        self.writer: LogWriter | None = None
        self.keys: KeyRing | None = None
        self.upstreams: UpstreamClient | None = None
        self._models_cache: tuple[float, list[dict[str, Any]]] | None = None
        # The `model` label of the metrics: models a route names or an upstream lists, at most
        # max_model_labels of them; any other name a client makes up is counted under `other`.
        self._configured_models = self._models_in_routes()
        self._listed_models: frozenset[str] = frozenset()
        self._listing_asked_at: float | None = None
        self._listing_task: asyncio.Task[Any] | None = None
        self.model_labels = ModelLabels(self.known_model, limit=config.limits.max_model_labels)
        # Checks and on_check_failure on each answer of a task (tuneloop.review.policy); their
        # metrics live on a registry of this gateway, so several gateways can share a process.
        self.review_registry = CollectorRegistry()
        # Replica pools' states (up, outstanding, ejections), read at scrape time.
        self.review_registry.register(ReplicaCollector(lambda: self.upstreams.pools.values() if self.upstreams else ()))
        self.review = ReviewPolicy(
            url=url,
            metrics=ReviewMetrics(self.review_registry, "tuneloop_gateway", url=url, labels=self.model_labels),
            redact=self.redactor.json if self.redactor.enabled else None,
        )
        # Canaries and shadows of aliases (re-read every rollouts.refresh_s), and the watcher that computes
        # their figures, trips canary guards and watches drift (every watch.every_s, when watch.enabled).
        self.rollouts = RolloutTable(
            url, refresh_s=config.rollouts.refresh_s, shadow_max_in_flight=config.rollouts.shadow_max_in_flight
        )
        self.watcher = self._watcher() if config.watch.enabled else None

    # --- lifecycle --------------------------------------------------------------------------------

    def start(self) -> None:
        """Open the store (replaying a durable journal first), the keys and the upstream pool."""
        sink = StoreSink(self.url, prices=load_price_table(), redactor=self.redactor)
        self.writer = LogWriter(sink, self.config.logging, name="gateway")
        self.keys = KeyRing(self.url, refresh_s=self.config.keys_refresh_s)
        self.upstreams = UpstreamClient(self.config.upstreams)  # and a replica pool per upstream
        try:  # before the first call: a running canary applies from it on
            self.rollouts.refresh()
        except Exception:  # the store is away; calls are served, and the refresher tries again each second
            log.exception("reading the active rollouts failed at start")
        for target_name, upstream in self.config.upstreams.items():
            if upstream.api_key_env and upstream.api_key() is None and self._routed(target_name):
                log.warning(
                    "upstream %s: %s is not set; calls to it will be refused", target_name, upstream.api_key_env
                )

    def _watcher(self) -> Watcher:
        from datetime import timedelta

        from tuneloop.durations import parse_duration

        watch = self.config.watch
        return Watcher(
            self.url,
            shadow_window_s=watch.shadow_window_s,
            drift_models=watch.drift,
            drift_every_s=watch.drift_every_s,
            drift_baseline=timedelta(seconds=parse_duration(watch.drift_baseline, "watch.drift_baseline")),
            drift_window=timedelta(seconds=parse_duration(watch.drift_window, "watch.drift_window")),
        )

    async def watch_forever(self) -> None:
        assert self.watcher is not None
        while True:
            await asyncio.sleep(self.config.watch.every_s)
            try:
                found = await asyncio.to_thread(self.watcher.run_once)
            except Exception:
                log.exception("a round of watching rollouts and drift failed")
                continue
            if found.tripped:
                await asyncio.to_thread(self.rollouts.refresh)  # stop sending calls to a tripped canary now

    def _routed(self, upstream: str) -> bool:
        return any(route.upstream == upstream for route in self.config.routes)

    async def stop(self) -> None:
        if self.upstreams is not None:
            await self.upstreams.close()
        if self.writer is not None:
            # Drains the queue: in a thread, so the event loop is free while it waits.
            await asyncio.to_thread(self.writer.close)

    async def refresh_keys_forever(self) -> None:
        assert self.keys is not None
        while True:
            await asyncio.sleep(self.config.keys_refresh_s)
            try:
                await asyncio.to_thread(self.keys.reload)
            except Exception:
                log.exception("reloading API keys failed; keeping the ones loaded")

    # --- auth -------------------------------------------------------------------------------------

    async def authenticate(self, headers: Mapping[str, str]) -> ActiveKey | None:
        """The caller's key (from the request's headers; see ``store.keys.authenticate``)."""
        assert self.keys is not None
        return await authenticate(self.keys, self.config.auth, headers)

    # --- chat completions -------------------------------------------------------------------------

    async def answer_chat(self, headers: Mapping[str, str], receive: Receive, started: float) -> Response:
        """``POST /v1/chat/completions``: the key from the headers first, then the body (up to the limit)."""
        key = await self.authenticate(headers)
        body = await read_body(headers, receive, self.config.limits.max_request_bytes)
        return await self.chat_completions(headers, body, started, key)

    async def chat_completions(
        self, headers: Mapping[str, str], body: bytes, started: float, key: ActiveKey | None
    ) -> Response:
        """Answer one call of the caller ``key`` (authenticated from ``headers`` before ``body`` was read;
        ``started``: ``time.perf_counter()`` when it arrived)."""
        payload = _decode_body(body)
        # orjson reads 1024 levels but writes 254, and the journal and the store hold less: deeper is refused,
        # looked for only when the body has enough brackets to nest that deep (counted at C speed). Uploads
        # are checked record by record instead (record_from_upload), naming the record.
        if body.count(b"[") + body.count(b"{") > MAX_JSON_DEPTH:
            try:
                check_depth(payload, "the request body")
            except InvalidRecord as exc:
                raise OpenAIError(400, f"{exc}; flatten it", code="too_deeply_nested") from None
        try:
            request = ChatCompletionRequest.model_validate(payload)
        except ValidationError as exc:
            message, param = describe_validation_error(exc.errors())
            raise OpenAIError(400, message, param=param) from None
        model = payload["model"]
        tags, metadata = parse_tags(headers.get(TAGS_HEADER), payload.get("metadata"))
        log_it = request.store is not False  # a JSON boolean or null: anything else was refused above
        base = CallRecord(
            model_requested=model,
            request=payload,
            status="error",
            tags=tags,
            metadata=metadata,
            api_key_id=key.id if key else None,
        )
        if key is not None:
            wait = self.keys.throttle(key) if self.keys else 0.0
            if wait > 0:
                return await self._rate_limited(base, key, wait, started, log_it)
        targets = self.router.targets_for(model)
        forward = {name: value for name, value in payload.items() if name not in NOT_FORWARDED}
        assert self.upstreams is not None
        production_targets = targets
        choice = self.rollouts.choose(targets[0].model, payload, metadata) if not self.rollouts.empty else None
        if choice is not None and choice.canary is not None:
            base.rollout_id, base.rollout_arm = choice.canary.id, choice.arm
            if choice.arm == "candidate":
                targets = RolloutTable.candidate_targets(targets, choice.canary.candidate)
        # A shadow compares its candidate with production: a call the canary's candidate answered is not mirrored.
        mirror = choice is not None and choice.shadow is not None and log_it and choice.arm != "candidate"
        mode = self.review.stream_mode(targets[0].label, payload) if payload.get("stream") else "none"
        if payload.get("stream") and mode != "buffered":
            reply = await self.upstreams.call(targets, forward, stream=True)
            _mark_rollout(reply, choice)
            if reply.ok:
                answered = self._shadow_hook(choice, production_targets, forward, base) if mirror else None
                return self._relay_stream(
                    reply, base, started, log_it, payload if mode == "live" else None, on_answer=answered
                )
            return await self._whole_response(reply, base, started, log_it)
        if mode == "buffered":  # checked whole before any of it leaves, then sent as a stream
            forward = {name: value for name, value in forward.items() if name not in ("stream", "stream_options")}
        reply = await self.upstreams.call(targets, forward, stream=False)
        _mark_rollout(reply, choice)
        if reply.ok:
            rejected = await self._review(reply, base, payload, forward, log_it)
            if rejected is not None:
                _mark_rollout(rejected, choice)
                return await self._whole_response(rejected, base, started, log_it)
        response = await self._whole_response(reply, base, started, log_it, as_stream=mode == "buffered")
        if mirror and reply.ok:
            self._shadow_hook(choice, production_targets, forward, base)(reply.json_object())
        return response

    def _shadow_hook(
        self, choice: RolloutChoice | None, targets: list[Target], forward: dict[str, Any], record: CallRecord
    ) -> Callable[[dict[str, Any] | None], None]:
        """What starts mirroring this call to its shadow once production's answer is known."""
        assert choice is not None and choice.shadow is not None and self.upstreams is not None
        shadow, upstreams, writer = choice.shadow, self.upstreams, self.writer
        assert writer is not None

        async def call(to: list[Target], body: dict[str, Any], headers: dict[str, str]) -> UpstreamReply:
            return await upstreams.call(to, body, stream=False, extra_headers=headers)

        def start(answer: dict[str, Any] | None) -> None:
            self.rollouts.mirror(shadow, MirroredCall(call, targets, forward, record, answer, writer.submit))

        return start

    async def _review(
        self, reply: UpstreamReply, record: CallRecord, payload: dict[str, Any], forward: dict[str, Any], log_it: bool
    ) -> UpstreamReply | None:
        """Apply the task's checks to a whole answer, in place on ``reply`` (annotated body, review header,
        or the fallback's answer); returns the 422 reply to send instead when the policy rejects it."""
        completion = reply.json_object()
        if completion is None or reply.target is None:
            return None
        if _checked_upstream(completion):
            review_id = await self._link_upstream_review(completion, record)
            if review_id is not None:
                reply.headers[REVIEW_HEADER] = review_id
            return None
        model = _answered_by(reply, completion)

        async def retry(fallback: str) -> dict[str, Any]:
            assert self.upstreams is not None and self.writer is not None
            second = await self.upstreams.call(self.router.targets_for(fallback), forward, stream=False)
            logged = CallRecord(
                model_requested=fallback,
                request={**payload, "model": fallback},
                status="ok" if second.ok else "error",
                http_status=second.status,
                response_body=second.body,
                tags=[*record.tags, "fallback"],
                metadata={**record.metadata, "fallback_for": record.capture_id},
                api_key_id=record.api_key_id,
            )
            fill_from_reply(logged, second)
            if log_it:  # both calls are logged: the draft (this call's row) and the fallback
                await self.writer.submit(logged)
            if not second.ok or second.target is None:
                raise OpenAIError(second.status, second.error or f"fallback {fallback} failed", code="upstream_error")
            answer = second.json_object() or {}
            answer["model"] = _answered_by(second, answer)
            return answer

        checking = time.perf_counter()
        outcome = await self.review.apply(payload, completion, model=model, retry=retry, capture_id=record.capture_id)
        if outcome.action == "none":
            return None
        reply.checks_s = time.perf_counter() - checking
        if outcome.error is not None:
            error = outcome.error
            # The draft stays in the log (for drift and relabelling); the client gets the 422.
            record.response_body = reply.body
            return UpstreamReply(
                error.status,
                reply.target,
                body=orjson.dumps(error.body()),
                headers={"content-type": "application/json"},
                attempts=reply.attempts,
                wait_s=reply.wait_s,
                checks_s=reply.checks_s,
                error=error.message,
            )
        if outcome.action == "fallback":
            record.response_body = reply.body  # this call's row keeps the draft; the fallback has its own row
        reply.body = orjson.dumps(outcome.completion)
        reply.headers.update(outcome.headers)
        return None

    async def _link_upstream_review(self, completion: dict[str, Any], record: CallRecord) -> str | None:
        """A tuneloop server upstream applied the policy already: tie the item it held (if any) to this
        call's log row; returns the item's id."""
        review = completion["tuneloop"].get("review") or {}
        if not review.get("hold") or review.get("id") is None:
            return None
        from tuneloop.review.queue import link_capture

        await asyncio.to_thread(link_capture, int(review["id"]), record.capture_id, url=self.url)
        return str(review["id"])

    async def _check_stream(
        self, reply: UpstreamReply, body: bytes, record: CallRecord, payload: dict[str, Any]
    ) -> bytes:
        """The task's checks on a relayed stream, once it ended: an extra chunk with ``tuneloop.checks``
        (and ``review``) to send before ``[DONE]``, an error event when the policy rejects, or nothing."""
        completion, error = reassemble_sse(body)
        if error is not None or not completion.get("choices") or reply.target is None:
            return b""
        if _checked_upstream(completion):
            await self._link_upstream_review(completion, record)
            return b""
        outcome = await self.review.apply(
            payload, completion, model=_answered_by(reply, completion), capture_id=record.capture_id
        )
        if outcome.error is not None:  # the task turned to reject while this answer streamed
            return sse_event(outcome.error.body())
        if outcome.action == "none":
            return b""
        extension = outcome.completion["tuneloop"]
        trailer = {key: completion[key] for key in ("id", "created", "model")}
        result = {key: extension[key] for key in ("checks", "review") if key in extension}
        return sse_event({**trailer, "object": "chat.completion.chunk", "choices": [], "tuneloop": result})

    async def _whole_response(
        self, reply: UpstreamReply, record: CallRecord, started: float, log_it: bool, *, as_stream: bool = False
    ) -> Response:
        elapsed = time.perf_counter() - started
        overhead = max(elapsed - reply.wait_s - reply.checks_s, 0.0)
        fill_from_reply(record, reply)
        record.status = "ok" if reply.ok else "error"
        record.http_status = reply.status
        if record.response_body is None:  # a rejected or replaced answer keeps the draft in the log
            record.response_body = reply.body
        record.latency_ms = elapsed * 1000
        record.overhead_ms = overhead * 1000
        _count(reply)
        OVERHEAD.observe(overhead)
        _observe_call(record, reply.json_object() if reply.ok else None, self.model_labels)  # what the client got
        if log_it:
            assert self.writer is not None
            await self.writer.submit(record)
        headers = {**reply.headers, OVERHEAD_HEADER: f"{overhead * 1000:.3f}"}
        if reply.checks_s:
            headers[CHECKS_HEADER] = f"{reply.checks_s * 1000:.3f}"
        if as_stream and reply.ok:  # the log keeps the whole answer; the client gets the stream it asked for
            include_usage = bool((record.request.get("stream_options") or {}).get("include_usage"))
            completion = reply.json_object()
            if completion is None:
                message = f"upstream {record.upstream} answered 200 with a body that is not a chat.completion"
                error = error_body(message, "server_error", status=502, code="upstream_error")
                return JSONResponse(error, status_code=502, headers={OVERHEAD_HEADER: headers[OVERHEAD_HEADER]})
            body = completion_sse(completion, include_usage=include_usage)
            headers.update({"content-type": "text/event-stream; charset=utf-8", "cache-control": "no-cache"})
            return Response(body, status_code=reply.status, headers=headers)
        return Response(reply.body, status_code=reply.status, headers=headers)

    def _relay_stream(
        self,
        reply: UpstreamReply,
        record: CallRecord,
        started: float,
        log_it: bool,
        check: dict[str, Any] | None = None,
        *,
        on_answer: Callable[[dict[str, Any] | None], None] | None = None,
    ) -> Response:
        """Pass the upstream's stream on as it comes; ``check`` (the request) asks for the task's checks on
        the whole answer once it has arrived, with their result sent before ``[DONE]``; ``on_answer`` gets the
        reassembled answer of a stream that ended well (a shadow starts from it)."""
        assert reply.stream is not None and self.writer is not None and self.upstreams is not None
        upstream_response, upstreams = reply.stream, self.upstreams
        writer, durable = self.writer, self.writer.journal is not None
        # [DONE] is held back when something must come before it: the journal write, or the check's result.
        hold_done = durable or check is not None
        overhead_to_first_byte = max(time.perf_counter() - started - reply.wait_s, 0.0)
        fill_from_reply(record, reply)
        record.stream = True
        record.http_status = reply.status

        async def relay() -> AsyncIterator[bytes]:
            chunks: list[bytes] = []
            upstream_wait, client_wait, checks_wait = reply.wait_s, 0.0, 0.0
            ttft: float | None = None
            outcome: tuple[str, str | None] = ("ok", None)
            submitted = False

            def finish() -> None:
                elapsed = time.perf_counter() - started
                overhead = max(elapsed - upstream_wait - client_wait - checks_wait, 0.0)
                record.status, record.error = outcome
                record.response_body = b"".join(chunks)
                record.latency_ms = elapsed * 1000
                record.ttft_ms = ttft * 1000 if ttft is not None else None
                record.overhead_ms = overhead * 1000
                OVERHEAD.observe(overhead)

            iterator = upstream_response.aiter_raw()
            tail = b""
            try:
                while True:
                    waited = time.perf_counter()
                    try:
                        chunk = await iterator.__anext__()
                    except StopAsyncIteration:
                        upstream_wait += time.perf_counter() - waited
                        break
                    now = time.perf_counter()
                    upstream_wait += now - waited
                    if ttft is None:
                        ttft = now - started
                    chunks.append(chunk)
                    if tail:  # anything after a held-back [DONE] waits with it, in order
                        tail += chunk
                        continue
                    if hold_done:
                        # Durable: the closing [DONE] waits until the call is in the journal, so a client
                        # never sees a complete answer whose log could still be lost. Checked: it waits
                        # for the checks' result, which goes before it.
                        done_at = chunk.find(b"data: [DONE]")
                        if done_at >= 0:
                            chunk, tail = chunk[:done_at], chunk[done_at:]
                    if chunk:
                        waited = time.perf_counter()
                        yield chunk
                        client_wait += time.perf_counter() - waited
                if check is not None:
                    checking = time.perf_counter()
                    result = await self._check_stream(reply, b"".join(chunks), record, check)
                    checks_wait = time.perf_counter() - checking
                    if result:
                        chunks.append(result)
                        tail = result + tail
            except UPSTREAM_ERRORS as exc:
                message = f"upstream {record.upstream} broke off the stream: {type(exc).__name__}"
                outcome = ("error", message)
                chunks.append(sse_event(error_body(message, "server_error", status=502, code="upstream_stream_error")))
                tail = chunks[-1]
            except (asyncio.CancelledError, GeneratorExit):
                outcome = ("error", "the client went away before the stream ended")
                raise
            finally:
                with anyio.CancelScope(shield=True):
                    await upstreams.finish_stream(reply)
                    if not submitted:
                        finish()
                        submitted = True
                        _count(reply)
                        answer = reassemble_sse(record.response_body or b"")[0] if outcome[0] == "ok" else None
                        _observe_call(record, answer, self.model_labels)
                        if log_it:
                            await writer.submit(record)
                        if on_answer is not None and answer is not None:
                            on_answer(answer)
            if tail:
                yield tail

        headers = {
            **reply.headers,
            "cache-control": "no-cache",
            OVERHEAD_HEADER: f"{overhead_to_first_byte * 1000:.3f}",
        }
        headers["content-type"] = "text/event-stream; charset=utf-8"
        return StreamingResponse(relay(), status_code=reply.status, headers=headers)

    async def _rate_limited(
        self, record: CallRecord, key: ActiveKey, wait: float, started: float, log_it: bool
    ) -> Response:
        message = rate_limit_message(key, wait)
        record.http_status, record.error = 429, message
        record.latency_ms = record.overhead_ms = (time.perf_counter() - started) * 1000
        if log_it:
            assert self.writer is not None
            await self.writer.submit(record)
        CALLS.labels("", "429").inc()
        retry_after = str(max(1, int(wait + 0.999)))
        return JSONResponse(
            error_body(message, "rate_limit_error", status=429, code="rate_limit_exceeded"),
            status_code=429,
            headers={"retry-after": retry_after},
        )

    # --- models -----------------------------------------------------------------------------------

    async def list_models(self) -> dict[str, Any]:
        now = time.monotonic()
        if self._models_cache is None or now - self._models_cache[0] > MODELS_CACHE_S:
            listed = [
                {"id": name, "object": "model", "created": 0, "owned_by": "tuneloop-route"}
                for name in self.router.listed_routes()
            ]
            results = await asyncio.gather(*(self._upstream_models(name) for name in self.config.upstreams))
            for models in results:
                listed.extend(models)
            self._models_cache = (now, listed)
            self._listed_models = frozenset(item["id"] for item in listed)
        return {"object": "list", "data": self._models_cache[1]}

    def _models_in_routes(self) -> frozenset[str]:
        """``upstream/model`` of every model the config names: exact routes, fixed models, fallbacks."""
        names: set[str] = set()
        for route in self.config.routes:
            if route.model is not None:
                names.add(f"{route.upstream}/{route.model}")
            for name in ([] if route.match.endswith("*") else [route.match]) + route.fallbacks:
                try:
                    names.update(target.label for target in self.router.targets_for(name))
                except OpenAIError:  # a fallback naming no upstream: reported when a call needs it
                    continue
        return frozenset(names)

    def known_model(self, model: str) -> bool:
        """Whether ``model`` (``upstream/model``) is one the config names or an upstream lists at ``/models``;
        an unknown one has the listings read again (at most once per MODELS_CACHE_S, in the background)."""
        if model in self._configured_models or model in self._listed_models:
            return True
        asked = self._listing_asked_at
        if asked is None or time.monotonic() - asked > MODELS_CACHE_S:
            self.refresh_model_listing()
        return False

    def refresh_model_listing(self) -> asyncio.Task[Any] | None:
        """Read the upstreams' model listings again, in the background (at start, and when a model label is
        unknown); only from the event loop's thread (elsewhere, e.g. a metrics scrape, it does nothing)."""
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            return None
        self._listing_asked_at = time.monotonic()
        self._models_cache = None
        self._listing_task = loop.create_task(self.list_models())
        return self._listing_task

    async def _upstream_models(self, name: str) -> list[dict[str, Any]]:
        upstream = self.config.upstreams[name]
        if upstream.api_key_env and upstream.api_key() is None:
            return []
        headers = {"authorization": f"Bearer {upstream.api_key()}"} if upstream.api_key() else {}
        assert self.upstreams is not None
        try:
            base_url = self.upstreams.live_base_url(upstream)  # of a pool: a replica that is up
            listing = await self.upstreams.get_json(f"{base_url}/models", headers, timeout_s=5.0)
            data = listing.get("data") or []
        except (*UPSTREAM_ERRORS, ValueError, AttributeError) as exc:
            log.info("listing the models of upstream %s failed: %s", name, exc)
            return []
        return [
            {"id": f"{name}/{item['id']}", "object": "model", "created": item.get("created", 0), "owned_by": name}
            for item in data
            if isinstance(item, dict) and isinstance(item.get("id"), str)
        ]

    # --- ingest (SDK wrapper) ---------------------------------------------------------------------

    async def ingest(self, request: Request) -> dict[str, Any]:
        key = await self.authenticate(request.headers)
        limits = self.config.limits
        payload = _decode_body(await read_body(request.headers, request.receive, limits.max_upload_bytes, "upload"))
        records = payload.get("records")
        if not isinstance(records, list):
            raise OpenAIError(400, 'expected {"records": [...]}', param="records")
        if len(records) > limits.max_upload_records:
            raise OpenAIError(
                413,
                f"{len(records)} records in one upload; the gateway takes at most {limits.max_upload_records} "
                "(limits.max_upload_records): upload them in smaller batches",
                param="records",
                code="too_many_records",
            )
        parsed: list[CallRecord] = []
        for index, item in enumerate(records):
            try:  # checked whole before any is queued: a record the store would refuse never reaches it
                record = record_from_upload(item)
            except InvalidRecord as exc:
                where = f"records[{index}]" + (f".{exc.field}" if exc.field and exc.field[0] != "[" else exc.field)
                raise OpenAIError(
                    400, f"{where}: {exc.message}; nothing in this upload was logged", param=where
                ) from None
            record.api_key_id = key.id if key else None  # the key that uploaded it, not what the record claims
            parsed.append(record)
        assert self.writer is not None
        for record in parsed:
            await self.writer.submit(record)
        return {"accepted": len(parsed)}

    def health(self) -> dict[str, Any]:
        """``status``: the log writer's (ok, degraded, failing; see LogWriter.health), its details in ``logging``."""
        writer = self.writer
        logging_health = writer.health() if writer else None
        return {
            "status": logging_health["status"] if logging_health else "starting",
            "problem": logging_health["problem"] if logging_health else "the gateway is starting",
            "logging": logging_health,
            "log_queue_depth": writer.depth if writer else None,
            "logged": writer.written if writer else None,
            "dropped": writer.dropped if writer else None,
            "replayed_at_start": writer.replayed if writer else None,
            "durable": bool(writer and writer.journal),
            "pid": os.getpid(),  # with --workers N, the worker that answered
            # Upstreams with several base URLs: each replica up or ejected, its calls in flight.
            "replicas": self.upstreams.replica_states() if self.upstreams else {},
        }


def _decode_body(raw: bytes) -> dict[str, Any]:
    try:
        payload = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:  # also invalid UTF-8
        raise OpenAIError(400, f"the request body is not valid JSON: {exc.msg} (at byte {exc.pos})") from None
    if not isinstance(payload, dict):
        raise OpenAIError(400, "the request body must be a JSON object")
    if _DIGIT_RUN in raw.translate(_DIGITS_AS_ZEROS):  # rare (19 digits in a row, strings included)
        _refuse_wide_integers(raw)
    return payload


# orjson reads integers in [-2**63, 2**64) exactly, and wider ones as floats, which would reach the upstream
# changed. Every integer outside that range has at least 19 digits: a run that the body's bytes, with every
# digit made "0", contain (translate and `in` run at C speed; a regex for it costs ten times as much).
_DIGITS_AS_ZEROS = bytes(ord("0") if ord("0") <= byte <= ord("9") else ord(" ") for byte in range(256))
_DIGIT_RUN = b"0" * 19
_INT_MIN, _INT_MAX = -(1 << 63), (1 << 64) - 1


def _refuse_wide_integers(raw: bytes) -> None:
    """400 naming the field of an integer the gateway cannot forward exactly (wider than 64 bits)."""
    try:
        document = json.loads(raw)  # the standard library keeps integers of any size
    except ValueError:  # an integer of thousands of digits (Python's int-to-str limit)
        raise OpenAIError(
            400, "the request body holds an integer of thousands of digits: none fits in 64 bits"
        ) from None
    except RecursionError:
        raise OpenAIError(400, "the request body is nested too deeply") from None
    stack: list[tuple[Any, str]] = [(document, "")]
    while stack:
        value, path = stack.pop()
        if isinstance(value, dict):
            stack.extend((item, f"{path}.{key}" if path else str(key)) for key, item in value.items())
        elif isinstance(value, list):
            stack.extend((item, f"{path}[{index}]") for index, item in enumerate(value))
        elif isinstance(value, int) and not isinstance(value, bool) and not _INT_MIN <= value <= _INT_MAX:
            digits = str(value)
            shown = digits if len(digits) <= 30 else f"{digits[:12]}…({len(digits)} digits)"
            raise OpenAIError(
                400,
                f"{path or 'body'}: the integer {shown} does not fit in 64 bits, and the gateway forwards numbers "
                "exactly or not at all: send a number between -2**63 and 2**64-1 (or a string)",
                param=path or None,
            )


def _too_large(limit: int, what: str) -> OpenAIError:
    setting = "max_request_bytes" if what == "request" else "max_upload_bytes"
    return OpenAIError(
        413,
        f"the {what} body is larger than the gateway's limit of {limit} bytes (limits.{setting} in its config): "
        "send less",
        code="request_too_large",
        headers={"connection": "close"},  # the rest of the body is not read: this connection is done
    )


async def read_body(headers: Mapping[str, str], receive: Receive, limit: int, what: str = "request") -> bytes:
    """The request body, straight from the ASGI messages (Starlette's Request would cost more on the chat path);
    413 as soon as it is known to be over ``limit`` bytes: by its Content-Length before any of it is read, else
    (a chunked body) once what arrived passes the limit."""
    declared = headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise _too_large(limit, what)
    chunks = []
    size = 0
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            raise ClientDisconnect
        chunk = message.get("body", b"")
        size += len(chunk)
        if size > limit:
            raise _too_large(limit, what)
        chunks.append(chunk)
        if not message.get("more_body", False):
            return b"".join(chunks)


def _checked_upstream(completion: dict[str, Any]) -> bool:
    """The answer comes from a tuneloop server that applied the task's policy itself."""
    extension = completion.get("tuneloop")
    return isinstance(extension, dict) and "checks" in extension


def _answered_by(reply: UpstreamReply, completion: dict[str, Any]) -> str:
    assert reply.target is not None
    return answering_model(reply.target.upstream.name, reply.target.model, completion)


def _mark_rollout(reply: UpstreamReply, choice: RolloutChoice | None) -> None:
    """Name the canary arm (and the version) that answered, in the response's headers."""
    header = choice.header() if choice is not None else None
    if header is not None:
        reply.headers[ROLLOUT_HEADER] = header


def fill_from_reply(record: CallRecord, reply: UpstreamReply) -> None:
    target: Target | None = reply.target
    if target is not None:
        record.upstream, record.upstream_model = target.upstream.name, target.model
    record.error = reply.error
    record.attempts = [attempt.to_json() for attempt in reply.attempts]


_children: dict[tuple[Any, ...], Any] = {}  # labelled children, looked up once (labels() takes a lock)


def _child(metric: Counter | Histogram, *labels: str) -> Any:
    key = (id(metric), *labels)  # the metrics are module-level: their ids never change
    child = _children.get(key)
    if child is None:
        child = _children[key] = metric.labels(*labels)
    return child


def _observe_call(record: CallRecord, answer: dict[str, Any] | None, labels: ModelLabels) -> None:
    """Per-model metrics of a finished call (``answer``: the chat.completion the client got, if any)."""
    resolved = resolved_model(record, answer)
    model = labels(resolved) if resolved else "none"
    _child(REQUESTS, model, str(record.http_status or 0)).inc()
    if record.latency_ms is not None:
        _child(LATENCY, model).observe(record.latency_ms / 1000)
    if record.ttft_ms is not None:
        _child(TTFT, model).observe(record.ttft_ms / 1000)
    prompt, completion, _ = usage_counts(answer.get("usage") if answer else None)
    for kind, count in (("prompt", prompt), ("completion", completion)):
        if count:
            _child(TOKENS, model, kind).inc(count)


def _count(reply: UpstreamReply) -> None:
    _child(CALLS, reply.target.upstream.name if reply.target else "", str(reply.status)).inc()
    for attempt in reply.attempts:
        _child(UPSTREAM_TRIES, attempt.upstream, attempt.outcome).inc()


class GatewayApp(FastAPI):
    """The gateway's FastAPI app, with one shortcut: ``POST /v1/chat/completions``, nearly all of a gateway's
    traffic, goes straight to :meth:`Gateway.chat_completions`, past FastAPI's middleware, routing and
    dependency layers (benchmarks/gateway_overhead.py: 1.26–1.37 → 0.68–0.92 ms of CPU per call; see
    docs/benchmarks.md → Gateway). Its errors are answered as the
    app's error handlers answer them; every other request (and the route under a root path) takes the
    usual way through FastAPI."""

    gateway: Gateway

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["path"] != CHAT_PATH or scope["method"] != "POST" or scope.get("root_path"):
            await super().__call__(scope, receive, send)
            return
        started = time.perf_counter()
        try:
            response = await self.gateway.answer_chat(Headers(scope=scope), receive, started)
        except OpenAIError as exc:
            response = openai_error_response(exc)
        except ClientDisconnect:
            return  # gone before its request was whole: nobody to answer, nothing to log
        except Exception as exc:
            response = unexpected_error_response(exc)
        await response(scope, receive, send)


def create_app(config: GatewayConfig, url: str | None = None, *, freeze_heap: bool = False) -> FastAPI:
    """The gateway as an ASGI app; the store at ``url`` (default: the configured one).

    ``freeze_heap`` (for a process that runs only the gateway): once started, everything alive (modules,
    the app, pools) is moved out of the cyclic garbage collector's reach, with ``gc.freeze()``. Its full
    collections otherwise scan all of it and stall every call in flight: they were the gateway's p99
    (benchmarks/gateway_overhead.py, docs/benchmarks.md → Gateway).
    """
    gateway = Gateway(config, url)

    @asynccontextmanager
    async def lifespan(_app: FastAPI) -> AsyncIterator[None]:
        await asyncio.to_thread(gateway.start)
        # The models the upstreams list, for the metrics' labels: up to a second's wait, so the first calls
        # are labelled by name; a slower listing goes on in the background.
        assert gateway.upstreams is not None
        gateway.upstreams.start_health_checks()  # of replica pools; stopped by gateway.stop()
        listing = gateway.refresh_model_listing()
        if listing is not None:
            await asyncio.wait({listing}, timeout=MODELS_LISTING_WAIT_S)
        if freeze_heap:
            gc.collect()
            gc.freeze()
        refresher = asyncio.create_task(gateway.refresh_keys_forever())
        background = [asyncio.create_task(gateway.rollouts.refresh_forever())]
        if gateway.watcher is not None:
            background.append(asyncio.create_task(gateway.watch_forever()))
        try:
            yield
        finally:
            refresher.cancel()
            for task in background:
                task.cancel()
            await gateway.rollouts.close()  # mirrored calls in flight reach the log before it drains
            await gateway.stop()

    app = GatewayApp(
        title="tuneloop gateway",
        version="1",
        summary="An OpenAI-compatible proxy that routes by model name and logs every call",
        lifespan=lifespan,
        docs_url=None,
        redoc_url=None,
    )
    app.state.gateway = app.gateway = gateway
    install_error_handlers(app)

    # Under a root path the chat route comes through FastAPI (the shortcut is for the bare path); its body
    # is read raw either way (it goes upstream as sent), so the document describes it from the protocol.
    @app.post(CHAT_PATH, openapi_extra=_CHAT_OPENAPI, response_model=None)
    async def chat_completions(request: Request) -> Response:
        return await gateway.answer_chat(request.headers, request.receive, time.perf_counter())

    @app.get("/v1/models")
    async def models(request: Request) -> dict[str, Any]:
        await gateway.authenticate(request.headers)
        return await gateway.list_models()

    @app.post("/v1/tuneloop/logs", openapi_extra=_INGEST_OPENAPI)
    async def ingest(request: Request) -> dict[str, Any]:
        return await gateway.ingest(request)

    @app.get("/metrics")
    async def metrics() -> Response:
        registries = [gateway.review_registry, gateway.rollouts.registry]
        if gateway.watcher is not None:
            registries.append(gateway.watcher.registry)
        if MULTIPROCESS_DIR_ENV in os.environ:  # a worker of `tuneloop gateway --workers N`: every worker's figures
            body = await asyncio.to_thread(all_workers_metrics, [REGISTRY, *registries])
            return Response(body, media_type=CONTENT_TYPE_LATEST)
        body = generate_latest() + b"".join(
            [await asyncio.to_thread(generate_latest, registry) for registry in registries]
        )
        return Response(body, media_type=CONTENT_TYPE_LATEST)

    @app.get("/healthz")
    async def health() -> JSONResponse:
        # 503 unless ok, so a load balancer stops sending calls to a gateway whose logging is stuck or failing.
        body = gateway.health()
        return JSONResponse(body, status_code=200 if body["status"] == "ok" else 503)

    app.openapi = lambda: _openapi(app)  # type: ignore[method-assign]
    return app


_JSON_ERROR = {"application/json": {"schema": {"$ref": "#/components/schemas/ErrorResponse"}}}
_ERRORS = {
    str(status): {"description": description, "content": _JSON_ERROR}
    for status, description in (
        (400, "a malformed request (the field in `param`)"),
        (401, "no or a wrong tuneloop key"),
        (404, "no route for the model"),
        (413, "a body over the gateway's limit"),
        (429, "the key's rate limit"),
        (502, "no upstream answered"),
        (504, "the upstreams timed out"),
    )
}
_CHAT_OPENAPI: dict[str, Any] = {
    "requestBody": {
        "required": True,
        "content": {"application/json": {"schema": {"$ref": "#/components/schemas/ChatCompletionRequest"}}},
    },
    "responses": {
        "200": {
            "description": "the answer: a chat.completion, or with `stream: true` server-sent chunks",
            "content": {
                "application/json": {"schema": {"$ref": "#/components/schemas/ChatCompletion"}},
                "text/event-stream": {"schema": {"type": "string"}},
            },
        },
        **_ERRORS,
    },
}
_INGEST_OPENAPI: dict[str, Any] = {
    "requestBody": {
        "required": True,
        "content": {
            "application/json": {
                "schema": {
                    "type": "object",
                    "required": ["records"],
                    "properties": {"records": {"type": "array", "items": {"type": "object"}}},
                }
            }
        },
    },
    "responses": {**_ERRORS},
}


def _openapi(app: FastAPI) -> dict[str, Any]:
    """FastAPI's document, plus the protocol's models the raw routes refer to."""
    if app.openapi_schema is None:
        document = get_openapi(title=app.title, version=app.version, summary=app.summary, routes=app.routes)
        schemas = document.setdefault("components", {}).setdefault("schemas", {})
        for model in (ChatCompletionRequest, ChatCompletion, ModelList, ErrorResponse):
            schema = model.model_json_schema(ref_template="#/components/schemas/{model}")
            schemas.update(schema.pop("$defs", {}))
            schemas[model.__name__] = schema
        app.openapi_schema = document
    return app.openapi_schema

"""``from tuneloop import OpenAI``: the official client, with every chat completion logged.

``OpenAI`` and ``AsyncOpenAI`` subclass the official ``openai`` clients and take the same arguments, plus:

- ``tuneloop_log_to``: ``"store"`` (the default; the store named by ``TUNELOOP_DATABASE_URL`` or
  ``$TUNELOOP_HOME``) or a gateway's URL (``http://gateway:4000/v1``), where the calls are uploaded to
  ``POST /v1/tuneloop/logs``. Default from ``TUNELOOP_LOG_TO``.
- ``tuneloop_api_key``: the tuneloop key for that gateway (default ``TUNELOOP_API_KEY``).
- ``tuneloop_logging``: a :class:`~tuneloop.capture.config.LoggingConfig` (queue size, policy…). The
  default policy here is ``drop``: an application is never slowed down by its logging.
- ``tuneloop_redact``: a :class:`~tuneloop.capture.config.RedactConfig` applied before storage.

Tags go in OpenAI's ``metadata`` (``client.chat.completions.create(..., metadata={"task": "x"})``) or the
``x-tuneloop-tags`` header; like the gateway, the wrapper takes ``metadata``, ``store`` and that header
off the request before it leaves (``store: false`` means: do not log this call). Pass
``tuneloop_forward_metadata=True`` to send ``metadata``/``store`` on to the provider as well.

How: the wrapper sits at the HTTP layer (a transport around the client's own), so it sees exactly the
bytes exchanged, streamed or not, including each of the client's own retries (logged as separate
calls, as they were on the wire). Logging happens off the calling thread (a bounded queue and a
background writer), and any failure inside it is swallowed and counted: it never breaks the call.
"""

from __future__ import annotations

import atexit
import importlib
import json
import logging
import os
import threading
import time
from collections.abc import AsyncIterator, Iterator
from typing import Any
from urllib.parse import urlsplit

import openai

from tuneloop.capture.config import LoggingConfig, RedactConfig
from tuneloop.capture.logwriter import LogWriter, RecordsRefused
from tuneloop.capture.records import TAGS_HEADER, CallRecord, parse_tags, redacted_record
from tuneloop.capture.redaction import Redactor

log = logging.getLogger(__name__)

SDK_LOGGING = LoggingConfig(policy="drop")
_writers: dict[tuple[str, str | None], LogWriter] = {}
_writers_lock = threading.Lock()
internal_errors = 0  # failures inside the wrapper (swallowed); tests and debugging read it


REFUSED_UPLOAD = (400, 413, 422)


class HttpSink:
    """Uploads batches of records to a gateway's ``/v1/tuneloop/logs`` (retried by the writer on failure).

    With a ``redactor`` (``tuneloop_redact``) records are redacted before they leave the process, and before
    a durable journal holds them; the gateway then applies its own ``redact`` on top.
    """

    def __init__(self, base_url: str, api_key: str | None, redactor: Redactor | None = None) -> None:
        import httpx

        self.redactor = redactor
        self.url = base_url.rstrip("/") + "/tuneloop/logs"
        headers = {"authorization": f"Bearer {api_key}"} if api_key else {}
        self.http = httpx.Client(headers=headers, timeout=30.0, trust_env=False)

    def write(self, records: list[CallRecord]) -> None:
        if self.redactor is not None:
            records = [redacted_record(record, self.redactor) for record in records]
        response = self.http.post(self.url, json={"records": [record.to_json() for record in records]})
        answer = f"HTTP {response.status_code} {response.text[:200]}"
        if response.status_code in REFUSED_UPLOAD:
            # These records will never be taken as they are (a record the gateway finds invalid, an upload over
            # its size or count limit): the writer splits the batch and sets what is still refused aside.
            raise RecordsRefused(f"the gateway refused the upload: {answer}")
        if response.status_code >= 400:  # a bad key, the gateway down or busy: retried as it is
            raise RuntimeError(f"the gateway did not take the upload: {answer}")

    def close(self) -> None:
        self.http.close()


def get_writer(
    log_to: str | None,
    api_key: str | None,
    logging_config: LoggingConfig | None = None,
    redact: RedactConfig | None = None,
) -> LogWriter:
    """The process's writer for a destination, started on first use and drained at exit."""
    destination = log_to or os.environ.get("TUNELOOP_LOG_TO") or "store"
    key = api_key or os.environ.get("TUNELOOP_API_KEY")
    with _writers_lock:
        writer = _writers.get((destination, key))
        if writer is None:
            if destination == "store":
                from tuneloop.capture.logwriter import StoreSink
                from tuneloop.cost import load_price_table

                sink: Any = StoreSink(prices=load_price_table(), redactor=Redactor(redact or RedactConfig()))
            elif destination.startswith(("http://", "https://")):
                sink = HttpSink(destination, key, Redactor(redact) if redact is not None else None)
            else:
                raise ValueError(f"tuneloop_log_to must be 'store' or a gateway URL, not {destination!r}")
            writer = LogWriter(sink, logging_config or SDK_LOGGING, name="sdk")
            _writers[(destination, key)] = writer
        return writer


def close_writers(timeout: float = 10.0) -> None:
    """Drain every SDK writer (runs at interpreter exit; call it yourself before os._exit or fork)."""
    with _writers_lock:
        writers = list(_writers.values())
        _writers.clear()
    for writer in writers:
        try:
            writer.close(timeout)
        except Exception:
            log.exception("closing a tuneloop log writer failed")


atexit.register(close_writers)


def _swallow(where: str) -> None:
    global internal_errors
    internal_errors += 1
    log.warning("tuneloop logging failed in %s; the call itself is unaffected", where, exc_info=True)


class _Capture:
    """What the transport learns about one chat call; becomes a CallRecord when its response closes."""

    def __init__(
        self, payload: dict[str, Any], tags: list[str], metadata: dict[str, str], upstream: str, log_it: bool
    ) -> None:
        self.payload, self.tags, self.metadata, self.upstream, self.log_it = payload, tags, metadata, upstream, log_it
        self.started = time.perf_counter()
        self.first_byte: float | None = None
        self.chunks: list[bytes] = []

    def record(self, status_code: int | None, stream: bool, error: str | None = None) -> CallRecord:
        ended = time.perf_counter()
        ok = error is None and status_code is not None and 200 <= status_code < 300
        return CallRecord(
            model_requested=str(self.payload.get("model", "")),
            request=self.payload,
            status="ok" if ok else "error",
            http_status=status_code,
            upstream=self.upstream,
            upstream_model=str(self.payload.get("model", "")),
            error=error if error else None if ok else f"HTTP {status_code}",
            response_body=b"".join(self.chunks) if self.chunks else None,
            stream=stream,
            latency_ms=(ended - self.started) * 1000,
            ttft_ms=(self.first_byte - self.started) * 1000 if stream and self.first_byte else None,
            tags=self.tags,
            metadata=self.metadata,
        )


def _prepare(request: Any, httpx_module: Any, upstream: str, forward_metadata: bool) -> tuple[Any, _Capture | None]:
    """Read a chat request's tags; return the request to send (metadata/store/tags header taken off)."""
    if request.method != "POST" or not request.url.path.endswith("/chat/completions"):
        return request, None
    try:
        payload = json.loads(request.content)
        if not isinstance(payload, dict):
            return request, None
        tags, metadata = parse_tags(request.headers.get(TAGS_HEADER), payload.get("metadata"))
        capture = _Capture(payload, tags, metadata, upstream, payload.get("store") is not False)
        outgoing = payload if forward_metadata else {k: v for k, v in payload.items() if k not in ("metadata", "store")}
        headers = [
            (name, value)
            for name, value in request.headers.raw
            if name.lower() not in (TAGS_HEADER.encode(), b"content-length")
        ]
        rebuilt = httpx_module.Request(
            request.method,
            request.url,
            headers=headers,
            content=json.dumps(outgoing).encode(),
            extensions=request.extensions,
        )
        return rebuilt, capture
    except Exception:
        _swallow("reading the request")
        return request, None


def _upstream_name(base_url: Any) -> str:
    """The configured upstream at this URL (so prices apply), else the host."""
    text = str(base_url).rstrip("/")
    try:
        from tuneloop.upstreams import upstream_for_base_url

        upstream = upstream_for_base_url(text)
        if upstream is not None:
            return upstream.name
    except Exception:
        pass
    return urlsplit(text).hostname or text


def _transport_classes(httpx_module: Any) -> tuple[type, type]:
    """Sync and async logging transports for the HTTP library the client uses (httpx or httpx2)."""
    cached = _TRANSPORTS.get(httpx_module.__name__)
    if cached:
        return cached

    class LoggedStream(httpx_module.SyncByteStream):
        def __init__(self, inner: Any, capture: _Capture, status_code: int, stream: bool, writer: LogWriter) -> None:
            self.inner, self.capture, self.status_code, self.stream, self.writer = (
                inner,
                capture,
                status_code,
                stream,
                writer,
            )
            self.done = False

        def __iter__(self) -> Iterator[bytes]:
            for chunk in self.inner:
                if self.capture.first_byte is None:
                    self.capture.first_byte = time.perf_counter()
                self.capture.chunks.append(chunk)
                yield chunk

        def close(self) -> None:
            try:
                self.inner.close()
            finally:
                if not self.done:
                    self.done = True
                    try:
                        if self.capture.log_it:
                            self.writer.submit_blocking(self.capture.record(self.status_code, self.stream))
                    except Exception:
                        _swallow("handing over a call")

    class LoggingTransport(httpx_module.BaseTransport):
        def __init__(self, inner: Any, writer: LogWriter, upstream: str, forward_metadata: bool) -> None:
            self.inner, self.writer, self.upstream, self.forward_metadata = inner, writer, upstream, forward_metadata

        def handle_request(self, request: Any) -> Any:
            request, capture = _prepare(request, httpx_module, self.upstream, self.forward_metadata)
            if capture is None:
                return self.inner.handle_request(request)
            try:
                response = self.inner.handle_request(request)
            except Exception as exc:
                if capture.log_it:
                    try:
                        self.writer.submit_blocking(capture.record(None, False, f"{type(exc).__name__}: {exc}"))
                    except Exception:
                        _swallow("logging a failed call")
                raise
            try:
                stream = "text/event-stream" in response.headers.get("content-type", "")
                logged = LoggedStream(response.stream, capture, response.status_code, stream, self.writer)
                return httpx_module.Response(
                    response.status_code, headers=response.headers, stream=logged, extensions=response.extensions
                )
            except Exception:
                _swallow("wrapping the response")
                return response

        def close(self) -> None:
            self.inner.close()

    class AsyncLoggedStream(httpx_module.AsyncByteStream):
        def __init__(self, inner: Any, capture: _Capture, status_code: int, stream: bool, writer: LogWriter) -> None:
            self.inner, self.capture, self.status_code, self.stream, self.writer = (
                inner,
                capture,
                status_code,
                stream,
                writer,
            )
            self.done = False

        async def __aiter__(self) -> AsyncIterator[bytes]:
            async for chunk in self.inner:
                if self.capture.first_byte is None:
                    self.capture.first_byte = time.perf_counter()
                self.capture.chunks.append(chunk)
                yield chunk

        async def aclose(self) -> None:
            try:
                await self.inner.aclose()
            finally:
                if not self.done:
                    self.done = True
                    try:
                        if self.capture.log_it:
                            await self.writer.submit(self.capture.record(self.status_code, self.stream))
                    except Exception:
                        _swallow("handing over a call")

    class AsyncLoggingTransport(httpx_module.AsyncBaseTransport):
        def __init__(self, inner: Any, writer: LogWriter, upstream: str, forward_metadata: bool) -> None:
            self.inner, self.writer, self.upstream, self.forward_metadata = inner, writer, upstream, forward_metadata

        async def handle_async_request(self, request: Any) -> Any:
            request, capture = _prepare(request, httpx_module, self.upstream, self.forward_metadata)
            if capture is None:
                return await self.inner.handle_async_request(request)
            try:
                response = await self.inner.handle_async_request(request)
            except Exception as exc:
                if capture.log_it:
                    try:
                        await self.writer.submit(capture.record(None, False, f"{type(exc).__name__}: {exc}"))
                    except Exception:
                        _swallow("logging a failed call")
                raise
            try:
                stream = "text/event-stream" in response.headers.get("content-type", "")
                logged = AsyncLoggedStream(response.stream, capture, response.status_code, stream, self.writer)
                return httpx_module.Response(
                    response.status_code, headers=response.headers, stream=logged, extensions=response.extensions
                )
            except Exception:
                _swallow("wrapping the response")
                return response

        async def aclose(self) -> None:
            await self.inner.aclose()

    _TRANSPORTS[httpx_module.__name__] = (LoggingTransport, AsyncLoggingTransport)
    return LoggingTransport, AsyncLoggingTransport


_TRANSPORTS: dict[str, tuple[type, type]] = {}


def _http_library(http_client: Any) -> Any:
    """httpx2 or httpx: the module whose Client the openai client runs on (it accepts either)."""
    for klass in type(http_client).__mro__:
        top = klass.__module__.split(".")[0]
        if top in ("httpx", "httpx2") and klass.__name__ in ("Client", "AsyncClient"):
            return importlib.import_module(top)
    raise TypeError(f"unsupported http client {type(http_client).__name__}")


def _install(client: Any, asynchronous: bool, options: dict[str, Any]) -> None:
    """Wrap the client's HTTP transport (once: copies made by ``with_options`` share it)."""
    try:
        http_client = client._client
        httpx_module = _http_library(http_client)
        sync_cls, async_cls = _transport_classes(httpx_module)
        transport_cls = async_cls if asynchronous else sync_cls
        if isinstance(http_client._transport, transport_cls):
            return
        writer = get_writer(options["log_to"], options["api_key"], options["logging"], options["redact"])
        http_client._transport = transport_cls(
            http_client._transport, writer, _upstream_name(client.base_url), options["forward_metadata"]
        )
    except Exception:
        _swallow("installing the wrapper (calls will not be logged)")


def _pop_options(kwargs: dict[str, Any]) -> dict[str, Any]:
    return {
        "log_to": kwargs.pop("tuneloop_log_to", None),
        "api_key": kwargs.pop("tuneloop_api_key", None),
        "logging": kwargs.pop("tuneloop_logging", None),
        "redact": kwargs.pop("tuneloop_redact", None),
        "forward_metadata": kwargs.pop("tuneloop_forward_metadata", False),
    }


class OpenAI(openai.OpenAI):
    """``openai.OpenAI`` that logs every chat completion to tuneloop (see the module docstring)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        options = _pop_options(kwargs)
        super().__init__(*args, **kwargs)
        _install(self, asynchronous=False, options=options)


class AsyncOpenAI(openai.AsyncOpenAI):
    """``openai.AsyncOpenAI`` that logs every chat completion to tuneloop (see the module docstring)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        options = _pop_options(kwargs)
        super().__init__(*args, **kwargs)
        _install(self, asynchronous=True, options=options)

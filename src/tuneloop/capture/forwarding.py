"""Calling upstreams: one shared ``aiohttp`` client session (a connection pool), with retries and fallbacks.

For each target of a route, in order: try, and on a timeout, a connection error, 429 or 5xx retry with
exponential backoff and jitter (``backoff_ms`` × 2^n, capped at 2 s, or the upstream's ``Retry-After``
when that is shorter than the cap); when its retries are spent, move to the next target (the route's
fallbacks). Any other status is the answer (a 400 is the client's mistake, and every upstream would
say the same), except 401/403, which mean the gateway's own credentials were refused: those move on
to the next target without retrying. A 2xx whose body is not a JSON object is no answer: it counts as a
502 (``invalid_response``), retried and reported like one.

An upstream with several base URLs is a replica pool (:mod:`replicas`): each try goes to the replica
its pool picks (least outstanding, adapter affinity, ejected ones left out). A failed try marks its replica,
and the next try of the call goes to a replica it has not tried yet, at once (no backoff: another server is
not the one that just failed); only when every replica was tried does it back off as above. A connection
refused or reset (nothing was answered) that moves to an untried replica does not count against the
retries, so a replica that is killed costs no call even with ``retries: 0``; a timeout counts. A stream is
retried the same way until its first byte has arrived (it is read before the stream is handed on, so a
replica that dies right after its headers is just another failed try); after that, no try can be undone.

Every try is recorded as an :class:`Attempt` (with the replica's URL for a pool); the time spent waiting on
upstreams (and backing off because of them) is summed so the gateway can report its own overhead apart from it.

The client is aiohttp's: its HTTP parser is in C and its pool hands out a keep-alive connection in
constant time (httpx2's pool scans its idle connections in Python). benchmarks/gateway_overhead.py
measured the switch: 2.5–2.9 → 1.26–1.37 ms of gateway CPU per call (docs/benchmarks.md → Gateway).
"""

from __future__ import annotations

import asyncio
import json
import random
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import aiohttp
import orjson

from tuneloop.capture.replicas import PROBE_TIMEOUT_S, Replica, ReplicaPool
from tuneloop.capture.routing import MAX_BACKOFF_MS, Target
from tuneloop.protocol import error_bytes, is_error_body
from tuneloop.upstreams import Upstream

RETRYABLE_STATUSES = frozenset({408, 429, 500, 502, 503, 504}) | frozenset(range(505, 600))
CREDENTIAL_STATUSES = frozenset({401, 403})
CONNECT_TIMEOUT_S = 10.0
# Headers of the upstream's answer that a client may rely on; the rest (hop-by-hop, server) are not passed on.
PASSED_RESPONSE_HEADERS = ("retry-after", "x-request-id", "openai-processing-ms", "x-ratelimit-remaining-requests")
# What a call upstream raises when the upstream or the network fails: timeouts (aiohttp's are TimeoutErrors),
# connection errors, a body cut short.
UPSTREAM_ERRORS = (TimeoutError, aiohttp.ClientError)
MAX_CONNECTIONS = 2048  # to all upstreams together; calls beyond it wait for a free connection


@dataclass
class Attempt:
    upstream: str
    model: str
    outcome: str  # ok | http_<status> | timeout | connection_error | invalid_response
    latency_ms: float
    http_status: int | None = None
    error: str | None = None
    replica: str | None = None  # the base URL tried, for an upstream with several

    def to_json(self) -> dict[str, Any]:
        return {
            "upstream": self.upstream,
            "model": self.model,
            "outcome": self.outcome,
            "http_status": self.http_status,
            "latency_ms": round(self.latency_ms, 3),
            **({"replica": self.replica} if self.replica else {}),
            **({"error": self.error} if self.error else {}),
        }


@dataclass
class UpstreamReply:
    """What the tries came to: the answering target's status and body (or an open stream), or a failure."""

    status: int
    target: Target | None = None
    body: bytes | None = None
    stream: UpstreamStream | None = None  # open, for a streamed 200: the caller reads and closes it
    headers: dict[str, str] = field(default_factory=dict)
    attempts: list[Attempt] = field(default_factory=list)
    wait_s: float = 0.0
    # The task's checks on the answer and what they led to (a review item written, a fallback asked): the
    # gateway reports it apart from its own overhead (x-tuneloop-checks-ms), since it is the task's cost.
    checks_s: float = 0.0
    error: str | None = None

    _parsed: tuple[bytes | None, dict[str, Any] | None] | None = field(
        default=None, init=False, repr=False, compare=False
    )

    @property
    def ok(self) -> bool:
        return 200 <= self.status < 300

    def json_object(self) -> dict[str, Any] | None:
        """The body as a JSON object (None if it is not one), parsed once per body: the checks and the
        metrics both read it."""
        if self._parsed is None or self._parsed[0] is not self.body:
            try:
                value = orjson.loads(self.body or b"")
            except orjson.JSONDecodeError:
                value = None
            self._parsed = (self.body, value if isinstance(value, dict) else None)
        return self._parsed[1]


class UpstreamStream:
    """A streamed answer being received: its body as it arrives (``aiter_raw``, starting with the first
    chunk, read before the stream was handed on), then ``aclose``.

    Reading raises one of :data:`UPSTREAM_ERRORS` when the upstream breaks off or goes quiet for longer
    than the target's timeout.
    """

    def __init__(self, response: aiohttp.ClientResponse, first: bytes, replica: Replica | None = None) -> None:
        self.response = response
        self.first = first
        self.replica = replica  # a pool's replica: the stream counts as outstanding there until closed

    def aiter_raw(self) -> _Chunks:
        first, self.first = self.first, b""
        return _Chunks(first, self.response.content.readany)

    async def aclose(self) -> None:
        self._release()
        if self.response.content.at_eof():
            self.response.release()  # read to the end: the connection goes back to the pool
        else:
            self.response.close()  # abandoned midway: the connection cannot be reused

    def _release(self) -> None:
        replica, self.replica = self.replica, None
        if replica is not None:
            replica.outstanding -= 1

    def __del__(self) -> None:
        self._release()  # a stream dropped without aclose (its relay never started) leaves no count behind


class _Chunks:
    """A stream's chunks as ``iter_any`` gives them, after the one read already."""

    __slots__ = ("first", "read")

    def __init__(self, first: bytes, read: Any) -> None:
        self.first, self.read = first, read

    def __aiter__(self) -> _Chunks:
        return self

    async def __anext__(self) -> bytes:
        if self.first:
            chunk, self.first = self.first, b""
            return chunk
        chunk: bytes = await self.read()
        if not chunk:
            raise StopAsyncIteration
        return chunk


class UpstreamClient:
    """The gateway's calls upstream, over one connection pool (created in the event loop at first use), and
    the replica pool of each upstream (``upstreams``: those the config names; others get one at first use)."""

    def __init__(
        self, upstreams: Mapping[str, Upstream] | None = None, *, max_connections: int = MAX_CONNECTIONS
    ) -> None:
        self.max_connections = max_connections
        self._session: aiohttp.ClientSession | None = None
        self.pools: dict[str, ReplicaPool] = {name: ReplicaPool(up) for name, up in (upstreams or {}).items()}
        self._checks: asyncio.Task[None] | None = None

    @property
    def session(self) -> aiohttp.ClientSession:
        if self._session is None:
            self._session = aiohttp.ClientSession(
                connector=aiohttp.TCPConnector(limit=self.max_connections),
                cookie_jar=aiohttp.DummyCookieJar(),  # one upstream answer's cookies are no other client's
                trust_env=False,  # a proxy set for the user's shell must not capture LLM traffic silently
            )
        return self._session

    async def close(self) -> None:
        if self._checks is not None:
            self._checks.cancel()
            self._checks = None
        if self._session is not None:
            await self._session.close()

    # --- replica pools ----------------------------------------------------------------------------

    def pool(self, upstream: Upstream) -> ReplicaPool:
        """``upstream``'s replica pool (a new one when its definition changed)."""
        pool = self.pools.get(upstream.name)
        if pool is None or (pool.upstream is not upstream and pool.upstream != upstream):
            pool = self.pools[upstream.name] = ReplicaPool(upstream)
        return pool

    def live_base_url(self, upstream: Upstream) -> str:
        """A base URL of ``upstream`` that is in its pool (the first, with one), for calls besides chat."""
        pool = self.pool(upstream)
        return pool.pick("").url if pool.several else upstream.base_url

    def replica_states(self) -> dict[str, list[dict[str, Any]]]:
        """Each pool with several replicas: each replica's state (for /healthz)."""
        return {name: pool.states() for name, pool in self.pools.items() if pool.several}

    def start_health_checks(self) -> asyncio.Task[None] | None:
        """Health-check the replicas of every pool in the background (from the event loop); None without pools."""
        if self._checks is None and any(pool.several for pool in self.pools.values()):
            self._checks = asyncio.get_running_loop().create_task(self.check_replicas_forever())
        return self._checks

    async def check_replicas_forever(self) -> None:
        """Every replica's ``GET /models``, when it is due (pools added later are checked too)."""
        while True:
            pools = [pool for pool in self.pools.values() if pool.several]
            now = time.monotonic()
            due = [(pool, r) for pool in pools for r in pool.replicas if r.next_check_at <= now]
            if due:
                await asyncio.gather(*(self._check(pool, replica) for pool, replica in due))
            next_at = min((r.next_check_at for pool in pools for r in pool.replicas), default=now + 1.0)
            # At most half a second asleep: a replica ejected meanwhile is due eject_for_s after that.
            await asyncio.sleep(min(max(next_at - time.monotonic(), 0.01), 0.5))

    async def _check(self, pool: ReplicaPool, replica: Replica) -> None:
        api_key = pool.upstream.api_key()
        headers = {"authorization": f"Bearer {api_key}"} if api_key else {}
        try:
            listing = await self.get_json(replica.models_url, headers, PROBE_TIMEOUT_S)
        except (*UPSTREAM_ERRORS, ValueError) as exc:
            pool.checked(replica, None, f"GET /models: {_name(exc)}: {exc}".rstrip(": "))
        else:
            pool.checked(replica, listing)

    # --- calls ------------------------------------------------------------------------------------

    async def get_json(self, url: str, headers: dict[str, str], timeout_s: float) -> Any:
        """GET a JSON document (listing an upstream's models); raises UPSTREAM_ERRORS or ValueError."""
        timeout = aiohttp.ClientTimeout(total=timeout_s)
        async with self.session.get(url, headers=headers, timeout=timeout, allow_redirects=False) as response:
            response.raise_for_status()
            return json.loads(await response.read())

    async def finish_stream(self, reply: UpstreamReply) -> None:
        """Close a streamed reply's upstream response."""
        assert reply.stream is not None
        await reply.stream.aclose()

    async def call(
        self, targets: list[Target], body: dict[str, Any], *, stream: bool, extra_headers: dict[str, str] | None = None
    ) -> UpstreamReply:
        """Send ``body`` (its ``model`` replaced per target) through the targets until one answers;
        ``extra_headers`` go with it (a shadow call's ``x-tuneloop-shadow``)."""
        attempts: list[Attempt] = []
        wait_s = 0.0
        last: UpstreamReply | None = None
        for target in targets:
            pool = self.pool(target.upstream)
            several = pool.several
            payload = orjson.dumps({**body, "model": target.model})
            headers = {
                "content-type": "application/json",
                "accept": "text/event-stream" if stream else "application/json",
            }
            if extra_headers:
                headers.update(extra_headers)
            api_key = target.upstream.api_key()
            if api_key:
                headers["authorization"] = f"Bearer {api_key}"
            # As patient as the target's timeout for a free connection and for each read, connecting at most 10 s.
            timeout = aiohttp.ClientTimeout(
                total=None,
                connect=target.timeout_s,
                sock_connect=min(CONNECT_TIMEOUT_S, target.timeout_s),
                sock_read=target.timeout_s,
            )
            replica = pool.pick(target.model) if several else pool.only
            tried: list[Replica] = []
            tries_left, backoffs = target.retries + 1, 0
            while True:
                started = time.perf_counter()
                if several:
                    reply = await self._send_counted(pool, replica, target, payload, headers, timeout, stream)
                else:
                    reply = await self._send(target, replica, payload, headers, timeout, stream)
                elapsed = time.perf_counter() - started
                wait_s += elapsed
                attempt = reply.attempts[0]
                attempt.latency_ms = elapsed * 1000
                attempts.append(attempt)
                reply.attempts, reply.wait_s = attempts, wait_s
                if reply.ok:
                    return reply
                if not _retryable(reply):
                    if reply.status in CREDENTIAL_STATUSES:
                        last = reply
                        break  # next target: this upstream refused our key
                    return _final_failure(reply, attempts)  # the client's mistake: any upstream would say so
                last = reply
                if several:
                    tried.append(replica)
                    replica = pool.pick(target.model, tried)
                    fresh = replica not in tried
                    # Nothing was answered: another replica is owed the try, not the retries.
                    if not (fresh and attempt.outcome == "connection_error"):
                        tries_left -= 1
                else:
                    fresh = False
                    tries_left -= 1
                if tries_left <= 0:
                    break
                if fresh:
                    continue  # another server than the one that failed: no reason to wait
                delay = _backoff_s(target, backoffs, reply.headers.get("retry-after"))
                if delay is None:
                    break  # the upstream asks for a longer pause than we would make a client wait
                backoffs += 1
                await asyncio.sleep(delay)
                wait_s += delay
        assert last is not None
        last.attempts, last.wait_s = attempts, wait_s
        return _final_failure(last, attempts)

    async def _send_counted(
        self,
        pool: ReplicaPool,
        replica: Replica,
        target: Target,
        payload: bytes,
        headers: dict[str, str],
        timeout: aiohttp.ClientTimeout,
        stream: bool,
    ) -> UpstreamReply:
        """A try on a pool's replica: counted as outstanding while it runs (a stream until it is closed),
        its result told to the pool."""
        replica.outstanding += 1
        held: Replica | None = None
        try:
            reply = await self._send(target, replica, payload, headers, timeout, stream)
            if reply.stream is not None:
                reply.stream.replica = held = replica  # released when the stream is closed
        finally:
            if held is None:
                replica.outstanding -= 1
        attempt = reply.attempts[0]
        attempt.replica = replica.url
        pool.observe(replica, reply.status, attempt.outcome, target.model, attempt.error)
        return reply

    async def _send(
        self,
        target: Target,
        replica: Replica,
        payload: bytes,
        headers: dict[str, str],
        timeout: aiohttp.ClientTimeout,
        stream: bool,
    ) -> UpstreamReply:
        label = replica.label
        try:
            response = await self.session.post(
                replica.chat_url, data=payload, headers=headers, timeout=timeout, allow_redirects=False
            )
        except TimeoutError as exc:
            return _failed(target, 504, "timeout", f"{label} timed out after {target.timeout_s:g}s ({_name(exc)})")
        except aiohttp.ClientError as exc:
            return _failed(target, 502, "connection_error", f"{label}: {_name(exc)}: {exc}".rstrip(": "))
        passed = {name: response.headers[name] for name in PASSED_RESPONSE_HEADERS if name in response.headers}
        passed["content-type"] = response.headers.get("content-type", "application/json")
        ok = 200 <= response.status < 300
        attempt = Attempt(target.upstream.name, target.model, "ok" if ok else f"http_{response.status}", 0.0)
        attempt.http_status = response.status
        if stream and ok:
            # The first chunk is read here, so a replica that fails before it is a failed try like any other.
            try:
                first = await response.content.readany()
            except TimeoutError as exc:
                response.close()
                return _failed(
                    target, 504, "timeout", f"{label} timed out before the stream's first byte ({_name(exc)})"
                )
            except aiohttp.ClientError as exc:
                response.close()
                return _failed(
                    target, 502, "connection_error", f"{label} broke off the stream before its first byte: {_name(exc)}"
                )
            if not first:
                response.close()
                return _failed(target, 502, "connection_error", f"{label} ended the stream before its first byte")
            upstream_stream = UpstreamStream(response, first)
            return UpstreamReply(response.status, target, stream=upstream_stream, headers=passed, attempts=[attempt])
        try:
            body = await response.read()
        except TimeoutError as exc:
            response.close()
            return _failed(target, 504, "timeout", f"{label} timed out reading the answer ({_name(exc)})")
        except aiohttp.ClientError as exc:
            response.close()
            return _failed(target, 502, "connection_error", f"{label} broke off the answer: {_name(exc)}")
        if not ok:
            attempt.error = _error_message(body)
        reply = UpstreamReply(response.status, target, body=body, headers=passed, attempts=[attempt])
        if ok and reply.json_object() is None:  # parsed once here; the checks and metrics reuse it
            # A proxy's HTML page, a truncated body: not an answer, however the status reads. Retried like a 502.
            sample = body[:200].decode("utf-8", "replace")
            return _failed(
                target,
                502,
                "invalid_response",
                f"{label} answered {response.status} with a body that is not a JSON object "
                f"({passed['content-type']}): {sample!r}",
            )
        return reply


def _name(exc: BaseException) -> str:
    return type(exc).__name__


def _failed(target: Target, status: int, outcome: str, message: str) -> UpstreamReply:
    attempt = Attempt(target.upstream.name, target.model, outcome, 0.0, error=message)
    return UpstreamReply(status, target, attempts=[attempt], error=message)


def _retryable(reply: UpstreamReply) -> bool:
    return (reply.body is None and reply.stream is None) or reply.status in RETRYABLE_STATUSES


def _backoff_s(target: Target, try_number: int, retry_after: str | None) -> float | None:
    delay_ms = min(target.backoff_ms * (2**try_number), MAX_BACKOFF_MS) * random.uniform(0.5, 1.5)
    if retry_after:
        try:
            asked_ms = float(retry_after) * 1000
        except ValueError:
            asked_ms = None
        if asked_ms is not None:
            if asked_ms > MAX_BACKOFF_MS:
                return None
            delay_ms = max(delay_ms, asked_ms)
    return delay_ms / 1000


def _error_message(body: bytes) -> str:
    try:
        decoded = json.loads(body)
    except (json.JSONDecodeError, UnicodeDecodeError):
        return body[:500].decode("utf-8", "replace")
    if is_error_body(decoded):
        return str(decoded["error"]["message"])
    return body[:500].decode("utf-8", "replace")


def _final_failure(last: UpstreamReply, attempts: list[Attempt]) -> UpstreamReply:
    """The client's answer when every try failed: the last upstream error, always in OpenAI's shape."""
    tries = f"{len(attempts)} tr{'y' if len(attempts) == 1 else 'ies'}"
    where = ", ".join(dict.fromkeys(f"{a.upstream}/{a.model}" for a in attempts))
    if last.body is not None and last.status not in CREDENTIAL_STATUSES:
        message = f"upstream error after {tries} ({where}): {_error_message(last.body)}"
        last.error = message
        try:
            shaped = is_error_body(json.loads(last.body))
        except (json.JSONDecodeError, UnicodeDecodeError):
            shaped = False
        if not shaped:
            last.body = error_bytes(message, status=last.status, code="upstream_error")
            last.headers["content-type"] = "application/json"
        return last
    if last.status in CREDENTIAL_STATUSES:
        message = (
            f"upstream {last.target.upstream.name if last.target else '?'} refused the gateway's credentials "
            f"(HTTP {last.status}); check its api_key_env ({where}, {tries})"
        )
        status, code = 502, "upstream_auth_failed"
    else:
        message = f"{last.error} ({where}, {tries})"
        status = last.status
        outcome = last.attempts[-1].outcome if last.attempts else ""
        code = {"timeout": "upstream_timeout", "invalid_response": "upstream_invalid_response"}.get(
            outcome, "upstream_timeout" if status == 504 else "upstream_unavailable"
        )
    last.status, last.error = status, message
    last.body = error_bytes(message, "server_error", status=status, code=code)
    last.headers = {"content-type": "application/json"}
    return last

"""A fast OpenAI-compatible upstream that answers at once (or after a set latency), with optional fault injection.

For tests and benchmarks of the gateway (they are about our side of the wire, so the other side should
cost as little as possible), and for trying a gateway config without an API key::

    python -m tuneloop.testing.fake_upstream --port 9000 --fault-rate 0.1

It is a minimal HTTP/1.1 server on asyncio (keep-alive, Content-Length bodies) serving
``POST …/chat/completions`` (streamed or not) and ``GET …/models``. Faults, chosen at random with
``fault_rate`` or forced per request with the ``x-fake-fault`` header or a model named ``fault-<kind>``:

- ``500`` / ``503`` / ``429``: an OpenAI-shaped error with that status,
- ``reset``: the connection is reset (TCP RST) without an answer,
- ``timeout``: no answer at all; the connection stays open until the client gives up,
- ``html``: 200 with an HTML page (a misconfigured proxy's answer), not JSON,
- ``cut-head``: the head of a 200 answer, then the connection is closed before any of the body (a server
  killed right after it began to answer),
- ``cut-reset`` / ``cut-fin`` / ``cut-stall``: the answer starts (a stream's first half of events, or half a
  body) and then the connection is reset, closed cleanly (FIN), or goes quiet until the client gives up.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import socket
import struct
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from typing import Any

FAULT_KINDS = ("500", "503", "429", "reset", "timeout", "html", "cut-head", "cut-reset", "cut-fin", "cut-stall")
CUT_FAULTS = ("cut-head", "cut-reset", "cut-fin", "cut-stall")
DEFAULT_ANSWER = '{"payoff_amount": 1200.0, "servicer": "Acme Loans"}'

Answer = Callable[[dict[str, Any]], str]


class FakeUpstream:
    def __init__(
        self,
        answer: str | Answer = DEFAULT_ANSWER,
        *,
        fault_rate: float = 0.0,
        faults: tuple[str, ...] = ("500", "reset", "timeout"),
        seed: int = 0,
        models: tuple[str, ...] = ("fake-small", "fake-large"),
        stream_pieces: int = 4,
        latency_ms: float = 0.0,
        latency_spread: float = 0.0,
    ) -> None:
        unknown = set(faults) - set(FAULT_KINDS)
        if unknown:
            raise ValueError(f"unknown fault kinds {sorted(unknown)}; known: {FAULT_KINDS}")
        self.answer = answer
        self.fault_rate = fault_rate
        self.faults = faults
        self.random = random.Random(seed)
        self.models = models
        self.stream_pieces = stream_pieces
        # A successful answer is sent this long after the request came, give or take ``latency_spread`` of it
        # (uniformly): clients of an upstream that always takes the same time move in lockstep, in bursts.
        self.latency_s = latency_ms / 1000
        self.latency_spread = latency_spread
        self.served = Counter[str]()  # "ok" and each fault kind
        # What was received, when keep_requests is set (tests): bodies, and the headers of each.
        self.requests: list[dict[str, Any]] = []
        self.headers: list[dict[str, str]] = []
        self.keep_requests = False
        self.connections: set[_Connection] = set()
        self._lock = threading.Lock()

    # --- answers ---------------------------------------------------------------------------------

    def _count(self, outcome: str) -> None:
        with self._lock:
            self.served[outcome] += 1

    def pick_fault(self, forced: str | None) -> str | None:
        if forced:
            return forced
        if self.fault_rate and self.random.random() < self.fault_rate:
            return self.random.choice(self.faults)
        return None

    def completion(self, body: dict[str, Any]) -> tuple[dict[str, Any], str]:
        text = self.answer(body) if callable(self.answer) else self.answer
        prompt_chars = sum(len(str(m.get("content") or "")) for m in body.get("messages") or [])
        usage = {
            "prompt_tokens": max(1, prompt_chars // 4),
            "completion_tokens": max(1, len(text) // 4),
            "total_tokens": max(1, prompt_chars // 4) + max(1, len(text) // 4),
        }
        completion = {
            "id": f"chatcmpl-fake{time.monotonic_ns()}",
            "object": "chat.completion",
            "created": int(time.time()),
            "model": body.get("model", "fake"),
            "choices": [{"index": 0, "message": {"role": "assistant", "content": text}, "finish_reason": "stop"}],
            "usage": usage,
        }
        return completion, text

    def stream_events(self, body: dict[str, Any]) -> list[bytes]:
        completion, text = self.completion(body)
        base = {"id": completion["id"], "object": "chat.completion.chunk", "created": completion["created"]}
        base["model"] = completion["model"]
        step = max(1, -(-len(text) // self.stream_pieces))
        deltas = [{"role": "assistant", "content": ""}] + [
            {"content": text[i : i + step]} for i in range(0, len(text), step)
        ]
        events = [{**base, "choices": [{"index": 0, "delta": delta, "finish_reason": None}]} for delta in deltas]
        events.append({**base, "choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}]})
        if (body.get("stream_options") or {}).get("include_usage"):
            events.append({**base, "choices": [], "usage": completion["usage"]})
        encoded = [f"data: {json.dumps(event, separators=(',', ':'))}\n\n".encode() for event in events]
        return [*encoded, b"data: [DONE]\n\n"]

    # --- serving ---------------------------------------------------------------------------------

    async def serve(self, host: str = "127.0.0.1", port: int = 0, sock: socket.socket | None = None) -> asyncio.Server:
        loop = asyncio.get_running_loop()
        if sock is not None:
            return await loop.create_server(lambda: _Connection(self), sock=sock, backlog=2048)
        return await loop.create_server(lambda: _Connection(self), host, port, backlog=2048)

    @contextmanager
    def running(self, host: str = "127.0.0.1", port: int = 0) -> Iterator[str]:
        """Serve on ``port`` (a free one by default) in a background thread; yields the base URL
        (``http://host:port/v1``). Stopped, it refuses connections; started again on its port, it is back."""
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((host, port))
        port = sock.getsockname()[1]
        loop = asyncio.new_event_loop()
        ready = threading.Event()
        holder: dict[str, asyncio.Server] = {}

        def run() -> None:
            asyncio.set_event_loop(loop)
            holder["server"] = loop.run_until_complete(self.serve(sock=sock))
            ready.set()
            loop.run_forever()

        thread = threading.Thread(target=run, name="fake-upstream", daemon=True)
        thread.start()
        ready.wait(10)
        try:
            yield f"http://{host}:{port}/v1"
        finally:

            async def stop() -> None:
                holder["server"].close()
                for connection in list(self.connections):
                    connection.transport.abort()

            asyncio.run_coroutine_threadsafe(stop(), loop).result(5)
            loop.call_soon_threadsafe(loop.stop)
            thread.join(5)


class _Connection(asyncio.Protocol):
    def __init__(self, upstream: FakeUpstream) -> None:
        self.upstream = upstream
        self.buffer = b""
        self.transport: asyncio.Transport
        self.hung = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]  # uvloop's transports are not asyncio subclasses
        self.upstream.connections.add(self)

    def connection_lost(self, exc: Exception | None) -> None:
        self.upstream.connections.discard(self)

    def data_received(self, data: bytes) -> None:
        self.buffer += data
        while not self.hung:
            end = self.buffer.find(b"\r\n\r\n")
            if end < 0:
                return
            head = self.buffer[:end].decode("latin-1")
            lines = head.split("\r\n")
            method, path, _ = [*lines[0].split(" "), "", ""][:3]
            headers = {}
            for line in lines[1:]:
                name, _, value = line.partition(":")
                headers[name.strip().lower()] = value.strip()
            length = int(headers.get("content-length") or 0)
            if len(self.buffer) < end + 4 + length:
                return
            body = self.buffer[end + 4 : end + 4 + length]
            self.buffer = self.buffer[end + 4 + length :]
            self.handle(method, path, headers, body)

    def handle(self, method: str, path: str, headers: dict[str, str], body: bytes) -> None:
        upstream = self.upstream
        if method == "GET" and path.endswith("/models"):
            data = [{"id": name, "object": "model", "created": 0, "owned_by": "fake"} for name in upstream.models]
            self.respond(200, json.dumps({"object": "list", "data": data}).encode())
            return
        if method != "POST" or not path.endswith("/chat/completions"):
            self.respond(404, _error(f"no route {method} {path}", "not_found_error"))
            return
        try:
            request = json.loads(body)
        except json.JSONDecodeError:
            self.respond(400, _error("body is not JSON", "invalid_request_error"))
            return
        if upstream.keep_requests:
            upstream.requests.append(request)
            upstream.headers.append(headers)
        model = str(request.get("model") or "")
        forced = headers.get("x-fake-fault") or (model.removeprefix("fault-") if model.startswith("fault-") else None)
        fault = upstream.pick_fault(forced)
        if fault is not None:
            upstream._count(fault)
            if fault in CUT_FAULTS:
                self.cut_short(request, fault)
            elif fault == "reset":
                self.reset()
            elif fault == "html":
                page = b"<html><body><h1>Welcome to nginx!</h1></body></html>"
                head = self.response(200, page).replace(b"application/json", b"text/html", 1)
                self.transport.write(head)
            elif fault == "timeout":
                self.hung = True  # answer nothing more on this connection
            else:
                status = int(fault)
                extra = b"Retry-After: 0\r\n" if status == 429 else b""
                self.respond(status, _error(f"injected fault {fault}", "server_error"), extra)
            return
        upstream._count("ok")
        if request.get("stream"):
            head = (
                b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ntransfer-encoding: chunked\r\n"
                b"connection: keep-alive\r\n\r\n"
            )
            parts = [head]
            for event in upstream.stream_events(request):
                parts.append(f"{len(event):x}\r\n".encode() + event + b"\r\n")
            parts.append(b"0\r\n\r\n")
            self.send_answer(b"".join(parts))
            return
        completion, _ = upstream.completion(request)
        self.send_answer(self.response(200, json.dumps(completion, separators=(",", ":")).encode()))

    def reset(self) -> None:
        # SO_LINGER 0: close() sends RST instead of FIN, as a crashed server would.
        sock = self.transport.get_extra_info("socket")
        if sock is not None:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        self.transport.abort()

    def cut_short(self, request: dict[str, Any], fault: str) -> None:
        """Send the first half of the answer, then break off as ``fault`` says."""
        if fault == "cut-head":
            head = b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ntransfer-encoding: chunked\r\n\r\n"
            if not request.get("stream"):
                head = b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: 100\r\n\r\n"
            self.transport.write(head)
            self.transport.close()
            return
        if request.get("stream"):
            events = self.upstream.stream_events(request)
            head = b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ntransfer-encoding: chunked\r\n\r\n"
            sent = b"".join(f"{len(event):x}\r\n".encode() + event + b"\r\n" for event in events[: len(events) // 2])
            data = head + sent
        else:
            completion, _ = self.upstream.completion(request)
            whole = self.response(200, json.dumps(completion, separators=(",", ":")).encode())
            data = whole[: len(whole) - len(whole) // 4]  # the head and part of the body
        self.transport.write(data)
        if fault == "cut-reset":
            # A moment later: a reset makes the receiver's kernel drop what it has not read yet.
            asyncio.get_running_loop().call_later(0.02, self.reset)
        elif fault == "cut-fin":
            self.transport.close()  # a clean FIN, before the body is complete
        else:
            self.hung = True  # nothing more, until the client gives up

    def send_answer(self, data: bytes) -> None:
        """Send a successful answer, after the upstream's latency if it has one (as a model takes time)."""
        upstream = self.upstream
        if upstream.latency_s <= 0:
            self.transport.write(data)
            return
        delay = upstream.latency_s * (1 + upstream.latency_spread * (2 * upstream.random.random() - 1))

        def send() -> None:
            if not self.transport.is_closing():
                self.transport.write(data)

        asyncio.get_running_loop().call_later(delay, send)

    def respond(self, status: int, body: bytes, extra_headers: bytes = b"") -> None:
        self.transport.write(self.response(status, body, extra_headers))

    @staticmethod
    def response(status: int, body: bytes, extra_headers: bytes = b"") -> bytes:
        reason = {200: "OK", 400: "Bad Request", 404: "Not Found", 429: "Too Many Requests"}.get(status, "Error")
        head = (
            f"HTTP/1.1 {status} {reason}\r\ncontent-type: application/json\r\ncontent-length: {len(body)}\r\n"
            "connection: keep-alive\r\n"
        ).encode()
        return head + extra_headers + b"\r\n" + body


def _error(message: str, kind: str) -> bytes:
    return json.dumps({"error": {"message": message, "type": kind, "param": None, "code": None}}).encode()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=9000)
    parser.add_argument("--fault-rate", type=float, default=0.0)
    parser.add_argument("--faults", default="500,reset,timeout", help="comma-separated: " + ",".join(FAULT_KINDS))
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--latency-ms", type=float, default=0.0, help="answer this long after each request")
    parser.add_argument("--latency-spread", type=float, default=0.0, help="±this share of it, uniformly (0-1)")
    args = parser.parse_args()
    upstream = FakeUpstream(
        fault_rate=args.fault_rate,
        faults=tuple(args.faults.split(",")),
        seed=args.seed,
        latency_ms=args.latency_ms,
        latency_spread=args.latency_spread,
    )

    async def run() -> None:
        server = await upstream.serve(args.host, args.port)
        print(f"fake upstream on http://{args.host}:{args.port}/v1", flush=True)
        async with server:
            await server.serve_forever()

    with suppress(KeyboardInterrupt):
        asyncio.run(run())


if __name__ == "__main__":
    main()

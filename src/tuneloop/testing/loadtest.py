"""A small closed-loop HTTP load generator: for the gateway benchmark and the reliability test.

``concurrency`` keep-alive connections each send ``POST`` requests back to back until ``total`` have been
sent, timing each from the first byte written to the last byte read. It is deliberately minimal
(HTTP/1.1, Content-Length or chunked bodies, no TLS) so that measuring costs little CPU and the
numbers are about the server, not the client.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

from tuneloop.protocol import is_error_body


@dataclass
class LoadResult:
    latencies_ms: list[float] = field(default_factory=list)
    statuses: Counter[int] = field(default_factory=Counter)
    client_errors: list[str] = field(default_factory=list)  # no HTTP answer at all (connection failures)
    malformed: list[str] = field(default_factory=list)  # an answer that is neither a completion nor an OpenAI error
    overhead_ms: list[float] = field(default_factory=list)  # the gateway's x-tuneloop-overhead-ms, when present
    elapsed_s: float = 0.0

    @property
    def completed(self) -> int:
        return sum(self.statuses.values())

    @property
    def requests_per_s(self) -> float:
        return self.completed / self.elapsed_s if self.elapsed_s else 0.0


def percentile(values: list[float], q: float) -> float:
    """Nearest-rank percentile (q in [0, 100])."""
    if not values:
        return float("nan")
    ordered = sorted(values)
    rank = max(1, min(len(ordered), round(q / 100 * len(ordered) + 0.5)))
    return ordered[rank - 1]


def is_completion_or_error(status: int, body: bytes) -> bool:
    """The reliability contract: a chat completion on 2xx, else an OpenAI-shaped error."""
    try:
        payload = json.loads(body)
    except (json.JSONDecodeError, UnicodeDecodeError):
        return False
    if 200 <= status < 300:
        return isinstance(payload, dict) and isinstance(payload.get("choices"), list)
    return is_error_body(payload)


async def _read_response(reader: asyncio.StreamReader) -> tuple[int, dict[str, str], bytes]:
    head = await reader.readuntil(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    status = int(lines[0].split(" ", 2)[1])
    headers: dict[str, str] = {}
    for line in lines[1:]:
        if line:
            name, _, value = line.partition(":")
            headers[name.strip().lower()] = value.strip()
    if headers.get("transfer-encoding", "").lower() == "chunked":
        parts = []
        while True:
            size = int((await reader.readuntil(b"\r\n")).strip().split(b";")[0], 16)
            if size == 0:
                await reader.readuntil(b"\r\n")
                break
            parts.append(await reader.readexactly(size))
            await reader.readexactly(2)
        return status, headers, b"".join(parts)
    length = int(headers.get("content-length", "0"))
    return status, headers, await reader.readexactly(length) if length else b""


async def run_load(
    url: str,
    body: bytes | Callable[[int], bytes],
    *,
    total: int,
    concurrency: int,
    headers: dict[str, str] | None = None,
    check: Callable[[int, bytes], bool] | None = is_completion_or_error,
    timeout_s: float = 60.0,
) -> LoadResult:
    """Send ``total`` POSTs to ``url`` over ``concurrency`` connections; see the module docstring."""
    parts = urlsplit(url)
    host, port, path = parts.hostname or "127.0.0.1", parts.port or 80, parts.path or "/"
    extra = "".join(f"{name}: {value}\r\n" for name, value in (headers or {}).items())
    result = LoadResult()
    next_index = 0

    def request_bytes(index: int) -> bytes:
        payload = body(index) if callable(body) else body
        head = (
            f"POST {path} HTTP/1.1\r\nhost: {host}:{port}\r\ncontent-type: application/json\r\n"
            f"content-length: {len(payload)}\r\n{extra}\r\n"
        )
        return head.encode() + payload

    async def worker() -> None:
        nonlocal next_index
        reader: asyncio.StreamReader | None = None
        writer: asyncio.StreamWriter | None = None
        while next_index < total:
            index = next_index
            next_index += 1
            data = request_bytes(index)
            try:
                if writer is None:
                    reader, writer = await asyncio.open_connection(host, port)
                assert reader is not None
                started = time.perf_counter()
                writer.write(data)
                status, response_headers, response_body = await asyncio.wait_for(_read_response(reader), timeout_s)
                result.latencies_ms.append((time.perf_counter() - started) * 1000)
            except (TimeoutError, OSError, asyncio.IncompleteReadError, ValueError) as exc:
                result.client_errors.append(f"request {index}: {type(exc).__name__}: {exc}")
                if writer is not None:
                    writer.close()
                reader = writer = None
                continue
            result.statuses[status] += 1
            overhead = response_headers.get("x-tuneloop-overhead-ms")
            if overhead is not None:
                result.overhead_ms.append(float(overhead))
            if check is not None and not check(status, response_body):
                result.malformed.append(f"request {index}: HTTP {status}: {response_body[:200]!r}")
            if response_headers.get("connection", "").lower() == "close":
                assert writer is not None
                writer.close()
                reader = writer = None
        if writer is not None:
            writer.close()

    started = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    result.elapsed_s = time.perf_counter() - started
    return result


def chat_body(model: str, content: str = "Payoff is $1,200.00; escrow $300.", **extra: Any) -> bytes:
    return json.dumps({"model": model, "messages": [{"role": "user", "content": content}], **extra}).encode()

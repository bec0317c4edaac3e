"""Latency statistics of an eval: percentiles of wall time and time to first token, and decode speed.

Latency is what the caller waits for one request, measured around the call (so at concurrency ``C`` on
a local backend, which runs one request at a time, it includes waiting for the engine, as a user's
request would). Percentiles interpolate linearly between order statistics (numpy's default), so with
few requests p95 and p99 lie between the largest values rather than on one of them.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Protocol


class TimedRequest(Protocol):
    latency_ms: float | None
    ttft_ms: float | None
    completion_tokens: int | None


def percentile(values: Sequence[float], q: float) -> float:
    """The ``q``-th percentile (0..100) with linear interpolation."""
    if not values:
        raise ValueError("percentile of no values")
    if not 0 <= q <= 100:
        raise ValueError(f"q must be in [0, 100], got {q}")
    ordered = sorted(values)
    position = (len(ordered) - 1) * q / 100
    low, high = math.floor(position), math.ceil(position)
    return ordered[low] + (ordered[high] - ordered[low]) * (position - low)


@dataclass(frozen=True)
class LatencyStats:
    requests: int
    p50_ms: float
    p95_ms: float
    p99_ms: float
    mean_ms: float
    ttft_p50_ms: float | None
    ttft_p95_ms: float | None
    ttft_p99_ms: float | None
    output_tokens_per_s: float | None

    def to_dict(self) -> dict[str, Any]:
        return {"p50": self.p50_ms, "p95": self.p95_ms, "p99": self.p99_ms, "mean": self.mean_ms}

    def ttft_dict(self) -> dict[str, Any] | None:
        if self.ttft_p50_ms is None:
            return None
        return {"p50": self.ttft_p50_ms, "p95": self.ttft_p95_ms, "p99": self.ttft_p99_ms}


def latency_stats(requests: Sequence[TimedRequest]) -> LatencyStats | None:
    """Statistics over requests that were timed; None when none was (e.g. scored saved predictions)."""
    timed = [r for r in requests if r.latency_ms is not None]
    if not timed:
        return None
    latencies = [r.latency_ms for r in timed if r.latency_ms is not None]
    ttfts = [r.ttft_ms for r in timed if r.ttft_ms is not None]
    return LatencyStats(
        requests=len(timed),
        p50_ms=percentile(latencies, 50),
        p95_ms=percentile(latencies, 95),
        p99_ms=percentile(latencies, 99),
        mean_ms=sum(latencies) / len(latencies),
        ttft_p50_ms=percentile(ttfts, 50) if ttfts else None,
        ttft_p95_ms=percentile(ttfts, 95) if ttfts else None,
        ttft_p99_ms=percentile(ttfts, 99) if ttfts else None,
        output_tokens_per_s=decode_speed(timed),
    )


def decode_speed(requests: Sequence[TimedRequest]) -> float | None:
    """Output tokens per second while decoding, over all requests together.

    With a time to first token, the first token is prefill's and is left out: (tokens - 1) over the
    time after it. Without one (an endpoint that did not stream), all tokens over the whole latency.
    """
    tokens, seconds = 0.0, 0.0
    for request in requests:
        if request.completion_tokens is None or request.latency_ms is None:
            continue
        if request.ttft_ms is not None and request.completion_tokens > 1 and request.latency_ms > request.ttft_ms:
            tokens += request.completion_tokens - 1
            seconds += (request.latency_ms - request.ttft_ms) / 1000
        elif request.ttft_ms is None and request.completion_tokens > 0:
            tokens += request.completion_tokens
            seconds += request.latency_ms / 1000
    return tokens / seconds if seconds > 0 else None

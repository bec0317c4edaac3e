"""Reliability: 20k requests at concurrency 64 through the gateway, 10 % of upstream tries failing.

The faults (HTTP 500/503, connection reset, no answer until the gateway's timeout) are injected at
random by our fake upstream, in its own process. Half the requests go through a route with retries and a
fallback (nearly all faults absorbed), half through one without (the client sees them). Every client must
get a completion or an OpenAI-shaped error, and after a SIGTERM the store must hold exactly one row per
request.

``TUNELOOP_RELIABILITY_REQUESTS`` changes the count (default 20000).
"""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx
import pytest

from test_capture_support import GatewayProcess, count_rows, free_port, write_config
from tuneloop.testing.loadtest import LoadResult, chat_body, is_completion_or_error, percentile, run_load

REQUESTS = int(os.environ.get("TUNELOOP_RELIABILITY_REQUESTS", "20000"))
CONCURRENCY = 64
FAULT_RATE = 0.10


@contextmanager
def fake_upstream_process(faults: str, seed: int) -> Iterator[str]:
    """``python -m tuneloop.testing.fake_upstream`` with FAULT_RATE of ``faults``; yields its base URL."""
    port = free_port()
    command = [sys.executable, "-m", "tuneloop.testing.fake_upstream", "--port", str(port)]
    command += ["--fault-rate", str(FAULT_RATE), "--faults", faults, "--seed", str(seed)]
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}/v1"
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        try:
            httpx.get(url + "/models", timeout=1)
            break
        except httpx.HTTPError:
            time.sleep(0.05)
    try:
        yield url
    finally:
        process.terminate()
        process.wait(10)


@pytest.fixture
def faulty_upstream() -> Iterator[str]:
    with fake_upstream_process("500,503,reset,timeout", seed=7) as url:
        yield url


def load_through_gateway(
    config: Path,
    home: Path,
    body: Callable[[int], bytes],
    total: int,
    check: Callable[[int, bytes], bool] = is_completion_or_error,
) -> LoadResult:
    """``total`` calls at c=CONCURRENCY through a gateway process, which is then stopped with SIGTERM (so
    its log queue is drained into the store before the test counts rows)."""
    gateway = GatewayProcess(config, home)
    try:
        result = asyncio.run(
            run_load(gateway.base_url + "/chat/completions", body, total=total, concurrency=CONCURRENCY, check=check)
        )
        assert gateway.terminate(), gateway.output()
    finally:
        gateway.close()
    return result


@pytest.mark.timeout(240)
def test_every_client_gets_an_answer_and_every_request_a_row(
    tmp_path: Path, faulty_upstream: str, tuneloop_home: Path
) -> None:
    routes = [
        {
            "match": "rel/*",
            "upstream": "fake",
            "retries": 2,
            "backoff_ms": 1,
            "timeout_s": 0.25,
            "fallbacks": ["fake/backup"],
        },
        {"match": "bare/*", "upstream": "fake", "retries": 0, "timeout_s": 0.25},
    ]
    config = write_config(tmp_path / "gateway.yaml", faulty_upstream, routes=routes)
    model = lambda i: "rel/primary" if i % 2 else "bare/primary"  # noqa: E731
    result = load_through_gateway(config, tuneloop_home, lambda i: chat_body(model(i), f"document {i}"), REQUESTS)
    print(
        f"\n{REQUESTS} requests at c={CONCURRENCY} in {result.elapsed_s:.1f}s ({result.requests_per_s:.0f}/s); "
        f"statuses {dict(result.statuses)}; latency p50 {percentile(result.latencies_ms, 50):.1f} ms, "
        f"p99 {percentile(result.latencies_ms, 99):.1f} ms"
    )
    assert not result.client_errors, result.client_errors[:5]  # nobody was left without an HTTP answer
    assert not result.malformed, result.malformed[:5]  # every answer: a completion or an OpenAI error
    assert result.completed == REQUESTS
    failed = REQUESTS - result.statuses[200]
    assert REQUESTS * 0.02 < failed < REQUESTS * 0.08  # ~10 % of the unprotected half: seen, as OpenAI errors
    assert set(result.statuses) <= {200, 500, 502, 503, 504}
    assert count_rows() == REQUESTS  # one log row per request, none lost


STREAM_REQUESTS = int(os.environ.get("TUNELOOP_STREAM_FAULT_REQUESTS", "3000"))


def whole_stream_or_error_event(status: int, body: bytes) -> bool:
    """A stream's contract: the whole answer ending in ``[DONE]``, or an OpenAI-shaped error event (after
    whatever had arrived); an error before the stream began is an OpenAI-shaped error body."""
    from tuneloop.protocol import is_error_body, reassemble_sse
    from tuneloop.testing.fake_upstream import DEFAULT_ANSWER

    if status != 200:
        return is_completion_or_error(status, body)
    completion, error = reassemble_sse(body)
    if error is not None:
        return is_error_body({"error": error}) and b"[DONE]" not in body
    choices = completion.get("choices") or [{}]
    whole = choices[0].get("message", {}).get("content") == DEFAULT_ANSWER and choices[0].get("finish_reason") == "stop"
    return whole and body.endswith(b"data: [DONE]\n\n")


def stream_errors(body: bytes) -> int:
    from tuneloop.protocol import reassemble_sse

    return int(reassemble_sse(body)[1] is not None)


@pytest.mark.timeout(180)
def test_streams_cut_midway_under_load_end_whole_or_with_an_error_event(tmp_path: Path, tuneloop_home: Path) -> None:
    """c=64, 10 % of upstream streams cut after half their events: reset, clean FIN, or silence past the
    route's timeout. Every client gets a whole stream or an error event, and there is one row per call."""
    error_events = 0

    def check(status: int, body: bytes) -> bool:
        nonlocal error_events
        error_events += stream_errors(body) if status == 200 else 0
        return whole_stream_or_error_event(status, body)

    with fake_upstream_process("cut-reset,cut-fin,cut-stall", seed=11) as url:
        routes = [{"match": "s/*", "upstream": "fake", "retries": 1, "backoff_ms": 1, "timeout_s": 0.5}]
        config = write_config(tmp_path / "gateway.yaml", url, routes=routes)
        result = load_through_gateway(
            config,
            tuneloop_home,
            lambda i: chat_body("s/fake-small", f"document {i}", stream=True),
            STREAM_REQUESTS,
            check=check,
        )
    print(
        f"\n{STREAM_REQUESTS} streams at c={CONCURRENCY} in {result.elapsed_s:.1f}s; statuses {dict(result.statuses)}; "
        f"{error_events} ended with an error event"
    )
    assert not result.client_errors, result.client_errors[:5]
    assert not result.malformed, result.malformed[:5]
    assert result.completed == STREAM_REQUESTS
    assert STREAM_REQUESTS * 0.05 < error_events < STREAM_REQUESTS * 0.15  # the cuts were seen, as error events
    assert count_rows() == STREAM_REQUESTS  # one row per call, cut or not
    assert count_rows_where_error() == error_events + (STREAM_REQUESTS - result.statuses[200])


def count_rows_where_error() -> int:
    import sqlalchemy as sa

    from tuneloop.store import RequestLog, session_scope

    with session_scope() as session:
        query = sa.select(sa.func.count()).select_from(RequestLog).where(RequestLog.status == "error")
        return int(session.scalar(query) or 0)

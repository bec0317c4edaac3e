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
from pathlib import Path

import httpx
import pytest

from test_capture_support import GatewayProcess, count_rows, free_port, write_config
from tuneloop.testing.loadtest import chat_body, percentile, run_load

REQUESTS = int(os.environ.get("TUNELOOP_RELIABILITY_REQUESTS", "20000"))
CONCURRENCY = 64
FAULT_RATE = 0.10


@pytest.fixture
def faulty_upstream() -> str:
    port = free_port()
    process = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "tuneloop.testing.fake_upstream",
            "--port",
            str(port),
            "--fault-rate",
            str(FAULT_RATE),
            "--faults",
            "500,503,reset,timeout",
            "--seed",
            "7",
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    url = f"http://127.0.0.1:{port}/v1"
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        try:
            httpx.get(url + "/models", timeout=1)
            break
        except httpx.HTTPError:
            time.sleep(0.05)
    yield url
    process.terminate()
    process.wait(10)


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
    gateway = GatewayProcess(config, tuneloop_home)
    try:
        result = asyncio.run(
            run_load(
                gateway.base_url + "/chat/completions",
                lambda i: chat_body("rel/primary" if i % 2 else "bare/primary", f"document {i}"),
                total=REQUESTS,
                concurrency=CONCURRENCY,
            )
        )
        assert gateway.terminate(), gateway.output()
    finally:
        gateway.close()
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

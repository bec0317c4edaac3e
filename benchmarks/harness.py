"""What the gateway benchmarks share: free ports, waiting for a server, CPU time of a process tree, the
processes a run starts (stopped however it ends), and one closed-loop measurement."""

from __future__ import annotations

import asyncio
import contextlib
import socket
import subprocess
import time
from pathlib import Path
from typing import Any

import httpx
import psutil

from tuneloop.testing.loadtest import percentile, run_load


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wait_http(url: str, timeout: float = 120.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            httpx.get(url, timeout=2)
            return
        except httpx.HTTPError:
            time.sleep(0.2)
    raise RuntimeError(f"{url} did not come up")


def cpu_seconds(process: psutil.Process | None) -> float:
    """User + system CPU seconds of ``process`` and its children (0 for None)."""
    if process is None:
        return 0.0
    total = sum(process.cpu_times()[:2])
    for child in process.children(recursive=True):
        with contextlib.suppress(psutil.NoSuchProcess):
            total += sum(child.cpu_times()[:2])
    return total


class Processes:
    """The processes of one benchmark run, each logging to a file in ``log_dir``; all stopped on exit."""

    def __init__(self, log_dir: Path) -> None:
        self.log_dir = log_dir
        self.started: list[subprocess.Popen[bytes]] = []

    def start(self, command: list[str], **kwargs: Any) -> subprocess.Popen[bytes]:
        log = (self.log_dir / f"{Path(command[0]).name}-{len(self.started)}.log").open("wb")
        process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, **kwargs)
        self.started.append(process)
        return process

    def __enter__(self) -> Processes:
        return self

    def __exit__(self, *_: object) -> None:
        for process in self.started:
            if process.poll() is None:
                process.terminate()
        for process in self.started:
            try:
                process.wait(30)
            except subprocess.TimeoutExpired:
                process.kill()


def measure_closed_loop(url: str, body: bytes, total: int, concurrency: int) -> dict[str, Any]:
    """A warm-up (a tenth, at least 50), then ``total`` requests at ``concurrency``: latency percentiles, the
    gateway's own overhead, requests/s, and the calls that were not a 200 completion."""
    warmup = max(50, total // 10)
    asyncio.run(run_load(url, body, total=warmup, concurrency=concurrency))
    result = asyncio.run(run_load(url, body, total=total, concurrency=concurrency))
    failed = (
        len(result.client_errors)
        + len(result.malformed)
        + sum(count for status, count in result.statuses.items() if status != 200)
    )
    return {
        "p50_ms": percentile(result.latencies_ms, 50),
        "p95_ms": percentile(result.latencies_ms, 95),
        "p99_ms": percentile(result.latencies_ms, 99),
        "overhead_p50_ms": percentile(result.overhead_ms, 50),
        "overhead_p95_ms": percentile(result.overhead_ms, 95),
        "rps": result.requests_per_s,
        "failed": failed,
        "sent": total + warmup,
    }

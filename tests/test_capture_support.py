"""Shared helpers for the capture tests (no tests here): a fake upstream, gateway configs, gateways.

Real components on loopback: the gateway is the real app under uvicorn; the upstream is our own small
OpenAI-compatible server (the tests are about our side of the wire).
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import sqlalchemy as sa
import yaml

from tuneloop.capture.config import GatewayConfig, load_gateway_config
from tuneloop.capture.server import RunningGateway, running_gateway
from tuneloop.store import RequestLog, session_scope
from tuneloop.testing.fake_upstream import FakeUpstream

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture
def fake() -> Iterator[FakeUpstream]:
    upstream = FakeUpstream()
    upstream.keep_requests = True
    yield upstream


@pytest.fixture
def fake_url(fake: FakeUpstream) -> Iterator[str]:
    with fake.running() as url:
        yield url


def write_config(path: Path, fake_url: str, **sections: Any) -> Path:
    """A gateway YAML with the fake as upstream `fake` (and as `openai`, so prices apply), plus ``sections``."""
    config: dict[str, Any] = {
        "upstreams": {
            "fake": {"base_url": fake_url, "timeout_s": 2},
            "openai": {"base_url": fake_url, "timeout_s": 2},
        },
    }
    config.update(sections)
    path.write_text(yaml.safe_dump(config), encoding="utf-8")
    return path


def gateway_config(tmp_path: Path, fake_url: str, **sections: Any) -> GatewayConfig:
    return load_gateway_config(write_config(tmp_path / "gateway.yaml", fake_url, **sections))


@pytest.fixture
def gateway(tmp_path: Path, fake_url: str) -> Iterator[RunningGateway]:
    routes = [{"match": "team/*", "upstream": "fake", "fallbacks": ["fake/backup"], "retries": 1, "backoff_ms": 1}]
    with running_gateway(gateway_config(tmp_path, fake_url, routes=routes)) as running:
        yield running


def rows(where: Any = None) -> list[RequestLog]:
    with session_scope() as session:
        query = sa.select(RequestLog).order_by(RequestLog.id)
        if where is not None:
            query = query.where(where)
        return list(session.scalars(query))


def count_rows() -> int:
    with session_scope() as session:
        return int(session.scalar(sa.select(sa.func.count()).select_from(RequestLog)) or 0)


def wait_for_rows(expected: int, timeout: float = 10.0) -> int:
    deadline = time.monotonic() + timeout
    count = count_rows()
    while count < expected and time.monotonic() < deadline:
        time.sleep(0.05)
        count = count_rows()
    return count


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class GatewayProcess:
    """``tuneloop gateway`` as a separate process (for SIGTERM and kill -9)."""

    def __init__(self, config: Path, home: Path, *extra: str, database_url: str | None = None) -> None:
        self.port = free_port()
        self.base_url = f"http://127.0.0.1:{self.port}/v1"
        env = {**os.environ, "TUNELOOP_HOME": str(home)}
        env.pop("TUNELOOP_DATABASE_URL", None)
        if database_url is not None:  # else the SQLite database in ``home``
            env["TUNELOOP_DATABASE_URL"] = database_url
        command = [
            str(Path(sys.executable).parent / "tuneloop"),
            "gateway",
            "--config",
            str(config),
            "--port",
            str(self.port),
            *extra,
        ]
        self.log = (home / f"gateway-{self.port}.log").open("wb")
        self.process = subprocess.Popen(command, env=env, stdout=self.log, stderr=subprocess.STDOUT, cwd=REPO)
        self.wait_ready()

    def wait_ready(self, timeout: float = 60.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"the gateway exited with {self.process.returncode}: {self.output()}")
            try:
                if httpx.get(self.base_url.replace("/v1", "/healthz"), timeout=1).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.1)
        raise RuntimeError(f"the gateway did not start: {self.output()}")

    def output(self) -> str:
        self.log.flush()
        return Path(self.log.name).read_text(errors="replace")[-3000:]

    def terminate(self, timeout: float = 60.0) -> bool:
        """SIGTERM; True if the process shut down by itself (uvicorn re-raises SIGTERM once it has drained,
        so a clean exit reads as "terminated by SIGTERM" or 0)."""
        self.process.send_signal(signal.SIGTERM)
        return self.process.wait(timeout) in (0, -signal.SIGTERM)

    def kill(self) -> None:
        self.process.kill()  # SIGKILL: no shutdown code runs
        self.process.wait(10)

    def close(self) -> None:
        if self.process.poll() is None:
            self.kill()
        self.log.close()

"""The gateway as a process: SIGTERM drains the log queue; in --durable mode kill -9 loses nothing; the store
going away under load (PostgreSQL) loses no call with `block`, counts drops with `drop`, and nothing after
kill -9 with `--durable`."""

from __future__ import annotations

import asyncio
import json
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import openai
import pytest

from test_capture_support import GatewayProcess, count_rows, rows, write_config
from tuneloop.testing.loadtest import LoadResult, chat_body, run_load

# The writer holds records for 5 s (or 100k of them) before a commit: at the kill they are all in memory.
SLOW_COMMITS = {"batch_size": 100_000, "flush_ms": 5000}

pytest_plugins = ["test_capture_support"]  # the fake upstream and gateway fixtures


def send(gateway: GatewayProcess, count: int, concurrency: int = 8) -> None:
    result = asyncio.run(
        run_load(
            gateway.base_url + "/chat/completions",
            lambda i: chat_body("fake/m", f"doc {i}"),
            total=count,
            concurrency=concurrency,
        )
    )
    assert result.statuses == {200: count} and not result.client_errors, (result.statuses, result.client_errors[:3])


def test_sigterm_drains_the_log_queue(tmp_path: Path, fake_url: str, tuneloop_home: Path) -> None:
    config = write_config(tmp_path / "gateway.yaml", fake_url, logging=SLOW_COMMITS)
    gateway = GatewayProcess(config, tuneloop_home)
    try:
        send(gateway, 300)
        assert count_rows() == 0  # nothing committed yet
        assert gateway.terminate()
    finally:
        gateway.close()
    assert count_rows() == 300


def test_kill_9_in_durable_mode_loses_nothing(tmp_path: Path, fake_url: str, tuneloop_home: Path) -> None:
    journal = tmp_path / "journal"
    config = write_config(tmp_path / "gateway.yaml", fake_url, logging={**SLOW_COMMITS, "journal_dir": str(journal)})
    gateway = GatewayProcess(config, tuneloop_home, "--durable")
    try:
        send(gateway, 300)
        # Streams too: the closing [DONE] only goes out once the call is journaled.
        api = openai.OpenAI(base_url=gateway.base_url, api_key="x", max_retries=0)
        for index in range(5):
            stream = api.chat.completions.create(
                model="fake/m", messages=[{"role": "user", "content": f"stream {index}"}], stream=True
            )
            assert "".join(chunk.choices[0].delta.content or "" for chunk in stream if chunk.choices)
        gateway.kill()
    finally:
        gateway.close()
    assert count_rows() < 305  # the kill came before the commit: only the journal has them
    journaled = sum(len(path.read_bytes().splitlines()) for path in journal.glob("journal-*.jsonl"))
    assert journaled == 305

    restarted = GatewayProcess(config, tuneloop_home, "--durable")
    try:
        health = httpx.get(restarted.base_url.replace("/v1", "/healthz")).json()
        assert health["replayed_at_start"] == 305 and health["durable"]
        assert restarted.terminate()
    finally:
        restarted.close()
    logged = rows()
    assert len(logged) == 305 and len({row.capture_id for row in logged}) == 305
    streamed = [row for row in logged if row.request.get("stream")]
    assert len(streamed) == 5 and all(json.dumps(row.response).count("payoff_amount") == 1 for row in streamed)
    assert list(journal.glob("journal-*.jsonl")) == []


# --- the store going away under load (PostgreSQL) ------------------------------------------------------------

# Shorter than the 60 s: what is proved is the same once the writer's backoff has reached its 5 s cap
# (0.1 + 0.25 + 0.5 + 1 + 2 = 3.85 s of failures before it) and the queue has filled; 10 s covers both.
OUTAGE_S = 10.0
OUTAGE_LOGGING = {"queue_size": 200, "batch_size": 50, "flush_ms": 20}


class Outage:
    """Takes a PostgreSQL database away from its clients and gives it back, without touching the server:
    new connections are refused (ALLOW_CONNECTIONS false) and the open ones are terminated."""

    def __init__(self, admin_url: str, database_url: str) -> None:
        import sqlalchemy as sa

        self.admin = sa.create_engine(admin_url, isolation_level="AUTOCOMMIT")
        self.name = sa.make_url(database_url).database

    def begin(self) -> None:
        with self.admin.connect() as connection:
            connection.exec_driver_sql(f'ALTER DATABASE "{self.name}" ALLOW_CONNECTIONS false')
            connection.exec_driver_sql(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = %s AND pid <> pg_backend_pid()",
                (self.name,),
            )

    def end(self) -> None:
        with self.admin.connect() as connection:
            connection.exec_driver_sql(f'ALTER DATABASE "{self.name}" ALLOW_CONNECTIONS true')

    def close(self) -> None:
        self.end()
        self.admin.dispose()


@pytest.fixture
def outage(_postgres_admin_url: str, postgres_url: str) -> Iterator[Outage]:
    from tuneloop.store.db import resolve_url

    taken = Outage(resolve_url(_postgres_admin_url), postgres_url)
    yield taken
    taken.close()  # before the postgres_url fixture drops the database


def logged_contents(url: str) -> list[str]:
    import sqlalchemy as sa

    from tuneloop.store import RequestLog, session_scope

    with session_scope(url) as session:
        return [request["messages"][0]["content"] for request in session.scalars(sa.select(RequestLog.request))]


def health_of(gateway: GatewayProcess) -> tuple[int, dict]:
    reply = httpx.get(gateway.base_url.replace("/v1", "/healthz"), timeout=5)
    return reply.status_code, reply.json()


class Load:
    """``count`` calls at concurrency 16 in a thread (documents ``"{prefix} {i}"``), through run_load."""

    def __init__(self, gateway: GatewayProcess, prefix: str, count: int) -> None:
        self.prefix, self.count = prefix, count
        self.result = None
        self.elapsed = 0.0

        def run() -> None:
            started = time.monotonic()
            self.result = asyncio.run(
                run_load(
                    gateway.base_url + "/chat/completions",
                    lambda i: chat_body("fake/m", f"{prefix} {i}"),
                    total=count,
                    concurrency=16,
                    timeout_s=60,
                )
            )
            self.elapsed = time.monotonic() - started

        self.thread = threading.Thread(target=run, daemon=True)
        self.thread.start()

    def join(self, timeout: float = 90) -> LoadResult:
        self.thread.join(timeout)
        assert self.result is not None, "the load did not finish"
        return self.result

    def answered(self) -> set[str]:
        """Contents of the calls that got an HTTP answer (the others are in client_errors by index)."""
        assert self.result is not None
        failed = {int(error.split(":")[0].removeprefix("request ")) for error in self.result.client_errors}
        return {f"{self.prefix} {index}" for index in range(self.count) if index not in failed}


def watch_health(gateway: GatewayProcess, seconds: float) -> list[tuple[int, dict]]:
    seen, deadline = [], time.monotonic() + seconds
    while time.monotonic() < deadline:
        seen.append(health_of(gateway))
        time.sleep(0.5)
    return seen


def wait_healthy(gateway: GatewayProcess, timeout: float = 30) -> dict:
    deadline = time.monotonic() + timeout
    while True:
        status, body = health_of(gateway)
        if status == 200 or time.monotonic() > deadline:
            assert status == 200 and body["status"] == "ok", body
            return body
        time.sleep(0.2)


@pytest.mark.postgres
@pytest.mark.timeout(120)
@pytest.mark.parametrize("policy", ["block", "drop"])
def test_the_store_going_away_under_load(
    policy: str, tmp_path: Path, fake_url: str, tuneloop_home: Path, postgres_url: str, outage: Outage
) -> None:
    config = write_config(tmp_path / "gateway.yaml", fake_url, logging={**OUTAGE_LOGGING, "policy": policy})
    gateway = GatewayProcess(config, tuneloop_home, database_url=postgres_url)
    try:
        assert Load(gateway, "before", 300).join().statuses == {200: 300}
        # A call's row is queued just after its answer leaves: let the last ones reach the store before it goes.
        deadline = time.monotonic() + 30
        while len(logged_contents(postgres_url)) < 300 and time.monotonic() < deadline:
            time.sleep(0.1)
        outage.begin()
        during = Load(gateway, "during", 1000)
        seen = watch_health(gateway, OUTAGE_S)
        finished_during_outage = not during.thread.is_alive()
        outage.end()
        result = during.join()
        after = Load(gateway, "after", 300).join()
        health = wait_healthy(gateway)
        assert gateway.terminate(), gateway.output()
    finally:
        gateway.close()
    # Every call was answered, whatever became of its log row.
    assert result.statuses == {200: 1000} and not result.client_errors and after.statuses == {200: 300}
    # /healthz told a load balancer, with a 503, while the store was away, and says ok again once it is back.
    unhealthy = [body for status, body in seen if status == 503]
    assert unhealthy and {body["status"] for body in unhealthy} <= {"degraded", "failing"}
    assert any("failed" in (body["problem"] or "") for body in unhealthy), unhealthy[-1]
    logged = logged_contents(postgres_url)
    assert len(logged) == len(set(logged))  # none twice
    if policy == "block":
        # Backpressure: the calls waited for the store instead of losing their logs.
        assert not finished_during_outage and health["dropped"] == 0
        assert len(logged) == 1600
    else:
        # Clients never waited for the store; what did not fit in the queue was dropped, and counted.
        assert finished_during_outage
        assert health["dropped"] > 0 and len(logged) + health["dropped"] == 1600
        assert {f"before {i}" for i in range(300)} <= set(logged)


@pytest.mark.postgres
@pytest.mark.timeout(120)
def test_kill_9_while_the_store_is_away_loses_nothing_in_durable_mode(
    tmp_path: Path, fake_url: str, tuneloop_home: Path, postgres_url: str, outage: Outage
) -> None:
    journal = tmp_path / "journal"
    logging_section = {**OUTAGE_LOGGING, "journal_dir": str(journal)}
    config = write_config(tmp_path / "gateway.yaml", fake_url, logging=logging_section)
    gateway = GatewayProcess(config, tuneloop_home, "--durable", database_url=postgres_url)
    try:
        assert Load(gateway, "before", 200).join().statuses == {200: 200}
        outage.begin()
        during = Load(gateway, "during", 1000)
        time.sleep(OUTAGE_S / 2)
        gateway.kill()  # calls are in flight, the queue is full, the store is away
        result = during.join()
    finally:
        gateway.close()
    answered = during.answered()
    assert answered and result.statuses == {200: len(answered)}  # some answered, the rest cut by the kill
    outage.end()

    restarted = GatewayProcess(config, tuneloop_home, "--durable", database_url=postgres_url)
    try:
        health = wait_healthy(restarted)
        assert health["replayed_at_start"] >= len(answered)
        assert restarted.terminate()
    finally:
        restarted.close()
    logged = logged_contents(postgres_url)
    assert len(logged) == len(set(logged))  # a replay logs nothing twice
    assert {f"before {i}" for i in range(200)} | answered <= set(logged)  # every answered call is in the store
    assert list(journal.glob("journal-*.jsonl")) == []

"""`tuneloop gateway --workers N`: N processes on one port sharing a PostgreSQL store (SQLite refused), every
call logged once, /metrics summed over the workers, SIGTERM draining each worker; durable journals, one slot
per process, replayed after kill -9 whatever the number of workers at the next start."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest
from prometheus_client.parser import text_string_to_metric_families

from test_capture_support import REPO, GatewayProcess, rows, write_config
from tuneloop.capture.config import LoggingConfig
from tuneloop.capture.logwriter import Journal, LogWriter, StoreSink, journal_slot
from tuneloop.capture.records import CallRecord

pytest_plugins = ["test_capture_support"]  # the fake upstream fixtures

# Nothing is committed for a minute (or until shutdown): every call waits in its worker's queue, so /healthz
# shows which worker took it, and a shutdown has it all to drain.
HELD = {"batch_size": 100_000, "flush_ms": 60_000}


def tuneloop(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    command = [str(Path(sys.executable).parent / "tuneloop"), *args]
    return subprocess.run(command, env=env, capture_output=True, text=True, timeout=60, cwd=REPO)


def test_several_workers_on_sqlite_are_refused(tuneloop_home: Path, tmp_path: Path) -> None:
    env = {**os.environ, "TUNELOOP_HOME": str(tuneloop_home)}
    env.pop("TUNELOOP_DATABASE_URL", None)  # the SQLite file in the home
    config = write_config(tmp_path / "gateway.yaml", "http://127.0.0.1:9/v1")
    refused = tuneloop("gateway", "--config", str(config), "--workers", "2", env=env)
    assert refused.returncode == 2, refused.stderr
    message = " ".join(refused.stderr.split())
    assert "--workers: 2 workers cannot share the SQLite store sqlite:///" in message
    assert "SQLite lets one process write at a time" in message
    assert "fix: set TUNELOOP_DATABASE_URL to a PostgreSQL database" in message
    assert not (tuneloop_home / "tuneloop.db").exists()  # refused before anything was opened

    none = tuneloop("gateway", "--config", str(config), "--workers", "0", env=env)
    assert none.returncode == 2 and "--workers: 0 workers: the gateway needs at least one process" in none.stderr


# --- journal slots, in one process -----------------------------------------------------------------------


def call(index: int) -> CallRecord:
    messages = [{"role": "user", "content": f"doc {index}"}]
    return CallRecord(model_requested="fake/m", request={"model": "fake/m", "messages": messages}, status="ok")


def test_writers_on_one_journal_each_own_a_slot(tmp_path: Path) -> None:
    root = tmp_path / "journal"
    # A journal left by a process that died in slot 3 (its lock went with it).
    left = Journal.claim(root)
    running = [Journal.claim(root) for _ in range(2)]  # slots 1 and 2, held by processes still running
    dead = Journal.claim(root)
    assert [left.directory, dead.directory] == [root, journal_slot(root, 3)] == [root, root / "worker-3"]
    dead.append(call(0))
    dead.append(call(1))
    dead.release()
    left.release()

    config = LoggingConfig(durable=True, journal_dir=root, batch_size=100_000, flush_ms=60_000)
    first = LogWriter(StoreSink(), config, name="test-slot-a")
    second = LogWriter(StoreSink(), config, name="test-slot-b")
    # Each took the lowest free slot; the first found the dead one's journal and replayed it, under its lock.
    assert first.journal is not None and second.journal is not None
    assert (first.journal.directory, second.journal.directory) == (root, root / "worker-3")
    assert (first.replayed, second.replayed) == (2, 0)
    for index in range(2, 6):
        (first if index % 2 else second).submit_blocking(call(index))
    # Both write at once, each in its own slot: neither replays, nor deletes, what the other holds.
    assert len(Journal(root).read_existing()[0]) == 2 and len(Journal(root / "worker-3").read_existing()[0]) == 2
    running[0].release()  # slot 1's process stops: the next writer takes its slot
    third = LogWriter(StoreSink(), config, name="test-slot-c")
    assert third.journal is not None and third.journal.directory == root / "worker-1" and third.replayed == 0
    for writer in (first, second, third):
        writer.close()
    running[1].release()
    logged = [row.request["messages"][0]["content"] for row in rows()]
    assert sorted(logged) == [f"doc {index}" for index in range(6)]
    assert not list(root.rglob("journal-*.jsonl"))


# --- real workers on PostgreSQL --------------------------------------------------------------------------


def workers_health(gateway: GatewayProcess, count: int, timeout: float = 60.0) -> dict[int, dict[str, Any]]:
    """/healthz of each of ``count`` workers: asked on many fresh connections at once (the kernel hands each
    connection to one worker) until that many distinct pids answered."""

    async def ask() -> dict[int, dict[str, Any]]:
        seen: dict[int, dict[str, Any]] = {}
        deadline = time.monotonic() + timeout
        url = gateway.base_url.replace("/v1", "/healthz")
        while len(seen) < count and time.monotonic() < deadline:
            async with httpx.AsyncClient(limits=httpx.Limits(max_keepalive_connections=0), timeout=10) as client:
                replies = await asyncio.gather(*(client.get(url) for _ in range(16)), return_exceptions=True)
            for reply in replies:
                if isinstance(reply, httpx.Response) and reply.status_code == 200:
                    body = reply.json()
                    seen[body["pid"]] = body
        return seen

    seen = asyncio.run(ask())
    assert len(seen) == count, f"{len(seen)} of {count} workers answered: {sorted(seen)}; {gateway.output()}"
    return seen


def chat_through(gateway: GatewayProcess, prefix: str, count: int, streams: int = 0, clients: int = 16) -> None:
    """``count`` calls (``streams`` of them streamed) through the openai client, from ``clients`` threads,
    each with its own client (connection): documents ``"{prefix} {i}"``."""

    def send(indexes: range) -> None:
        client = openai.OpenAI(base_url=gateway.base_url, api_key="unused", max_retries=0)  # a retry logs twice
        # Connections opened one after another, not in one burst a single worker could accept whole.
        time.sleep(0.02 * indexes.start)
        for index in indexes:
            messages = [{"role": "user", "content": f"{prefix} {index}"}]
            if index < streams:
                stream = client.chat.completions.create(model="fake/m", messages=messages, stream=True)
                assert "".join(chunk.choices[0].delta.content or "" for chunk in stream if chunk.choices)
            else:
                answer = client.chat.completions.create(model="fake/m", messages=messages)
                assert answer.choices[0].message.content
        client.close()

    with ThreadPoolExecutor(clients) as pool:
        list(pool.map(send, [range(start, count, clients) for start in range(clients)]))


def logged_contents() -> list[str]:
    return [row.request["messages"][0]["content"] for row in rows()]


def metric_total(gateway: GatewayProcess, name: str) -> float:
    text = httpx.get(gateway.base_url.replace("/v1", "/metrics"), timeout=10).text
    return sum(
        sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
        if sample.name == name
    )


def terminate(gateway: GatewayProcess) -> int:
    gateway.process.send_signal(signal.SIGTERM)
    return gateway.process.wait(90)


@pytest.mark.postgres
@pytest.mark.timeout(240)
def test_two_workers_share_the_port_and_the_store(
    tmp_path: Path, fake_url: str, tuneloop_home: Path, postgres_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("TUNELOOP_DATABASE_URL", postgres_url)  # rows() reads the workers' store
    monkeypatch.setenv("TMPDIR", str(tmp_path))  # the supervisor's run directory, left behind by a kill
    config = write_config(tmp_path / "gateway.yaml", fake_url, logging=HELD)
    gateway = GatewayProcess(config, tuneloop_home, "--workers", "2", database_url=postgres_url)
    try:
        workers_health(gateway, 2)  # both started (the first answers while the second is still starting)
        chat_through(gateway, "doc", 200, streams=10)
        # Every call waits in exactly one worker's queue (a stream's once its last byte is out), both took some.
        deadline = time.monotonic() + 10
        while True:
            health = workers_health(gateway, 2)
            depths = {pid: body["log_queue_depth"] for pid, body in health.items()}
            if sum(depths.values()) == 200 or time.monotonic() > deadline:
                break
        assert sum(depths.values()) == 200 and all(depths.values()), depths
        assert {body["logged"] for body in health.values()} == {0}  # nothing committed yet: the drain will
        # /metrics, from whichever worker the scrape reaches, counts every worker's calls.
        assert metric_total(gateway, "tuneloop_gateway_requests_total") == 200
        assert terminate(gateway) == 0, gateway.output()
    finally:
        gateway.close()
    logged = logged_contents()
    assert len(logged) == 200 and set(logged) == {f"doc {index}" for index in range(200)}  # each exactly once


@pytest.mark.postgres
@pytest.mark.timeout(300)
def test_durable_workers_lose_nothing_to_kill_9(
    tmp_path: Path, fake_url: str, tuneloop_home: Path, postgres_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("TUNELOOP_DATABASE_URL", postgres_url)
    monkeypatch.setenv("TMPDIR", str(tmp_path))
    journal = tmp_path / "journal"
    config = write_config(tmp_path / "gateway.yaml", fake_url, logging={**HELD, "journal_dir": str(journal)})
    gateway = GatewayProcess(config, tuneloop_home, "--workers", "2", "--durable", database_url=postgres_url)
    try:
        workers_health(gateway, 2)
        chat_through(gateway, "first", 80)
        before = workers_health(gateway, 2)
        assert {body["durable"] for body in before.values()} == {True}
        # One worker dies: uvicorn's supervisor starts another, which takes the free slot and replays it.
        victim = max(before, key=lambda pid: before[pid]["log_queue_depth"])
        os.kill(victim, signal.SIGKILL)
        deadline = time.monotonic() + 60
        replacement: dict[str, Any] = {}
        while not replacement and time.monotonic() < deadline:
            now = workers_health(gateway, 2)
            replacement = next((body for pid, body in now.items() if pid not in before), {})
        assert replacement["replayed_at_start"] == before[victim]["log_queue_depth"] > 0
        chat_through(gateway, "second", 80)
        # Then the whole gateway: the supervisor held still (no restarts), both workers killed, then it.
        workers = workers_health(gateway, 2)
        os.kill(gateway.process.pid, signal.SIGSTOP)
        for pid in workers:
            os.kill(pid, signal.SIGKILL)
        gateway.kill()
    finally:
        gateway.close()
    # Each worker journaled in its own slot, the directory itself or worker-1; the replayed calls are in the store.
    journaled = {slot.name: len(Journal(slot).read_existing()[0]) for slot in (journal, journal / "worker-1")}
    replayed = before[victim]["log_queue_depth"]
    assert sum(journaled.values()) == 160 - replayed and all(journaled.values()), journaled
    assert len(logged_contents()) == replayed

    # One worker now: it replays its own slot, and the other, which no process holds.
    restarted = GatewayProcess(config, tuneloop_home, "--durable", database_url=postgres_url)
    try:
        [health] = workers_health(restarted, 1).values()
        assert health["replayed_at_start"] == sum(journaled.values())
        assert terminate(restarted) in (0, -signal.SIGTERM), restarted.output()  # one process re-raises SIGTERM
    finally:
        restarted.close()
    logged = logged_contents()
    sent = {f"first {index}" for index in range(80)} | {f"second {index}" for index in range(80)}
    assert len(logged) == 160 and set(logged) == sent
    assert not list(journal.rglob("journal-*.jsonl"))

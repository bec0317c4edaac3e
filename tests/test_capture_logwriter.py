"""The log writer: batches, bounded memory, block/drop policies, a failing store, the durable journal."""

from __future__ import annotations

import asyncio
import json
import threading
import time
from pathlib import Path

import pytest

from test_capture_support import count_rows, rows
from tuneloop.capture.config import LoggingConfig
from tuneloop.capture.logwriter import Journal, LogWriter, StoreSink
from tuneloop.capture.records import CallRecord

USAGE = {"prompt_tokens": 3, "completion_tokens": 2}


def record(index: int = 0) -> CallRecord:
    body = json.dumps(
        {"id": "x", "object": "chat.completion", "created": 1, "model": "m", "choices": [], "usage": USAGE}
    ).encode()
    return CallRecord(
        model_requested=f"fake/m{index}",
        request={"model": f"fake/m{index}", "messages": [{"role": "user", "content": str(index)}]},
        status="ok",
        http_status=200,
        upstream="fake",
        upstream_model=f"m{index}",
        response_body=body,
    )


class SlowSink:
    """Wraps the store sink; each batch waits until released (a store that is slow or down)."""

    def __init__(self, fail_times: int = 0) -> None:
        self.inner = StoreSink()
        self.release = threading.Event()
        self.batches: list[int] = []
        self.fail_times = fail_times

    def write(self, records: list[CallRecord]) -> None:
        self.release.wait(30)
        if self.fail_times > 0:
            self.fail_times -= 1
            raise RuntimeError("database is locked")
        self.batches.append(len(records))
        self.inner.write(records)

    def close(self) -> None:
        pass


def test_records_are_written_in_batches() -> None:
    sink = SlowSink()
    sink.release.set()
    writer = LogWriter(sink, LoggingConfig(batch_size=64, flush_ms=20), name="test-batches")
    for index in range(300):
        assert writer.submit_blocking(record(index))
    assert writer.flush(10)
    writer.close()
    assert count_rows() == 300 and writer.written == 300
    assert max(sink.batches) <= 64 and len(sink.batches) < 300  # batched, never above the batch size
    row = rows()[0]
    assert (row.prompt_tokens, row.completion_tokens, row.model_resolved) == (3, 2, "fake/m")


def test_drop_policy_bounds_memory_and_counts_what_it_drops() -> None:
    sink = SlowSink()
    writer = LogWriter(sink, LoggingConfig(queue_size=10, batch_size=5, flush_ms=5, policy="drop"), name="test-drop")

    async def produce() -> float:
        started = time.perf_counter()
        for index in range(200):
            await writer.submit(record(index))
        return time.perf_counter() - started

    took = asyncio.run(produce())
    assert took < 1.0  # a stuck store never slows the caller down
    assert writer.depth <= 10  # bounded: the queue never holds more than queue_size
    sink.release.set()
    writer.close()
    assert writer.dropped > 0
    assert writer.written + writer.dropped == 200 and count_rows() == writer.written


def test_block_policy_waits_for_room_and_loses_nothing() -> None:
    sink = SlowSink()
    writer = LogWriter(sink, LoggingConfig(queue_size=5, batch_size=5, flush_ms=5), name="test-block")
    finished = threading.Event()

    async def produce() -> None:
        for index in range(40):
            await writer.submit(record(index))
        finished.set()

    producer = threading.Thread(target=lambda: asyncio.run(produce()))
    producer.start()
    time.sleep(0.3)
    assert not finished.is_set() and writer.depth <= 5  # backpressure: the producer waits
    sink.release.set()
    producer.join(10)
    writer.close()
    assert finished.is_set() and writer.dropped == 0 and count_rows() == 40


def test_a_failing_store_is_retried_until_it_works() -> None:
    sink = SlowSink(fail_times=2)
    sink.release.set()
    writer = LogWriter(sink, LoggingConfig(batch_size=100, flush_ms=5), name="test-retry")
    for index in range(10):
        writer.submit_blocking(record(index))
    assert writer.flush(10)
    writer.close()
    assert count_rows() == 10 and writer.lost == 0


def test_close_drains_the_queue() -> None:
    sink = SlowSink()
    writer = LogWriter(sink, LoggingConfig(batch_size=7, flush_ms=1000), name="test-drain")
    for index in range(50):
        writer.submit_blocking(record(index))
    sink.release.set()
    writer.close()
    assert count_rows() == 50


def test_durable_journal_is_replayed_once_after_a_crash(tmp_path: Path) -> None:
    journal_dir = tmp_path / "journal"
    config = LoggingConfig(durable=True, journal_dir=journal_dir, batch_size=10, flush_ms=5)
    # A process whose store never answers, then "dies": no close(), nothing drained.
    stuck = SlowSink()
    crashed = LogWriter(stuck, config, name="test-durable-a")
    journaled = [record(index) for index in range(25)]
    for item in journaled:
        crashed.submit_blocking(item)
    assert count_rows() == 0
    # Some reached the store just before the crash, before the journal was trimmed.
    StoreSink().write(journaled[:10])
    # A process's death releases its journal slot's lock (the kernel does); this "dead" writer lives on here.
    crashed.journal.release()

    restarted = LogWriter(StoreSink(), config, name="test-durable-b")
    assert restarted.replayed == 25
    restarted.close()
    logged = rows()
    assert sorted(row.capture_id for row in logged) == sorted(item.capture_id for item in journaled)  # once each
    assert list(journal_dir.glob("journal-*.jsonl")) == []  # replayed segments are removed
    stuck.release.set()


def test_journal_segments_are_deleted_once_committed(tmp_path: Path) -> None:
    journal = Journal(tmp_path)
    records = [record(i) for i in range(3)]
    for item in records:
        journal.append(item)
    journal._rotate()  # a new segment starts; the old one holds three uncommitted records
    journal.append(record(3))
    assert len(journal.segments()) == 2
    journal.committed(records[:2])
    assert len(journal.segments()) == 2
    journal.committed(records[2:])
    assert len(journal.segments()) == 1
    journal.close()


def test_a_torn_last_journal_line_is_skipped(tmp_path: Path) -> None:
    journal = Journal(tmp_path)
    journal.append(record(1))
    journal.close()  # the record was never committed, so its segment stays
    [(_, path)] = Journal(tmp_path).segments()
    with path.open("ab") as handle:
        handle.write(b'{"model_requested": "cut of')  # the process died inside write()
    found, _ = Journal(tmp_path).read_existing()
    assert len(found) == 1


@pytest.mark.parametrize("policy", ["block", "drop"])
def test_sync_callers_follow_the_policy(policy: str) -> None:
    sink = SlowSink()
    writer = LogWriter(
        sink, LoggingConfig(queue_size=2, batch_size=1, flush_ms=5, policy=policy), name=f"test-sync-{policy}"
    )
    results = [writer.submit_blocking(record(i), timeout=0.2) for i in range(6)]
    sink.release.set()
    writer.close()
    assert writer.written + writer.dropped == 6
    assert results.count(False) == writer.dropped


@pytest.fixture(params=["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)])
def store_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'store.db'}"
    return request.getfixturevalue("postgres_url")


def test_the_store_sink_writes_every_column_and_skips_a_replayed_call(store_url: str) -> None:
    import sqlalchemy as sa

    from tuneloop.store import RequestLog, session_scope

    full = record(1)
    full.tags, full.metadata = ["task=t", "nightly"], {"task": "t", "env": "prod"}
    full.request["messages"][0]["content"] = 'Grüße, ünïcode and a "quote"'
    full.latency_ms, full.overhead_ms, full.attempts = 12.5, 0.25, [{"upstream": "fake", "outcome": "ok"}]
    failed = CallRecord(model_requested="fake/x", request={"model": "fake/x"}, status="error", error="boom")
    sink = StoreSink(store_url)
    sink.write([full, failed])
    sink.write([full])  # a journal replay: the same capture_id is not logged twice

    with session_scope(store_url) as session:
        stored = list(session.scalars(sa.select(RequestLog).order_by(RequestLog.id)))
        assert len(stored) == 2
        first, second = stored
        assert first.capture_id == full.capture_id
        assert first.created_at == full.created_at  # time zone and microseconds kept
        assert first.request == full.request
        assert first.response["usage"] == USAGE
        assert (first.prompt_tokens, first.completion_tokens) == (3, 2)
        assert first.tags == ["task=t", "nightly"] and first.metadata_ == {"task": "t", "env": "prod"}
        assert first.task == "t" and first.model_resolved == "fake/m"
        assert (first.latency_ms, first.overhead_ms) == (12.5, 0.25)
        assert first.attempts == [{"upstream": "fake", "outcome": "ok"}]
        assert (second.status, second.error, second.response, second.upstream) == ("error", "boom", None, None)
        # Filters on the logged time see rows written this way (same stored format as the ORM's).
        assert session.scalar(sa.select(sa.func.count()).where(RequestLog.created_at >= full.created_at)) == 2

"""The log writer: captured calls go to the store off the request path, in batches, in bounded memory.

Callers hand over a :class:`CallRecord` (``await writer.submit(record)`` from async code,
``writer.submit_blocking(record)`` from threads). A background thread takes records from a bounded
queue and commits them in batches (``batch_size`` rows, or whatever arrived within ``flush_ms``).

When the store is slower than the traffic the queue fills, and the policy decides:

- ``block`` (default): the caller waits for room. Nothing is lost; clients see the store's slowness
  as latency (backpressure).
- ``drop``: the record is dropped and counted (``tuneloop_capture_records_total{outcome="dropped"}``);
  clients are never slowed by logging.

Memory is bounded either way: at most ``queue_size`` records wait, plus the batch being written. A
failing store is retried with backoff, holding the batch, so the queue fills and the policy applies.

``close()`` (on SIGTERM the gateway calls it) stops taking records and drains the queue.

Durable mode (``durable: true``) appends each record to a local journal before the call is answered
(see :class:`Journal`), and replays what the store lacks at start: a process killed with ``kill -9``
loses no call whose response was completed. Rows carry a unique ``capture_id``, so a replay never
logs a call twice.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import queue
import threading
import time
from collections.abc import Iterable
from pathlib import Path
from typing import Any, Protocol

import sqlalchemy as sa
from prometheus_client import Counter, Gauge, Histogram

from tuneloop.capture.config import LoggingConfig
from tuneloop.capture.records import CallRecord, record_to_row
from tuneloop.capture.redaction import Redactor
from tuneloop.cost import PriceTable

log = logging.getLogger(__name__)

RECORDS = Counter(
    "tuneloop_capture_records_total",
    "Captured calls by what became of them: written to the store, dropped (queue full, policy drop), "
    "or lost (the store failed past shutdown)",
    ["writer", "outcome"],
)
QUEUE_DEPTH = Gauge("tuneloop_capture_queue_depth", "Captured calls waiting to be written", ["writer"])
COMMIT_SECONDS = Histogram(
    "tuneloop_capture_commit_seconds",
    "Time to write one batch to the store",
    ["writer"],
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5),
)

RETRY_BACKOFF_S = (0.1, 0.25, 0.5, 1.0, 2.0, 5.0)
JOURNAL_SEGMENT_BYTES = 16 * 1024 * 1024


class Sink(Protocol):
    """Where batches go: the store, or a gateway's ingest endpoint."""

    def write(self, records: list[CallRecord]) -> None: ...

    def close(self) -> None: ...


class StoreSink:
    """Inserts records as ``requests`` rows; a ``capture_id`` already present is skipped (replays).

    The INSERT is compiled once for the store's dialect and each batch goes to the driver as one
    ``executemany``, with each column's own bind processor applied in a single pass: SQLAlchemy's generic
    per-row parameter handling is time the gateway's request path waits for the GIL.
    """

    def __init__(
        self, url: str | None = None, prices: PriceTable | None = None, redactor: Redactor | None = None
    ) -> None:
        from tuneloop.store import RequestLog, ensure_schema, get_engine

        ensure_schema(url)
        self.engine = get_engine(url)
        self.table = RequestLog.__table__
        self.prices, self.redactor = prices, redactor
        dialect = self.engine.dialect
        if dialect.name == "postgresql":
            from sqlalchemy.dialects.postgresql import insert
        else:
            from sqlalchemy.dialects.sqlite import insert
        columns = [column for column in self.table.columns if column.name != "id"]
        statement = insert(self.table).values({column.name: sa.bindparam(column.name) for column in columns})
        compiled = statement.on_conflict_do_nothing(index_elements=["capture_id"]).compile(dialect=dialect)
        self.sql = str(compiled)
        # Positional dialects (SQLite's qmark) take tuples in placeholder order, named ones (psycopg) dicts.
        self.positional = bool(compiled.positional)
        names = list(compiled.positiontup or []) if self.positional else [column.name for column in columns]
        processors = {column.name: column.type.dialect_impl(dialect).bind_processor(dialect) for column in columns}
        self.plan = [(name, processors[name]) for name in names]

    def rows(self, records: Iterable[CallRecord]) -> list[dict[str, Any]]:
        rows = []
        for record in records:
            try:
                rows.append(record_to_row(record, self.prices, self.redactor))
            except Exception as exc:  # a record we cannot read is still a call: keep what we can
                log.exception("could not convert a captured call; storing it without its response")
                rows.append(_fallback_row(record, exc))
        return rows

    def parameters(self, rows: list[dict[str, Any]]) -> list[Any]:
        """Driver parameters for ``rows``: every column bound (absent ones as NULL), as the store's types
        would bind them."""
        plan = self.plan
        values = [
            tuple([row.get(name) if processor is None else processor(row.get(name)) for name, processor in plan])
            for row in rows
        ]
        if self.positional:
            return values
        names = [name for name, _ in plan]
        return [dict(zip(names, row, strict=True)) for row in values]

    def write(self, records: list[CallRecord]) -> None:
        parameters = self.parameters(self.rows(records))
        with self.engine.begin() as connection:
            connection.exec_driver_sql(self.sql, parameters)

    def close(self) -> None:
        pass


def _fallback_row(record: CallRecord, exc: Exception) -> dict[str, Any]:
    return {
        "capture_id": record.capture_id,
        "created_at": record.created_at,
        "model_requested": record.model_requested[:255],
        "status": "error" if record.status != "ok" else "ok",
        "http_status": record.http_status,
        "error": f"tuneloop could not read the response for the log: {exc}",
        "request": {"unreadable": True},
        "tags": record.tags,
        "metadata": record.metadata,
    }


class Journal:
    """An append-only local file of records, so a killed process loses nothing it acknowledged.

    Guarantee: :meth:`append` returns after ``write(2)`` of the whole line to the journal file. From then
    on the record survives the process being killed (``kill -9``, OOM killer, a crash): it is in the
    kernel's page cache, and the next start replays it into the store. Against the machine losing power
    or the kernel crashing, records are safe once fsync'd: with ``fsync: batch`` the writer thread calls
    ``fsync`` every ``flush_ms`` (so up to that much may be lost), with ``fsync: always`` every append
    is fsync'd before it returns (safe, slower).

    The journal is cut into segments (``journal-<n>.jsonl``); a segment is deleted once every record in
    it is in the store.
    """

    def __init__(self, directory: Path, fsync_always: bool = False) -> None:
        self.directory = directory
        self.directory.mkdir(parents=True, exist_ok=True)
        self.fsync_always = fsync_always
        self._lock = threading.Lock()
        self._pending: dict[int, int] = {}  # segment -> records not yet in the store
        self._segment = -1
        self._fd = -1
        self._size = 0
        self._dirty = False
        existing = self.segments()
        self._next_segment = (existing[-1][0] + 1) if existing else 0

    def segments(self) -> list[tuple[int, Path]]:
        found = []
        for path in self.directory.glob("journal-*.jsonl"):
            with contextlib.suppress(ValueError):
                found.append((int(path.stem.removeprefix("journal-")), path))
        return sorted(found)

    def read_existing(self) -> tuple[list[CallRecord], list[Path]]:
        """Records in the segments left by an earlier process (called before the first append)."""
        records: list[CallRecord] = []
        paths = []
        for _, path in self.segments():
            paths.append(path)
            lines = path.read_bytes().split(b"\n")
            for number, line in enumerate(lines, start=1):
                if not line.strip():
                    continue
                try:
                    records.append(CallRecord.from_json(json.loads(line)))
                except (ValueError, KeyError, TypeError) as exc:
                    # Only the last line can be torn (the process died inside write); anything else is damage.
                    level = logging.WARNING if number >= len(lines) - 1 else logging.ERROR
                    log.log(level, "skipping unreadable journal line %s:%d (%s)", path, number, exc)
        return records, paths

    def append(self, record: CallRecord) -> None:
        line = json.dumps(record.to_json(), ensure_ascii=False, separators=(",", ":")).encode("utf-8") + b"\n"
        with self._lock:
            if self._fd < 0 or self._size >= JOURNAL_SEGMENT_BYTES:
                self._rotate()
            _write_all(self._fd, line)
            self._size += len(line)
            self._pending[self._segment] = self._pending.get(self._segment, 0) + 1
            record.journal_segment = self._segment
            if self.fsync_always:
                os.fsync(self._fd)
            else:
                self._dirty = True

    def _rotate(self) -> None:
        if self._fd >= 0:
            os.fsync(self._fd)
            os.close(self._fd)
        self._segment = self._next_segment
        self._next_segment += 1
        path = self.directory / f"journal-{self._segment:012d}.jsonl"
        self._fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
        self._size = 0
        self._pending.setdefault(self._segment, 0)
        _fsync_directory(self.directory)  # the new file's name must survive a power loss too

    def sync(self) -> None:
        with self._lock:
            if self._dirty and self._fd >= 0:
                os.fsync(self._fd)
                self._dirty = False

    def committed(self, records: Iterable[CallRecord]) -> None:
        """These records are in the store: delete segments that hold nothing else."""
        with self._lock:
            for record in records:
                if record.journal_segment is not None and record.journal_segment in self._pending:
                    self._pending[record.journal_segment] -= 1
            for segment, count in list(self._pending.items()):
                if count <= 0 and segment != self._segment:
                    del self._pending[segment]
                    (self.directory / f"journal-{segment:012d}.jsonl").unlink(missing_ok=True)

    def close(self) -> None:
        with self._lock:
            if self._fd >= 0:
                os.fsync(self._fd)
                os.close(self._fd)
                self._fd = -1
            if self._pending.get(self._segment, 0) <= 0:
                self._pending.pop(self._segment, None)
                (self.directory / f"journal-{self._segment:012d}.jsonl").unlink(missing_ok=True)


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        written = os.write(fd, view)
        view = view[written:]


def _fsync_directory(directory: Path) -> None:
    with contextlib.suppress(OSError):  # not every platform can open a directory
        fd = os.open(directory, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


class LogWriter:
    """A bounded queue of records, drained into a :class:`Sink` by one background thread."""

    def __init__(self, sink: Sink, config: LoggingConfig | None = None, name: str = "gateway") -> None:
        self.sink = sink
        self.config = config or LoggingConfig()
        self.name = name
        self._queue: queue.Queue[CallRecord] = queue.Queue(maxsize=self.config.queue_size)
        self._stopping = threading.Event()
        self._closed = False
        self.journal: Journal | None = None
        self.written = 0
        self.dropped = 0
        self.lost = 0
        self.replayed = 0
        self._written_counter = RECORDS.labels(name, "written")
        self._dropped_counter = RECORDS.labels(name, "dropped")
        self._lost_counter = RECORDS.labels(name, "lost")
        self._depth = QUEUE_DEPTH.labels(name)
        self._commit_seconds = COMMIT_SECONDS.labels(name)
        if self.config.durable:
            self.journal = Journal(self.config.journal_path(), fsync_always=self.config.fsync == "always")
            self._replay()
        self._thread = threading.Thread(target=self._run, name=f"tuneloop-log-writer-{name}", daemon=True)
        self._thread.start()

    # --- producers -------------------------------------------------------------------------------

    def _journal(self, record: CallRecord) -> None:
        if self.journal is not None:
            self.journal.append(record)

    def submit_nowait(self, record: CallRecord) -> bool:
        """Queue without waiting: True if queued (or journaled), False if the queue is full."""
        self._journal(record)
        return self._offer(record)

    def _offer(self, record: CallRecord) -> bool:
        try:
            self._queue.put_nowait(record)
            return True
        except queue.Full:
            return False

    async def submit(self, record: CallRecord) -> None:
        """Hand a record over from async code; never blocks the event loop.

        ``block``: waits (asynchronously) for room. ``drop``: drops it and counts it when the queue is full.
        """
        self._journal(record)
        if self._offer(record):
            return
        if self.config.policy == "drop" and self.journal is None:
            self._count_dropped()
            return
        delay = 0.0005
        while not self._offer(record):
            if self._closed and not self._thread.is_alive():
                self._count_lost(1)
                return
            await asyncio.sleep(delay)
            delay = min(delay * 2, 0.02)

    def submit_blocking(self, record: CallRecord, timeout: float | None = None) -> bool:
        """Hand a record over from a thread. With ``block`` waits up to ``timeout`` (None: as long as it takes)."""
        self._journal(record)
        if self._offer(record):
            return True
        if self.config.policy == "drop" and self.journal is None:
            self._count_dropped()
            return False
        try:
            self._queue.put(record, timeout=timeout)
            return True
        except queue.Full:
            self._count_dropped()
            return False

    def _count_dropped(self) -> None:
        self.dropped += 1
        self._dropped_counter.inc()

    def _count_lost(self, count: int) -> None:
        self.lost += count
        self._lost_counter.inc(count)

    @property
    def depth(self) -> int:
        return self._queue.qsize()

    # --- the writer thread -----------------------------------------------------------------------

    def _replay(self) -> None:
        """Write what an earlier process journaled; duplicates of rows already stored are skipped."""
        assert self.journal is not None
        records, paths = self.journal.read_existing()
        batch_size = self.config.batch_size
        for start in range(0, len(records), batch_size):
            self._write_batch(records[start : start + batch_size], at_shutdown_give_up=False)
        self.replayed = len(records)
        for path in paths:
            path.unlink(missing_ok=True)
        if records:
            log.warning("replayed %d journaled calls into the store", len(records))

    def _run(self) -> None:
        flush_s = self.config.flush_ms / 1000
        while True:
            batch = self._next_batch(flush_s)
            if self.journal is not None:
                self.journal.sync()  # batched fsync: at most one flush interval is unsynced
            if batch:
                self._write_with_retry(batch)
            self._depth.set(self._queue.qsize())
            if self._stopping.is_set() and self._queue.empty():
                return

    def _next_batch(self, flush_s: float) -> list[CallRecord]:
        # Sleep a flush interval unless a full batch is waiting, then take what is there. The thread never
        # blocks on the queue itself: a wake-up per record would cost the request path a GIL hand-off each.
        if self._queue.qsize() < self.config.batch_size:
            self._stopping.wait(flush_s)
        batch: list[CallRecord] = []
        while len(batch) < self.config.batch_size:
            try:
                batch.append(self._queue.get_nowait())
            except queue.Empty:
                break
        return batch

    def _write_with_retry(self, batch: list[CallRecord]) -> None:
        """Write a batch taken from the queue, retrying a failing store with backoff (until shutdown's deadline)."""
        try:
            self._write_batch(batch, at_shutdown_give_up=True)
        finally:
            for _ in batch:  # lets flush() know these are done with
                self._queue.task_done()

    def _write_batch(self, batch: list[CallRecord], at_shutdown_give_up: bool) -> None:
        attempt = 0
        while True:
            deadline = self._drain_deadline if at_shutdown_give_up and self._stopping.is_set() else None
            started = time.perf_counter()
            try:
                self.sink.write(batch)
            except Exception as exc:
                wait = RETRY_BACKOFF_S[min(attempt, len(RETRY_BACKOFF_S) - 1)]
                attempt += 1
                if deadline is not None and time.monotonic() + wait > deadline:
                    kept = " (they stay in the journal for the next start)" if self.journal is not None else ""
                    log.error("giving up on %d captured calls at shutdown: %s%s", len(batch), exc, kept)
                    if self.journal is None:
                        self._count_lost(len(batch))
                    return
                log.warning("writing %d captured calls failed (%s); retrying in %.2fs", len(batch), exc, wait)
                if at_shutdown_give_up and deadline is None:
                    self._stopping.wait(wait)  # a shutdown cuts the wait short and sets the deadline
                else:
                    time.sleep(wait)
                continue
            self._commit_seconds.observe(time.perf_counter() - started)
            self.written += len(batch)
            self._written_counter.inc(len(batch))
            if self.journal is not None:
                self.journal.committed(batch)
            return

    # --- shutdown --------------------------------------------------------------------------------

    _drain_deadline: float | None = None

    def close(self, timeout: float = 30.0) -> None:
        """Stop taking records (callers' ``submit`` still enqueue until now) and drain the queue.

        Waits up to ``timeout`` seconds; in durable mode whatever is left stays in the journal.
        """
        if self._closed:
            return
        self._closed = True
        self._drain_deadline = time.monotonic() + timeout
        self._stopping.set()
        self._thread.join(timeout + 1)
        left = self._queue.qsize()
        if left and self.journal is None:
            log.error("%d captured calls were not written before shutdown", left)
            self._count_lost(left)
        if self.journal is not None:
            self.journal.close()
        self.sink.close()

    def flush(self, timeout: float = 10.0) -> bool:
        """Wait until everything queued so far is written (tests, CLI tools). True if it was."""
        deadline = time.monotonic() + timeout
        while self._queue.unfinished_tasks:
            if time.monotonic() >= deadline or not self._thread.is_alive():
                return False
            time.sleep(0.005)
        return True

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
store that is down (connection refused or lost, database unavailable) is retried with backoff, holding the
batch, so the queue fills and the policy applies. A store that refuses rows (integrity or data errors) is
not down: the batch is split in halves until the refused records are alone, and those go to the dead
letters (the ``dead_letters`` table, or ``$TUNELOOP_HOME/capture/dead-letters.jsonl`` when the table cannot
take them either), counted as ``tuneloop_capture_records_total{outcome="dead_letter"}``; the rest are written.
:meth:`LogWriter.health` says when the writer is stuck or failing (the gateway's ``/healthz``).

``close()`` (on SIGTERM the gateway calls it) stops taking records and drains the queue.

Durable mode (``durable: true``) appends each record to a local journal before the call is answered
(see :class:`Journal`), and replays what the store lacks at start: a process killed with ``kill -9``
loses no call whose response was completed. Rows carry a unique ``capture_id``, so a replay never
logs a call twice. A journaled record the store refuses, or a damaged journal line, becomes a dead letter:
it can never block a start.

Several processes on one journal directory (``tuneloop gateway --workers N``, or two gateways with the same
``journal_dir``) each own a *slot* of it: slot 0 is the directory itself (where a lone gateway has always
written), slot k the subdirectory ``worker-k``. A process holds an exclusive ``flock`` on its slot's
``.lock`` for as long as it runs and takes the lowest slot no one holds (:meth:`Journal.claim`), so no two
processes ever append to, replay or delete the same segments. The kernel drops a lock when its process dies,
``kill -9`` included, so a dead process's slot is free again: at its start a writer replays its own slot
(what the slot's last holder left) and then every other slot that holds segments and no lock
(:meth:`Journal.orphans`), each under that slot's lock. Slots go by lock, not by pid (a dead worker's pid is
never seen again, and pids are reused) nor by uvicorn's worker order (a worker does not know it, and a
replacement does not inherit it): whatever the number of workers at the next start, every journal left by
a process that died is replayed by the first writer that starts after it.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import json
import logging
import os
import queue
import threading
import time
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any, Protocol

import sqlalchemy as sa
from prometheus_client import Counter, Gauge, Histogram

from tuneloop.capture.config import LoggingConfig
from tuneloop.capture.dead_letters import DeadLetterEntry, dead_letter_file, describe_error, record_text
from tuneloop.capture.records import CallRecord, record_to_row, redacted_record, storable_row
from tuneloop.capture.redaction import Redactor
from tuneloop.cost import PriceTable
from tuneloop.errors import TuneloopError
from tuneloop.store.models import utcnow

log = logging.getLogger(__name__)

RECORDS = Counter(
    "tuneloop_capture_records_total",
    "Captured calls by what became of them: written to the store, dropped (queue full, policy drop), "
    "dead_letter (refused by the store, kept aside) or lost (the store failed past shutdown)",
    ["writer", "outcome"],
)
# With several gateway workers (prometheus_client's multiprocess mode) a scrape shows the sum over the live ones.
QUEUE_DEPTH = Gauge(
    "tuneloop_capture_queue_depth", "Captured calls waiting to be written", ["writer"], multiprocess_mode="livesum"
)
COMMIT_SECONDS = Histogram(
    "tuneloop_capture_commit_seconds",
    "Time to write one batch to the store",
    ["writer"],
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5),
)

RETRY_BACKOFF_S = (0.1, 0.25, 0.5, 1.0, 2.0, 5.0)
JOURNAL_SEGMENT_BYTES = 16 * 1024 * 1024
JOURNAL_LOCK = ".lock"  # in each journal slot; held (flock) by the process that writes there
MAX_JOURNAL_SLOTS = 4096
# Health (LogWriter.health): a batch waiting this long to be written, or a store failing for this long, is
# "degraded", then "failing"; a queue this full is "degraded" (calls are about to wait, or be dropped).
DEGRADED_AFTER_S = 5.0
FAILING_AFTER_S = 30.0
QUEUE_DEGRADED_FRACTION = 0.8

# SQLSTATE classes of a store that is unavailable rather than refusing a row: connection exceptions (08),
# insufficient resources (53), operator intervention (57: shutdown, cancelled), system errors (58), and
# transaction rollbacks (40: serialization failures, deadlocks), which succeed when tried again.
TRANSIENT_SQLSTATE_CLASSES = frozenset({"08", "40", "53", "57", "58"})
# Raised by our own conversion of a record into a row (a value of the wrong type, out of range, unencodable).
ROW_ERRORS = (ValueError, TypeError, OverflowError, KeyError, AttributeError, RecursionError)


class RecordsRefused(Exception):
    """Raised by a sink when it will never take these records (not when it is down): they become dead letters."""


def is_refusal(exc: BaseException) -> bool:
    """True when ``exc`` says the store refuses these rows (retrying the same rows fails the same way); False
    when the store is unavailable (connection lost, database down, locked), which retrying fixes.

    Anything unknown counts as unavailable: retrying a refusal only delays, dead-lettering a good batch would
    set calls aside for nothing.
    """
    if isinstance(exc, RecordsRefused):
        return True
    if isinstance(exc, sa.exc.DBAPIError):
        if exc.connection_invalidated:
            return False
        state = str(getattr(exc.orig, "sqlstate", None) or "")
        if state[:2] in TRANSIENT_SQLSTATE_CLASSES:
            return False
        if isinstance(exc, sa.exc.IntegrityError | sa.exc.DataError):
            return True
        # A driver that could not send a value (psycopg's adaptation, sqlite3's binding) has no SQLSTATE; a
        # ProgrammingError from the server (a missing table, a permission) is the store's state: wait for it.
        return isinstance(exc, sa.exc.ProgrammingError) and not state
    if isinstance(exc, sa.exc.StatementError):  # a value SQLAlchemy could not process for the driver
        return exc.orig is not None and is_refusal(exc.orig)
    return isinstance(exc, ROW_ERRORS)


class Sink(Protocol):
    """Where batches go: the store, or a gateway's ingest endpoint."""

    def write(self, records: list[CallRecord]) -> None: ...

    def close(self) -> None: ...


class DeadLetterSink(Protocol):
    """A sink that can also keep dead letters (the store); any other sink's go to :func:`dead_letter_file`."""

    def write_dead_letter(self, entry: DeadLetterEntry) -> None: ...


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
                safe = redacted_record(record, self.redactor) if self.redactor is not None else record
                rows.append(_fallback_row(safe, exc))
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

    def write_dead_letter(self, entry: DeadLetterEntry) -> None:
        from tuneloop.store import DeadLetter

        with self.engine.begin() as connection:
            connection.execute(sa.insert(DeadLetter.__table__), [entry.to_row()])

    def close(self) -> None:
        pass


def _fallback_row(record: CallRecord, exc: Exception) -> dict[str, Any]:
    return storable_row(
        {
            "capture_id": record.capture_id,
            "created_at": record.created_at,
            "model_requested": record.model_requested,  # storable_row cuts it to its column
            "status": "error" if record.status != "ok" else "ok",
            "http_status": record.http_status,
            "error": f"tuneloop could not read the response for the log: {exc}",
            "request": {"unreadable": True},
            "tags": record.tags,
            "metadata": record.metadata,
        }
    )


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

    With a ``redactor`` that redacts, records are redacted before they are written (on the request path: a
    journal must not hold what the store may not), and the line says so, so a replay does not redact twice.
    """

    def __init__(
        self,
        directory: Path,
        fsync_always: bool = False,
        redactor: Redactor | None = None,
        *,
        lock_fd: int | None = None,
        root: Path | None = None,
    ) -> None:
        self.directory = directory
        self.directory.mkdir(parents=True, exist_ok=True)
        # The slot's lock, held from claim()/orphans() until release(); root: the directory its slots are in.
        self._lock_fd = lock_fd
        self.root = root if root is not None else directory
        self.fsync_always = fsync_always
        self.redactor = redactor if redactor is not None and redactor.enabled else None
        self._lock = threading.Lock()
        self._pending: dict[int, int] = {}  # segment -> records not yet in the store
        # Lines of earlier segments that are not records (damage, not a torn last line): path, line number,
        # the line, why. Filled by read_existing; the writer sets them aside as dead letters.
        self.unreadable: list[tuple[Path, int, bytes, str]] = []
        self._segment = -1
        self._fd = -1
        self._size = 0
        self._dirty = False
        existing = self.segments()
        self._next_segment = (existing[-1][0] + 1) if existing else 0

    @classmethod
    def claim(cls, root: Path, fsync_always: bool = False, redactor: Redactor | None = None) -> Journal:
        """The journal of this process: the lowest slot of ``root`` that no process holds,
        locked until :meth:`close` (or the process's death). Its segments, if any, were left by a process that
        died: :meth:`read_existing` has them."""
        for slot in range(MAX_JOURNAL_SLOTS):
            directory = journal_slot(root, slot)
            lock_fd = _try_lock(directory)
            if lock_fd is not None:
                return cls(directory, fsync_always, redactor, lock_fd=lock_fd, root=root)
        raise TuneloopError(
            f"all {MAX_JOURNAL_SLOTS} journal slots are held by running processes",
            where=str(root),
            hint="stop the gateways that share this journal_dir, or give this one its own logging.journal_dir",
        )

    def orphans(self) -> Iterator[Journal]:
        """The other slots of this journal's root that hold segments and no lock (their process died), each
        locked while the caller replays it, then releases it (:meth:`release`)."""
        numbered = {_slot_number(path): path for path in self.root.glob("worker-*") if path.is_dir()}
        slots = [self.root, *(numbered[number] for number in sorted(n for n in numbered if n is not None))]
        for directory in slots:
            if directory == self.directory or not _segment_paths(directory):
                continue
            lock_fd = _try_lock(directory)
            if lock_fd is None:  # a running process's journal: it is not ours to read
                continue
            yield Journal(directory, lock_fd=lock_fd, root=self.root)

    def release(self) -> None:
        """Let go of the slot's lock (a process's death does the same); another process may take the slot."""
        if self._lock_fd is not None:
            os.close(self._lock_fd)
            self._lock_fd = None

    def segments(self) -> list[tuple[int, Path]]:
        return _segment_paths(self.directory)

    def read_existing(self) -> tuple[list[CallRecord], list[Path]]:
        """Records in the segments left by an earlier process (called before the first append).

        A line that is not a record is skipped: with a warning when it is a segment's last (torn: the process
        died inside ``write``), else it is damage and is kept in :attr:`unreadable`.
        """
        records: list[CallRecord] = []
        paths = []
        for _, path in self.segments():
            paths.append(path)
            lines = path.read_bytes().split(b"\n")
            for number, line in enumerate(lines, start=1):
                if not line.strip():
                    continue
                try:
                    data = json.loads(line)
                    if not isinstance(data, dict):
                        raise ValueError(f"a JSON {type(data).__name__}, not an object")
                    record = CallRecord.from_json(data)
                    record.redacted = data.get("redacted") is True  # written by append, never by a client
                    records.append(record)
                except Exception as exc:  # anything at all: a damaged line must never stop a start
                    if number == len(lines):  # no newline after it: the write that made it was cut short
                        log.warning("skipping a torn last journal line %s:%d (%s)", path, number, exc)
                    else:
                        log.error("journal line %s:%d is not a captured call (%s): set aside", path, number, exc)
                        self.unreadable.append((path, number, line, describe_error(exc)))
        return records, paths

    def append(self, record: CallRecord) -> CallRecord:
        """Journals ``record`` (redacted first when there is a redactor); returns what was journaled, the
        record to write to the store."""
        if self.redactor is not None:
            record = redacted_record(record, self.redactor)
        data = record.to_json()
        if record.redacted:
            data["redacted"] = True
        line = json.dumps(data, ensure_ascii=False, separators=(",", ":")).encode("utf-8") + b"\n"
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
        return record

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
        self.release()


def journal_slot(root: Path, slot: int) -> Path:
    """Slot 0 is the journal directory itself (a lone gateway's, as before there were workers); slot k ≥ 1 is
    its subdirectory ``worker-k``. Slot directories and their lock files are never deleted: removing a lock
    file someone else has open would let two processes each hold "the" lock."""
    return root if slot == 0 else root / f"worker-{slot}"


def _slot_number(path: Path) -> int | None:
    suffix = path.name.removeprefix("worker-")
    return int(suffix) if suffix.isdigit() and int(suffix) >= 1 else None


def _segment_paths(directory: Path) -> list[tuple[int, Path]]:
    found = []
    for path in directory.glob("journal-*.jsonl"):
        with contextlib.suppress(ValueError):
            found.append((int(path.stem.removeprefix("journal-")), path))
    return sorted(found)


def _try_lock(directory: Path) -> int | None:
    """A descriptor holding an exclusive lock on ``directory``'s lock file; None when a process (this one too,
    through another descriptor) holds it. flock, not fcntl's record locks: those belong to the process, so a
    second writer in one process would take the slot again, and closing any descriptor of the file drops them."""
    directory.mkdir(parents=True, exist_ok=True)
    lock_fd = os.open(directory / JOURNAL_LOCK, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(lock_fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(lock_fd)
        return None
    except OSError as exc:  # a file system without locks (some network ones)
        os.close(lock_fd)
        raise TuneloopError(
            f"cannot lock the journal's {directory / JOURNAL_LOCK}: {exc}",
            where="logging.journal_dir",
            hint="put the journal on a local file system",
        ) from exc
    return lock_fd


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

    def __init__(
        self,
        sink: Sink,
        config: LoggingConfig | None = None,
        name: str = "gateway",
        dead_letter_path: Path | None = None,
    ) -> None:
        self.sink = sink
        self.config = config or LoggingConfig()
        self.name = name
        self.dead_letter_path = dead_letter_path or dead_letter_file()
        self._queue: queue.Queue[CallRecord] = queue.Queue(maxsize=self.config.queue_size)
        self._stopping = threading.Event()
        self._closed = False
        self.journal: Journal | None = None
        self.written = 0
        self.dropped = 0
        self.lost = 0
        self.replayed = 0
        self.dead_lettered = 0
        # What health() reads (written by the writer thread only): the store failing, a batch waiting.
        self.consecutive_failures = 0
        self.last_error: str | None = None
        self._last_success: float | None = None
        self._failing_since: float | None = None
        self._batch_since: float | None = None
        self._written_counter = RECORDS.labels(name, "written")
        self._dropped_counter = RECORDS.labels(name, "dropped")
        self._lost_counter = RECORDS.labels(name, "lost")
        self._dead_letter_counter = RECORDS.labels(name, "dead_letter")
        self._depth = QUEUE_DEPTH.labels(name)
        self._commit_seconds = COMMIT_SECONDS.labels(name)
        if self.config.durable:
            # A sink that redacts (the store's) has its records redacted before they are journaled.
            self.journal = Journal.claim(
                self.config.journal_path(),
                fsync_always=self.config.fsync == "always",
                redactor=getattr(sink, "redactor", None),
            )
            self._replay()
        self._thread = threading.Thread(target=self._run, name=f"tuneloop-log-writer-{name}", daemon=True)
        self._thread.start()

    # --- producers -------------------------------------------------------------------------------

    def _journal(self, record: CallRecord) -> CallRecord:
        """The record to queue: as journaled (durable mode: redacted if the sink redacts), else as it is."""
        return self.journal.append(record) if self.journal is not None else record

    def submit_nowait(self, record: CallRecord) -> bool:
        """Queue without waiting: True if queued (or journaled), False if the queue is full."""
        record = self._journal(record)
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
        record = self._journal(record)
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
        record = self._journal(record)
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

    def health(self) -> dict[str, Any]:
        """How the writer is doing, for ``/healthz``: ``status`` is ``ok``, ``degraded`` (the store is failing
        or a batch has waited over DEGRADED_AFTER_S to be written, or the queue is nearly full) or ``failing``
        (the same for over FAILING_AFTER_S, or the writer thread is gone), with ``problem`` in words."""
        now = time.monotonic()
        depth, capacity = self.depth, self.config.queue_size
        waiting_s = now - self._batch_since if self._batch_since is not None else 0.0
        failing_s = now - self._failing_since if self._failing_since is not None else 0.0
        status, problem = "ok", None
        if not self._thread.is_alive() and not self._closed:
            status, problem = "failing", "the log writer thread has stopped"
        elif max(waiting_s, failing_s) >= FAILING_AFTER_S:
            status = "failing"
        elif self.consecutive_failures or waiting_s >= DEGRADED_AFTER_S or depth >= capacity * QUEUE_DEGRADED_FRACTION:
            status = "degraded"
        if problem is None and status != "ok":
            if self.consecutive_failures:
                problem = (
                    f"the store has failed {self.consecutive_failures} writes in a row for {failing_s:.0f}s "
                    f"(last: {self.last_error})"
                )
            elif waiting_s >= DEGRADED_AFTER_S:
                problem = f"a batch has waited {waiting_s:.0f}s to be written"
            else:
                problem = f"the log queue is {depth / capacity:.0%} full"
        return {
            "status": status,
            "problem": problem,
            "queue_depth": depth,
            "queue_capacity": capacity,
            "batch_waiting_s": round(waiting_s, 3),
            "consecutive_failures": self.consecutive_failures,
            "last_error": self.last_error,
            "last_write_age_s": round(now - self._last_success, 3) if self._last_success is not None else None,
            "written": self.written,
            "dropped": self.dropped,
            "dead_lettered": self.dead_lettered,
            "lost": self.lost,
        }

    # --- the writer thread -----------------------------------------------------------------------

    def _replay(self) -> None:
        """Write what processes that died journaled: in this writer's slot, then in every slot no process holds
        (see Journal.claim); duplicates of rows already stored are skipped."""
        assert self.journal is not None
        self.replayed = self._replay_journal(self.journal)
        for orphan in self.journal.orphans():
            try:
                self.replayed += self._replay_journal(orphan)
            finally:
                orphan.release()

    def _replay_journal(self, journal: Journal) -> int:
        records, paths = journal.read_existing()
        for path, number, line, error in journal.unreadable:
            text = line.decode("utf-8", "replace")
            redactor = getattr(self.sink, "redactor", None)
            if redactor is not None and redactor.enabled:
                text = redactor.text(text)
            self._set_aside(DeadLetterEntry(self.name, "journal", None, f"{path.name}:{number}: {error}", text))
        batch_size = self.config.batch_size
        for start in range(0, len(records), batch_size):
            self._write_batch(records[start : start + batch_size], at_shutdown_give_up=False, stage="replay")
        for path in paths:
            path.unlink(missing_ok=True)
        if records:
            log.warning("replayed %d journaled calls into the store from %s", len(records), journal.directory)
        return len(records)

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
        self._batch_since = time.monotonic()
        try:
            self._write_batch(batch, at_shutdown_give_up=True)
        finally:
            self._batch_since = None
            for _ in batch:  # lets flush() know these are done with
                self._queue.task_done()

    def _write_batch(self, batch: list[CallRecord], at_shutdown_give_up: bool, stage: str = "write") -> None:
        """Write ``batch``: a store that is unavailable is retried with backoff; one that refuses rows gets the
        batch in halves until each refused record is alone, and sets that one aside (:meth:`_set_aside`)."""
        attempt = 0
        parts = [batch]  # what is left to write, the next part last
        while parts:
            part = parts.pop()
            deadline = self._drain_deadline if at_shutdown_give_up and self._stopping.is_set() else None
            started = time.perf_counter()
            try:
                self.sink.write(part)
            except Exception as exc:
                if is_refusal(exc):
                    if len(part) == 1:
                        self._dead_letter(part[0], exc, stage)
                    else:  # a bisection: the refused records are found in about 2·log2(len) writes each
                        middle = len(part) // 2
                        parts += [part[middle:], part[:middle]]
                    continue
                parts.append(part)
                left = sum(len(waiting) for waiting in parts)
                self._failed(exc)
                wait = RETRY_BACKOFF_S[min(attempt, len(RETRY_BACKOFF_S) - 1)]
                attempt += 1
                if deadline is not None and time.monotonic() + wait > deadline:
                    kept = " (they stay in the journal for the next start)" if self.journal is not None else ""
                    log.error("giving up on %d captured calls at shutdown: %s%s", left, exc, kept)
                    if self.journal is None:
                        self._count_lost(left)
                    return
                log.warning("writing %d captured calls failed (%s); retrying in %.2fs", left, exc, wait)
                if at_shutdown_give_up and deadline is None:
                    self._stopping.wait(wait)  # a shutdown cuts the wait short and sets the deadline
                else:
                    time.sleep(wait)
                continue
            self._commit_seconds.observe(time.perf_counter() - started)
            self._succeeded()
            self.written += len(part)
            self._written_counter.inc(len(part))
            if self.journal is not None:
                self.journal.committed(part)

    def _failed(self, exc: Exception) -> None:
        self.consecutive_failures += 1
        self.last_error = describe_error(exc)[:500]
        if self._failing_since is None:
            self._failing_since = time.monotonic()

    def _succeeded(self) -> None:
        self.consecutive_failures = 0
        self._failing_since = None
        self._last_success = time.monotonic()

    # --- dead letters ----------------------------------------------------------------------------

    def _dead_letter(self, record: CallRecord, exc: Exception, stage: str) -> None:
        log.error("the store refused captured call %s (%s): set aside as a dead letter", record.capture_id, exc)
        redactor = getattr(self.sink, "redactor", None)  # a dead letter is redacted as the row would have been
        text = record_text(record, redactor)
        error = describe_error(exc)
        if redactor is not None and redactor.enabled:
            error = redactor.text(error)  # the store may quote the refused value
        entry = DeadLetterEntry(self.name, stage, record.capture_id, error, text)
        if self._set_aside(entry) and self.journal is not None:
            self.journal.committed([record])
        self._succeeded()  # the store answered: it is up

    def _set_aside(self, entry: DeadLetterEntry) -> bool:
        """Keep ``entry`` in the store's dead_letters table, else in the dead-letter file; False if neither took it."""
        entry.created_at = utcnow()
        keeper = getattr(self.sink, "write_dead_letter", None)
        if keeper is not None:
            try:
                keeper(entry)
                return self._count_dead_letter()
            except Exception as exc:
                log.warning(
                    "the dead_letters table did not take a dead letter (%s); writing it to %s",
                    exc,
                    self.dead_letter_path,
                )
        try:
            row = entry.to_row()
            line = json.dumps({**row, "created_at": row["created_at"].isoformat()}, ensure_ascii=True) + "\n"
            self.dead_letter_path.parent.mkdir(parents=True, exist_ok=True)
            fd = os.open(self.dead_letter_path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
            try:
                _write_all(fd, line.encode("ascii"))
            finally:
                os.close(fd)
            return self._count_dead_letter()
        except OSError as exc:
            log.error("could not keep a dead letter anywhere (%s): %s", exc, entry.record[:2000])
            if self.journal is None:
                self._count_lost(1)
            return False

    def _count_dead_letter(self) -> bool:
        self.dead_lettered += 1
        self._dead_letter_counter.inc()
        return True

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

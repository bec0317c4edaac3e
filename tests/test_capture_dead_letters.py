"""One bad record must not stop logging: uploads are checked, rows made storable, refusals set aside.

Through the real gateway (uploads), the real log writer and the real stores (SQLite and PostgreSQL).
"""

from __future__ import annotations

import json
import threading
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import pytest
import sqlalchemy as sa
from prometheus_client import REGISTRY

from test_capture_support import count_rows, rows
from tuneloop.capture import logwriter
from tuneloop.capture.config import LoggingConfig
from tuneloop.capture.logwriter import Journal, LogWriter, StoreSink
from tuneloop.capture.records import MAX_JSON_DEPTH, CallRecord
from tuneloop.capture.server import RunningGateway
from tuneloop.store import DeadLetter, RequestLog, session_scope

pytest_plugins = ["test_capture_support"]  # the fake upstream and gateway fixtures

NUL = "\x00"


def nested(depth: int) -> dict[str, Any]:
    value: dict[str, Any] = {}
    for _ in range(depth - 1):
        value = {"a": value}
    return value


def call(index: int = 0, **fields: Any) -> CallRecord:
    values: dict[str, Any] = {
        "model_requested": "fake/m",
        "request": {"model": "fake/m", "messages": [{"role": "user", "content": f"call {index}"}]},
        "status": "ok",
        "http_status": 200,
        "upstream": "fake",
        "upstream_model": "m",
        **fields,
    }
    return CallRecord(**values)


def upload_item(**changes: Any) -> dict[str, Any]:
    item = call().to_json()
    for key, value in changes.items():
        if value is _ABSENT:
            item.pop(key, None)
        else:
            item[key] = value
    return item


_ABSENT = object()


def dead_letters(url: str | None = None) -> list[DeadLetter]:
    with session_scope(url) as session:
        return list(session.scalars(sa.select(DeadLetter).order_by(DeadLetter.id)))


def metric(name: str, **labels: str) -> float:
    return REGISTRY.get_sample_value(name, labels) or 0.0


@pytest.fixture(params=["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)])
def store_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'store.db'}"
    return request.getfixturevalue("postgres_url")


# --- uploads: POST /v1/tuneloop/logs --------------------------------------------------------------------

HOSTILE_UPLOADS = [
    # (what is wrong, the record's field in the error, a fragment of the message)
    ({"created_at": "2025-01-31T12:00:00"}, "created_at", "timezone-aware ISO datetime"),
    ({"created_at": 1738324800}, "created_at", "timezone-aware ISO datetime"),
    ({"created_at": "yesterday"}, "created_at", "timezone-aware ISO datetime"),
    ({"created_at": "0001-01-01T00:00:00+05:00"}, "created_at", "out of range"),
    ({"created_at": _ABSENT}, "created_at", "timezone-aware ISO datetime"),
    ({"model_requested": 7}, "model_requested", "must be a string"),
    ({"model_requested": "m" * 256}, "model_requested", "at most 255"),
    ({"model_requested": _ABSENT}, "model_requested", "is required"),
    ({"request": ["not", "an", "object"]}, "request", "must be a JSON object"),
    ({"request": nested(MAX_JSON_DEPTH + 50)}, "request", f"deeper than {MAX_JSON_DEPTH}"),
    ({"response": nested(MAX_JSON_DEPTH + 1)}, "response", f"deeper than {MAX_JSON_DEPTH}"),
    ({"status": "teapot" * 5}, "status", '"ok" or "error"'),
    ({"http_status": 2**40}, "http_status", "integer from 100 to 599"),
    ({"http_status": "200"}, "http_status", "integer from 100 to 599"),
    ({"http_status": True}, "http_status", "integer from 100 to 599"),
    ({"capture_id": "c" * 65}, "capture_id", "1 to 64"),
    ({"capture_id": "id\x00with-nul"}, "capture_id", "1 to 64"),
    ({"upstream": "u" * 300}, "upstream", "at most 255"),
    ({"error": ["boom"]}, "error", "must be a string"),
    ({"response_b64": "%%% not base64"}, "response_b64", "base64"),
    ({"stream": "yes"}, "stream", "true or false"),
    ({"latency_ms": "fast"}, "latency_ms", "milliseconds"),
    ({"latency_ms": -1}, "latency_ms", "milliseconds"),
    ({"tags": "a,b"}, "tags", "array of strings"),
    ({"tags": ["ok", 3]}, "tags[1]", "must be a string"),
    ({"metadata": ["task"]}, "metadata", "object of strings"),
    ({"metadata": {"env": {"nested": True}}}, "metadata.env", "must be a string"),
    ({"metadata": {"task": "t" * 256}}, "metadata.task", "at most 255"),
    ({"attempts": [{"upstream": "fake"}, "retry"]}, "attempts[1]", "must be an object"),
]


@pytest.mark.parametrize(("changes", "field", "says"), HOSTILE_UPLOADS, ids=[case[1] for case in HOSTILE_UPLOADS])
def test_an_upload_the_store_would_refuse_is_a_400_naming_the_record_and_field(
    gateway: RunningGateway, changes: dict[str, Any], field: str, says: str
) -> None:
    records = [upload_item(), upload_item(**changes), upload_item()]
    reply = httpx.post(gateway.base_url + "/tuneloop/logs", json={"records": records}, timeout=30)
    assert reply.status_code == 400, reply.text
    error = reply.json()["error"]
    assert set(error) == {"message", "type", "param", "code"} and error["type"] == "invalid_request_error"
    where = f"records[1].{field}"
    assert error["param"] == where and error["message"].startswith(where + ":") and says in error["message"]
    # Checked whole before anything is queued: nothing of the upload is logged, and logging goes on.
    good = upload_item()
    assert httpx.post(gateway.base_url + "/tuneloop/logs", json={"records": [good]}, timeout=30).status_code == 200
    assert gateway.gateway.writer is not None and gateway.gateway.writer.flush(10)
    assert [row.capture_id for row in rows()] == [good["capture_id"]]


def test_an_upload_that_is_not_a_record_names_its_index(gateway: RunningGateway) -> None:
    reply = httpx.post(gateway.base_url + "/tuneloop/logs", json={"records": [upload_item(), "call"]}, timeout=30)
    assert reply.status_code == 400
    assert reply.json()["error"]["param"] == "records[1]" and "JSON object" in reply.json()["error"]["message"]


def test_an_upload_with_hostile_content_is_logged_as_sent(gateway: RunningGateway) -> None:
    """Content the store cannot hold as is (NUL) is accepted, and stored the way every call's is."""
    item = upload_item(
        request={"model": "fake/m", "messages": [{"role": "user", "content": f"a{NUL}b"}]},
        created_at="2025-01-31T12:00:00-05:00",
        tags=[f"env=prod{NUL}"],
    )
    reply = httpx.post(gateway.base_url + "/tuneloop/logs", json={"records": [item]}, timeout=30)
    assert reply.status_code == 200 and reply.json() == {"accepted": 1}
    assert gateway.gateway.writer is not None and gateway.gateway.writer.flush(10)
    [row] = rows()
    assert row.request["messages"][0]["content"] == "a\ufffdb" and row.tags == ["env=prod\ufffd"]
    assert row.created_at == datetime(2025, 1, 31, 17, 0, tzinfo=UTC)


# --- what reaches the store is storable -----------------------------------------------------------------


def test_hostile_values_are_stored_alike_on_sqlite_and_postgresql(store_url: str, tmp_path: Path) -> None:
    """Each of these failed its batch forever on PostgreSQL (and the deep / huge ones on SQLite too)."""
    usage = {"prompt_tokens": 2**40, "completion_tokens": 5}
    body = json.dumps({"model": "m", "choices": [{"message": {"content": f"x{NUL}y"}}], "usage": usage}).encode()
    hostile = {
        "nul_content": call(1, request={"messages": [{"content": f"a{NUL}b"}], f"key{NUL}": 1}),
        "nul_error": call(2, status="error", error=f"upstream said {NUL}"),
        "nul_model": call(3, model_requested=f"fake/m{NUL}"),
        "nul_response": call(4, response_body=body),
        "long_task": call(5, metadata={"task": "t" * 300}, tags=["task=" + "t" * 300]),
        "long_names": call(6, upstream="u" * 300, upstream_model="m" * 300, model_requested="r" * 300),
        "big_http_status": call(7, http_status=2**40),
        "deep_request": call(8, request={"model": "m", "extra": nested(400)}),
        "huge_integer": call(9, request={"model": "m", "n": 2**70, "m": -(2**70)}),
    }
    sink = StoreSink(store_url)
    writer = LogWriter(sink, LoggingConfig(batch_size=100, flush_ms=5), name="test-storable")
    for record in hostile.values():
        writer.submit_blocking(record)
    assert writer.flush(20), "the writer is stuck on a record the store refuses"
    writer.close()
    assert (writer.written, writer.dead_lettered) == (len(hostile), 0)

    with session_scope(store_url) as session:
        stored = {row.capture_id: row for row in session.scalars(sa.select(RequestLog))}
    row = {name: stored[record.capture_id] for name, record in hostile.items()}
    assert row["nul_content"].request == {"messages": [{"content": "a\ufffdb"}], "key\ufffd": 1}
    assert row["nul_error"].error == "upstream said \ufffd"
    assert row["nul_model"].model_requested == "fake/m\ufffd"
    assert row["nul_response"].response["choices"][0]["message"]["content"] == "x\ufffdy"
    assert row["nul_response"].prompt_tokens is None and row["nul_response"].completion_tokens == 5
    assert row["long_task"].task == "t" * 255 and row["long_task"].metadata_["task"] == "t" * 300
    assert row["long_names"].upstream == "u" * 255 and row["long_names"].model_requested == "r" * 255
    assert len(row["long_names"].model_resolved) == 255
    assert row["big_http_status"].http_status is None
    assert "nested deeper than" in json.dumps(row["deep_request"].request)
    assert row["huge_integer"].request["n"] == str(2**70) and row["huge_integer"].request["m"] == str(-(2**70))


# --- refusals: split, set aside, the rest written -------------------------------------------------------


def test_records_the_store_refuses_are_dead_lettered_and_the_rest_written(store_url: str) -> None:
    naive = call(0, created_at=datetime(2025, 1, 31, 12, 0))  # the store refuses naive times
    no_such_key = call(1, api_key_id=987_654)  # a foreign key to no api_keys row
    refused = [naive, no_such_key]
    batch = [call(index) for index in range(2, 60)]
    batch[7:7] = [naive]
    batch[40:40] = [no_such_key]
    before = metric("tuneloop_capture_records_total", writer="test-dead", outcome="dead_letter")
    writer = LogWriter(StoreSink(store_url), LoggingConfig(batch_size=64, flush_ms=50), name="test-dead")
    for record in batch:
        writer.submit_blocking(record)
    assert writer.flush(20), "the writer is stuck on a record the store refuses"
    writer.close()

    with session_scope(store_url) as session:
        logged = set(session.scalars(sa.select(RequestLog.capture_id)))
    assert logged == {record.capture_id for record in batch if record not in refused}
    letters = dead_letters(store_url)
    assert [letter.capture_id for letter in letters] == [naive.capture_id, no_such_key.capture_id]
    assert "naive datetime" in letters[0].error and "IntegrityError" in letters[1].error
    assert {letter.writer for letter in letters} == {"test-dead"} and {letter.stage for letter in letters} == {"write"}
    kept = CallRecord.from_json(json.loads(letters[0].record))  # the whole call, to fix and replay by hand
    assert kept.capture_id == naive.capture_id and kept.request == naive.request
    assert writer.dead_lettered == 2 and writer.written == len(batch) - 2
    assert metric("tuneloop_capture_records_total", writer="test-dead", outcome="dead_letter") - before == 2
    assert writer.health()["status"] == "ok"


def test_a_dead_letter_is_redacted_as_its_row_would_have_been() -> None:
    from tuneloop.capture.config import RedactConfig
    from tuneloop.capture.redaction import Redactor

    sink = StoreSink(redactor=Redactor(RedactConfig(emails=True)))
    secret = "jane.doe@example.com"
    refused = call(0, created_at=datetime(2025, 1, 31, 12, 0), tags=[f"owner={secret}"], error=f"for {secret}")
    refused.request["messages"][0]["content"] = f"mail {secret} about the payoff"
    refused.response_body = json.dumps({"choices": [{"message": {"content": f"sent to {secret}"}}]}).encode()
    writer = LogWriter(sink, LoggingConfig(batch_size=10, flush_ms=5), name="test-redacted")
    writer.submit_blocking(refused)
    assert writer.flush(10)
    writer.close()
    [letter] = dead_letters()
    assert secret not in letter.record and secret not in letter.error and letter.record.count("[EMAIL]") == 4


class RefusingSink:
    """The store, except that it refuses records with a given content (a sink with no dead_letters table)."""

    def __init__(self, refuse: str) -> None:
        self.inner, self.refuse = StoreSink(), refuse

    def write(self, records: list[CallRecord]) -> None:
        if any(record.request["messages"][0]["content"] == self.refuse for record in records):
            raise logwriter.RecordsRefused("the gateway refused the upload: HTTP 400")
        self.inner.write(records)

    def close(self) -> None:
        pass


def test_a_sink_without_a_table_keeps_dead_letters_in_a_file(tuneloop_home: Path) -> None:
    writer = LogWriter(RefusingSink("call 3"), LoggingConfig(batch_size=10, flush_ms=5), name="test-file")
    for index in range(10):
        writer.submit_blocking(call(index))
    assert writer.flush(10)
    writer.close()
    assert count_rows() == 9
    path = tuneloop_home / "capture" / "dead-letters.jsonl"
    [line] = path.read_text().splitlines()
    letter = json.loads(line)
    assert letter["writer"] == "test-file" and "HTTP 400" in letter["error"]
    assert json.loads(letter["record"])["request"]["messages"][0]["content"] == "call 3"


def test_the_cli_lists_dead_letters_from_the_table_and_the_file() -> None:
    from typer.testing import CliRunner

    from tuneloop.cli.main import app

    runner = CliRunner()
    assert "no dead letters" in runner.invoke(app, ["logs", "dead-letters"]).output
    hostile_model = "[/bold]\x1b[2J"  # markup and a terminal escape, chosen by a client
    naive = call(0, created_at=datetime(2025, 1, 31, 12, 0), model_requested=hostile_model)
    writer = LogWriter(StoreSink(), LoggingConfig(batch_size=10, flush_ms=5), name="test-cli")
    writer.submit_blocking(naive)
    assert writer.flush(10)
    writer.close()
    listed = runner.invoke(app, ["logs", "dead-letters"])
    assert listed.exit_code == 0, listed.output
    assert naive.capture_id in listed.output.replace("\n", "") or naive.capture_id[:8] in listed.output
    assert "naive datetime" in listed.output.replace("\n", " ")
    full = runner.invoke(app, ["logs", "dead-letters", "--full"])
    [letter] = [json.loads(line) for line in full.output.splitlines()]
    assert letter["kept_in"] == "table" and json.loads(letter["record"])["model_requested"] == hostile_model


# --- journal replay ---------------------------------------------------------------------------------------


def test_a_bad_journaled_record_never_blocks_a_start(tmp_path: Path) -> None:
    journal_dir = tmp_path / "journal"
    config = LoggingConfig(durable=True, journal_dir=journal_dir, batch_size=4, flush_ms=5)
    journal = Journal(journal_dir)
    good = [call(index) for index in range(6)]
    naive = call(99, created_at=datetime(2025, 1, 31, 12, 0))  # e.g. taken by an older gateway's upload
    for record in [*good[:3], naive, *good[3:]]:
        journal.append(record)
    journal.close()
    [(_, segment)] = journal.segments()
    with segment.open("ab") as handle:  # damage in the middle of the journal, then one more good call
        handle.write(b"\x00\x00 not json\n[1, 2]\n" + b"[" * 5000 + b"]" * 5000 + b"\n")
    late = call(100)
    with segment.open("ab") as handle:
        handle.write(json.dumps(late.to_json()).encode() + b"\n")

    started: list[LogWriter] = []
    starting = threading.Thread(
        target=lambda: started.append(LogWriter(StoreSink(), config, name="test-replay")), daemon=True
    )
    starting.start()
    starting.join(30)
    assert started, "the gateway never comes up: the replay retries a journaled record forever"
    writer = started[0]
    writer.close()
    assert writer.replayed == 8
    assert {row.capture_id for row in rows()} == {record.capture_id for record in [*good, late]}
    letters = dead_letters()
    assert [letter.stage for letter in letters] == ["journal", "journal", "journal", "replay"]
    assert letters[3].capture_id == naive.capture_id and "naive datetime" in letters[3].error
    assert letters[0].error.startswith(segment.name) and letters[0].record.startswith("\ufffd\ufffd not json")
    assert list(journal_dir.glob("journal-*.jsonl")) == []  # nothing left to replay again


# --- health -----------------------------------------------------------------------------------------------


class StuckSink:
    """The store, but a write hangs until released (a store that stopped answering)."""

    def __init__(self) -> None:
        self.inner, self.release = StoreSink(), threading.Event()

    def write(self, records: list[CallRecord]) -> None:
        self.release.wait(30)
        self.inner.write(records)

    def close(self) -> None:
        pass


def test_health_says_degraded_then_failing_while_a_batch_waits(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(logwriter, "DEGRADED_AFTER_S", 0.3)
    monkeypatch.setattr(logwriter, "FAILING_AFTER_S", 0.8)
    sink = StuckSink()
    writer = LogWriter(sink, LoggingConfig(queue_size=100, batch_size=10, flush_ms=5), name="test-health")
    try:
        assert writer.health()["status"] == "ok"
        for index in range(30):
            writer.submit_blocking(call(index))
        seen = []
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and (not seen or seen[-1]["status"] != "failing"):
            seen.append(writer.health())
            time.sleep(0.05)
        statuses = [health["status"] for health in seen]
        assert "degraded" in statuses and statuses[-1] == "failing", statuses
        assert "waited" in seen[-1]["problem"] and seen[-1]["queue_depth"] == 20
    finally:
        sink.release.set()
        assert writer.flush(10)
        writer.close()
    assert writer.health()["status"] == "ok" and writer.health()["last_write_age_s"] is not None


def test_health_says_degraded_when_the_queue_is_nearly_full() -> None:
    sink = StuckSink()
    writer = LogWriter(sink, LoggingConfig(queue_size=10, batch_size=1, flush_ms=5), name="test-health-queue")
    try:
        for index in range(10):
            writer.submit_blocking(call(index))
        health = writer.health()
        assert health["status"] == "degraded" and "full" in health["problem"]
    finally:
        sink.release.set()
        writer.close()

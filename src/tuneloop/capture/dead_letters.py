"""Dead letters: captured calls the store refused, set aside with why, never retried forever nor lost.

The log writer (``logwriter.py``) decides when a record is one; here is what a dead letter holds, where it
goes when the ``dead_letters`` table cannot take it (a JSONL file under ``$TUNELOOP_HOME/capture``), and
how ``tuneloop logs dead-letters`` reads them back.
"""

from __future__ import annotations

import contextlib
import json
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

import sqlalchemy as sa

from tuneloop.capture.records import CallRecord, redacted_record, storable_text
from tuneloop.capture.redaction import Redactor
from tuneloop.config import get_settings
from tuneloop.store.models import utcnow

MAX_ERROR_CHARS = 4000  # a dead letter keeps this much of the store's error


def describe_error(exc: BaseException) -> str:
    text = f"{type(exc).__name__}: {exc}"
    return storable_text(text if len(text) <= MAX_ERROR_CHARS else text[:MAX_ERROR_CHARS] + " …")


def dead_letter_file() -> Path:
    """Where dead letters go when the ``dead_letters`` table cannot take them."""
    return get_settings().home / "capture" / "dead-letters.jsonl"


@dataclass
class DeadLetterEntry:
    """A call set aside: the record as JSON text (or a damaged journal line as it was), and why."""

    writer: str
    stage: str  # "write" (from the queue), "replay" (a journaled record), "journal" (a line that does not parse)
    capture_id: str | None
    error: str
    record: str
    created_at: datetime | None = None

    def to_row(self) -> dict[str, Any]:
        return {
            "created_at": self.created_at or utcnow(),
            "writer": storable_text(self.writer, 64),
            "stage": self.stage,
            "capture_id": storable_text(self.capture_id, 64) if self.capture_id else None,
            "error": storable_text(self.error),
            "record": storable_text(self.record),
        }


def record_text(record: CallRecord, redactor: Redactor | None = None) -> str:
    """A record as JSON text for a dead letter: ASCII, so NUL and every other character survive any store.

    With a ``redactor``, it is redacted as a logged call's row would be (``redacted_record``)."""
    try:
        if redactor is not None:
            record = redacted_record(record, redactor)
        data = record.to_json()
        return json.dumps(data, ensure_ascii=True, separators=(",", ":"), default=str)
    except (ValueError, TypeError, RecursionError) as exc:  # nested beyond what json recurses into
        return json.dumps({"capture_id": record.capture_id, "unserializable": repr(record)[:100_000], "why": str(exc)})


def read_dead_letters(url: str | None = None, limit: int = 50) -> list[dict[str, Any]]:
    """The newest ``limit`` dead letters, from the store's table and the dead-letter file, newest first (for
    ``tuneloop logs dead-letters``). Each: created_at (ISO), writer, stage, capture_id, error, record (JSON text),
    and where it is kept (``table`` with its ``id``, or ``file``)."""
    from tuneloop.store import DeadLetter, session_scope

    letters: list[dict[str, Any]] = []
    with session_scope(url) as session:
        query = sa.select(DeadLetter).order_by(DeadLetter.id.desc()).limit(limit)
        for row in session.scalars(query):
            letters.append(
                {
                    "kept_in": "table",
                    "id": row.id,
                    "created_at": row.created_at.isoformat(),
                    "writer": row.writer,
                    "stage": row.stage,
                    "capture_id": row.capture_id,
                    "error": row.error,
                    "record": row.record,
                }
            )
    path = dead_letter_file()
    if path.exists():
        for line in path.read_text(encoding="utf-8", errors="replace").splitlines()[-limit:]:
            with contextlib.suppress(ValueError):
                letters.append({"kept_in": "file", "id": None, **json.loads(line)})
    letters.sort(key=lambda letter: str(letter.get("created_at")), reverse=True)
    return letters[:limit]

"""Reading the captured calls back: filters, listing, one call in full, export as JSON.

Filters are ``KEY=VALUE`` strings, as ``tuneloop logs`` and ``tuneloop data from-logs`` take them:

- ``tag.KEY=VALUE``: the call's metadata (OpenAI ``metadata`` or ``x-tuneloop-tags``) has KEY = VALUE;
  ``tag.LABEL`` alone: the call carries the bare label LABEL,
- ``model=NAME``: requested or resolved model is NAME (a trailing ``*`` matches a prefix),
- ``status=ok|error``, ``upstream=NAME``, ``task=NAME``.

Times (``since``/``until``) are ISO dates or datetimes (UTC unless they say otherwise) or durations back
from now: ``30m``, ``24h``, ``7d``.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import sqlalchemy as sa
from sqlalchemy.orm import Session

from tuneloop.errors import TuneloopError
from tuneloop.store import RequestLog, session_scope, utcnow

_DURATION = re.compile(r"^(\d+(?:\.\d+)?)\s*(s|m|h|d|w)$")
_UNITS = {"s": "seconds", "m": "minutes", "h": "hours", "d": "days", "w": "weeks"}
STATUSES = ("ok", "error")


@dataclass
class LogFilter:
    metadata: dict[str, str] = field(default_factory=dict)
    labels: list[str] = field(default_factory=list)
    model: str | None = None
    status: str | None = None
    upstream: str | None = None
    task: str | None = None
    since: datetime | None = None
    until: datetime | None = None

    def describe(self) -> str:
        parts = [f"tag.{k}={v}" for k, v in self.metadata.items()] + [f"tag.{label}" for label in self.labels]
        for name in ("model", "status", "upstream", "task", "since", "until"):
            value = getattr(self, name)
            if value is not None:
                parts.append(f"{name}={value.isoformat() if isinstance(value, datetime) else value}")
        return ", ".join(parts) or "all calls"


def parse_time(text: str, where: str) -> datetime:
    """An ISO date/datetime (UTC when naive) or a duration back from now (``24h``, ``7d``)."""
    value = text.strip()
    match = _DURATION.match(value)
    if match:
        return utcnow() - timedelta(**{_UNITS[match.group(2)]: float(match.group(1))})
    try:
        parsed = datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        raise TuneloopError(
            f"{text!r} is not a time", where=where, hint="write an ISO date (2025-06-01), a datetime, or 30m / 24h / 7d"
        ) from None
    return parsed.replace(tzinfo=UTC) if parsed.tzinfo is None else parsed


def build_filter(
    filters: list[str] | None = None,
    *,
    model: str | None = None,
    status: str | None = None,
    since: str | None = None,
    until: str | None = None,
) -> LogFilter:
    """A :class:`LogFilter` from ``--filter`` strings and the dedicated options."""
    result = LogFilter(model=model, status=status)
    for text in filters or []:
        key, sep, value = text.partition("=")
        key, value = key.strip(), value.strip()
        if key.startswith("tag."):
            name = key.removeprefix("tag.")
            if not name:
                raise TuneloopError(f"{text!r} names no tag", where="--filter", hint="write tag.KEY=VALUE")
            if sep:
                result.metadata[name] = value
            else:
                result.labels.append(name)
        elif sep and key in ("model", "status", "upstream", "task"):
            setattr(result, key, value)
        else:
            raise TuneloopError(
                f"cannot filter on {text!r}",
                where="--filter",
                hint="use tag.KEY=VALUE, tag.LABEL, model=NAME, status=ok|error, upstream=NAME or task=NAME",
            )
    if result.status is not None and result.status not in STATUSES:
        raise TuneloopError(f"unknown status {result.status!r}", where="--status", hint="use ok or error")
    result.since = parse_time(since, "--since") if since else None
    result.until = parse_time(until, "--until") if until else None
    return result


def _has_label(session: Session, label: str) -> sa.ColumnElement[bool]:
    if session.get_bind().dialect.name == "postgresql":
        from sqlalchemy.dialects.postgresql import JSONB

        return RequestLog.tags.op("@>")(sa.cast(json.dumps([label]), JSONB))
    items = sa.func.json_each(RequestLog.tags).table_valued("value")
    return sa.exists(sa.select(1).select_from(items).where(items.c.value == label))


def apply_filter(session: Session, query: sa.Select[Any], log_filter: LogFilter) -> sa.Select[Any]:
    for key, value in log_filter.metadata.items():
        query = query.where(RequestLog.metadata_[key].as_string() == value)
    for label in log_filter.labels:
        query = query.where(_has_label(session, label))
    if log_filter.model:
        if log_filter.model.endswith("*"):
            prefix = log_filter.model[:-1]
            query = query.where(
                sa.or_(RequestLog.model_requested.startswith(prefix), RequestLog.model_resolved.startswith(prefix))
            )
        else:
            query = query.where(
                sa.or_(RequestLog.model_requested == log_filter.model, RequestLog.model_resolved == log_filter.model)
            )
    if log_filter.status:
        query = query.where(RequestLog.status == log_filter.status)
    if log_filter.upstream:
        query = query.where(RequestLog.upstream == log_filter.upstream)
    if log_filter.task:
        query = query.where(RequestLog.task == log_filter.task)
    if log_filter.since:
        query = query.where(RequestLog.created_at >= log_filter.since)
    if log_filter.until:
        query = query.where(RequestLog.created_at < log_filter.until)
    return query


def list_logs(log_filter: LogFilter, limit: int = 50, url: str | None = None) -> list[RequestLog]:
    """The newest ``limit`` calls matching the filter, newest first."""
    with session_scope(url) as session:
        query = apply_filter(session, sa.select(RequestLog), log_filter)
        return list(session.scalars(query.order_by(RequestLog.id.desc()).limit(limit)))


def count_logs(log_filter: LogFilter, url: str | None = None) -> int:
    with session_scope(url) as session:
        query = apply_filter(session, sa.select(sa.func.count()).select_from(RequestLog), log_filter)
        return int(session.scalar(query) or 0)


def get_log(log_id: int, url: str | None = None) -> RequestLog:
    with session_scope(url) as session:
        row = session.get(RequestLog, log_id)
    if row is None:
        raise TuneloopError(f"no logged call with id {log_id}", hint="list calls with `tuneloop logs list`")
    return row


def iter_logs(log_filter: LogFilter, url: str | None = None, batch_size: int = 500) -> Iterator[RequestLog]:
    """Every matching call, oldest first, read in batches (constant memory on large logs)."""
    last_id = 0
    while True:
        with session_scope(url) as session:
            query = apply_filter(session, sa.select(RequestLog), log_filter).where(RequestLog.id > last_id)
            rows = list(session.scalars(query.order_by(RequestLog.id).limit(batch_size)))
        if not rows:
            return
        yield from rows
        last_id = rows[-1].id


def log_to_json(row: RequestLog) -> dict[str, Any]:
    """One logged call as a JSON object (what ``tuneloop logs export`` writes per line)."""
    return {
        "id": row.id,
        "capture_id": row.capture_id,
        "created_at": row.created_at.isoformat(),
        "task": row.task,
        "model_requested": row.model_requested,
        "model_resolved": row.model_resolved,
        "upstream": row.upstream,
        "status": row.status,
        "http_status": row.http_status,
        "error": row.error,
        "latency_ms": row.latency_ms,
        "ttft_ms": row.ttft_ms,
        "overhead_ms": row.overhead_ms,
        "prompt_tokens": row.prompt_tokens,
        "completion_tokens": row.completion_tokens,
        "cached_tokens": row.cached_tokens,
        "cost_usd": row.cost_usd,
        "price_table_version": row.price_table_version,
        "tags": row.tags,
        "metadata": row.metadata_,
        "api_key_id": row.api_key_id,
        "attempts": row.attempts,
        "request": row.request,
        "response": row.response,
    }

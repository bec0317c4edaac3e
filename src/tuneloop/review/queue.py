"""The review queue: items, the 5-minute lock, approve / correct / reject, and what a decision becomes.

A reviewer takes an item's lock (:func:`lock_item`); while it holds, anyone else is refused with
:class:`ItemLocked`, which names the holder and when the lock runs out. Locks are taken and decisions
recorded by conditional ``UPDATE`` statements, so two reviewers racing for one item cannot both win,
on SQLite or PostgreSQL.

An approval (the draft is right) or a correction (fields changed one by one) becomes a human-verified
entry (provenance ``human``) of a dataset, through the data stage's public functions: linked to the
logged call it came from (``source_request_id``) and to the entry it fixes (``parent_entry_id``) when the
item came from a dataset. By default the dataset is the one that entry belongs to, else
``<task>-reviewed``. Time spent is the time from taking the lock to the decision (or what the caller
measured, e.g. a web page open time).

These functions are what the CLI (``tuneloop review``) and the web UI call.
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

import sqlalchemy as sa
from sqlalchemy.orm import Session

from tuneloop.errors import TuneloopError
from tuneloop.store import REVIEW_STATUSES, DatasetEntry, RequestLog, ReviewItem, session_scope, utcnow
from tuneloop.task import Task, load_task

LOCK_SECONDS = 300.0
DECISIONS = ("approved", "corrected", "rejected")


class ItemLocked(TuneloopError):
    """Another reviewer holds the item's lock."""

    def __init__(self, item_id: int, holder: str, expires_at: datetime) -> None:
        seconds = max(0, math.ceil((expires_at - utcnow()).total_seconds()))
        super().__init__(
            f"review item {item_id} is locked by {holder!r} until {expires_at:%Y-%m-%d %H:%M:%S} UTC "
            f"({seconds} s from now)",
            where=f"review item {item_id}",
            hint="pick another item (`tuneloop review list`), or wait until the lock expires",
        )
        self.item_id, self.holder, self.expires_at = item_id, holder, expires_at


@dataclass(frozen=True)
class ReviewView:
    """One review item as the CLI and UI show it (plain values; no session needed)."""

    id: int
    task: str
    status: str
    reason: str
    model: str | None
    messages: list[dict[str, Any]]
    draft_text: str | None
    draft_fields: dict[str, Any] | None
    failed_checks: list[str]
    confidence: float | None
    request_id: int | None
    capture_id: str | None
    entry_id: int | None
    locked_by: str | None
    lock_expires_at: datetime | None
    reviewer: str | None
    correction: dict[str, Any] | str | None  # a text task's: the corrected text
    note: str | None
    verified_entry_id: int | None
    time_spent_s: float | None
    created_at: datetime
    resolved_at: datetime | None

    def is_locked(self, now: datetime | None = None) -> bool:
        return bool(self.locked_by and self.lock_expires_at and self.lock_expires_at > (now or utcnow()))

    @property
    def fields(self) -> dict[str, Any] | None:
        """What a person decided the answer is (the correction, else the approved draft), else the draft
        (None for a text task's: its answer is text)."""
        if isinstance(self.correction, str):
            return None
        return self.correction if self.correction is not None else self.draft_fields


@dataclass(frozen=True)
class Decision:
    """What a resolution did: the item afterwards, and the dataset entry it became (if any)."""

    item: ReviewView
    dataset: str | None
    entry_id: int | None
    # The task's plausibility checks the verified answer still fails (kept, but not trained on).
    check_failures: list[str]
    duplicate: bool = False  # the dataset already held exactly this answer to this input


# --- creating and reading --------------------------------------------------------------------------


def create_item(
    *,
    task: str,
    request: dict[str, Any] | None,
    draft_text: str | None,
    draft_fields: dict[str, Any] | None,
    failed_checks: list[str],
    model: str | None,
    reason: str = "check_failed",
    confidence: float | None = None,
    request_id: int | None = None,
    capture_id: str | None = None,
    entry_id: int | None = None,
    url: str | None = None,
) -> int:
    """Queue an answer for review; returns the item id."""
    if reason not in ("check_failed", "audit"):
        raise TuneloopError(f"unknown review reason {reason!r}", hint="use check_failed or audit")
    with session_scope(url) as session:
        item = ReviewItem(
            task=task,
            request=request,
            draft={"content": draft_text, "fields": draft_fields},
            failed_checks=list(failed_checks),
            model_resolved=model[:255] if model else None,
            reason=reason,
            confidence=confidence,
            request_id=request_id,
            capture_id=capture_id,
            entry_id=entry_id,
            status="pending",
        )
        session.add(item)
        session.flush()
        return item.id


def get_item(item_id: int, *, url: str | None = None) -> ReviewView:
    """One item; TuneloopError when there is none with this id."""
    with session_scope(url) as session:
        return _view(session, _get(session, item_id))


def list_items(
    *,
    status: str | None = "pending",
    task: str | None = None,
    model: str | None = None,
    limit: int = 50,
    offset: int = 0,
    url: str | None = None,
) -> list[ReviewView]:
    """Items oldest first (the queue's order), filtered by status (None: all), task and drafting model."""
    if status is not None and status not in REVIEW_STATUSES:
        raise TuneloopError(f"unknown status {status!r}", where="--status", hint=f"use one of {REVIEW_STATUSES}")
    with session_scope(url) as session:
        query = sa.select(ReviewItem)
        if status is not None:
            query = query.where(ReviewItem.status == status)
        if task is not None:
            query = query.where(ReviewItem.task == task)
        if model is not None:
            query = query.where(ReviewItem.model_resolved == model)
        query = query.order_by(ReviewItem.created_at, ReviewItem.id).offset(offset).limit(limit)
        return [_view(session, item) for item in session.scalars(query)]


def queue_depth(*, url: str | None = None) -> dict[str, int]:
    """Pending items per drafting model (``-`` when unknown)."""
    with session_scope(url) as session:
        rows = session.execute(
            sa.select(ReviewItem.model_resolved, sa.func.count())
            .where(ReviewItem.status == "pending")
            .group_by(ReviewItem.model_resolved)
        ).all()
    return {model or "-": count for model, count in rows}


def link_capture(item_id: int, capture_id: str, *, url: str | None = None) -> None:
    """Tie an item a tuneloop server created to the gateway call in front of it (whose log row is written
    later), so a correction links to that logged call."""
    table = ReviewItem.__table__
    with session_scope(url) as session:
        session.execute(
            sa.update(table).where(table.c.id == item_id, table.c.capture_id.is_(None)).values(capture_id=capture_id)
        )


# --- the lock --------------------------------------------------------------------------------------


def lock_item(
    item_id: int, reviewer: str, *, seconds: float = LOCK_SECONDS, now: datetime | None = None, url: str | None = None
) -> ReviewView:
    """Take (or renew) the item's lock for ``seconds``; :class:`ItemLocked` when someone else holds it.

    Renewing keeps the original ``locked_at``, so time spent counts from when the reviewer started.
    """
    reviewer = _reviewer(reviewer)
    now = now or utcnow()
    expires = now + timedelta(seconds=seconds)
    table = ReviewItem.__table__
    with session_scope(url) as session:
        free = sa.or_(table.c.locked_by.is_(None), table.c.lock_expires_at <= now)
        pending = sa.and_(table.c.id == item_id, table.c.status == "pending")
        taken = session.execute(
            sa.update(table)
            .where(pending, free)
            .values(locked_by=reviewer, locked_at=now, lock_expires_at=expires)
        ).rowcount  # fmt: skip
        if not taken:
            taken = session.execute(
                sa.update(table)
                .where(pending, table.c.locked_by == reviewer)
                .values(lock_expires_at=expires)
            ).rowcount  # fmt: skip
        item = _get(session, item_id)
        session.refresh(item)
        if not taken:
            _refuse(item, reviewer, now)
        return _view(session, item)


def release_item(item_id: int, reviewer: str, *, url: str | None = None) -> None:
    """Give the lock back without a decision (a no-op when the reviewer does not hold it)."""
    table = ReviewItem.__table__
    with session_scope(url) as session:
        _get(session, item_id)
        session.execute(
            sa.update(table)
            .where(table.c.id == item_id, table.c.locked_by == _reviewer(reviewer))
            .values(locked_by=None, locked_at=None, lock_expires_at=None)
        )


# --- decisions -------------------------------------------------------------------------------------


def approve_item(
    item_id: int,
    reviewer: str,
    *,
    dataset: str | None = None,
    to_dataset: bool = True,
    seconds: float | None = None,
    note: str | None = None,
    url: str | None = None,
) -> Decision:
    """The draft is right: record it, and add it to a dataset as a human-verified entry."""
    item = get_item(item_id, url=url)
    if _task(item.task).is_text:  # a free-text draft is approved as its text
        if not (item.draft_text or "").strip():
            raise TuneloopError(
                f"review item {item_id}: the draft is empty, so there is nothing to approve",
                where=f"review item {item_id}",
                hint=f"correct it instead: tuneloop review correct {item_id} --set text=...",
            )
    elif item.draft_fields is None:
        raise TuneloopError(
            f"review item {item_id}: the draft is not a JSON object of the task's fields, so it cannot be approved",
            where=f"review item {item_id}",
            hint=f"correct it instead: tuneloop review correct {item_id} --set FIELD=VALUE ...",
        )
    return _decide(item_id, reviewer, "approved", None, dataset, to_dataset, seconds, note, url)


def correct_item(
    item_id: int,
    reviewer: str,
    changes: dict[str, Any],
    *,
    dataset: str | None = None,
    to_dataset: bool = True,
    seconds: float | None = None,
    note: str | None = None,
    url: str | None = None,
) -> Decision:
    """Change fields of the draft (values already typed; see :func:`parse_field_value`), record the
    corrected answer, and add it to a dataset as a human-verified entry.

    The corrected answer must fit the task's output schema; fields not named keep the draft's value
    (null where the draft did not parse).
    """
    item = get_item(item_id, url=url)
    spec = _task(item.task)
    if spec.is_text:  # the answer is one text: the correction is that text (stored as a JSON string)
        text = changes.get("text")
        if set(changes) != {"text"} or not isinstance(text, str) or not text.strip():
            raise TuneloopError(
                f"task {item.task} answers in free text: the correction is the whole answer, as `text`",
                where=f"review item {item_id}",
                hint=f"tuneloop review correct {item_id} --set text='<the answer it should have given>'",
            )
        return _decide(item_id, reviewer, "corrected", text.strip(), dataset, to_dataset, seconds, note, url)
    unknown = sorted(set(changes) - set(spec.field_names))
    if unknown:
        raise TuneloopError(
            f"{', '.join(unknown)}: not a field of task {item.task}",
            where=f"review item {item_id}",
            hint=f"fields: {', '.join(spec.field_names)}",
        )
    if not changes:
        raise TuneloopError(
            "no field changed", where=f"review item {item_id}", hint="use approve when the draft is right"
        )
    start = item.draft_fields if item.draft_fields is not None else {}
    corrected = {name: start.get(name) for name in spec.field_names}
    corrected.update(changes)
    problems = spec.schema_errors(corrected)
    if problems:
        raise TuneloopError(
            "the corrected answer does not fit the task's output schema: " + "; ".join(problems),
            where=f"review item {item_id}",
            hint="give each field a value of its schema type (null where the text does not say)",
        )
    return _decide(item_id, reviewer, "corrected", corrected, dataset, to_dataset, seconds, note, url)


def reject_item(
    item_id: int, reviewer: str, *, note: str | None = None, seconds: float | None = None, url: str | None = None
) -> Decision:
    """Not an example worth keeping (spam, an input the task does not cover): no dataset entry."""
    return _decide(item_id, reviewer, "rejected", None, None, False, seconds, note, url)


def parse_field_value(task: Task | str, field: str, text: str) -> Any:
    """A reviewer's typed text as the field's JSON value: ``null``, numbers for number fields, JSON for
    arrays/objects, else the string (quotes optional). TuneloopError names the field when it won't do."""
    spec = _task(task) if isinstance(task, str) else task
    if spec.is_text and field == "text":  # a free-text answer, as typed
        return text.strip()
    if field not in spec.field_names:
        raise TuneloopError(
            f"{field!r} is not a field of task {spec.name}", where=field, hint=f"fields: {', '.join(spec.field_names)}"
        )
    stripped = text.strip()
    if stripped in ("null", "None", ""):
        return None
    kinds = spec.output_schema["properties"][field].get("type", [])
    kinds = [kinds] if isinstance(kinds, str) else list(kinds)
    if "number" in kinds or "integer" in kinds:
        cleaned = re.sub(r"[,$%\s]", "", stripped)
        try:
            value = float(cleaned)
        except ValueError:
            if "string" not in kinds:
                raise TuneloopError(
                    f"{text!r} is not a number", where=field, hint="write e.g. 1234.56 or null"
                ) from None
        else:
            return int(value) if "integer" in kinds and value.is_integer() else value
    if "boolean" in kinds and stripped.lower() in ("true", "false"):
        return stripped.lower() == "true"
    if ("array" in kinds or "object" in kinds) and stripped[:1] in "[{":
        try:
            return json.loads(stripped)
        except json.JSONDecodeError as exc:
            raise TuneloopError(f"not valid JSON: {exc.msg}", where=field) from None
    if len(stripped) >= 2 and stripped[0] == stripped[-1] and stripped[0] in "\"'":
        return stripped[1:-1]
    return stripped


# --- internals -------------------------------------------------------------------------------------


def _decide(
    item_id: int,
    reviewer: str,
    status: str,
    correction: dict[str, Any] | str | None,  # a text task's correction is the answer's text
    dataset: str | None,
    to_dataset: bool,
    seconds: float | None,
    note: str | None,
    url: str | None,
) -> Decision:
    from tuneloop.data.datasets import (
        DEFAULT_TEST_FRACTION,
        EntryDraft,
        add_entries,
        get_or_create_dataset,
        request_options,
    )

    reviewer = _reviewer(reviewer)
    now = utcnow()
    table = ReviewItem.__table__
    with session_scope(url) as session:
        item = _get(session, item_id)
        if item.status != "pending":
            raise TuneloopError(
                f"review item {item_id} was already {item.status} by {item.reviewer or 'someone'}"
                + (f" at {item.resolved_at:%Y-%m-%d %H:%M:%S} UTC" if item.resolved_at else ""),
                where=f"review item {item_id}",
                hint="list what is still pending with `tuneloop review list`",
            )
        held_by_me = item.locked_by == reviewer and item.lock_expires_at is not None and item.lock_expires_at > now
        started = item.locked_at if held_by_me else None
        spent = seconds if seconds is not None else ((now - started).total_seconds() if started else 0.0)
        free = sa.or_(table.c.locked_by.is_(None), table.c.lock_expires_at <= now, table.c.locked_by == reviewer)
        done = session.execute(
            sa.update(table)
            .where(table.c.id == item_id, table.c.status == "pending", free)
            .values(
                status=status,
                reviewer=reviewer,
                correction=correction,
                note=note,
                time_spent_s=max(0.0, spent),
                resolved_at=now,
                locked_by=None,
                locked_at=None,
                lock_expires_at=None,
            )
        ).rowcount
        session.refresh(item)
        if not done:
            _refuse(item, reviewer, now)

        entry_id, dataset_name, failures, duplicate = None, None, [], False
        if to_dataset and status in ("approved", "corrected"):
            spec = _task(item.task)
            fields = correction if correction is not None else (item.draft or {}).get("fields")
            if spec.is_text:
                content = correction if isinstance(correction, str) else (item.draft or {}).get("content") or ""
            else:
                content = spec.answer_json(fields if isinstance(fields, dict) else {})
            messages = _prompt(session, item)
            if not messages:
                raise TuneloopError(
                    f"review item {item_id} has no request messages to pair the answer with",
                    where=f"review item {item_id}",
                    hint="decide it without a dataset entry (to_dataset=False / --no-dataset)",
                )
            request_id = _request_id(session, item)
            parent = session.get(DatasetEntry, item.entry_id) if item.entry_id else None
            if dataset is None and parent is not None:
                dataset_name = parent.dataset.name
            else:
                dataset_name = dataset or f"{item.task}-reviewed"
            target = get_or_create_dataset(session, dataset_name, item.task, description="human-verified reviews")
            draft = EntryDraft(
                messages=[*messages, {"role": "assistant", "content": content}],
                provenance="human",
                options=request_options(item.request or {}),
                source_request_id=request_id,
                parent_entry_id=item.entry_id,
                where=f"review item {item_id}",
            )
            added = add_entries(session, target, [draft], spec, DEFAULT_TEST_FRACTION)
            if added.entry_ids:
                entry_id = added.entry_ids[0]
                failures = session.get_one(DatasetEntry, entry_id).check_failures or []
            else:  # this exact answer to this input is already there: link to it
                duplicate = True
                entry_id = _existing_entry(session, target.id, draft, spec)
            item.verified_entry_id = entry_id
            item.request_id = request_id
        session.flush()
        return Decision(_view(session, item), dataset_name, entry_id, failures, duplicate)


def _existing_entry(session: Session, dataset_id: int, draft: Any, spec: Task) -> int | None:
    from tuneloop.data.datasets import clean_message, input_hash, judge_answer, output_hash

    prompt = [clean_message(m) for m in draft.messages[:-1]]
    answer, _, _ = judge_answer(spec, draft.messages[-1])
    return session.scalar(
        sa.select(DatasetEntry.id).where(
            DatasetEntry.dataset_id == dataset_id,
            DatasetEntry.input_hash == input_hash(prompt, draft.options),
            DatasetEntry.output_hash == output_hash(answer),
        )
    )


def _request_id(session: Session, item: ReviewItem) -> int | None:
    """The logged call: known, or found by the gateway's capture id (its row is written after the answer)."""
    if item.request_id is not None or item.capture_id is None:
        return item.request_id
    return session.scalar(sa.select(RequestLog.id).where(RequestLog.capture_id == item.capture_id))


def _prompt(session: Session, item: ReviewItem) -> list[dict[str, Any]]:
    """The messages before the answer: the request's, else (an item made from a dataset entry) the entry's."""
    messages = (item.request or {}).get("messages")
    if isinstance(messages, list) and messages:
        return messages
    entry = session.get(DatasetEntry, item.entry_id) if item.entry_id is not None else None
    return list(entry.messages[:-1]) if entry is not None else []


def _refuse(item: ReviewItem, reviewer: str, now: datetime) -> None:
    if item.status != "pending":
        raise TuneloopError(
            f"review item {item.id} was already {item.status} by {item.reviewer or 'someone'}",
            where=f"review item {item.id}",
            hint="list what is still pending with `tuneloop review list`",
        )
    if item.locked_by and item.locked_by != reviewer and item.lock_expires_at and item.lock_expires_at > now:
        raise ItemLocked(item.id, item.locked_by, item.lock_expires_at)
    raise TuneloopError(f"review item {item.id} changed while it was being updated", hint="try again")


def _get(session: Session, item_id: int) -> ReviewItem:
    item = session.get(ReviewItem, item_id)
    if item is None:
        raise TuneloopError(
            f"no review item {item_id}", where=f"review item {item_id}", hint="see `tuneloop review list --all`"
        )
    return item


def _reviewer(name: str) -> str:
    name = (name or "").strip()
    if not name:
        raise TuneloopError("a reviewer name is required", where="--reviewer", hint="pass --reviewer NAME or set $USER")
    return name[:255]


def _task(name: str) -> Task:
    # Read each time: a long-running UI should see an edited task spec.
    return load_task(name)


def _view(session: Session, item: ReviewItem) -> ReviewView:
    draft = item.draft or {}
    messages = _prompt(session, item)
    return ReviewView(
        id=item.id,
        task=item.task,
        status=item.status,
        reason=item.reason,
        model=item.model_resolved,
        messages=messages,
        draft_text=draft.get("content"),
        draft_fields=draft.get("fields"),
        failed_checks=[str(check) for check in item.failed_checks or []],
        confidence=item.confidence,
        request_id=item.request_id if item.request_id is not None else _request_id(session, item),
        capture_id=item.capture_id,
        entry_id=item.entry_id,
        locked_by=item.locked_by,
        lock_expires_at=item.lock_expires_at,
        reviewer=item.reviewer,
        correction=item.correction,
        note=item.note,
        verified_entry_id=item.verified_entry_id,
        time_spent_s=item.time_spent_s,
        created_at=item.created_at,
        resolved_at=item.resolved_at,
    )

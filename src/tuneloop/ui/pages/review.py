"""The review queue: the list, and one item with a field editor (approve the draft, or correct it).

All the work is the review library's (``tuneloop.review.queue``): the 5-minute lock, approving,
correcting, rejecting, and turning a decision into a human-verified dataset entry. This module only
reads the form and shows the result. Opening an item (a GET) changes nothing: an admin takes its lock with
the page's "Review this item" button (a POST with the CSRF token, as ``tuneloop review show --lock``), and
after each decision the next pending item is locked for them before the editor moves on to it, so two
people do not work on one item and the keyboard flow needs no extra step. Read-only keys only see items.

Field values are typed as text, one input per output field: an empty input means null, numbers may carry
``$``, ``,`` or ``%``, and ``parse_field_value`` turns the text into the field's JSON value. Only fields
whose text was changed count as corrections, so an untouched field keeps the draft's exact value.
"""

from __future__ import annotations

import contextlib
import json
from typing import Any

import sqlalchemy as sa
from fastapi import APIRouter, Depends, Request
from fastapi.responses import HTMLResponse, Response
from starlette.concurrency import run_in_threadpool

from tuneloop.errors import TuneloopError
from tuneloop.review import (
    ItemLocked,
    ReviewView,
    approve_item,
    correct_item,
    get_item,
    list_items,
    lock_item,
    parse_field_value,
    reject_item,
    release_item,
)
from tuneloop.store import REVIEW_STATUSES, Dataset, DatasetEntry, session_scope, utcnow
from tuneloop.task import Task, load_task
from tuneloop.ui import web
from tuneloop.ui.auth import User

router = APIRouter()
PAGE_SIZE = 50
FIELD_PREFIX = "field."


def field_text(value: Any) -> str:
    """A field's value as the editor shows it; ``parse_field_value`` reads it back to the same value."""
    if value is None:
        return ""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float) and value.is_integer():
        return str(int(value)) if abs(value) < 1e15 else repr(value)
    if isinstance(value, int | float | str):
        return str(value)
    return json.dumps(value, ensure_ascii=False)


def _field_rows(task: Task, item: ReviewView) -> list[dict[str, Any]]:
    if task.is_text:  # one row: the whole answer, as text (a correction replaces it)
        corrected = isinstance(item.correction, str)
        shown_text = item.correction if isinstance(item.correction, str) else item.draft_text or ""
        return [
            {
                "name": "text",
                "kinds": "free text",
                "numeric": False,
                "text": shown_text,
                "draft": item.draft_text or "",
                "changed": corrected and shown_text != (item.draft_text or ""),
            }
        ]
    shown = item.fields or {}
    draft = item.draft_fields or {}
    rows = []
    for name in task.field_names:
        schema = task.output_schema.get("properties", {}).get(name, {})
        kinds = schema.get("type", [])
        kinds = [kinds] if isinstance(kinds, str) else list(kinds)
        rows.append(
            {
                "name": name,
                "kinds": " | ".join(kinds) or "any",
                "numeric": "number" in kinds or "integer" in kinds,
                "text": field_text(shown.get(name)),
                "draft": field_text(draft.get(name)),
                "changed": item.correction is not None and shown.get(name) != draft.get(name),
            }
        )
    return rows


def _verified_dataset(entry_id: int | None) -> str | None:
    if entry_id is None:
        return None
    with session_scope() as session:
        return session.scalar(
            sa.select(Dataset.name)
            .join(DatasetEntry, DatasetEntry.dataset_id == Dataset.id)
            .where(DatasetEntry.id == entry_id)
        )


def _next_pending(after: int) -> int | None:
    """The next item in queue order that nobody else is working on, for the editor's "next" flow."""
    for item in list_items(status="pending", limit=PAGE_SIZE):
        if item.id != after and not item.is_locked():
            return item.id
    return None


def _load(item_id: int) -> ReviewView:
    try:
        return get_item(item_id)
    except TuneloopError as exc:
        raise web.NotFound(str(exc)) from None


@router.get("/review", response_class=HTMLResponse)
def list_page(request: Request, status: str = "pending", task: str = "", page: int = 0) -> HTMLResponse:
    chosen = status if status in REVIEW_STATUSES else None  # anything else: every status
    page = max(0, page)
    items = list_items(status=chosen, task=task or None, limit=PAGE_SIZE + 1, offset=page * PAGE_SIZE)
    return web.render(
        request,
        "review_list.html",
        items=items[:PAGE_SIZE],
        more=len(items) > PAGE_SIZE,
        page=page,
        statuses=REVIEW_STATUSES,
        query={"status": chosen or "all", "task": task},
    )


@router.get("/review/{item_id}", response_class=HTMLResponse)
def item_page(request: Request, item_id: int) -> HTMLResponse:
    user: User = request.state.user
    item = _load(item_id)  # only read: the lock is taken by the POST below
    reviewing = user.is_admin and item.status == "pending"
    mine = item.is_locked() and item.locked_by == user.name
    lock_problem = None
    if reviewing and item.is_locked() and not mine:
        lock_problem = ItemLocked(item.id, item.locked_by or "", item.lock_expires_at or utcnow()).message
    task = load_task(item.task)
    return web.render(
        request,
        "review_item.html",
        item=item,
        fields=_field_rows(task, item),
        editable=reviewing and mine,
        can_lock=reviewing and not item.is_locked(),
        lock_problem=lock_problem,
        verified_dataset=_verified_dataset(item.verified_entry_id),
    )


@router.post("/review/{item_id}/lock")
async def take_lock(request: Request, item_id: int, user: User = Depends(web.current_user)) -> Response:
    """Start reviewing: take (or renew) the item's 5-minute lock, then show it in the editor."""
    await web.checked_form(request)
    web.require_admin(user, "reviewing")
    try:
        await run_in_threadpool(lock_item, item_id, user.name)
    except TuneloopError as exc:  # someone else holds it, or it was decided meanwhile
        web.flash(request, str(exc), "error")
    return web.redirect(request, f"/review/{item_id}")


@router.post("/review/{item_id}/decide")
async def decide(request: Request, item_id: int, user: User = Depends(web.current_user)) -> Response:
    form = await web.checked_form(request)
    web.require_admin(user, "reviewing")
    action = form.get("action", "correct")
    note = form.get("note", "").strip() or None
    try:
        decision = await run_in_threadpool(_decide, item_id, user.name, action, form, note)
    except TuneloopError as exc:
        web.flash(request, str(exc), "error")
        return web.redirect(request, f"/review/{item_id}")
    if decision is None:
        web.flash(request, f"Released item {item_id}.")
    else:
        where = f" → dataset {decision.dataset}, entry #{decision.entry_id}" if decision.entry_id else ""
        warn = f" (still fails: {'; '.join(decision.check_failures)})" if decision.check_failures else ""
        web.flash(request, f"Item {item_id} {decision.item.status}{where}{warn}.")
    following = await run_in_threadpool(_next_pending, item_id)
    if following is None:
        return web.redirect(request, "/review")
    # The editor moves on to the next item: lock it for this reviewer now, in this POST (if it was taken or
    # decided meanwhile, its page says so).
    with contextlib.suppress(TuneloopError):
        await run_in_threadpool(lock_item, following, user.name)
    return web.redirect(request, f"/review/{following}")


def _decide(item_id: int, reviewer: str, action: str, form: dict[str, str], note: str | None) -> Any:
    item = get_item(item_id)
    task = load_task(item.task)
    draft = item.draft_fields or {}
    # A text task's answer is one field, `text`: the draft's text.
    names = ["text"] if task.is_text else task.field_names
    drafted = {"text": item.draft_text or ""} if task.is_text else {n: field_text(draft.get(n)) for n in names}
    # Only what the reviewer actually edited: compare the submitted text with the draft's text.
    changes = {
        name: parse_field_value(task, name, form[FIELD_PREFIX + name])
        for name in names
        if FIELD_PREFIX + name in form and form[FIELD_PREFIX + name].strip() != drafted[name].strip()
    }
    if action == "approve":
        if changes:
            raise TuneloopError(
                f"you changed {', '.join(sorted(changes))}: save the correction instead, or undo the change",
                where=f"review item {item_id}",
            )
        return approve_item(item_id, reviewer, note=note)
    if action == "correct":
        return correct_item(item_id, reviewer, changes, note=note)
    if action == "reject":
        return reject_item(item_id, reviewer, note=note)
    if action == "release":
        release_item(item_id, reviewer)
        return None
    raise TuneloopError(f"unknown action {action!r}", where=f"review item {item_id}")

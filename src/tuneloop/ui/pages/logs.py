"""Request logs: the captured calls, filtered by model, tag and status; one call in full."""

from __future__ import annotations

import sqlalchemy as sa
from fastapi import APIRouter, Request
from fastapi.responses import HTMLResponse

from tuneloop.errors import TuneloopError
from tuneloop.store import RequestLog, session_scope
from tuneloop.store.logs import STATUSES, LogFilter, apply_filter, build_filter, count_logs, log_to_json
from tuneloop.ui import web

router = APIRouter()
PAGE_SIZE = 50


def tag_filters(tag: str) -> list[str]:
    """``task=x, nightly`` → ``["tag.task=x", "tag.nightly"]``: the CLI's ``--filter`` grammar."""
    return [f"tag.{part.strip()}" for part in tag.split(",") if part.strip()]


def _page(log_filter: LogFilter, before: int | None) -> list[RequestLog]:
    with session_scope() as session:
        query = apply_filter(session, sa.select(RequestLog), log_filter)
        if before is not None:
            # Keyset paging on the id: stable while new calls keep arriving at the top.
            query = query.where(RequestLog.id < before)
        return list(session.scalars(query.order_by(RequestLog.id.desc()).limit(PAGE_SIZE)))


@router.get("/logs", response_class=HTMLResponse)
def list_page(
    request: Request, model: str = "", tag: str = "", status: str = "", before: int | None = None
) -> HTMLResponse:
    query = {"model": model.strip(), "tag": tag.strip(), "status": status.strip()}
    rows: list[RequestLog] = []
    total, error = 0, None
    try:
        log_filter = build_filter(
            tag_filters(query["tag"]), model=query["model"] or None, status=query["status"] or None
        )
        rows = _page(log_filter, before)
        total = count_logs(log_filter)
    except TuneloopError as exc:
        error = str(exc)
    older = rows[-1].id if len(rows) == PAGE_SIZE else None
    return web.render(
        request,
        "logs.html",
        rows=rows,
        total=total,
        error=error,
        query=query,
        statuses=STATUSES,
        before=before,
        older=older,
    )


@router.get("/logs/{log_id}", response_class=HTMLResponse)
def show_page(request: Request, log_id: int) -> HTMLResponse:
    with session_scope() as session:
        row = session.get(RequestLog, log_id)
    if row is None:
        raise web.NotFound(f"no logged call with id {log_id}")
    return web.render(request, "log.html", row=row, record=log_to_json(row))

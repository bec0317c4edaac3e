"""The start page: how much of each thing the store holds, with links into each section."""

from __future__ import annotations

import sqlalchemy as sa
from fastapi import APIRouter, Request
from fastapi.responses import HTMLResponse

from tuneloop.store import Dataset, EvalRun, ModelVersion, RequestLog, ReviewItem, session_scope
from tuneloop.ui import web

router = APIRouter()


@router.get("/", response_class=HTMLResponse)
def home(request: Request) -> HTMLResponse:
    def count(model: type, *where: sa.ColumnElement[bool]) -> int:
        return int(session.scalar(sa.select(sa.func.count()).select_from(model).where(*where)) or 0)

    with session_scope() as session:
        counts = {
            "requests": count(RequestLog),
            "errors": count(RequestLog, RequestLog.status == "error"),
            "datasets": count(Dataset),
            "eval_runs": count(EvalRun),
            "versions": count(ModelVersion),
            "review_open": count(ReviewItem, ReviewItem.status == "pending"),
        }
    return web.render(request, "home.html", counts=counts)

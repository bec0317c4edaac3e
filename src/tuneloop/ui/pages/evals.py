"""Eval runs: the list, and one run shown through the evals stage's own HTML report.

The report (verdict table, price-performance scatter, latency CDF, per-field errors) is exactly the page
``tuneloop eval show RUN --html`` writes, made by ``evals.report.write_html``; the UI frames it rather
than drawing its own copy, so the two can never disagree.
"""

from __future__ import annotations

import tempfile
import threading
from collections import OrderedDict
from pathlib import Path

from fastapi import APIRouter, Request
from fastapi.responses import HTMLResponse, JSONResponse, Response

from tuneloop.config import get_settings
from tuneloop.errors import TuneloopError
from tuneloop.evals.report import run_rows, write_html
from tuneloop.evals.results import EvalReport, build_report
from tuneloop.evals.store import RunInfo, get_run, list_runs, run_results
from tuneloop.ui import web

router = APIRouter()
RUNS_SHOWN = 200
_CACHED_REPORTS = 16

# Drawing the plots takes a second or so; a finished run's report never changes, so keep a few.
# The report is a complete page of its own with no scripts, so none are allowed in it.
REPORT_POLICY = "default-src 'none'; img-src data:; style-src 'unsafe-inline'; frame-ancestors 'self'"

_reports: OrderedDict[tuple[str, int, str, str, int], str] = OrderedDict()
_reports_lock = threading.Lock()


def _load(run_id: int) -> tuple[RunInfo, EvalReport, int]:
    try:
        run = get_run(run_id)
    except TuneloopError as exc:
        raise web.NotFound(str(exc)) from None
    results = run_results(run_id)
    return run, build_report(run, results), len(results)


@router.get("/evals", response_class=HTMLResponse)
def list_page(request: Request) -> HTMLResponse:
    runs = list_runs(limit=RUNS_SHOWN)
    return web.render(request, "evals.html", rows=run_rows(runs))


@router.get("/evals/{run_id}", response_class=HTMLResponse)
def show_page(request: Request, run_id: int) -> HTMLResponse:
    run, report, answers = _load(run_id)
    return web.render(request, "eval.html", run=run, report=report, answers=answers)


@router.get("/evals/{run_id}/report.html")
def report_page(run_id: int) -> Response:
    run, report, answers = _load(run_id)
    if not report.models:
        return HTMLResponse("<p>No results yet.</p>")
    # The store's URL and the run's creation time too: another store (or a recreated one) reuses run ids.
    key = (get_settings().database_url, run.id, run.created_at.isoformat(), run.status, answers)
    with _reports_lock:
        html = _reports.get(key)
    if html is None:
        with tempfile.TemporaryDirectory(prefix="tuneloop-ui-") as folder:
            path = Path(folder) / "report.html"
            write_html(report, path)
            html = path.read_text(encoding="utf-8")
        with _reports_lock:
            _reports[key] = html
            while len(_reports) > _CACHED_REPORTS:
                _reports.popitem(last=False)
    return HTMLResponse(
        html,
        headers={
            "Content-Security-Policy": REPORT_POLICY,
            "Cache-Control": "no-store",
        },
    )


@router.get("/evals/{run_id}/report.json")
def report_json(run_id: int) -> JSONResponse:
    _run, report, _answers = _load(run_id)
    return JSONResponse(report.to_dict(), headers={"Cache-Control": "no-store"})

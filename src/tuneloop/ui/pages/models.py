"""Model versions and aliases: every version of each task, where each alias points, its running canaries
and shadows with their latest figures (and a stop button), its audit trail, and promote / rollback through
the registry's own functions, each behind a confirmation page.

The confirmation pages are GETs that change nothing; only their POST (with the CSRF token, by an admin
key) moves an alias. The actor recorded in the audit trail is the name of the key that is logged in.
"""

from __future__ import annotations

from collections import defaultdict

import sqlalchemy as sa
from fastapi import APIRouter, Depends, Request
from fastapi.responses import HTMLResponse, Response
from starlette.concurrency import run_in_threadpool

from tuneloop.errors import TuneloopError
from tuneloop.licenses import license_allowed
from tuneloop.registry.promotion import alias_history, allowed_licenses, promote, rollback
from tuneloop.registry.rollouts import list_rollouts, stop_rollout, summarize_figures
from tuneloop.registry.versions import ModelVersionInfo, list_versions, version_base_license
from tuneloop.store import Alias, ModelVersion, session_scope
from tuneloop.ui import web
from tuneloop.ui.auth import User

router = APIRouter()


def _aliases(task: str | None = None) -> dict[str, dict[str, str]]:
    """task → alias → ``task@N`` it points at."""
    with session_scope() as session:
        query = sa.select(Alias.task, Alias.alias, ModelVersion.version).join(
            ModelVersion, Alias.version_id == ModelVersion.id
        )
        if task is not None:
            query = query.where(Alias.task == task)
        result: dict[str, dict[str, str]] = defaultdict(dict)
        for row in session.execute(query.order_by(Alias.task, Alias.alias)):
            result[row.task][row.alias] = f"{row.task}@{row.version}"
    return result


def _by_version(aliases: dict[str, str]) -> dict[str, list[str]]:
    pointing: dict[str, list[str]] = defaultdict(list)
    for alias, target in aliases.items():
        pointing[target].append(alias)
    return pointing


def _versions_of(task: str) -> list[ModelVersionInfo]:
    versions = list_versions(task)
    if not versions:
        raise web.NotFound(f"task {task} has no registered versions")
    return versions


@router.get("/models", response_class=HTMLResponse)
def list_page(request: Request) -> HTMLResponse:
    tasks: dict[str, list[ModelVersionInfo]] = defaultdict(list)
    for info in list_versions():
        tasks[info.task].append(info)
    aliases = _aliases()
    running = [rollout for rollout in list_rollouts() if rollout.active]
    return web.render(
        request,
        "models.html",
        tasks=[(task, versions, aliases.get(task, {})) for task, versions in sorted(tasks.items())],
        running={task: [r for r in running if r.task == task] for task in tasks},
        summarize=summarize_figures,
    )


@router.get("/models/{task}", response_class=HTMLResponse)
def task_page(request: Request, task: str) -> HTMLResponse:
    versions = _versions_of(task)
    aliases = _aliases(task).get(task, {})
    try:
        allowed = allowed_licenses(task)
    except TuneloopError:  # a task file that does not parse: the page still shows the versions
        allowed = None
    licenses = {info.id: version_base_license(info) for info in versions}
    return web.render(
        request,
        "model_task.html",
        task=task,
        versions=list(reversed(versions)),
        aliases=aliases,
        pointing=_by_version(aliases),
        history=list(reversed(alias_history(task))),
        rollouts=[rollout for rollout in list_rollouts(task) if rollout.active],
        summarize=summarize_figures,
        licenses=licenses,
        allowed=allowed,
        refused={name for name, found in licenses.items() if not license_allowed(found.id, allowed)},
    )


@router.get("/models/{task}/promote", response_class=HTMLResponse)
def confirm_promote(request: Request, task: str, version: str = "", alias: str = "prod") -> HTMLResponse:
    user: User = request.state.user
    web.require_admin(user, "promoting a version")
    versions = {info.id: info for info in _versions_of(task)}
    target = version if "@" in version else f"{task}@{version}"
    if target not in versions:
        raise web.NotFound(f"{target} is not a registered version of {task}")
    alias = alias.strip()
    current = _aliases(task).get(task, {}).get(alias)
    return web.render(
        request,
        "confirm_move.html",
        action="promote",
        task=task,
        alias=alias,
        current=current,
        target=target,
        problem=None,
    )


@router.post("/models/{task}/promote")
async def do_promote(request: Request, task: str, user: User = Depends(web.current_user)) -> Response:
    form = await web.checked_form(request)
    web.require_admin(user, "promoting a version")
    alias = form.get("alias", "").strip()
    try:
        move = await run_in_threadpool(
            promote, task, form.get("version", ""), alias, actor=user.name, reason=form.get("reason") or None
        )
    except TuneloopError as exc:
        web.flash(request, str(exc), "error")
    else:
        web.flash(request, f"{task}@{move.alias}: {move.from_version or '(new)'} → {move.to_version}")
    return web.redirect(request, f"/models/{task}")


@router.get("/models/{task}/rollback", response_class=HTMLResponse)
def confirm_rollback(request: Request, task: str, alias: str = "prod") -> HTMLResponse:
    user: User = request.state.user
    web.require_admin(user, "rolling back an alias")
    history = [move for move in alias_history(task, alias) if move.kind == "move"]  # what rollback reads
    current = _aliases(task).get(task, {}).get(alias)
    target = history[-1].from_version if history else None
    problem = None
    if not history:
        problem = f"{task}@{alias} has never been moved."
    elif target is None:
        problem = f"{task}@{alias} has no earlier version to roll back to (its last move created it)."
    return web.render(
        request,
        "confirm_move.html",
        action="rollback",
        task=task,
        alias=alias,
        current=current,
        target=target,
        problem=problem,
    )


@router.post("/models/{task}/rollback")
async def do_rollback(request: Request, task: str, user: User = Depends(web.current_user)) -> Response:
    form = await web.checked_form(request)
    web.require_admin(user, "rolling back an alias")
    try:
        move = await run_in_threadpool(
            rollback, task, form.get("alias", "").strip(), actor=user.name, reason=form.get("reason") or None
        )
    except TuneloopError as exc:
        web.flash(request, str(exc), "error")
    else:
        web.flash(request, f"rolled back {task}@{move.alias}: {move.from_version} → {move.to_version}")
    return web.redirect(request, f"/models/{task}")


@router.post("/models/{task}/rollouts/stop")
async def do_stop_rollout(request: Request, task: str, user: User = Depends(web.current_user)) -> Response:
    """Stop a running canary (all traffic back to the alias's version) or shadow; no confirmation page,
    since stopping only ever returns to what the alias serves anyway."""
    form = await web.checked_form(request)
    web.require_admin(user, "stopping a canary or shadow")
    alias, kind = form.get("alias", "").strip(), form.get("kind", "").strip()
    try:
        stopped = await run_in_threadpool(
            stop_rollout, task, alias, kind, actor=user.name, reason=form.get("reason") or "stopped in the UI"
        )
    except TuneloopError as exc:
        web.flash(request, str(exc), "error")
    else:
        web.flash(request, f"stopped the {stopped.describe()}")
    return web.redirect(request, f"/models/{task}")

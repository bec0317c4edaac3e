"""The plumbing every page shares: templates, the session on each request, forms, auth checks.

Handlers that touch the store are plain ``def`` functions, which FastAPI runs in its thread pool, so a
slow query never blocks the event loop (which matters when the UI is mounted in the gateway). POST
handlers are ``async`` only to read the form, then hand the work to the thread pool.
"""

from __future__ import annotations

import json
from datetime import datetime
from typing import Any
from urllib.parse import parse_qs, urlencode

import jinja2
from fastapi import Request
from fastapi.responses import HTMLResponse, RedirectResponse

from tuneloop.ui.auth import Forbidden, LoginRequired, User, csrf_ok, user_for_session

MAX_FORM_BYTES = 1_000_000

_environment = jinja2.Environment(
    loader=jinja2.PackageLoader("tuneloop.ui", "templates"),
    autoescape=True,
    undefined=jinja2.StrictUndefined,
    trim_blocks=True,
    lstrip_blocks=True,
)


class NotFound(Exception):
    """A page for something that does not exist (an unknown log id, dataset, run): 404."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


def _when(value: datetime | None) -> str:
    return "—" if value is None else value.strftime("%Y-%m-%d %H:%M:%S")


def _pretty_json(value: Any) -> str:
    return json.dumps(value, indent=2, ensure_ascii=False, sort_keys=False, default=str)


def _compact_json(value: Any) -> str:
    return json.dumps(value, ensure_ascii=False, separators=(", ", ": "), default=str)


def _number(value: float | None, digits: int = 1) -> str:
    return "—" if value is None else f"{value:,.{digits}f}"


_environment.filters.update(when=_when, pretty_json=_pretty_json, compact_json=_compact_json, number=_number)


def prefix(request: Request) -> str:
    """Where the UI is mounted (``/ui`` inside the gateway, empty when it runs alone)."""
    return request.scope.get("root_path", "").rstrip("/")


def url(request: Request, path: str, **query: Any) -> str:
    """An absolute path inside the UI, with the mount prefix and a query string of the non-empty values."""
    params = {key: value for key, value in query.items() if value not in (None, "")}
    return prefix(request) + path + (("?" + urlencode(params)) if params else "")


def session(request: Request) -> dict[str, Any]:
    return request.state.session


def flash(request: Request, message: str, kind: str = "ok") -> None:
    """A one-shot message shown on the next page (after a POST's redirect)."""
    request.state.session["flash"] = [kind, message]
    request.state.session_changed = True


def render(request: Request, template: str, status_code: int = 200, **context: Any) -> HTMLResponse:
    state = request.state
    message = state.session.pop("flash", None)
    if message is not None:
        state.session_changed = True
    html = _environment.get_template(template).render(
        request=request,
        user=getattr(state, "user", None),
        csrf_token=state.session.get("csrf", ""),
        flash=message,
        url=lambda path, **query: url(request, path, **query),
        **context,
    )
    # Pages hold request logs and keys' names: no shared caches.
    return HTMLResponse(html, status_code=status_code, headers={"Cache-Control": "no-store"})


def redirect(request: Request, path: str, **query: Any) -> RedirectResponse:
    # 303: the browser follows with a GET, so reloading the result page never repeats a POST.
    return RedirectResponse(url(request, path, **query), status_code=303)


def current_user(request: Request) -> User:
    """The logged-in key (a dependency of every page); raises LoginRequired otherwise."""
    user = user_for_session(request.state.session.get("key"))
    if user is None:
        raise LoginRequired
    request.state.user = user
    return user


def require_admin(user: User, action: str) -> None:
    if not user.is_admin:
        raise Forbidden(f"{action} needs an admin key; the key {user.name!r} is read-only ({user.role})")


async def read_form(request: Request) -> dict[str, str]:
    """The urlencoded body of a form post (the UI's forms send nothing else), last value per name."""
    content_type = request.headers.get("content-type", "").split(";")[0].strip().lower()
    body = await request.body()
    if content_type != "application/x-www-form-urlencoded" or len(body) > MAX_FORM_BYTES:
        raise Forbidden("not a form post from this UI")
    parsed = parse_qs(body.decode("utf-8", errors="replace"), keep_blank_values=True)
    return {name: values[-1] for name, values in parsed.items()}


async def checked_form(request: Request) -> dict[str, str]:
    """The form, after its CSRF token matched the session's; Forbidden (403) otherwise."""
    form = await read_form(request)
    if not csrf_ok(request.state.session, form.get("csrf_token")):
        raise Forbidden("the form's CSRF token is missing or stale; reload the page and try again")
    return form

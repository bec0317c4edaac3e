"""The web UI as an ASGI app: ``create_ui_app()`` to run alone (``tuneloop ui``) or to mount in the gateway.

Server-rendered pages over the same library calls the CLI makes: request logs, datasets, eval runs, model
versions and aliases (promote / rollback), and the review queue. See docs/ui.md.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from importlib import resources
from typing import Any

from fastapi import Depends, FastAPI, Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response
from fastapi.staticfiles import StaticFiles
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException as StarletteHTTPException

from tuneloop.errors import TuneloopError
from tuneloop.ui import web
from tuneloop.ui.auth import COOKIE_NAME, Forbidden, LoginRequired, SessionCodec, key_for_login, load_secret
from tuneloop.ui.pages import datasets, evals, home, logs, models, review

# What a page may load: its own CSS/JS, and data: images (the eval plots are embedded PNGs). The
# inline style attribute is needed by the eval report, which is the evals stage's own page.
CONTENT_SECURITY_POLICY = (
    "default-src 'self'; img-src 'self' data:; style-src 'self' 'unsafe-inline'; script-src 'self'; "
    "frame-ancestors 'self'; form-action 'self'; base-uri 'none'"
)

# Every page and action of the UI; each is included behind the login (web.current_user).
PAGE_ROUTERS = (home.router, logs.router, datasets.router, evals.router, models.router, review.router)


def create_ui_app(secret: bytes | None = None) -> FastAPI:
    """The UI over the configured store (``TUNELOOP_HOME`` / ``TUNELOOP_DATABASE_URL``).

    ``secret`` signs the session cookies; default: ``$TUNELOOP_UI_SECRET`` or ``$TUNELOOP_HOME/ui-secret``.
    """
    codec = SessionCodec(secret or load_secret())
    app = FastAPI(title="tuneloop ui", docs_url=None, redoc_url=None, openapi_url=None)
    static = resources.files("tuneloop.ui") / "static"
    app.mount("/static", StaticFiles(directory=str(static)), name="static")

    @app.middleware("http")
    async def sessions(request: Request, call_next: Callable[[Request], Awaitable[Response]]) -> Response:
        loaded = codec.loads(request.cookies.get(COOKIE_NAME))
        request.state.session = loaded if loaded is not None else codec.new_session()
        request.state.session_changed = loaded is None
        request.state.user = None
        response = await call_next(request)
        # A fresh anonymous session is only worth a cookie on pages (the login form needs its token).
        is_page = response.headers.get("content-type", "").startswith("text/html")
        if request.state.session_changed and (loaded is not None or is_page or response.status_code == 303):
            response.set_cookie(
                COOKIE_NAME,
                codec.dumps(request.state.session),
                max_age=codec.ttl_s,
                path=web.prefix(request) or "/",
                httponly=True,
                samesite="lax",
                secure=request.url.scheme == "https",
            )
        response.headers.setdefault("Content-Security-Policy", CONTENT_SECURITY_POLICY)
        response.headers.setdefault("X-Content-Type-Options", "nosniff")
        response.headers.setdefault("X-Frame-Options", "SAMEORIGIN")
        response.headers.setdefault("Referrer-Policy", "same-origin")
        return response

    @app.exception_handler(LoginRequired)
    async def login_required(request: Request, _exc: LoginRequired) -> Response:
        if request.method in ("GET", "HEAD"):
            return web.redirect(request, "/login", next=_path_with_query(request))
        return web.render(request, "error.html", 401, title="Log in first", message="Log in with an API key.")

    @app.exception_handler(Forbidden)
    async def forbidden(request: Request, exc: Forbidden) -> Response:
        return web.render(request, "error.html", 403, title="Not allowed", message=exc.message)

    @app.exception_handler(TuneloopError)
    async def tuneloop_error(request: Request, exc: TuneloopError) -> Response:
        return web.render(request, "error.html", 400, title="That did not work", message=str(exc))

    @app.exception_handler(web.NotFound)
    async def not_found(request: Request, exc: web.NotFound) -> Response:
        return web.render(request, "error.html", 404, title="Not found", message=exc.message)

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, exc: StarletteHTTPException) -> Response:
        title = "Not found" if exc.status_code == 404 else f"HTTP {exc.status_code}"
        return web.render(request, "error.html", exc.status_code, title=title, message=str(exc.detail))

    @app.get("/login", response_class=HTMLResponse)
    def login_page(request: Request, next: str = "/") -> Response:
        return web.render(request, "login.html", next=_safe_next(next), error=None)

    @app.post("/login", response_class=HTMLResponse)
    async def login(request: Request) -> Response:
        form = await web.checked_form(request)
        user = await run_in_threadpool(key_for_login, form.get("key", ""))
        target = _safe_next(form.get("next", "/"))
        if user is None:
            return web.render(request, "login.html", 401, next=target, error="That is not an active tuneloop API key.")
        # A new session (and CSRF token) at login: nothing from before it carries over.
        request.state.session = codec.new_session(user.key_id)
        request.state.session_changed = True
        web.flash(request, f"Logged in as {user.name} ({'admin' if user.is_admin else 'read-only'}).")
        return RedirectResponse(web.prefix(request) + target, status_code=303)

    @app.post("/logout")
    async def logout(request: Request) -> Response:
        await web.checked_form(request)
        request.state.session = codec.new_session()
        request.state.session_changed = True
        return web.redirect(request, "/login")

    for router in PAGE_ROUTERS:
        app.include_router(router, dependencies=[Depends(web.current_user)])
    return app


def mount_ui(app: Any, path: str = "/ui", secret: bytes | None = None) -> None:
    """Serve the UI under ``path`` of another Starlette/FastAPI app (the gateway)."""
    app.mount(path, create_ui_app(secret))


def _path_with_query(request: Request) -> str:
    path = request.scope.get("path", "/")
    root = web.prefix(request)
    if root and path.startswith(root):  # newer Starlette keeps the mount prefix in "path"
        path = path[len(root) :] or "/"
    return path + (f"?{request.url.query}" if request.url.query else "")


def _safe_next(target: str) -> str:
    # Only paths inside the UI: "next" must never send a user to another site after login.
    # Browsers drop tabs and newlines and read "\\" as "/", so "/\t/evil.example" would leave the site too.
    if not target.startswith("/") or target.startswith("//") or any(ch == "\\" or ord(ch) < 33 for ch in target):
        return "/"
    return target

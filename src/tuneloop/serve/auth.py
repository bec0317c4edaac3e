"""Who may call ``tuneloop serve``: the gateway's tuneloop keys and its ``auth: auto | required | disabled``.

- ``auto`` (default): open until a key has ever been created (revoked ones count), then a key is required,
  exactly as on the gateway. While open, a tuneloop key that is sent is still checked in the store, so the
  first key closes the server at once and a key's rate limit applies.
- ``required``: always a key (with no key created yet, every call gets 401).
- ``disabled``: never, for a server only trusted callers can reach.

Checked from the request's headers in an ASGI middleware, before the body is read: an unauthenticated
caller cannot make the server read (or generate) anything. ``/health`` is always open (liveness probes),
``/metrics`` unless ``protect_metrics`` (Prometheus scrapers, like the gateway's open ``/metrics``). On the
request path a known key costs a sha256 and a dict lookup; the key table is re-read at most once per
``refresh_s`` (by one request at a time; the others use the copy they have).
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections.abc import Awaitable, Callable, Mapping, MutableMapping
from typing import Any

from starlette.datastructures import Headers
from starlette.responses import JSONResponse

from tuneloop.protocol import OpenAIError
from tuneloop.store.keys import (
    AUTH_MODES,
    ActiveKey,
    AuthMode,
    KeyRing,
    authenticate,
    key_required,
    rate_limit_message,
)

log = logging.getLogger(__name__)

DEFAULT_KEYS_REFRESH_S = 5.0
CHAT_PATH = "/v1/chat/completions"
# Open whatever the mode: liveness, and the API description (it holds no data).
ALWAYS_OPEN_PATHS = frozenset({"/health", "/openapi.json", "/docs", "/docs/oauth2-redirect", "/redoc"})

Scope = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[dict]]
Send = Callable[[dict], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]


class ServeKeys:
    """The keys ``tuneloop serve`` accepts under ``mode``; the key table is loaded on first use (or by
    :meth:`load`, which the CLI calls at startup so a store it cannot read fails there)."""

    def __init__(
        self, mode: AuthMode = "auto", *, url: str | None = None, refresh_s: float = DEFAULT_KEYS_REFRESH_S
    ) -> None:
        if mode not in AUTH_MODES:
            raise ValueError(f"auth must be one of {', '.join(AUTH_MODES)}, not {mode!r}")
        if refresh_s <= 0:
            raise ValueError("refresh_s must be positive")
        self.mode = mode
        self.url = url
        self.refresh_s = refresh_s
        self._ring: KeyRing | None = None
        self._lock = threading.Lock()
        self._reloading = False
        self._reload_attempted_at = 0.0

    def load(self) -> KeyRing:
        with self._lock:
            if self._ring is None:
                self._ring = KeyRing(self.url, refresh_s=self.refresh_s)
                self._reload_attempted_at = time.monotonic()
            return self._ring

    def requires_key(self) -> bool:
        """Whether a caller needs a key now (``auto``: once any key was ever created)."""
        return self.mode == "required" or (self.mode != "disabled" and key_required(self.load(), self.mode))

    def describe(self) -> str:
        """One line for the startup banner: whether callers need a key right now."""
        if self.requires_key():
            return f"auth {self.mode}: a tuneloop key is required (Authorization: Bearer tl-…)"
        if self.mode == "disabled":
            return "auth disabled: no key needed"
        return "auth auto: open until a key is created with `tuneloop keys create`"

    async def authenticate(self, headers: Mapping[str, str]) -> ActiveKey | None:
        """The caller's key (``store.keys.authenticate``: the gateway's rule)."""
        if self.mode == "disabled":
            return None
        return await authenticate(await self._current_ring(), self.mode, headers)

    def throttle(self, key: ActiveKey) -> None:
        """Raises 429 (``Retry-After``) when ``key`` has spent its rate limit."""
        assert self._ring is not None
        wait = self._ring.throttle(key)
        if wait > 0:
            raise OpenAIError(
                429,
                rate_limit_message(key, wait),
                type="rate_limit_error",
                code="rate_limit_exceeded",
                headers={"retry-after": str(max(1, int(wait + 0.999)))},
            )

    async def _current_ring(self) -> KeyRing:
        ring = self._ring
        if ring is None:
            return await asyncio.to_thread(self.load)
        if self._claim_reload():
            await asyncio.to_thread(self._reload, ring)
        return ring

    def _claim_reload(self) -> bool:
        now = time.monotonic()
        if now - self._reload_attempted_at < self.refresh_s:  # the common case, without the lock
            return False
        with self._lock:
            if self._reloading or now - self._reload_attempted_at < self.refresh_s:
                return False
            self._reloading, self._reload_attempted_at = True, now
            return True

    def _reload(self, ring: KeyRing) -> None:
        try:
            ring.reload()
        except Exception:  # the store is away: keep the keys loaded, try again after refresh_s
            log.exception("reloading API keys failed; keeping the ones loaded")
        finally:
            self._reloading = False


class KeyAuth:
    """ASGI middleware: every path but the open ones needs a key (:class:`ServeKeys`), checked from the
    headers before the app reads the body; chat completions also spend the key's rate limit."""

    def __init__(
        self,
        app: ASGIApp,
        keys: ServeKeys,
        *,
        protect_metrics: bool = False,
        on_refused: Callable[[OpenAIError], None] | None = None,
    ) -> None:
        self.app = app
        self.keys = keys
        self.open_paths = ALWAYS_OPEN_PATHS if protect_metrics else ALWAYS_OPEN_PATHS | {"/metrics"}
        self.on_refused = on_refused

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or self.keys.mode == "disabled" or scope["path"] in self.open_paths:
            await self.app(scope, receive, send)
            return
        try:
            key = await self.keys.authenticate(Headers(scope=scope))
            if key is not None and scope["path"] == CHAT_PATH and scope["method"] == "POST":
                self.keys.throttle(key)
        except OpenAIError as exc:
            if self.on_refused is not None:
                self.on_refused(exc)
            await JSONResponse(exc.body(), status_code=exc.status, headers=exc.headers)(scope, receive, send)
            return
        await self.app(scope, receive, send)

"""Who is using the UI: login with a tuneloop API key, a signed session cookie, CSRF tokens, roles.

The session is a cookie holding a small JSON payload signed with HMAC-SHA256 (``payload.signature``,
both base64url): the key's id, a CSRF token, when it expires and an optional one-shot message. Nothing
secret is in it, only nothing a browser can forge. It is ``HttpOnly`` (scripts cannot read it),
``SameSite=Lax`` and ``Secure`` when the UI is reached over HTTPS.

Every request re-reads the key's row, so revoking a key (``tuneloop keys revoke``) ends its sessions at
once and a role change applies on the next click. Keys with the ``admin`` role may promote, roll back,
approve and correct; any other role (``user``) reads only.

CSRF: the synchronizer-token pattern. The session holds a random token; every form carries it in a hidden
``csrf_token`` field and every POST must send it back (compared in constant time). An anonymous visitor
gets a session with a token too, so the login form is protected as well; logging in issues a new token
(and so a new session), so a token planted before login is worthless after it.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import os
import secrets
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import sqlalchemy as sa

from tuneloop.config import get_settings
from tuneloop.store import ApiKey, session_scope
from tuneloop.store.keys import hash_key

COOKIE_NAME = "tuneloop_ui"
SESSION_TTL_S = 12 * 3600
ADMIN_ROLE = "admin"
SECRET_ENV = "TUNELOOP_UI_SECRET"
SECRET_FILE = "ui-secret"


@dataclass(frozen=True)
class User:
    """The API key a session is logged in with."""

    key_id: int
    name: str
    role: str

    @property
    def is_admin(self) -> bool:
        return self.role == ADMIN_ROLE


class LoginRequired(Exception):
    """Raised by handlers when nobody (or a revoked key) is logged in."""


class Forbidden(Exception):
    """Raised when the request is refused: a read-only key, or a missing/wrong CSRF token."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


def load_secret() -> bytes:
    """The signing key: ``$TUNELOOP_UI_SECRET``, else a random one kept in ``$TUNELOOP_HOME/ui-secret``.

    Kept in a file (mode 0600) rather than made per process so that sessions survive a restart and every
    worker of a gateway accepts the same cookies.
    """
    from_env = os.environ.get(SECRET_ENV)
    if from_env:
        return from_env.encode("utf-8")
    path = get_settings().home / SECRET_FILE
    try:
        return path.read_bytes().strip()
    except FileNotFoundError:
        pass
    path.parent.mkdir(parents=True, exist_ok=True)
    secret = secrets.token_hex(32).encode("ascii")
    try:
        # O_EXCL: two processes starting at once must not each write (and then disagree on) a secret.
        descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        return _read_when_written(path)
    with os.fdopen(descriptor, "wb") as handle:
        handle.write(secret)
    return secret


def _read_when_written(path: Path) -> bytes:
    for _ in range(50):  # the other process is between open and write
        secret = path.read_bytes().strip()
        if secret:
            return secret
        time.sleep(0.02)
    raise RuntimeError(f"{path} stays empty; delete it and start again")


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


class SessionCodec:
    """Signs and checks session cookies."""

    def __init__(self, secret: bytes, ttl_s: int = SESSION_TTL_S) -> None:
        self._secret = secret
        self.ttl_s = ttl_s

    def _sign(self, payload: str) -> str:
        return _b64(hmac.new(self._secret, payload.encode("ascii"), hashlib.sha256).digest())

    def dumps(self, session: dict[str, Any]) -> str:
        payload = _b64(json.dumps(session, separators=(",", ":")).encode("utf-8"))
        return f"{payload}.{self._sign(payload)}"

    def loads(self, cookie: str | None) -> dict[str, Any] | None:
        """The session, or None when the cookie is missing, malformed, tampered with, or expired.

        A cookie is whatever the browser (or anyone) sends: any text that is not one we signed is no session,
        never an error (a non-ASCII one cannot be signed text, and compare_digest refuses non-ASCII str).
        """
        if not cookie or not cookie.isascii() or "." not in cookie:
            return None
        payload, signature = cookie.rsplit(".", 1)
        if not hmac.compare_digest(signature, self._sign(payload)):
            return None
        try:
            session = json.loads(_unb64(payload))
            expires = float(session.get("exp", 0)) if isinstance(session, dict) else 0.0
        except (ValueError, TypeError, UnicodeDecodeError, RecursionError):
            return None
        if expires < time.time():
            return None
        return session

    def new_session(self, key_id: int | None = None) -> dict[str, Any]:
        return {"key": key_id, "csrf": secrets.token_urlsafe(24), "exp": int(time.time()) + self.ttl_s}


def key_for_login(key: str) -> User | None:
    """The active key whose secret is ``key``, or None (unknown or revoked)."""
    key = key.strip()
    if not key:
        return None
    with session_scope() as session:
        row = session.scalar(sa.select(ApiKey).where(ApiKey.key_hash == hash_key(key), ApiKey.revoked_at.is_(None)))
        return User(row.id, row.name, row.role) if row is not None else None


def user_for_session(key_id: int | None) -> User | None:
    """The session's key as it is now: None once it is revoked (or deleted)."""
    if key_id is None:
        return None
    with session_scope() as session:
        row = session.get(ApiKey, key_id)
        if row is None or row.revoked_at is not None:
            return None
        return User(row.id, row.name, row.role)


def csrf_ok(session: dict[str, Any], sent: str | None) -> bool:
    expected = session.get("csrf")
    # As bytes: a form may send any text, and compare_digest refuses str with non-ASCII characters.
    if not expected or not sent:
        return False
    return hmac.compare_digest(_as_bytes(expected), _as_bytes(sent))


def _as_bytes(text: object) -> bytes:
    return str(text).encode("utf-8", "surrogatepass")

"""tuneloop API keys: what clients of the gateway (and serve) authenticate with.

A key is ``tl-`` + 32 random URL-safe characters. Only its sha256 is stored, with the first characters
(``prefix``) to tell keys apart in listings; the key itself is shown once, when created. Keys are
revoked, never deleted, so logged calls keep naming the key that made them.

:class:`KeyRing` is the gateway's view: the active keys in memory (looked up by hash, O(1)), reloaded
every few seconds, an unknown key looked up in the store at once (so a new key works immediately; a
revocation takes effect within the refresh interval), and a token bucket per key for its rate limit.
"""

from __future__ import annotations

import asyncio
import hashlib
import secrets
import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Literal

import sqlalchemy as sa
from sqlalchemy.exc import IntegrityError

from tuneloop.errors import TuneloopError
from tuneloop.protocol import OpenAIError
from tuneloop.store import ApiKey, session_scope, utcnow

KEY_PREFIX = "tl-"
# Who must send a key: `auto` once any key was ever created (revoked ones count), `required` always, `disabled` never.
AuthMode = Literal["auto", "required", "disabled"]
AUTH_MODES: tuple[str, ...] = ("auto", "required", "disabled")
ROLES = ("user", "admin")
SHOWN_PREFIX_CHARS = 10
MISS_LOOKUPS_PER_S = 50


def hash_key(key: str) -> str:
    return hashlib.sha256(key.encode("utf-8")).hexdigest()


@dataclass(frozen=True)
class CreatedKey:
    id: int
    name: str
    key: str  # the secret: shown once, never stored
    prefix: str
    rate_limit_per_min: int | None


@dataclass(frozen=True)
class KeyInfo:
    id: int
    name: str
    prefix: str
    role: str
    rate_limit_per_min: int | None
    created_at: str
    revoked_at: str | None


def create_key(
    name: str, *, rate_limit_per_min: int | None = None, role: str = "user", url: str | None = None
) -> CreatedKey:
    """Make a key; the returned ``key`` is the only time the secret exists outside the client."""
    if not name.strip():
        raise TuneloopError("a key needs a name", where="--name")
    if role not in ROLES:
        raise TuneloopError(f"unknown role {role!r}", where="--role", hint=f"use one of: {', '.join(ROLES)}")
    if rate_limit_per_min is not None and rate_limit_per_min < 1:
        raise TuneloopError("must be at least 1 request per minute", where="--rate-limit")
    key = KEY_PREFIX + secrets.token_urlsafe(24)
    row = ApiKey(
        name=name,
        key_hash=hash_key(key),
        prefix=key[:SHOWN_PREFIX_CHARS],
        role=role,
        rate_limit_per_min=rate_limit_per_min,
    )
    try:
        with session_scope(url) as session:
            session.add(row)
            session.flush()
            key_id = row.id
    except IntegrityError:
        raise TuneloopError(
            f"a key named {name!r} already exists",
            where="--name",
            hint="pick another name, or revoke the old key and create one under a new name",
        ) from None
    return CreatedKey(key_id, name, key, row.prefix, rate_limit_per_min)


def list_keys(url: str | None = None, include_revoked: bool = True) -> list[KeyInfo]:
    with session_scope(url) as session:
        query = sa.select(ApiKey).order_by(ApiKey.id)
        if not include_revoked:
            query = query.where(ApiKey.revoked_at.is_(None))
        return [
            KeyInfo(
                row.id,
                row.name,
                row.prefix,
                row.role,
                row.rate_limit_per_min,
                row.created_at.isoformat(timespec="seconds"),
                row.revoked_at.isoformat(timespec="seconds") if row.revoked_at else None,
            )
            for row in session.scalars(query)
        ]


def revoke_key(name: str, url: str | None = None) -> KeyInfo:
    with session_scope(url) as session:
        row = session.scalar(sa.select(ApiKey).where(ApiKey.name == name))
        if row is None:
            known = session.scalars(sa.select(ApiKey.name).order_by(ApiKey.name).limit(20)).all()
            raise TuneloopError(
                f"no key named {name!r}",
                hint=("keys: " + ", ".join(known))
                if known
                else "there are no keys; create one with tuneloop keys create",
            )
        if row.revoked_at is None:
            row.revoked_at = utcnow()
        return KeyInfo(
            row.id,
            row.name,
            row.prefix,
            row.role,
            row.rate_limit_per_min,
            row.created_at.isoformat(timespec="seconds"),
            row.revoked_at.isoformat(timespec="seconds"),
        )


@dataclass(frozen=True)
class ActiveKey:
    id: int
    name: str
    role: str
    rate_limit_per_min: int | None


class TokenBucket:
    """``capacity`` requests at once, refilled at ``capacity`` per minute."""

    __slots__ = ("capacity", "rate_per_s", "tokens", "updated")

    def __init__(self, per_minute: int) -> None:
        self.capacity = float(per_minute)
        self.rate_per_s = per_minute / 60.0
        self.tokens = self.capacity
        self.updated = time.monotonic()

    def take(self) -> float:
        """0 if a request may go now, else the seconds until one may."""
        now = time.monotonic()
        self.tokens = min(self.capacity, self.tokens + (now - self.updated) * self.rate_per_s)
        self.updated = now
        if self.tokens >= 1:
            self.tokens -= 1
            return 0.0
        return (1 - self.tokens) / self.rate_per_s


class KeyRing:
    """The gateway's in-memory copy of the key table, with rate limiting."""

    def __init__(self, url: str | None = None, refresh_s: float = 5.0) -> None:
        self.url = url
        self.refresh_s = refresh_s
        self._by_hash: dict[str, ActiveKey] = {}
        self._buckets: dict[int, TokenBucket] = {}
        self._any_key_ever = False
        self._loaded_at = 0.0
        self._misses: dict[str, float] = {}  # hash -> until when it is known not to exist
        self._window_start, self._window_lookups = 0.0, 0
        self._lock = threading.Lock()
        self.reload()

    @property
    def any_key_ever(self) -> bool:
        """Whether a key was ever created (revoked ones count): ``auth: auto`` then requires keys."""
        return self._any_key_ever

    def reload(self) -> None:
        with session_scope(self.url) as session:
            rows = session.execute(
                sa.select(ApiKey.id, ApiKey.name, ApiKey.role, ApiKey.rate_limit_per_min, ApiKey.key_hash).where(
                    ApiKey.revoked_at.is_(None)
                )
            ).all()
            any_key = session.scalar(sa.select(sa.func.count()).select_from(ApiKey)) or 0
        by_hash = {row.key_hash: ActiveKey(row.id, row.name, row.role, row.rate_limit_per_min) for row in rows}
        with self._lock:
            self._by_hash = by_hash
            self._any_key_ever = any_key > 0
            self._loaded_at = time.monotonic()
            live = {key.id for key in by_hash.values()}
            self._buckets = {key_id: bucket for key_id, bucket in self._buckets.items() if key_id in live}

    def due_for_reload(self, min_interval_s: float | None = None) -> bool:
        return time.monotonic() - self._loaded_at >= (self.refresh_s if min_interval_s is None else min_interval_s)

    def lookup(self, key: str) -> ActiveKey | None:
        return self._by_hash.get(hash_key(key))

    def lookup_in_store(self, key: str) -> ActiveKey | None:
        """A key the ring does not hold yet, looked up by its hash in the store (one indexed query).

        So a key created a moment ago works at once. Bounded, since unauthenticated callers can trigger
        it: a hash found missing is not looked up again for a second, and at most ``MISS_LOOKUPS_PER_S``
        lookups happen per second.
        """
        digest = hash_key(key)
        now = time.monotonic()
        with self._lock:
            if self._misses.get(digest, 0.0) > now:
                return None
            if now - self._window_start >= 1.0:
                self._window_start, self._window_lookups = now, 0
            if self._window_lookups >= MISS_LOOKUPS_PER_S:
                return None
            self._window_lookups += 1
        with session_scope(self.url) as session:
            row = session.execute(
                sa.select(ApiKey.id, ApiKey.name, ApiKey.role, ApiKey.rate_limit_per_min).where(
                    ApiKey.key_hash == digest, ApiKey.revoked_at.is_(None)
                )
            ).first()
        with self._lock:
            if row is None:
                if len(self._misses) >= 10_000:
                    self._misses.clear()
                self._misses[digest] = now + 1.0
                return None
            found = ActiveKey(row.id, row.name, row.role, row.rate_limit_per_min)
            self._by_hash = {**self._by_hash, digest: found}
            self._any_key_ever = True
            return found

    def throttle(self, key: ActiveKey) -> float:
        """0 if the key may make a request now, else seconds to wait (its rate limit is spent)."""
        if key.rate_limit_per_min is None:
            return 0.0
        bucket = self._buckets.get(key.id)
        if bucket is None or bucket.capacity != key.rate_limit_per_min:
            bucket = self._buckets[key.id] = TokenBucket(key.rate_limit_per_min)
        return bucket.take()


def bearer_token(headers: Mapping[str, str]) -> str:
    """The token of an ``Authorization: Bearer …`` header, or ""."""
    scheme, _, token = headers.get("authorization", "").partition(" ")
    return token.strip() if scheme.lower() == "bearer" else ""


def key_required(ring: KeyRing, mode: AuthMode) -> bool:
    return mode == "required" or (mode == "auto" and ring.any_key_ever)


async def authenticate(ring: KeyRing, mode: AuthMode, headers: Mapping[str, str]) -> ActiveKey | None:
    """The caller's key, from the request's headers: what the gateway and ``tuneloop serve`` both check.

    None when no key is required and the caller sent no tuneloop key; raises 401 (``invalid_api_key``) when
    one is required and missing, unknown or revoked. While open under ``auto``, a tuneloop key that is sent is
    still honoured, so calls are attributed and rate-limited and the first key closes the server at once.
    """
    if mode == "disabled":
        return None
    token = bearer_token(headers)
    if not key_required(ring, mode):
        if token.startswith(KEY_PREFIX):
            return ring.lookup(token) or await asyncio.to_thread(ring.lookup_in_store, token)
        return None
    if not token:
        raise OpenAIError(
            401,
            "missing API key: send `Authorization: Bearer <tuneloop key>` (create one with `tuneloop keys create`)",
            code="invalid_api_key",
        )
    key = ring.lookup(token)
    if key is None:  # perhaps created since the last reload: one bounded look in the store
        key = await asyncio.to_thread(ring.lookup_in_store, token)
    if key is None:
        raise OpenAIError(401, "invalid or revoked API key", code="invalid_api_key")
    return key


def rate_limit_message(key: ActiveKey, wait_s: float) -> str:
    return f"rate limit of key {key.name!r} reached ({key.rate_limit_per_min} requests/minute); retry in {wait_s:.1f}s"

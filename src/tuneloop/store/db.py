"""Connections to the store, and its schema kept at the newest migration.

The database is SQLite at ``$TUNELOOP_HOME/tuneloop.db`` unless ``TUNELOOP_DATABASE_URL`` names
another one. Every public function takes an optional ``url``; ``None`` means that configured one.

Migrations are applied automatically the first time a process opens a session on a URL, so users
never run a separate step; ``tuneloop db upgrade`` does the same explicitly. Applying them is safe
from several processes at once: on SQLite the migration runs in one ``BEGIN IMMEDIATE`` transaction
(the database's own write lock), on PostgreSQL under a transaction-scoped advisory lock; whoever
comes second finds the schema at head and does nothing.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Any

import orjson
import sqlalchemy as sa
from alembic import command
from alembic.config import Config
from alembic.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy.engine import URL, Connection, Engine, make_url
from sqlalchemy.orm import Session

from tuneloop.config import get_settings
from tuneloop.errors import TuneloopError

MIGRATIONS_DIR = Path(__file__).parent / "migrations"

SQLITE_BUSY_TIMEOUT_MS = 30_000
POSTGRES_CONNECT_TIMEOUT_S = 10
# Any fixed 64-bit number, the same in every tuneloop process: the key of the advisory lock that
# serializes migrations on PostgreSQL.
POSTGRES_MIGRATION_LOCK_KEY = 0x7475_6E65_6C6F_6F70  # "tuneloop"

_engines: dict[str, Engine] = {}
_schema_ready: set[str] = set()
_lock = threading.RLock()


@dataclass(frozen=True)
class SchemaUpgrade:
    """What ``upgrade`` did: the revision before (``None`` for an empty database) and after."""

    from_revision: str | None
    to_revision: str

    @property
    def changed(self) -> bool:
        return self.from_revision != self.to_revision


# --- URLs --------------------------------------------------------------------------------------


def resolve_url(url: str | None = None) -> str:
    """The URL to use, with PostgreSQL URLs pointed at the psycopg 3 driver we ship with.

    ``postgres://`` (Heroku-style) and ``postgresql://`` would otherwise ask SQLAlchemy for
    psycopg2, which is not installed.
    """
    raw = url or get_settings().database_url
    try:
        parsed = make_url(raw)
    except sa.exc.ArgumentError as exc:
        # Not echoing the string: it may hold a password.
        raise TuneloopError(
            "not a database URL",
            where="the database URL" if url else "TUNELOOP_DATABASE_URL",
            hint="use sqlite:///path/to/file.db or postgresql://user:password@host:5432/dbname",
        ) from exc
    if parsed.drivername in ("postgres", "postgresql"):
        parsed = parsed.set(drivername="postgresql+psycopg")
    return parsed.render_as_string(hide_password=False)


def mask_url(url: str | None = None) -> str:
    """The URL with its password replaced by ``***``, safe to print and log."""
    return make_url(resolve_url(url)).render_as_string(hide_password=True)


def _sqlite_file(parsed: URL) -> Path | None:
    """The database file of a SQLite URL; None for in-memory databases."""
    database = parsed.database or ""
    if database in ("", ":memory:") or database.startswith("file:"):
        return None
    return Path(database).expanduser()


# --- engines -----------------------------------------------------------------------------------


def get_engine(url: str | None = None) -> Engine:
    """The engine for ``url`` (default: the configured database), created once per process.

    Does not touch the schema; use ``session_scope`` (or ``upgrade``) for that.
    """
    key = resolve_url(url)
    engine = _engines.get(key)
    if engine is not None:
        return engine
    with _lock:
        if key not in _engines:
            _engines[key] = _create_engine(key)
        return _engines[key]


def _json_dumps(value: Any) -> str:
    return orjson.dumps(value, option=orjson.OPT_NON_STR_KEYS).decode()


# JSON columns (logged requests and responses above all) are written and read with orjson, in C: the
# gateway's log writer serializes several of them per call, in the process that answers the calls.
_JSON_CODEC: dict[str, Any] = {"json_serializer": _json_dumps, "json_deserializer": orjson.loads}


def _create_engine(url: str) -> Engine:
    parsed = make_url(url)
    backend = parsed.get_backend_name()
    if backend == "sqlite":
        database_file = _sqlite_file(parsed)
        if database_file is None:
            # One shared connection, or every connection would see its own empty in-memory database.
            engine = sa.create_engine(
                parsed, poolclass=sa.StaticPool, connect_args={"check_same_thread": False}, **_JSON_CODEC
            )
        else:
            try:
                database_file.parent.mkdir(parents=True, exist_ok=True)
            except OSError as exc:
                raise TuneloopError(
                    f"cannot create the directory for the database: {exc}",
                    where=str(database_file),
                    hint="set TUNELOOP_HOME to a writable directory, or TUNELOOP_DATABASE_URL to another database",
                ) from exc
            engine = sa.create_engine(parsed, **_JSON_CODEC)
        sa.event.listen(engine, "connect", _configure_sqlite_connection)
        return engine
    if backend == "postgresql":
        connect_args: dict[str, object] = {}
        if "connect_timeout" not in parsed.query:
            # Without it an unreachable host hangs for minutes before the user sees anything.
            connect_args["connect_timeout"] = POSTGRES_CONNECT_TIMEOUT_S
        # pre_ping: long-running servers (gateway, serve) survive a database restart.
        return sa.create_engine(parsed, pool_pre_ping=True, connect_args=connect_args, **_JSON_CODEC)
    raise TuneloopError(
        f"unsupported database {parsed.get_backend_name()!r}",
        where=parsed.render_as_string(hide_password=True),
        hint="use SQLite (sqlite:///path) or PostgreSQL (postgresql://user:password@host/dbname)",
    )


def _configure_sqlite_connection(dbapi_connection: Any, _connection_record: Any) -> None:
    cursor = dbapi_connection.cursor()
    try:
        # busy_timeout first: the journal-mode switch below may have to wait for another process.
        cursor.execute(f"PRAGMA busy_timeout = {SQLITE_BUSY_TIMEOUT_MS}")
        # WAL: readers (UI, evals) never block the writer (capture) and vice versa.
        cursor.execute("PRAGMA journal_mode = WAL")
        # NORMAL is durable across application crashes in WAL mode, and much faster than FULL.
        cursor.execute("PRAGMA synchronous = NORMAL")
        # SQLite ignores foreign keys unless asked, per connection.
        cursor.execute("PRAGMA foreign_keys = ON")
    finally:
        cursor.close()


def dispose_engines() -> None:
    """Close every cached engine and forget which schemas were checked (tests, forked workers)."""
    with _lock:
        for engine in _engines.values():
            engine.dispose()
        _engines.clear()
        _schema_ready.clear()


def _drop_pools_after_fork() -> None:
    # A forked child (torchrun, multiprocessing) must not reuse the parent's sockets/file handles;
    # close=False leaves them to the parent and gives the child fresh connections.
    for engine in list(_engines.values()):
        engine.dispose(close=False)


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_drop_pools_after_fork)


@contextmanager
def _connect(engine: Engine) -> Iterator[Connection]:
    """A connection, with a failure to connect turned into an error that says what to do."""
    try:
        connection = engine.connect()
    except sa.exc.DatabaseError as exc:
        raise _unreachable_error(engine, exc) from exc
    with connection:
        yield connection


def _unreachable_error(engine: Engine, exc: sa.exc.DatabaseError) -> TuneloopError:
    reason = str(exc.orig).strip().splitlines()[0] if exc.orig is not None else str(exc)
    masked = engine.url.render_as_string(hide_password=True)
    if engine.dialect.name == "postgresql":
        hint = (
            "start the PostgreSQL server (or check host, port, user and password in the URL), "
            "or unset TUNELOOP_DATABASE_URL to use the local SQLite database"
        )
    else:
        hint = (
            "check that the file is a tuneloop SQLite database and its directory is writable, "
            "or set TUNELOOP_HOME elsewhere"
        )
    return TuneloopError(f"cannot connect to the database at {masked}: {reason}", hint=hint)


# --- migrations --------------------------------------------------------------------------------


def alembic_config(url: str | None = None, connection: Connection | None = None) -> Config:
    """An Alembic config for our packaged migrations; no alembic.ini needed.

    With ``connection``, ``migrations/env.py`` runs on it (inside the caller's transaction).
    """
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS_DIR))
    config.set_main_option("path_separator", "os")
    # New revision files are numbered like 0002_add_x.py (see new_revision).
    config.set_main_option("file_template", "%%(rev)s_%%(slug)s")
    # ConfigParser interpolation: a literal % in a password must be doubled.
    config.set_main_option("sqlalchemy.url", resolve_url(url).replace("%", "%%"))
    config.attributes["connection"] = connection
    return config


@cache  # parsing the migration files once per process keeps the per-session check cheap
def _script_directory() -> ScriptDirectory:
    return ScriptDirectory.from_config(alembic_config("sqlite://"))


def head_revision() -> str:
    """The newest migration this version of tuneloop ships."""
    head = _script_directory().get_current_head()
    assert head is not None, "the package ships no migrations"
    return head


def is_known_revision(revision: str) -> bool:
    """Whether this tuneloop ships the migration ``revision`` (if not, a newer one wrote it)."""
    return revision in {script.revision for script in _script_directory().walk_revisions()}


def _read_revision(connection: Connection) -> str | None:
    return MigrationContext.configure(connection).get_current_revision()


def _refuse_unknown_revision(revision: str | None, engine: Engine) -> None:
    """A revision we do not ship means a newer tuneloop has migrated this database."""
    if revision is not None and not is_known_revision(revision):
        raise TuneloopError(
            f"the database schema is at revision {revision}, newer than this tuneloop knows "
            f"(its newest is {head_revision()}); a newer tuneloop has used this database",
            where=engine.url.render_as_string(hide_password=True),
            hint="upgrade tuneloop (pip install -U tuneloop), or point TUNELOOP_DATABASE_URL at another database",
        )


def current_revision(url: str | None = None) -> str | None:
    """The migration the database is at; ``None`` for an empty (or not yet created) database."""
    parsed = make_url(resolve_url(url))
    if parsed.get_backend_name() == "sqlite":
        database_file = _sqlite_file(parsed)
        if database_file is not None and not database_file.exists():
            return None  # don't create the file just to look at it
    engine = get_engine(url)
    with _connect(engine) as connection:
        return _read_revision(connection)


def upgrade(url: str | None = None) -> SchemaUpgrade:
    """Apply the migrations the database lacks. A no-op (one query) when it is at head."""
    engine = get_engine(url)
    head = head_revision()
    with _connect(engine) as connection:
        before = _read_revision(connection)
        _refuse_unknown_revision(before, engine)
        connection.rollback()
        after = before
        if before != head:
            # Another process may have migrated meanwhile: report what this one found under the lock.
            before = _migrate_locked(connection, engine)
            after = _read_revision(connection)
            connection.rollback()
    assert after is not None
    _schema_ready.add(resolve_url(url))
    return SchemaUpgrade(from_revision=before, to_revision=after)


def _migrate_locked(connection: Connection, engine: Engine) -> str | None:
    """Run Alembic in one transaction that holds the migration lock, and commit it.

    Returns the revision found once the lock was held (what the migration started from).
    """
    if connection.dialect.name != "sqlite":
        with connection.begin():
            if connection.dialect.name == "postgresql":
                # Held until commit: a second process waits here, then finds the schema at head.
                connection.execute(sa.text("SELECT pg_advisory_xact_lock(:key)"), {"key": POSTGRES_MIGRATION_LOCK_KEY})
            return _run_alembic(connection, engine)

    # Recreating a table (Alembic's batch mode, the only way to alter most things on SQLite) drops
    # it, which would fire ON DELETE actions with foreign keys on. The pragma only takes effect
    # outside a transaction, so it is switched off before BEGIN; the check below stands in for it.
    connection.exec_driver_sql("PRAGMA foreign_keys = OFF")
    connection.commit()
    try:
        # IMMEDIATE takes the write lock now: a second process waits here (busy_timeout), then
        # finds the schema at head and does nothing.
        connection.exec_driver_sql("BEGIN IMMEDIATE")
        locked_revision = _run_alembic(connection, engine)
        violations = connection.exec_driver_sql("PRAGMA foreign_key_check").fetchall()
        if violations:
            raise TuneloopError(
                f"a migration left rows that break foreign keys: {violations[:5]}",
                hint="report this as a tuneloop bug; the database was left unchanged",
            )
        connection.commit()
    except BaseException:
        connection.rollback()
        raise
    finally:
        connection.exec_driver_sql("PRAGMA foreign_keys = ON")
        connection.commit()
    return locked_revision


def _run_alembic(connection: Connection, engine: Engine) -> str | None:
    """Upgrade to head on ``connection`` (which holds the lock); returns the revision it started at."""
    starting_revision = _read_revision(connection)
    _refuse_unknown_revision(starting_revision, engine)
    if starting_revision != head_revision():
        url = engine.url.render_as_string(hide_password=False)
        command.upgrade(alembic_config(url, connection=connection), "head")
    return starting_revision


def check_connection(url: str | None = None) -> tuple[bool, str]:
    """For ``tuneloop doctor``: can the database be reached, and can this tuneloop use its schema?

    Never raises and never changes the database (a SQLite file that does not exist yet stays so).
    """
    try:
        resolved = resolve_url(url)
    except TuneloopError as exc:
        return False, str(exc)
    parsed = make_url(resolved)
    masked = parsed.render_as_string(hide_password=True)
    head = head_revision()
    if parsed.get_backend_name() == "sqlite":
        database_file = _sqlite_file(parsed)
        if database_file is not None and not database_file.exists():
            existing = next(parent for parent in database_file.parents if parent.exists())
            if not os.access(existing, os.W_OK):
                return False, f"SQLite at {database_file}: {existing} is not writable; set TUNELOOP_HOME elsewhere"
            return True, f"SQLite at {database_file} (created on first use)"
    try:
        engine = get_engine(resolved)
        with _connect(engine) as connection:
            if engine.dialect.name == "sqlite":
                version = connection.exec_driver_sql("SELECT sqlite_version()").scalar()
                journal = connection.exec_driver_sql("PRAGMA journal_mode").scalar()
                server = f"SQLite {version} ({journal}) at {parsed.database}"
            elif engine.dialect.name == "postgresql":
                version = connection.exec_driver_sql("SHOW server_version").scalar()
                server = f"PostgreSQL {version} at {masked}"
            else:
                server = masked
            revision = _read_revision(connection)
        _refuse_unknown_revision(revision, engine)
    except TuneloopError as exc:
        return False, str(exc)
    except sa.exc.SQLAlchemyError as exc:
        return False, f"{masked}: {exc.__class__.__name__}: {exc}"
    if revision == head:
        return True, f"{server}; schema at {head} (up to date)"
    return True, f"{server}; schema at {revision or 'none'}, migrations to {head} apply on first use"


def ensure_schema(url: str | None = None) -> None:
    """Bring the schema to head once per process and URL; later calls cost nothing."""
    key = resolve_url(url)
    if key in _schema_ready:
        return
    with _lock:
        if key not in _schema_ready:
            upgrade(key)


@contextmanager
def session_scope(url: str | None = None) -> Iterator[Session]:
    """A session that commits when the block ends and rolls back if it raises.

    The first call for a URL in a process applies any missing migrations. Objects stay usable
    after the block (``expire_on_commit=False``), e.g. to print the id of a row just added.
    """
    engine = get_engine(url)
    ensure_schema(url)
    session = Session(engine, expire_on_commit=False)
    try:
        yield session
        session.commit()
    except BaseException:
        session.rollback()
        raise
    finally:
        session.close()


def new_revision(message: str) -> Path:
    """For developers: autogenerate the next numbered migration from the changes in ``models.py``.

    Compares the models with a scratch SQLite database at head and writes
    ``migrations/versions/000N_<message>.py``. Review it before committing: autogenerate misses
    some changes (renames, CHECK constraints) and the models test catches the rest.
    """
    import tempfile

    with tempfile.TemporaryDirectory() as scratch:
        scratch_url = f"sqlite:///{Path(scratch) / 'scratch.db'}"
        upgrade(scratch_url)
        engine = get_engine(scratch_url)
        next_id = f"{int(head_revision()) + 1:04d}"
        try:
            with engine.connect() as connection:
                script = command.revision(
                    alembic_config(scratch_url, connection=connection),
                    message=message,
                    autogenerate=True,
                    rev_id=next_id,
                )
        finally:
            with _lock:
                _engines.pop(resolve_url(scratch_url), None)
                _schema_ready.discard(resolve_url(scratch_url))
            engine.dispose()
    _script_directory.cache_clear()  # the new file is now part of the chain
    assert script is not None and not isinstance(script, list)
    return Path(script.path)

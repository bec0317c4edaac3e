"""Alembic environment for the store's migrations.

tuneloop runs these itself (``tuneloop.store.db.upgrade``), passing the connection in
``config.attributes["connection"]`` so the migration runs inside its locked transaction. To write a
new migration, change ``models.py`` and run ``tuneloop.store.db.new_revision("what changed")``:
it autogenerates ``versions/000N_what_changed.py`` against a scratch database, for you to review.
"""

from __future__ import annotations

from typing import Any

import sqlalchemy as sa
from alembic import context
from alembic.autogenerate.api import AutogenContext

from tuneloop.store.models import Base, UTCDateTime

config = context.config
target_metadata = Base.metadata


def render_item(type_: str, obj: Any, autogen_context: AutogenContext) -> str | bool:
    """Write our column types as plain SQLAlchemy in migration files, which must not import models
    (models change; a migration must keep meaning what it meant when it was written)."""
    if type_ != "type":
        return False
    if isinstance(obj, UTCDateTime):
        return "sa.DateTime(timezone=True)"
    if isinstance(obj, sa.JSON) and "postgresql" in getattr(obj, "_variant_mapping", {}):
        # Alembic's own rendering of this variant names an unimported Text(); spell it out.
        autogen_context.imports.add("from sqlalchemy.dialects import postgresql")
        null = f"none_as_null={obj.none_as_null!r}"
        return f"sa.JSON({null}).with_variant(postgresql.JSONB({null}), 'postgresql')"
    return False


def configure_and_run(connection: Any) -> None:
    context.configure(
        connection=connection,
        target_metadata=target_metadata,
        # SQLite cannot ALTER most things; batch mode recreates the table instead.
        render_as_batch=connection.dialect.name == "sqlite",
        compare_type=True,
        render_item=render_item,
    )
    with context.begin_transaction():
        context.run_migrations()


def run_migrations_online() -> None:
    connection = config.attributes.get("connection")
    if connection is not None:
        configure_and_run(connection)
        return
    # Run by the `alembic` command line with a -x/ini URL: use our engine (pragmas, driver rewrite).
    from tuneloop.store.db import get_engine

    with get_engine(config.get_main_option("sqlalchemy.url")).connect() as connection:
        configure_and_run(connection)
        connection.commit()


def run_migrations_offline() -> None:
    """`--sql` mode: print the SQL instead of running it."""
    context.configure(
        url=config.get_main_option("sqlalchemy.url"),
        target_metadata=target_metadata,
        literal_binds=True,
        render_item=render_item,
    )
    with context.begin_transaction():
        context.run_migrations()


if context.is_offline_mode():
    run_migrations_offline()
else:
    run_migrations_online()

"""CLI: db — the store's schema. Migrations also apply on their own the first time tuneloop uses a
database; these commands make that step visible."""

from __future__ import annotations

import typer
from rich.console import Console

from tuneloop.errors import TuneloopError
from tuneloop.store import current_revision, head_revision, is_known_revision, mask_url, upgrade

app = typer.Typer(no_args_is_help=True)
# A URL is printed as is: on one line (to be copied), never read as markup.
console = Console(highlight=False, markup=False, soft_wrap=True)


@app.command("upgrade")
def upgrade_command() -> None:
    """Apply the migrations the database lacks (TUNELOOP_DATABASE_URL, or the SQLite file in TUNELOOP_HOME)."""
    console.print(f"database: {mask_url()}")
    result = upgrade()
    if result.changed:
        console.print(f"upgraded: {result.from_revision or '(empty)'} → {result.to_revision}")
    else:
        console.print(f"already at {result.to_revision} (head)")


@app.command("current")
def current_command() -> None:
    """Show the migration the database is at, and the newest this tuneloop ships."""
    console.print(f"database: {mask_url()}")
    revision = current_revision()
    head = head_revision()
    if revision == head:
        console.print(f"revision: {revision} (head)")
    elif revision is None:
        console.print(f"revision: none (empty database; migrations to {head} apply on first use)")
    elif is_known_revision(revision):
        console.print(f"revision: {revision} (head is {head}; run `tuneloop db upgrade`, or just use tuneloop)")
    else:
        raise TuneloopError(
            f"the database is at revision {revision}, which this tuneloop does not know (newest: {head})",
            hint="upgrade tuneloop (pip install -U tuneloop)",
        )

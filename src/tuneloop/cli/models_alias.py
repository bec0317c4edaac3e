"""CLI: models promote / rollback / history — move an alias (``task@prod``) atomically, with an audit trail.

Registered onto the ``models`` sub-app by ``cli/main.py``.
"""

from __future__ import annotations

import getpass
from typing import TYPE_CHECKING

import typer
from rich.console import Console
from rich.table import Table

console = Console()

if TYPE_CHECKING:
    from tuneloop.registry.promotion import AliasMove


def actor_name(actor: str | None) -> str:
    """Who acts: ``--actor``, else the login name."""
    if actor:
        return actor
    try:
        return getpass.getuser()
    except (KeyError, OSError):
        return "unknown"


def promote_command(
    version: str = typer.Argument(..., help="The version to promote: task@N or task@sha256:<hex>."),
    alias: str = typer.Option("prod", "--alias", help="The alias to move."),
    actor: str | None = typer.Option(None, "--actor", help="Who is moving it (default: the login name)."),
    reason: str | None = typer.Option(None, "--reason", help="Why, for the audit trail."),
) -> None:
    """Point task@ALIAS at VERSION (verified first); running servers pick it up within a second."""
    from tuneloop.registry.ids import VersionRef, parse_model_id
    from tuneloop.registry.promotion import promote

    ref = parse_model_id(version)
    if not isinstance(ref, VersionRef):
        raise typer.BadParameter("name a task version: task@N or task@sha256:<hex>")
    move = promote(ref.task, version, alias, actor=actor_name(actor), reason=reason)
    console.print(f"{move.task}@{move.alias}: {move.from_version or '(new)'} → {move.to_version}  (by {move.actor})")
    _say_ended_rollouts(move)


def rollback_command(
    task: str = typer.Argument(..., help="The task whose alias to roll back."),
    alias: str = typer.Option("prod", "--alias", help="The alias to move back."),
    actor: str | None = typer.Option(None, "--actor", help="Who is moving it (default: the login name)."),
    reason: str | None = typer.Option(None, "--reason", help="Why, for the audit trail."),
) -> None:
    """Move task@ALIAS back to the version its last move came from."""
    from tuneloop.registry.promotion import rollback

    move = rollback(task.partition("@")[0], alias, actor=actor_name(actor), reason=reason)
    console.print(f"{move.task}@{move.alias}: {move.from_version} → {move.to_version}  (by {move.actor})")
    _say_ended_rollouts(move)


def _say_ended_rollouts(move: AliasMove) -> None:
    """A move ends the alias's canary and shadow (tuneloop.registry.rollouts): say so."""
    from tuneloop.registry.rollouts import list_rollouts

    for rollout in list_rollouts(move.task, move.alias):
        if rollout.ended_at is not None and move.at is not None and rollout.ended_at >= move.at:
            console.print(f"{rollout.describe()} ended: {rollout.state} ({rollout.end_reason})")


def history_command(
    task: str = typer.Argument(..., help="The task."),
    alias: str | None = typer.Option(None, "--alias", help="Only this alias."),
) -> None:
    """Every recorded alias move: when, who, from, to, why."""
    from tuneloop.registry.promotion import alias_history

    moves = alias_history(task, alias)
    if not moves:
        console.print(f"no alias of {task} has been moved yet")
        return
    table = Table(title=f"Alias moves of {task}", title_justify="left")
    for column in ("when", "alias", "what", "from", "to", "who", "why"):
        table.add_column(column, overflow="fold")
    for move in moves:
        table.add_row(
            move.at.isoformat(timespec="seconds") if move.at else "",
            move.alias,
            move.kind.replace("_", " "),
            move.from_version or "-",
            move.to_version or "-",
            move.actor or "",
            move.reason or "",
        )
    console.print(table)


def register(app: typer.Typer) -> None:
    """Add promote, rollback and history to the ``models`` sub-app."""
    app.command("promote")(promote_command)
    app.command("rollback")(rollback_command)
    app.command("history")(history_command)

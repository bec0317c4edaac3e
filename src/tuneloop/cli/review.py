"""CLI: review — the queue of answers a person should look at (failed checks, audit samples)."""

from __future__ import annotations

import getpass
import json

import typer
from rich.console import Console
from rich.table import Table
from rich.text import Text

from tuneloop.errors import TuneloopError
from tuneloop.review import queue
from tuneloop.terminal import json_text, plain

app = typer.Typer(no_args_is_help=True)
console = Console(highlight=False, soft_wrap=True)

REVIEWER_HELP = "Who decides (default: your login name)."


def _reviewer(name: str | None) -> str:
    return name or getpass.getuser()


@app.command("list")
def list_command(
    status: str = typer.Option("pending", "--status", help="pending, approved, corrected, rejected, or all."),
    task: str | None = typer.Option(None, "--task", help="Only this task."),
    model: str | None = typer.Option(None, "--model", help="Only answers of this resolved model (task@3)."),
    limit: int = typer.Option(50, "--limit", "-n", min=1, help="At most N items, oldest first."),
) -> None:
    """Items in the queue, oldest first."""
    items = queue.list_items(status=None if status == "all" else status, task=task, model=model, limit=limit)
    if not items:
        console.print(f"no {'' if status == 'all' else status + ' '}review items")
        return
    table = Table(caption=f"{len(items)} item(s); take one with `tuneloop review show ID --lock`")
    for column in ("id", "created (UTC)", "task", "model", "reason", "status", "failed checks", "lock"):
        table.add_column(column, overflow="fold")
    for item in items:
        lock = f"{item.locked_by} until {item.lock_expires_at:%H:%M:%S}" if item.is_locked() else ""
        # Models, checks' messages (they quote answers) and names come from others: plain text cells.
        table.add_row(
            str(item.id),
            item.created_at.strftime("%Y-%m-%d %H:%M:%S"),
            plain(item.task),
            plain(item.model or "-"),
            plain(item.reason),
            plain(item.status + (f" by {item.reviewer}" if item.reviewer else "")),
            plain("; ".join(item.failed_checks) or "-"),
            plain(lock),
        )
    console.print(table)


@app.command("show")
def show(
    item_id: int = typer.Argument(..., help="The item's id (from `tuneloop review list`)."),
    lock: bool = typer.Option(False, "--lock", help="Take the item's 5-minute lock to review it."),
    reviewer: str | None = typer.Option(None, "--reviewer", help=REVIEWER_HELP),
    as_json: bool = typer.Option(False, "--json", help="Print the item as JSON."),
) -> None:
    """One item: the request, the draft field by field, the failed checks."""
    item = queue.lock_item(item_id, _reviewer(reviewer)) if lock else queue.get_item(item_id)
    if as_json:
        typer.echo(json_text(_to_json(item), default=str))
        return
    # Everything but the ids comes from a client, a model or a reviewer: printed as plain text (terminal.py).
    console.print(
        Text.assemble(
            (f"review item {item.id}", "bold"),
            " · task ",
            plain(item.task),
            " · model ",
            plain(item.model or "-"),
            " · ",
            plain(item.reason),
        )
    )
    console.print(plain(f"status: {item.status}" + (f" by {item.reviewer}" if item.reviewer else "")))
    if item.is_locked():
        console.print(plain(f"locked by {item.locked_by} until {item.lock_expires_at:%Y-%m-%d %H:%M:%S} UTC"))
    for message in item.messages:
        console.print(Text.assemble(plain(f"{message.get('role')}: ", "dim"), plain(message.get("content"))))
    fields = item.fields
    if fields is None:
        console.print(Text.assemble("draft (does not parse): ", plain(item.draft_text)))
    else:
        table = Table(title="answer" if item.correction is not None else "draft")
        table.add_column("field")
        table.add_column("value", overflow="fold")
        for name, value in fields.items():
            table.add_row(plain(name), plain(json.dumps(value, ensure_ascii=False)))
        console.print(table)
    for failure in item.failed_checks:
        console.print(Text.assemble(("failed: ", "red"), plain(failure)))
    if item.confidence is not None:
        console.print(f"confidence: {item.confidence:.3f}")


@app.command("approve")
def approve(
    item_id: int = typer.Argument(..., help="The item's id."),
    reviewer: str | None = typer.Option(None, "--reviewer", help=REVIEWER_HELP),
    dataset: str | None = typer.Option(
        None, "--dataset", help="Dataset for the verified entry (default: <task>-reviewed)."
    ),
    no_dataset: bool = typer.Option(False, "--no-dataset", help="Record the decision only."),
    note: str | None = typer.Option(None, "--note", help="A note kept with the decision."),
) -> None:
    """The draft is right: it becomes a human-verified dataset entry."""
    decision = queue.approve_item(item_id, _reviewer(reviewer), dataset=dataset, to_dataset=not no_dataset, note=note)
    _report(decision)


@app.command("correct")
def correct(
    item_id: int = typer.Argument(..., help="The item's id."),
    changes: list[str] = typer.Option(..., "--set", help="FIELD=VALUE (null for none); repeat per field."),
    reviewer: str | None = typer.Option(None, "--reviewer", help=REVIEWER_HELP),
    dataset: str | None = typer.Option(
        None, "--dataset", help="Dataset for the verified entry (default: <task>-reviewed)."
    ),
    no_dataset: bool = typer.Option(False, "--no-dataset", help="Record the decision only."),
    note: str | None = typer.Option(None, "--note", help="A note kept with the decision."),
) -> None:
    """Fix fields of the draft: the corrected answer becomes a human-verified dataset entry."""
    item = queue.get_item(item_id)
    values = {}
    for change in changes:
        name, sep, text = change.partition("=")
        if not sep or not name.strip():
            raise TuneloopError(f"{change!r} is not FIELD=VALUE", where="--set", hint="e.g. --set interest_rate=6.125")
        values[name.strip()] = queue.parse_field_value(item.task, name.strip(), text)
    decision = queue.correct_item(
        item_id, _reviewer(reviewer), values, dataset=dataset, to_dataset=not no_dataset, note=note
    )
    _report(decision)


@app.command("reject")
def reject(
    item_id: int = typer.Argument(..., help="The item's id."),
    reviewer: str | None = typer.Option(None, "--reviewer", help=REVIEWER_HELP),
    note: str | None = typer.Option(None, "--note", help="Why (kept with the decision)."),
) -> None:
    """Not an example worth keeping: no dataset entry."""
    _report(queue.reject_item(item_id, _reviewer(reviewer), note=note))


def _report(decision: queue.Decision) -> None:
    item = decision.item
    text = f"review item {item.id}: {item.status} by {item.reviewer} ({item.time_spent_s or 0:.0f} s)"
    if decision.entry_id is not None:
        text += f"; dataset {decision.dataset} entry {decision.entry_id}"
        text += " (already there)" if decision.duplicate else " (provenance human)"
    console.print(plain(text))
    for failure in decision.check_failures:
        note = "the verified answer fails a check, so it is kept but not trained on: "
        console.print(Text.assemble(("note: ", "yellow"), note, plain(failure)))


def _to_json(item: queue.ReviewView) -> dict:
    from dataclasses import asdict

    return asdict(item)

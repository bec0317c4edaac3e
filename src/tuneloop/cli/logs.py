"""CLI: logs — the calls captured by the gateway and the SDK wrapper."""

from __future__ import annotations

import sys
from pathlib import Path

import typer
from rich.console import Console
from rich.table import Table

from tuneloop.data.jsonl import write_rows
from tuneloop.store.logs import build_filter, count_logs, get_log, iter_logs, list_logs, log_to_json
from tuneloop.terminal import json_text, plain

app = typer.Typer(no_args_is_help=True)
console = Console(highlight=False, soft_wrap=True)

FILTER_HELP = "tag.KEY=VALUE, tag.LABEL, model=NAME, status=ok|error, upstream=NAME, task=NAME; repeatable."


def _filter(filters: list[str] | None, model: str | None, status: str | None, since: str | None, until: str | None):
    return build_filter(filters, model=model, status=status, since=since, until=until)


@app.command("list")
def list_command(
    filters: list[str] | None = typer.Option(None, "--filter", "-f", help=FILTER_HELP),
    model: str | None = typer.Option(None, "--model", help="Requested or resolved model (trailing * for a prefix)."),
    status: str | None = typer.Option(None, "--status", help="ok or error."),
    since: str | None = typer.Option(None, "--since", help="ISO date/time, or 30m / 24h / 7d ago."),
    until: str | None = typer.Option(None, "--until", help="ISO date/time, or 30m / 24h / 7d ago."),
    limit: int = typer.Option(50, "--limit", "-n", min=1, help="Newest N calls."),
) -> None:
    """The newest calls, one line each."""
    log_filter = _filter(filters, model, status, since, until)
    rows = list_logs(log_filter, limit=limit)
    if not rows:
        console.print(plain(f"no logged calls match ({log_filter.describe()})"))
        return
    # Models, tags and statuses are what clients sent: cells are plain text (never markup, controls shown).
    table = Table(caption=plain(f"{len(rows)} of {count_logs(log_filter)} matching ({log_filter.describe()})"))
    for column in ("id", "time (UTC)", "model", "status", "latency ms", "tokens in/out", "cost $", "tags"):
        table.add_column(column, overflow="fold")
    for row in rows:
        model_text = row.model_requested
        if row.model_resolved and row.model_resolved != row.model_requested:
            model_text += f" → {row.model_resolved}"
        status_text = row.status + (f" {row.http_status}" if row.http_status else "")
        tokens = f"{row.prompt_tokens}/{row.completion_tokens}" if row.prompt_tokens is not None else "-"
        table.add_row(
            str(row.id),
            row.created_at.strftime("%Y-%m-%d %H:%M:%S"),
            plain(model_text),
            plain(status_text),
            f"{row.latency_ms:.0f}" if row.latency_ms is not None else "-",
            tokens,
            f"{row.cost_usd:.6f}" if row.cost_usd is not None else "-",
            plain(", ".join(row.tags or [])),
        )
    console.print(table)


@app.command("show")
def show(log_id: int = typer.Argument(..., help="The call's id (from `tuneloop logs list`).")) -> None:
    """One call in full: request, response, timings, tokens, cost, tags, attempts."""
    typer.echo(json_text(log_to_json(get_log(log_id))))


@app.command("export")
def export(
    output: Path | None = typer.Option(None, "-o", "--output", help="JSONL file (written atomically); default stdout."),
    filters: list[str] | None = typer.Option(None, "--filter", "-f", help=FILTER_HELP),
    model: str | None = typer.Option(None, "--model", help="Requested or resolved model (trailing * for a prefix)."),
    status: str | None = typer.Option(None, "--status", help="ok or error."),
    since: str | None = typer.Option(None, "--since", help="ISO date/time, or 30m / 24h / 7d ago."),
    until: str | None = typer.Option(None, "--until", help="ISO date/time, or 30m / 24h / 7d ago."),
) -> None:
    """Every matching call as one JSON object per line, oldest first."""
    rows = (log_to_json(row) for row in iter_logs(_filter(filters, model, status, since, until)))
    if output is None:
        for row in rows:
            sys.stdout.write(json_text(row, indent=None) + "\n")  # stdout may be a terminal
        return
    count = write_rows(output, rows)
    Console(stderr=True, highlight=False, soft_wrap=True).print(f"wrote {count} calls to {output}")


@app.command("dead-letters")
def dead_letters(
    limit: int = typer.Option(20, "--limit", "-n", min=1, help="Newest N."),
    full: bool = typer.Option(False, "--full", help="Each as one JSON object per line, with the whole call."),
) -> None:
    """Calls the store refused to log (docs/capture.md → Dead letters): when, why, and the call itself."""
    from tuneloop.capture.dead_letters import read_dead_letters

    letters = read_dead_letters(limit=limit)
    if full:
        for letter in letters:
            sys.stdout.write(json_text(letter, indent=None) + "\n")
        return
    if not letters:
        console.print("no dead letters: the store has taken every captured call")
        return
    table = Table(caption=f"newest {len(letters)} (tuneloop logs dead-letters --full for the calls)")
    for column in ("kept in", "time (UTC)", "writer/stage", "capture id", "why the store refused it"):
        table.add_column(column, overflow="fold")
    for letter in letters:
        kept = "table #" + str(letter["id"]) if letter["kept_in"] == "table" else "file"
        table.add_row(
            kept,
            plain(str(letter.get("created_at", ""))[:19].replace("T", " ")),
            plain(f"{letter.get('writer')}/{letter.get('stage')}"),
            plain(str(letter.get("capture_id") or "-")),
            plain(str(letter.get("error", ""))[:300]),
        )
    console.print(table)

"""CLI: logs — the calls captured by the gateway and the SDK wrapper."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import typer
from rich.console import Console
from rich.table import Table

from tuneloop.data.jsonl import write_rows
from tuneloop.store.logs import build_filter, count_logs, get_log, iter_logs, list_logs, log_to_json

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
        console.print(f"no logged calls match ({log_filter.describe()})")
        return
    table = Table(caption=f"{len(rows)} of {count_logs(log_filter)} matching ({log_filter.describe()})")
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
            model_text,
            status_text,
            f"{row.latency_ms:.0f}" if row.latency_ms is not None else "-",
            tokens,
            f"{row.cost_usd:.6f}" if row.cost_usd is not None else "-",
            ", ".join(row.tags or []),
        )
    console.print(table)


@app.command("show")
def show(log_id: int = typer.Argument(..., help="The call's id (from `tuneloop logs list`).")) -> None:
    """One call in full: request, response, timings, tokens, cost, tags, attempts."""
    typer.echo(json.dumps(log_to_json(get_log(log_id)), indent=2, ensure_ascii=False))


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
            sys.stdout.write(json.dumps(row, ensure_ascii=False) + "\n")
        return
    count = write_rows(output, rows)
    Console(stderr=True, highlight=False, soft_wrap=True).print(f"wrote {count} calls to {output}")

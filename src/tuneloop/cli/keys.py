"""CLI: keys — tuneloop API keys for the gateway (stored hashed; shown once when created)."""

from __future__ import annotations

import typer
from rich.console import Console
from rich.table import Table

from tuneloop.store.keys import create_key, list_keys, revoke_key

app = typer.Typer(no_args_is_help=True)
console = Console(highlight=False, soft_wrap=True)


@app.command("create")
def create(
    name: str = typer.Option(..., "--name", help="A unique name for the client (app1, batch-jobs, ...)."),
    rate_limit: int | None = typer.Option(None, "--rate-limit", min=1, help="Requests per minute (default: none)."),
    role: str = typer.Option("user", "--role", help="user or admin."),
) -> None:
    """Create a key and print it once: it is stored only as a hash."""
    created = create_key(name, rate_limit_per_min=rate_limit, role=role)
    # The key alone on stdout (for scripts: KEY=$(tuneloop keys create --name x)); the rest on stderr.
    typer.echo(created.key)
    limit = f"{created.rate_limit_per_min}/min" if created.rate_limit_per_min else "no rate limit"
    Console(stderr=True, highlight=False, soft_wrap=True).print(
        f"created key {created.name!r} ({created.prefix}…, {limit}); it will not be shown again"
    )


@app.command("list")
def list_command(all_keys: bool = typer.Option(False, "--all", help="Include revoked keys.")) -> None:
    """List keys (name, prefix, rate limit, dates); never the keys themselves."""
    keys = list_keys(include_revoked=all_keys)
    if not keys:
        console.print("no keys" + ("" if all_keys else " (use --all to see revoked ones)"))
        return
    table = Table()
    for column in ("id", "name", "prefix", "role", "rate limit", "created", "revoked"):
        table.add_column(column)
    for key in keys:
        limit = f"{key.rate_limit_per_min}/min" if key.rate_limit_per_min else "-"
        table.add_row(str(key.id), key.name, key.prefix + "…", key.role, limit, key.created_at, key.revoked_at or "")
    console.print(table)


@app.command("revoke")
def revoke(name: str = typer.Argument(..., help="The key's name.")) -> None:
    """Revoke a key; gateways stop accepting it within their refresh interval (5 s by default)."""
    key = revoke_key(name)
    console.print(f"revoked key {key.name!r} ({key.prefix}…) at {key.revoked_at}")

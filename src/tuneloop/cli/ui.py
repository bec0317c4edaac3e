"""CLI: ui — the web UI over the store (logs, datasets, evals, models, review); see docs/ui.md."""

from __future__ import annotations

import typer
from rich.console import Console

console = Console(stderr=True, highlight=False, soft_wrap=True)


def ui(
    host: str = typer.Option("127.0.0.1", "--host", help="Interface to listen on (0.0.0.0 for all)."),
    port: int = typer.Option(4100, "--port", "-p", help="Port to listen on."),
) -> None:
    """Serve the web UI; log in with a tuneloop API key (admin keys may promote, roll back and review)."""
    from tuneloop.store import mask_url
    from tuneloop.store.keys import list_keys
    from tuneloop.ui.server import serve_ui

    keys = list_keys(include_revoked=False)
    console.print(f"tuneloop UI on http://{host}:{port}/ · store {mask_url()}")
    if not keys:
        console.print("no API keys yet: create one to log in with `tuneloop keys create --name me --role admin`")
    elif not any(key.role == "admin" for key in keys):
        console.print("no admin key: every login is read-only (`tuneloop keys create --name me --role admin`)")
    serve_ui(host=host, port=port)

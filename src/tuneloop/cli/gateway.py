"""CLI: gateway — the OpenAI-compatible proxy that logs every call (see docs/capture.md)."""

from __future__ import annotations

from pathlib import Path

import typer
from rich.console import Console

from tuneloop.capture.config import DEFAULT_PORT, load_gateway_config
from tuneloop.store import mask_url

console = Console(stderr=True, highlight=False, soft_wrap=True)


def gateway(
    config: Path | None = typer.Option(None, "--config", "-c", help="Gateway YAML: routes, auth, redact, logging."),
    host: str = typer.Option("127.0.0.1", "--host", help="Interface to listen on (0.0.0.0 for all)."),
    port: int = typer.Option(DEFAULT_PORT, "--port", "-p", help="Port to listen on."),
    workers: int = typer.Option(
        1, "--workers", "-w", help="Processes serving the port (more than 1 needs a PostgreSQL store)."
    ),
    durable: bool | None = typer.Option(
        None, "--durable/--no-durable", help="Journal every call to disk before answering (nothing lost on kill -9)."
    ),
    log_policy: str | None = typer.Option(
        None, "--log-policy", help="When the store is slow: block (default) or drop."
    ),
) -> None:
    """Run the gateway: /v1/chat/completions and /v1/models, routed to upstreams, every call logged."""
    from tuneloop.capture.server import check_workers, configure_logging, serve

    check_workers(workers)
    overrides: dict[str, object] = {}
    if durable is not None:
        overrides["durable"] = durable
    if log_policy is not None:
        overrides["policy"] = log_policy
    settings = load_gateway_config(config, logging=overrides)
    configure_logging(workers=workers)

    routes = ", ".join(f"{r.match} → {r.upstream}" for r in settings.routes) or "none (use upstream/model names)"
    mode = (
        "durable (journal at " + str(settings.logging.journal_path()) + ")" if settings.logging.durable else "in memory"
    )
    processes = f" · {workers} workers" if workers > 1 else ""
    console.print(f"gateway on http://{host}:{port}/v1{processes} · upstreams: {', '.join(sorted(settings.upstreams))}")
    console.print(f"routes: {routes}")
    console.print(f"logging to {mask_url()} · {mode} · policy {settings.logging.policy} · auth {settings.auth}")
    serve(settings, host=host, port=port, workers=workers)

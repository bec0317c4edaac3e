"""Running the gateway: in the foreground (``tuneloop gateway``) or in a background thread (demo, tests).

uvicorn handles SIGTERM and SIGINT: it stops accepting connections, lets calls in flight finish, then
the app's shutdown drains the log queue into the store before the process exits.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import uvicorn
from fastapi import FastAPI

from tuneloop.background import start_in_thread
from tuneloop.capture.config import GatewayConfig
from tuneloop.capture.gateway import Gateway, create_app
from tuneloop.errors import TuneloopError

GRACEFUL_SHUTDOWN_S = 30


def gateway_app(config: GatewayConfig, url: str | None = None, *, freeze_heap: bool = False) -> FastAPI:
    """The gateway as a server runs it: its app, with the web UI's pages under ``/ui`` when ``config.ui``
    (docs/ui.md). The UI is an edge over every stage, so the gateway's core never imports it."""
    app = create_app(config, url, freeze_heap=freeze_heap)
    if config.ui:
        from tuneloop.ui import mount_ui

        mount_ui(app, "/ui")
    return app


def _uvicorn_config(
    config: GatewayConfig, host: str, port: int, url: str | None, log_level: str, *, own_process: bool = False
) -> uvicorn.Config:
    app = gateway_app(config, url, freeze_heap=own_process)
    return uvicorn.Config(
        app,
        host=host,
        port=port,
        log_level=log_level,
        access_log=False,  # every call is in the store already; a line per request would cost CPU
        timeout_graceful_shutdown=GRACEFUL_SHUTDOWN_S,
        # Upstream calls can take minutes; keep client connections open between them.
        timeout_keep_alive=75,
        lifespan="on",
        # loop and http stay "auto": uvloop and httptools (dependencies), else asyncio and h11.
    )


def serve(config: GatewayConfig, host: str = "127.0.0.1", port: int = 4000, url: str | None = None) -> None:
    """Run until SIGTERM/SIGINT, then drain the log queue and return."""
    server = uvicorn.Server(_uvicorn_config(config, host, port, url, "info", own_process=True))
    try:
        server.run()
    except OSError as exc:
        raise TuneloopError(f"cannot listen on {host}:{port}: {exc}", hint="pick another --port") from exc
    if not server.started:
        raise TuneloopError(f"the gateway did not start on {host}:{port}", hint="see the messages above")


@dataclass
class RunningGateway:
    base_url: str  # e.g. http://127.0.0.1:43567/v1
    gateway: Gateway
    server: uvicorn.Server


@contextmanager
def running_gateway(config: GatewayConfig, url: str | None = None, host: str = "127.0.0.1") -> Iterator[RunningGateway]:
    """A gateway on a free port in a background thread; stopped (and its log drained) on exit."""
    uv_config = _uvicorn_config(config, host, 0, url, "warning")
    running = start_in_thread(uv_config, host=host, name="tuneloop-gateway")
    try:
        yield RunningGateway(f"http://{host}:{running.port}/v1", uv_config.app.state.gateway, running.server)  # type: ignore[attr-defined]
    finally:
        running.stop(GRACEFUL_SHUTDOWN_S + 10)

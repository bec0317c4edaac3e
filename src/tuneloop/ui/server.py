"""Running the UI: in the foreground (``tuneloop ui``) or on a free port in a thread (tests, the demo)."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import uvicorn

from tuneloop.background import start_in_thread
from tuneloop.errors import TuneloopError
from tuneloop.ui.app import create_ui_app

DEFAULT_PORT = 4100


def serve_ui(host: str = "127.0.0.1", port: int = DEFAULT_PORT) -> None:
    """Run until SIGTERM/SIGINT."""
    server = uvicorn.Server(uvicorn.Config(create_ui_app(), host=host, port=port, log_level="info"))
    try:
        server.run()
    except OSError as exc:
        raise TuneloopError(f"cannot listen on {host}:{port}: {exc}", hint="pick another --port") from exc
    if not server.started:
        raise TuneloopError(f"the UI did not start on {host}:{port}", hint="see the messages above")


@dataclass
class RunningUI:
    base_url: str  # e.g. http://127.0.0.1:43567
    server: uvicorn.Server


@contextmanager
def running_ui(host: str = "127.0.0.1", secret: bytes | None = None) -> Iterator[RunningUI]:
    """The UI on a free port in a background thread, stopped on exit."""
    config = uvicorn.Config(create_ui_app(secret), log_level="warning", lifespan="off")
    running = start_in_thread(config, host=host, name="tuneloop-ui")
    try:
        yield RunningUI(f"http://{host}:{running.port}", running.server)
    finally:
        running.stop()

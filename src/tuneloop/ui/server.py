"""Running the UI: in the foreground (``tuneloop ui``) or on a free port in a thread (tests, the demo)."""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import uvicorn

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
    config = uvicorn.Config(create_ui_app(secret), host=host, port=0, log_level="warning", lifespan="off")
    server = uvicorn.Server(config)
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((host, 0))
    port = sock.getsockname()[1]
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, name="tuneloop-ui", daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            raise TuneloopError("the UI did not start", hint="see the log messages above")
        time.sleep(0.01)
    try:
        yield RunningUI(f"http://{host}:{port}", server)
    finally:
        server.should_exit = True
        thread.join(15)
        sock.close()

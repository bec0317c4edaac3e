"""One way to run a uvicorn app in a thread of this process (the demo, tests, `serve`'s background server).

The listening socket is bound here, on a free port when ``port`` is 0, and created with an explicit
``IPPROTO_TCP``: asyncio sets TCP_NODELAY only on sockets whose protocol says TCP, and without it Nagle's
algorithm adds ~40 ms to each sequential call.
"""

from __future__ import annotations

import socket
import threading
import time
from dataclasses import dataclass

import uvicorn

from tuneloop.errors import TuneloopError


@dataclass
class ThreadedServer:
    host: str
    port: int
    server: uvicorn.Server
    thread: threading.Thread
    sock: socket.socket

    def stop(self, timeout: float = 15.0) -> None:
        self.server.should_exit = True
        self.thread.join(timeout)
        self.sock.close()


def start_in_thread(
    config: uvicorn.Config, *, host: str = "127.0.0.1", port: int = 0, name: str = "tuneloop-http"
) -> ThreadedServer:
    """Start ``config``'s app on ``host:port``; returns once it accepts connections."""
    server = uvicorn.Server(config)
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError as exc:
        sock.close()
        raise TuneloopError(f"cannot listen on {host}:{port}: {exc}", hint="pick another port") from None
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, name=name, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            server.should_exit = True
            sock.close()
            raise TuneloopError(f"{name} did not start on {host}:{port}", hint="see the log messages above")
        time.sleep(0.01)
    return ThreadedServer(host, sock.getsockname()[1], server, thread, sock)

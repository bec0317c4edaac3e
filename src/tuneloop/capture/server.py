"""Running the gateway: in the foreground (``tuneloop gateway``), as several worker processes on one port
(``tuneloop gateway --workers N``), or in a background thread (demo, tests).

uvicorn handles SIGTERM and SIGINT: it stops accepting connections, lets calls in flight finish, then
the app's shutdown drains the log queue into the store before the process exits.

With ``--workers N`` uvicorn's own supervisor binds the port once and starts N worker processes that accept
on it (the kernel hands each new connection to one of them); it restarts a worker that dies, and on
SIGTERM/SIGINT sends SIGTERM to each and waits for them, so each drains its own log queue. What each worker
needs goes through its environment: the path of a JSON copy of the validated :class:`GatewayConfig`
(:data:`WORKER_SPEC_ENV`, so every worker, a restarted one too, runs the very config the command loaded) and
prometheus_client's ``PROMETHEUS_MULTIPROC_DIR`` (``/metrics`` sums every worker's figures; see
``capture/gateway.py``). Both live in a private temporary directory removed when the supervisor exits. The
store must be PostgreSQL: SQLite lets one process write at a time (:func:`check_workers`).
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import signal
import sys
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import uvicorn
from fastapi import FastAPI

from tuneloop.background import start_in_thread
from tuneloop.capture.config import GatewayConfig
from tuneloop.capture.gateway import MULTIPROCESS_DIR_ENV, Gateway, create_app
from tuneloop.errors import TuneloopError

log = logging.getLogger(__name__)

GRACEFUL_SHUTDOWN_S = 30
WORKER_HEALTHCHECK_S = 60
# Set by the supervisor of `--workers N` for its workers: the JSON file with their config (see worker_app).
WORKER_SPEC_ENV = "TUNELOOP_GATEWAY_WORKER_SPEC"
WORKER_APP = "tuneloop.capture.server:worker_app"
RUN_DIR_PREFIX = "tuneloop-gateway-"  # + the supervisor's pid: its workers' config and metrics files
# Libraries whose INFO lines (one per upstream request, per migration step) would only cost CPU.
QUIET_LOGGERS = ("httpx", "httpx2", "httpcore", "httpcore2", "alembic")

_SERVER_OPTIONS: dict[str, Any] = {
    "access_log": False,  # every call is in the store already; a line per request would cost CPU
    "timeout_graceful_shutdown": GRACEFUL_SHUTDOWN_S,
    # Upstream calls can take minutes; keep client connections open between them.
    "timeout_keep_alive": 75,
    "lifespan": "on",
    # loop and http stay "auto": uvloop and httptools (dependencies), else asyncio and h11.
}


def gateway_app(config: GatewayConfig, url: str | None = None, *, freeze_heap: bool = False) -> FastAPI:
    """The gateway as a server runs it: its app, with the web UI's pages under ``/ui`` when ``config.ui``
    (docs/ui.md). The UI is an edge over every stage, so the gateway's core never imports it."""
    app = create_app(config, url, freeze_heap=freeze_heap)
    if config.ui:
        from tuneloop.ui import mount_ui

        mount_ui(app, "/ui")
    return app


def configure_logging(*, workers: int = 1) -> None:
    """The log format of a gateway process; with several workers each line names its process."""
    process = " [%(process)d]" if workers > 1 else ""
    logging.basicConfig(level=logging.INFO, format=f"%(levelname)s %(name)s{process}: %(message)s")
    for noisy in QUIET_LOGGERS:
        logging.getLogger(noisy).setLevel(logging.WARNING)


def _uvicorn_config(
    config: GatewayConfig, host: str, port: int, url: str | None, log_level: str, *, own_process: bool = False
) -> uvicorn.Config:
    app = gateway_app(config, url, freeze_heap=own_process)
    return uvicorn.Config(app, host=host, port=port, log_level=log_level, **_SERVER_OPTIONS)


def check_workers(workers: int, url: str | None = None) -> None:
    """Refuse a worker count the store cannot take: below one, or several on SQLite."""
    if workers < 1:
        raise TuneloopError(
            f"{workers} workers: the gateway needs at least one process", where="--workers", hint="--workers 1 or more"
        )
    if workers == 1:
        return
    from sqlalchemy.engine import make_url

    from tuneloop.store.db import mask_url, resolve_url

    if make_url(resolve_url(url)).get_backend_name() == "sqlite":
        raise TuneloopError(
            f"{workers} workers cannot share the SQLite store {mask_url(url)}: SQLite lets one process write at a "
            "time, so the workers would wait on its lock for each other's commits (and fail with 'database is "
            "locked' past its timeout) instead of logging side by side",
            where="--workers",
            hint="set TUNELOOP_DATABASE_URL to a PostgreSQL database (postgresql://user:password@host:5432/dbname), "
            "or run one worker (--workers 1)",
        )


def serve(
    config: GatewayConfig, host: str = "127.0.0.1", port: int = 4000, url: str | None = None, *, workers: int = 1
) -> None:
    """Run until SIGTERM/SIGINT, then drain the log queue(s) and return; ``workers`` > 1: that many processes
    on the port (PostgreSQL store only, :func:`check_workers`)."""
    check_workers(workers, url)
    if workers > 1:
        _serve_workers(config, host, port, url, workers)
        return
    server = uvicorn.Server(_uvicorn_config(config, host, port, url, "info", own_process=True))
    try:
        server.run()
    except OSError as exc:
        raise TuneloopError(f"cannot listen on {host}:{port}: {exc}", hint="pick another --port") from exc
    if not server.started:
        raise TuneloopError(f"the gateway did not start on {host}:{port}", hint="see the messages above")


def _serve_workers(config: GatewayConfig, host: str, port: int, url: str | None, workers: int) -> None:
    from uvicorn.config import STARTUP_FAILURE
    from uvicorn.supervisors.multiprocess import Multiprocess

    from tuneloop.store.db import dispose_engines, ensure_schema

    # Migrated here, once, rather than by N workers queueing on the migration lock; a store that cannot be
    # reached is reported now, by this process, instead of as N workers failing to start.
    ensure_schema(url)
    dispose_engines()
    dumped = config.model_dump_json()
    if GatewayConfig.model_validate_json(dumped) != config:  # a field that does not survive JSON: a bug of ours
        raise TuneloopError(
            "the gateway config does not read back the same from JSON, so it cannot be handed to workers",
            where=config.source,
            hint="run one worker (--workers 1), and report this",
        )
    _remove_stale_run_dirs()
    run_dir = Path(tempfile.mkdtemp(prefix=f"{RUN_DIR_PREFIX}{os.getpid()}-"))  # mode 0700
    saved = {name: os.environ.get(name) for name in (WORKER_SPEC_ENV, MULTIPROCESS_DIR_ENV, "TUNELOOP_DATABASE_URL")}
    try:
        spec = run_dir / "worker.json"
        spec.write_text(json.dumps({"config": json.loads(dumped), "supervisor": os.getpid()}), encoding="utf-8")
        metrics_dir = run_dir / "metrics"
        metrics_dir.mkdir()
        # Workers are spawned (a fresh interpreter each), with this process's environment.
        os.environ[WORKER_SPEC_ENV] = str(spec)
        os.environ[MULTIPROCESS_DIR_ENV] = str(metrics_dir)
        if url is not None:
            os.environ["TUNELOOP_DATABASE_URL"] = url
        uv_config = uvicorn.Config(
            WORKER_APP,
            factory=True,
            workers=workers,
            host=host,
            port=port,
            log_level="info",
            # The supervisor pings each worker and kills one that has not answered within this long. uvicorn's
            # 5 s killed workers still importing and building the gateway on a busy machine, again and again.
            timeout_worker_healthcheck=WORKER_HEALTHCHECK_S,
            **_SERVER_OPTIONS,
        )
        try:
            sock = uv_config.bind_socket()  # it logs why, then exits
        except SystemExit:
            raise TuneloopError(f"cannot listen on {host}:{port}", hint="pick another --port") from None
        supervisor = Multiprocess(uv_config, sockets=[sock])
        try:
            supervisor.run()
        finally:
            sock.close()
        failed = [process.pid for process in supervisor.processes if process.exitcode == STARTUP_FAILURE]
        if failed:
            raise TuneloopError(
                f"gateway worker {failed[0]} did not start, so the gateway stopped", hint="see the messages above"
            )
    finally:
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value
        shutil.rmtree(run_dir, ignore_errors=True)


def _remove_stale_run_dirs() -> None:
    """Delete the run directories of supervisors that were killed (``kill -9`` skips their cleanup): ours
    (same user), whose pid is gone. A pid taken again by another process only keeps a directory longer."""
    for path in Path(tempfile.gettempdir()).glob(f"{RUN_DIR_PREFIX}*-*"):
        pid = path.name.removeprefix(RUN_DIR_PREFIX).split("-", 1)[0]
        try:
            if not pid.isdigit() or path.stat().st_uid != os.getuid():
                continue
            os.kill(int(pid), 0)
        except ProcessLookupError:
            shutil.rmtree(path, ignore_errors=True)
        except OSError:  # gone meanwhile, or another user's process: alive
            continue


def worker_app() -> FastAPI:
    """uvicorn's app factory in each worker process of ``serve(..., workers=N)``: the gateway with the config
    the supervisor wrote (:data:`WORKER_SPEC_ENV`), its heap frozen once started, as a lone gateway's.

    A worker that cannot build its app exits with uvicorn's start-up failure status, which stops the
    supervisor instead of having it restart the worker in a loop.
    """
    from uvicorn.config import STARTUP_FAILURE

    try:
        path = os.environ.get(WORKER_SPEC_ENV)
        if not path:
            raise TuneloopError(
                "not set: this factory is for the workers of `tuneloop gateway --workers N`",
                where=WORKER_SPEC_ENV,
                hint="run `tuneloop gateway --workers N`",
            )
        spec = json.loads(Path(path).read_text(encoding="utf-8"))
        _exit_with(spec["supervisor"])
        configure_logging(workers=2)
        return gateway_app(GatewayConfig.model_validate(spec["config"]), freeze_heap=True)
    except Exception as exc:
        log.error("this gateway worker cannot start: %s", exc)
        sys.exit(STARTUP_FAILURE)


def _exit_with(supervisor: int) -> None:
    """Have the kernel send this worker SIGTERM when its supervisor dies (``kill -9``), so it drains and exits
    rather than serving on as an orphan that holds the port and its journal slot (Linux only)."""
    if not sys.platform.startswith("linux"):
        return
    import ctypes

    pr_set_pdeathsig = 1
    ctypes.CDLL(None, use_errno=True).prctl(pr_set_pdeathsig, signal.SIGTERM, 0, 0, 0)
    if os.getppid() != supervisor:  # it died before the line above: nobody is left to signal
        raise TuneloopError("the gateway's supervisor process is gone", where=f"pid {supervisor}")


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

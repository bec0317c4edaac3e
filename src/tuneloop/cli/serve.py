"""CLI: serve — the OpenAI-compatible server over the base and its registered fine-tunes."""

from __future__ import annotations

import ipaddress
import logging
from enum import StrEnum

import typer
from rich.console import Console

console = Console(stderr=True)


class AuthChoice(StrEnum):
    """--auth: who may call the server (serve/auth.py)."""

    auto = "auto"
    required = "required"
    disabled = "disabled"


AUTH_HELP = (
    "auto: a tuneloop key is required once one has been created (`tuneloop keys create`), as on the gateway; "
    "required: always; disabled: never (only for a server no one else can reach)."
)


def serve(
    host: str = typer.Option("127.0.0.1", "--host", help="Interface to listen on."),
    port: int = typer.Option(8000, "--port", help="Port to listen on."),
    backend: str = typer.Option("llamacpp", "--backend", help="llamacpp (CPU), transformers (reference) or vllm."),
    models: str | None = typer.Option(
        None, "--models", help="Comma-separated models to serve and check at startup, e.g. T@prod,T@3."
    ),
    base: str | None = typer.Option(None, "--base", help="Base model (default: the one the --models were trained on)."),
    max_adapters: int = typer.Option(8, "--max-adapters", help="Adapters kept loaded (LRU)."),
    max_queue: int = typer.Option(16, "--max-queue", help="Requests admitted at once; more get 429."),
    threads: int | None = typer.Option(None, "--threads", help="llama.cpp threads (default: half the cores)."),
    n_ctx: int = typer.Option(2048, "--n-ctx", help="llama.cpp context window."),
    llamacpp_weights: str = typer.Option(
        "native",
        "--llamacpp-weights",
        help="llama.cpp: the GGUF as it is (native), or its f16/f32 rewrite (matches transformers; made once).",
    ),
    device: str = typer.Option("cpu", "--device", help="transformers device (cpu, cuda, mps)."),
    max_batch_size: int = typer.Option(
        8, "--max-batch-size", help="transformers: concurrent requests decoded together, any mix of versions."
    ),
    tensor_parallel_size: int = typer.Option(1, "--tensor-parallel-size", help="vllm: GPUs per replica."),
    pipeline_parallel_size: int = typer.Option(1, "--pipeline-parallel-size", help="vllm: pipeline stages."),
    vllm_python: str | None = typer.Option(
        None,
        "--vllm-python",
        help="vllm: the Python that runs vLLM (default: $TUNELOOP_VLLM_PYTHON, this Python if it has vllm, "
        "else ./.venv-vllm/bin/python, made by `make vllm`).",
    ),
    max_body_bytes: int = typer.Option(1 << 20, "--max-body-bytes", help="Larger request bodies get 413."),
    audit_rate: float | None = typer.Option(
        None,
        "--audit-rate",
        help="Share of passing answers queued for review (default: each task's audit_sample_rate).",
    ),
    auth: AuthChoice = typer.Option(AuthChoice.auto, "--auth", help=AUTH_HELP),
    protect_metrics: bool = typer.Option(
        False, "--protect-metrics", help="/metrics needs a key too (default: open for scrapers; /health always is)."
    ),
) -> None:
    """Serve /v1/chat/completions, /v1/models, /health and /metrics (OpenAI-compatible)."""
    import uvicorn

    from tuneloop.review.policy import ReviewPolicy
    from tuneloop.serve.app import create_app
    from tuneloop.serve.auth import ServeKeys
    from tuneloop.serve.engine import build_engine

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    logging.getLogger("httpx").setLevel(logging.WARNING)  # not a line per call to a backend's server (vLLM)
    keys = ServeKeys(auth.value)  # type: ignore[arg-type]  # the enum holds only the modes
    auth_status = keys.describe()  # reads the key table now: a store it cannot read fails before the model loads
    engine = build_engine(
        backend=backend,
        models=[name.strip() for name in (models or "").split(",") if name.strip()],
        base=base,
        max_adapters=max_adapters,
        max_queue=max_queue,
        threads=threads,
        n_ctx=n_ctx,
        llamacpp_weights=llamacpp_weights,
        device=device,
        max_batch_size=max_batch_size,
        tensor_parallel_size=tensor_parallel_size,
        pipeline_parallel_size=pipeline_parallel_size,
        vllm_python=vllm_python,
    )
    for served in engine.preload():
        console.print(f"serving {served.id} (verified sha256:{served.version.content_hash[:12]})")
    console.print(f"base {engine.base.id} on {engine.backend_name}: http://{host}:{port}/v1 · {auth_status}")
    if (log_path := getattr(engine.backend, "log_path", None)) is not None:  # vLLM's own server writes there
        console.print(f"{engine.backend_name}'s output: {log_path}")
    if not _is_loopback(host) and not keys.requires_key():
        console.print(
            f"[yellow]warning:[/] listening on {host} without keys: anyone who can reach it can use it "
            "(create a key with `tuneloop keys create`, or pass --auth required)"
        )
    try:
        review = ReviewPolicy(metrics=engine.metrics.review, audit_rate=audit_rate)
        app = create_app(
            engine, max_body_bytes=max_body_bytes, review=review, auth=keys, protect_metrics=protect_metrics
        )
        uvicorn.run(app, host=host, port=port, log_level="warning")
    finally:
        engine.close()


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:  # a host name: it may resolve to anything
        return False

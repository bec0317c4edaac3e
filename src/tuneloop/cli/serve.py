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
        None,
        "--models",
        help="Comma-separated models to check, load and pin at startup, e.g. T@prod,T@3 "
        "(every other base and version is served too, loaded on demand).",
    ),
    base: str | None = typer.Option(
        None,
        "--base",
        help="The default base, loaded and pinned at startup (default: the one the --models were trained on, "
        "else the bundled one, loaded but evictable).",
    ),
    memory_budget: str | None = typer.Option(
        None,
        "--memory-budget",
        help="Memory the hot bases may take, e.g. 12GiB; the least recently used idle base is unloaded to make "
        "room (default: 80%% of the machine's memory).",
    ),
    warm: str | None = typer.Option(
        None, "--warm", help="Comma-separated bases to prepare and read into the page cache now, without loading."
    ),
    bases: str | None = typer.Option(
        None,
        "--bases",
        help="Comma-separated base paths clients may name (bundled bases, the HF cache and the bases of "
        "registered versions always can).",
    ),
    max_adapters: int = typer.Option(8, "--max-adapters", help="Adapters kept loaded per base (LRU)."),
    max_queue: int = typer.Option(16, "--max-queue", help="Requests admitted at once; more get 429."),
    max_queue_per_model: int | None = typer.Option(
        None,
        "--max-queue-per-model",
        help="Places in the queue one model may hold, so a burst for it leaves room for others "
        "(default: --max-queue minus a quarter).",
    ),
    threads: str = typer.Option(
        "auto", "--threads", help="llama.cpp threads: a number, or auto (the fastest, measured at load)."
    ),
    n_ctx: int = typer.Option(2048, "--n-ctx", help="llama.cpp context window."),
    prefix_cache_mb: int = typer.Option(
        256, "--prefix-cache-mb", min=0, help="llama.cpp: memory for the KV of prompt heads, per base (0: off)."
    ),
    forced_tokens: bool = typer.Option(
        False,
        "--forced-tokens",
        help="llama.cpp: append the tokens a schema forces in one step (faster; can flip a near tie).",
    ),
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
    from tuneloop.serve.backends.options import parse_threads
    from tuneloop.serve.engine import build_engine
    from tuneloop.serve.pool import parse_bytes

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    logging.getLogger("httpx").setLevel(logging.WARNING)  # not a line per call to a backend's server (vLLM)
    keys = ServeKeys(auth.value)  # type: ignore[arg-type]  # the enum holds only the modes
    auth_status = keys.describe()  # reads the key table now: a store it cannot read fails before the model loads
    engine = build_engine(
        backend=backend,
        models=_names(models),
        base=base,
        memory_budget=parse_bytes(memory_budget) if memory_budget else None,
        warm=_names(warm),
        bases=_names(bases),
        max_adapters=max_adapters,
        max_queue=max_queue,
        max_queue_per_model=max_queue_per_model,
        threads=parse_threads(threads),
        n_ctx=n_ctx,
        prefix_cache_mb=prefix_cache_mb,
        forced_tokens=forced_tokens,
        llamacpp_weights=llamacpp_weights,
        device=device,
        max_batch_size=max_batch_size,
        tensor_parallel_size=tensor_parallel_size,
        pipeline_parallel_size=pipeline_parallel_size,
        vllm_python=vllm_python,
    )
    for served in engine.preload():
        if served.version is not None:
            console.print(f"serving {served.id} (verified sha256:{served.version.content_hash[:12]}), pinned")
        else:
            console.print(f"serving the base {served.id}, pinned")
    console.print(
        f"default base {engine.base.id} on {engine.backend_name}: http://{host}:{port}/v1 · {auth_status} · "
        f"every base and version is served (memory budget {engine.pool.memory_budget / 1024**3:.1f} GiB)"
    )
    if (log_path := getattr(engine.pool.slot(engine.base).backend, "log_path", None)) is not None:  # vLLM's server
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


def _names(text: str | None) -> list[str]:
    return [name.strip() for name in (text or "").split(",") if name.strip()]


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:  # a host name: it may resolve to anything
        return False

"""What the gateway adds to a checked call, as the demo's capture step makes them (results in docs/benchmarks.md,
Gateway, "The demo's figure").

``tuneloop serve`` (the bundled base, llama.cpp) behind ``tuneloop gateway``, the demo task's request sent
with the official client and ``metadata.task`` set, so every answer is checked against the task and, when it
fails (the zero-shot base's answers do), a review item is written before the answer goes back. Per call:
the gateway's own overhead (``x-tuneloop-overhead-ms``) and the checks' time (``x-tuneloop-checks-ms``), with
serve in a thread of this process (as the demo runs it) and as its own process (as a user runs it).

    .venv/bin/python benchmarks/checks_overhead.py [--calls 8]
"""

from __future__ import annotations

import argparse
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

TEXT = "Payoff quote for loan 4821: $182,440.19 good through May 2. Escrow balance $2,310.55."


def ask(base_url: str, calls: int) -> tuple[list[float], list[float], int]:
    """(overhead ms, checks ms, calls escalated) of ``calls`` calls through a gateway in front of ``base_url``."""
    from openai import OpenAI

    from tuneloop.bases import DEFAULT_BASE
    from tuneloop.capture.config import GatewayConfig, Route
    from tuneloop.capture.server import running_gateway
    from tuneloop.task import load_task
    from tuneloop.upstreams import Upstream

    task = load_task("liability-extraction")
    config = GatewayConfig(
        upstreams={"local": Upstream(name="local", base_url=base_url, self_hosted=True)},
        routes=[Route(match="extractor", upstream="local", model=DEFAULT_BASE)],
        auth="disabled",
    )
    overhead, checks, escalated = [], [], 0
    with running_gateway(config) as gateway:
        client = OpenAI(base_url=gateway.base_url, api_key="-", max_retries=0)
        for _ in range(calls):
            reply = client.chat.completions.with_raw_response.create(
                model="extractor",
                messages=task.build_messages({"text": TEXT}),
                max_tokens=task.decoding.max_tokens,
                temperature=0,
                metadata={"task": task.name, "source": "bench"},
            )
            overhead.append(float(reply.headers["x-tuneloop-overhead-ms"]))
            checks.append(float(reply.headers.get("x-tuneloop-checks-ms", "0")))
            escalated += bool(reply.headers.get("x-tuneloop-review"))
    return overhead, checks, escalated


def serve_process() -> tuple[subprocess.Popen, str]:
    import httpx

    from tuneloop.bases import DEFAULT_BASE

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    command = [str(Path(sys.executable).parent / "tuneloop"), "serve", "--port", str(port), "--auth", "disabled"]
    server = subprocess.Popen([*command, "--models", DEFAULT_BASE], stderr=subprocess.DEVNULL)
    for _ in range(600):
        try:
            httpx.get(f"http://127.0.0.1:{port}/health", timeout=1)
            return server, f"http://127.0.0.1:{port}/v1"
        except httpx.HTTPError:
            time.sleep(0.2)
    server.kill()
    raise SystemExit("tuneloop serve did not start")


def line(label: str, overhead: list[float], checks: list[float], escalated: int) -> str:
    rest = overhead[1:]  # the first call also loads the task and opens the store
    return (
        f"{label:<28} overhead median {statistics.median(rest):5.2f} ms (max {max(rest):5.2f}); checks median "
        f"{statistics.median(checks[1:]):5.2f} ms (max {max(checks[1:]):5.2f}, first call {checks[0]:.1f}); "
        f"{escalated}/{len(overhead)} escalated"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--calls", type=int, default=8)
    args = parser.parse_args()
    os.environ["TUNELOOP_HOME"] = tempfile.mkdtemp(prefix="tuneloop-checks-bench-")
    import logging

    logging.getLogger("tuneloop").setLevel(logging.ERROR)
    from tuneloop.bases import DEFAULT_BASE
    from tuneloop.serve.app import start_background_server
    from tuneloop.serve.engine import build_engine

    server = start_background_server(build_engine(models=[DEFAULT_BASE]), auth="disabled")
    try:
        print(line("serve in a thread (demo)", *ask(server.base_url, args.calls)))
    finally:
        server.stop()
    process, base_url = serve_process()
    try:
        print(line("serve as its own process", *ask(base_url, args.calls)))
    finally:
        process.terminate()
        process.wait(30)


if __name__ == "__main__":
    main()

"""Agreement of a serving backend with the transformers backend on one version: the share of fields that match.

    HF_HUB_OFFLINE=1 TUNELOOP_HOME=... .venv/bin/python benchmarks/serve_agreement.py --model TASK@N \
        --data test.jsonl [--limit 100] [--engine llamacpp|vllm] [--llamacpp-weights native|f16|f32] \
        [--vllm-python PATH] [--concurrency 8] [--no-cache]

Runs the version through transformers (the reference, in this process, one request at a time) and through
``--engine`` with the eval stage (greedy, the task's decoding defaults, under the task's schema), then
scores the reference answer of each example against the engine's answer with the task's own field
comparators (``tuneloop.evals.scoring``): a field agrees when the comparator would accept one answer as the
other's gold value. Prints both engines' field error against the human-verified answers beside it.

``--engine llamacpp`` runs in this process as the eval does for any local model. ``--engine vllm``: evals
run vLLM only as a server, so this starts ``tuneloop serve --backend vllm`` (in this TUNELOOP_HOME, on a
free loopback port) and evaluates it by URL (``http://127.0.0.1:PORT/v1#TASK@N``), ``--concurrency``
requests at once, as it is served: the server decodes the version under its task's schema by default, and
the eval asks for the task's greedy decoding. The server is stopped afterwards.
The serve issues' goal: >= 98 % of fields agree on the demo task's test split.
"""

from __future__ import annotations

import argparse
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")

from tuneloop.bases.widen import LLAMA_WEIGHTS


@contextmanager
def vllm_server(model: str, python: str | None, timeout_s: float) -> Iterator[str]:
    """``tuneloop serve --backend vllm`` for ``model`` on a free loopback port; yields its /v1 URL."""
    import httpx

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    command = [str(Path(sys.executable).with_name("tuneloop")), "serve", "--backend", "vllm", "--port", str(port)]
    command += ["--models", model, "--auth", "disabled"]
    if python:
        command += ["--vllm-python", python]
    log_path = Path(os.environ.get("TUNELOOP_HOME", ".")) / f"serve-agreement-vllm-{port}.log"
    with log_path.open("ab") as log:
        # Its own process group: stopping it stops the vLLM server it started too.
        server = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        started = time.monotonic()
        while True:
            if server.poll() is not None:
                tail = "\n".join(log_path.read_text(errors="replace").splitlines()[-30:])
                raise SystemExit(f"tuneloop serve --backend vllm exited ({server.returncode}); {log_path}:\n{tail}")
            if time.monotonic() - started > timeout_s:
                raise SystemExit(f"tuneloop serve --backend vllm not ready in {timeout_s:.0f} s; see {log_path}")
            try:
                if httpx.get(f"http://127.0.0.1:{port}/health", timeout=5).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            time.sleep(2)
        yield f"http://127.0.0.1:{port}/v1"
    finally:
        server.send_signal(signal.SIGTERM)
        try:
            server.wait(timeout=60)
        except subprocess.TimeoutExpired:
            os.killpg(server.pid, signal.SIGKILL)
            server.wait()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", required=True, help="a registered version, e.g. liability-extraction@1")
    parser.add_argument("--data", required=True, help="a dataset JSONL with gold answers, or dataset:NAME")
    parser.add_argument("--limit", type=int, default=100)
    parser.add_argument("--engine", default="llamacpp", choices=("llamacpp", "vllm"), help="compared with transformers")
    parser.add_argument(
        "--llamacpp-weights",
        default="native",
        choices=LLAMA_WEIGHTS,
        help="llama.cpp on the GGUF as it is, or on its float rewrite (bases/widen.py)",
    )
    parser.add_argument("--vllm-python", default=None, help="vllm: tuneloop serve's --vllm-python")
    parser.add_argument("--concurrency", type=int, default=8, help="vllm: requests in flight at once")
    parser.add_argument("--startup-timeout", type=float, default=900, help="vllm: seconds its server may take")
    parser.add_argument("--no-cache", action="store_true", help="ask both engines again instead of reusing answers")
    args = parser.parse_args()

    from rich.console import Console

    from tuneloop.answers import parse_answer
    from tuneloop.comparators import Verdict
    from tuneloop.evals.candidates import ModelSpec
    from tuneloop.evals.runner import EvalOptions, run_eval
    from tuneloop.evals.scoring import score_record
    from tuneloop.evals.store import run_results
    from tuneloop.registry.versions import resolve_version
    from tuneloop.task import load_task

    console = Console()
    info = resolve_version(args.model)
    task = load_task(info.task)

    def answers(spec: ModelSpec, concurrency: int = 1) -> tuple[dict[str, str | None], Any]:
        options = EvalOptions(limit=args.limit, use_cache=not args.no_cache, concurrency=concurrency)
        report = run_eval(task, args.data, [spec], options, console=console)
        model = report.models[0]
        return {result.example_id: result.output for result in run_results(report.run_id, model=model.name)}, model

    reference, reference_model = answers(ModelSpec(info.id, backend="transformers"))
    if args.engine == "llamacpp":
        spec = ModelSpec(info.id, backend="llamacpp", backend_options={"weights": args.llamacpp_weights})
        engine, engine_model = answers(spec)
    else:
        with vllm_server(info.id, args.vllm_python, args.startup_timeout) as url:
            engine, engine_model = answers(ModelSpec(f"{url}#{info.id}"), args.concurrency)

    agree = fields = examples = 0
    for example_id, output in engine.items():
        answer, _ = parse_answer(task, output or "")
        if answer is None or example_id not in reference:
            continue
        examples += 1
        score = score_record(task, example_id, reference[example_id], answer)
        fields += len(score.verdicts)
        agree += sum(verdict == Verdict.CORRECT for verdict in score.verdicts.values())
    for label, model in ((args.engine, engine_model), ("transformers", reference_model)):
        console.print(
            f"{label} ({model.name.strip()}): field error {model.summary.field_error_rate:.1%} vs gold, "
            f"invalid {model.summary.invalid_rate:.1%}"
        )
    console.print(
        f"agreement {args.engine} vs transformers: {agree}/{fields} fields = {agree / max(fields, 1):.1%} "
        f"over {examples} examples with a valid {args.engine} answer"
    )


if __name__ == "__main__":
    main()

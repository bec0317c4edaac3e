"""Serve benchmarks across backends, each through ``tuneloop serve`` over HTTP as a user runs it, in one run
(results go in docs/benchmarks.md, Serve):

1. the backend table: requests/s, output tokens/s and p50/p95 latency of the demo extraction request on a
   version (a random LoRA, under the task's schema, the task's greedy decoding) at concurrency 1, 8 and 32,
   for each backend (``--backends llamacpp,transformers,vllm``);
2. vLLM: ``tuneloop serve --backend vllm`` ÷ the same vLLM server called directly (its command line and
   environment copied from the one ``tuneloop serve`` started, the same LoRA loaded, the same request
   body the backend sends), requests/s at c=32, the two taking turns (goal >= 0.95);
3. many versions: 20 versions round-robin under ``--max-adapters 4`` ÷ one version, requests/s, on
   llama.cpp and on vLLM (goal >= 0.8), with the adapter loads and evictions the server made meanwhile.

Every request carries a different loan number in its text, so no engine answers from a cache of an
earlier identical prompt (vLLM caches prefixes: the shared system prompt still hits, as in production).
Versions are random LoRAs (rank 8, q/v; speed does not depend on the values) in a temporary TUNELOOP_HOME.
The servers get ``--max-queue`` twice the highest concurrency (no request is refused with 429) and
``--auth disabled`` (loopback only); the rest are ``tuneloop serve``'s defaults.

    .venv/bin/python benchmarks/serve_backends.py [--backends llamacpp,transformers,vllm]
        [--concurrency 1,8,32] [--rounds 2] [--many-requests 40] [--vllm-python /path/to/python]
    .venv/bin/python benchmarks/serve_backends.py --quick      # a dry run: c=1,8, few requests
    .venv/bin/python benchmarks/serve_backends.py --merge a.json b.json   # one table from runs per backend
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import itertools
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

TASK = "liability-extraction"
TEXT = (
    "Payoff quote for loan ending 4821: $182,440.19 good through May 2. Escrow balance $2,310.55. "
    "Next payment due 2025-06-01 at 6.125%. Lakeview Loan Servicing."
)
BACKENDS = ("llamacpp", "transformers", "vllm")
MANY_VERSIONS = 20
MAX_ADAPTERS = 4
VLLM_MODULE = "vllm.entrypoints.openai.api_server"
_serial = itertools.count(1)  # every request of the run gets its own loan number


def document() -> str:
    """The demo request's text with a loan number no earlier request of this run had."""
    return TEXT.replace("4821", f"{1000 + next(_serial) % 9000:04d}")


# --- processes we start ------------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


class Server:
    """A server process this benchmark started, in its own process group (so its children stop with it)."""

    def __init__(self, name: str, command: list[str], env: dict[str, str], log_path: Path, port: int) -> None:
        self.name, self.command, self.log_path, self.port = name, command, log_path, port
        self.url = f"http://127.0.0.1:{port}"
        self._log = log_path.open("ab")
        self.process = subprocess.Popen(
            command,
            env=env,
            stdout=self._log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
        )

    def wait_ready(self, timeout_s: float) -> float:
        started = time.monotonic()
        while time.monotonic() - started < timeout_s:
            if self.process.poll() is not None:
                raise SystemExit(f"{self.name} exited with status {self.process.returncode}; its log:\n{self.tail()}")
            try:
                if httpx.get(self.url + "/health", timeout=5).status_code == 200:
                    return time.monotonic() - started
            except httpx.TransportError:
                pass
            time.sleep(1)
        self.stop()
        raise SystemExit(f"{self.name} was not ready in {timeout_s:.0f} s; its log:\n{self.tail()}")

    def tail(self, lines: int = 30) -> str:
        return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)  # tuneloop serve stops its vLLM server itself
            try:
                self.process.wait(timeout=60)
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait()
        with contextlib.suppress(ProcessLookupError):  # whatever it started and left behind (its group is ours)
            os.killpg(self.process.pid, signal.SIGKILL)
        self._log.close()


def tuneloop_serve(backend: str, home: Path, version: str, args: argparse.Namespace, max_queue: int) -> Server:
    executable = Path(sys.executable).with_name("tuneloop")
    if not executable.is_file():
        raise SystemExit(f"no tuneloop command beside {sys.executable}: install the project (make install)")
    port = free_port()
    command = [str(executable), "serve", "--backend", backend, "--port", str(port), "--models", version]
    command += ["--max-adapters", str(MAX_ADAPTERS), "--max-queue", str(max_queue), "--auth", "disabled"]
    if backend == "llamacpp" and args.threads is not None:
        command += ["--threads", str(args.threads)]
    if backend == "vllm" and args.vllm_python:
        command += ["--vllm-python", args.vllm_python]
    env = {**os.environ, "TUNELOOP_HOME": str(home)}
    return Server(f"tuneloop serve --backend {backend}", command, env, home / f"serve-{backend}.log", port)


def vllm_child(server: Server) -> tuple[list[str], dict[str, str], int]:
    """The command line, environment and port of the vLLM server ``tuneloop serve`` started."""
    import psutil

    for child in psutil.Process(server.process.pid).children(recursive=True):
        command = child.cmdline()
        if VLLM_MODULE in command:
            port = int(command[command.index("--port") + 1])
            return command, child.environ(), port
    raise SystemExit(f"{server.name} runs no {VLLM_MODULE} process")


# --- load ----------------------------------------------------------------------------------------------


@dataclass
class Run:
    """One closed-loop run: ``concurrency`` requests in flight until ``total`` were answered.

    Its p50/p95 are of the requests sent after the first ``concurrency`` (``steady_ms``): those of the
    opening burst found a queue still filling, and would make a serial engine look faster at c=32 than
    it is once loaded; all requests count when there are no later ones."""

    concurrency: int
    latencies_ms: list[float] = field(default_factory=list)
    steady_ms: list[float] = field(default_factory=list)
    completion_tokens: list[int] = field(default_factory=list)
    elapsed_s: float = 0.0
    invalid: int = 0  # answers the server reported outside the schema

    @property
    def requests_per_s(self) -> float:
        return len(self.latencies_ms) / self.elapsed_s

    @property
    def tokens_per_s(self) -> float:
        return sum(self.completion_tokens) / self.elapsed_s

    def merged(self, other: Run) -> Run:
        return Run(
            self.concurrency,
            self.latencies_ms + other.latencies_ms,
            self.steady_ms + other.steady_ms,
            self.completion_tokens + other.completion_tokens,
            self.elapsed_s + other.elapsed_s,
            self.invalid + other.invalid,
        )

    def summary(self) -> dict[str, Any]:
        from tuneloop.testing.loadtest import percentile

        latencies = self.steady_ms or self.latencies_ms
        return {
            "concurrency": self.concurrency,
            "requests": len(self.latencies_ms),
            "requests_per_s": round(self.requests_per_s, 3),
            "output_tokens_per_s": round(self.tokens_per_s, 1),
            "p50_ms": round(percentile(latencies, 50)),
            "p95_ms": round(percentile(latencies, 95)),
            "latency_sample": len(latencies),
            "mean_output_tokens": round(sum(self.completion_tokens) / len(self.completion_tokens), 1),
            "schema_invalid": self.invalid,
        }


def run_load(url: str, body: Callable[[int], dict[str, Any]], total: int, concurrency: int) -> Run:
    """POST ``total`` chat completions to ``url`` with ``concurrency`` in flight; any failure stops the run."""

    async def main() -> Run:
        run = Run(concurrency)
        indexes = iter(range(total))
        limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
        async with httpx.AsyncClient(base_url=url, timeout=3600, limits=limits) as client:

            async def worker() -> None:
                for index in indexes:
                    started = time.perf_counter()
                    response = await client.post("/v1/chat/completions", json=body(index))
                    if response.status_code != 200:
                        raise SystemExit(f"{url}: HTTP {response.status_code}: {response.text[:400]}")
                    run.latencies_ms.append((time.perf_counter() - started) * 1000)
                    if index >= concurrency:
                        run.steady_ms.append(run.latencies_ms[-1])
                    payload = response.json()
                    run.completion_tokens.append(payload["usage"]["completion_tokens"])
                    run.invalid += (payload.get("tuneloop") or {}).get("schema_valid") is False

            started = time.perf_counter()
            await asyncio.gather(*(worker() for _ in range(concurrency)))
            run.elapsed_s = time.perf_counter() - started
        return run

    return asyncio.run(main())


def served_request(model: str | Callable[[int], str], max_tokens: int | None = None) -> Callable[[int], dict[str, Any]]:
    """The demo extraction request as a user sends it to ``tuneloop serve``: the version's defaults
    (its task schema, greedy, its max_tokens unless ``max_tokens`` caps it) apply."""
    from tuneloop.task import load_task

    task = load_task(TASK)

    def body(index: int) -> dict[str, Any]:
        name = model(index) if callable(model) else model
        request = {"model": name, "messages": task.build_messages({"text": document()})}
        return request if max_tokens is None else {**request, "max_tokens": max_tokens}

    return body


def adapter_counts(server: Server) -> tuple[float, int]:
    """(versions verified before a load, adapters loaded now): the server's /metrics and /health."""
    verified = 0.0
    for line in httpx.get(server.url + "/metrics", timeout=30).text.splitlines():
        if line.startswith("tuneloop_serve_adapter_verifications_total"):
            verified += float(line.rsplit(" ", 1)[1])
    loaded = len(httpx.get(server.url + "/health", timeout=30).json().get("loaded_adapters", []))
    return verified, loaded


# --- the parts ------------------------------------------------------------------------------------------


def register_versions(home: Path) -> list[Any]:
    """Random LoRA versions in ``home``, with their GGUF exports made now (a publish-time cost, not a load)."""
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
    from test_serve import register_random_version
    from tuneloop.bases import DEFAULT_BASE, base_weights_hash, resolve_base
    from tuneloop.registry.exports import ensure_gguf_lora

    weights = base_weights_hash(resolve_base(DEFAULT_BASE))
    versions = [register_random_version(home / "made", seed, base_weights_hash=weights) for seed in range(1, 21)]
    for info in versions:
        ensure_gguf_lora(info)
    return versions


def warm(server: Server, versions: list[Any], max_tokens: int | None) -> None:
    """Resolve (and verify) every version without loading it, then two requests on the first (a backend's
    first generations pay one-off costs: vLLM's warm-up, caches)."""
    for info in versions:
        httpx.get(f"{server.url}/v1/models/{info.id}", timeout=600).raise_for_status()
    run_load(server.url, served_request(versions[0].id, max_tokens), 2, 2)


def table(server: Server, version: str, levels: list[int], args: argparse.Namespace) -> list[dict[str, Any]]:
    rows = []
    for concurrency in levels:
        total = max(args.min_requests, args.rounds * concurrency)
        row = run_load(server.url, served_request(version, args.max_tokens), total, concurrency).summary()
        print(f"  c={concurrency}: {json.dumps(row)}", flush=True)
        rows.append(row)
    return rows


def many_versions(server: Server, versions: list[Any], args: argparse.Namespace) -> dict[str, Any]:
    """One version ÷ 20 round-robin, in two halves taking turns (so a slow spell hits both)."""
    names = [info.id for info in versions]
    half = max(1, args.many_requests // 2)
    turn = itertools.count()  # the round-robin goes on across the halves
    one = many = None
    loads = evictions = 0
    for _ in range(2):
        part = run_load(server.url, served_request(names[0], args.max_tokens), half, args.many_concurrency)
        one = part if one is None else one.merged(part)
        verified, loaded = adapter_counts(server)
        part = run_load(
            server.url,
            served_request(lambda _: names[next(turn) % len(names)], args.max_tokens),
            half,
            args.many_concurrency,
        )
        many = part if many is None else many.merged(part)
        verified_after, loaded_after = adapter_counts(server)
        part_loads = round(verified_after - verified)  # each load is verified first, counted once
        loads += part_loads
        evictions += part_loads + loaded - loaded_after
    assert one is not None and many is not None
    result = {
        "concurrency": args.many_concurrency,
        "one_version": one.summary(),
        "versions_round_robin": many.summary(),
        "ratio_requests_per_s": round(many.requests_per_s / one.requests_per_s, 3),
        "adapter_loads": loads,
        "adapter_evictions": evictions,
    }
    print(f"  many versions: {json.dumps(result)}", flush=True)
    return result


def vllm_direct(served: Server, versions: list[Any], home: Path, args: argparse.Namespace) -> dict[str, Any]:
    """The vLLM server ``tuneloop serve`` runs, started again by hand and called directly, ÷ through
    ``tuneloop serve``: same command line (another port), environment, LoRA and request body."""
    from tuneloop.task import load_task

    command, env, _ = vllm_child(served)
    port = free_port()
    command = list(command)
    command[command.index("--port") + 1] = str(port)
    direct = Server("vllm (direct)", command, env, home / "vllm-direct.log", port)
    try:
        startup_s = direct.wait_ready(args.startup_timeout)
        info = versions[0]
        lora = f"tl-{info.content_hash}"
        loaded = httpx.post(
            direct.url + "/v1/load_lora_adapter", json={"lora_name": lora, "lora_path": str(info.adapter_path)}
        )
        loaded.raise_for_status()
        task = load_task(TASK)
        decoding = dict(info.decoding)
        schema = {
            "type": "json_schema",
            "json_schema": {"name": "answer", "schema": task.output_schema, "strict": True},
        }

        def direct_body(index: int) -> dict[str, Any]:  # what VllmBackend sends for the served request
            return {
                "model": lora,
                "messages": task.build_messages({"text": document()}),
                "max_tokens": args.max_tokens or int(decoding.get("max_tokens", 256)),
                "temperature": float(decoding.get("temperature", 0.0)),
                "top_p": float(decoding.get("top_p", 1.0)),
                "response_format": schema,
            }

        run_load(direct.url, direct_body, 2, 2)  # its warm-up, as the served one had
        concurrency = args.direct_concurrency
        total = max(args.min_requests, concurrency)  # per turn and side
        through = called = None
        for _ in range(args.direct_turns):  # taking turns, so a slow spell of the machine hits both
            part = run_load(served.url, served_request(info.id, args.max_tokens), total, concurrency)
            through = part if through is None else through.merged(part)
            part = run_load(direct.url, direct_body, total, concurrency)
            called = part if called is None else called.merged(part)
        assert through is not None and called is not None
        result = {
            "concurrency": concurrency,
            "direct_startup_s": round(startup_s),
            "through_tuneloop_serve": through.summary(),
            "vllm_direct": {key: value for key, value in called.summary().items() if key != "schema_invalid"},
            "ratio_requests_per_s": round(through.requests_per_s / called.requests_per_s, 3),
            "ratio_output_tokens_per_s": round(through.tokens_per_s / called.tokens_per_s, 3),
            "vllm_command": " ".join(command[1:]),
            "vllm_env": {key: value for key, value in env.items() if key.startswith("VLLM_")},
        }
        print(f"  direct: {json.dumps(result)}", flush=True)
        return result
    finally:
        direct.stop()


def markdown(results: dict[str, Any]) -> str:
    lines = [
        "| backend | c | requests | requests/s | output tokens/s | p50 ms | p95 ms | output tokens (mean) | "
        "outside the schema |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for backend, part in results["backends"].items():
        for row in part["table"]:
            lines.append(
                f"| {backend} | {row['concurrency']} | {row['requests']} | {row['requests_per_s']:.3f} | "
                f"{row['output_tokens_per_s']:.1f} | {row['p50_ms']:,} | {row['p95_ms']:,} | "
                f"{row['mean_output_tokens']} | {row['schema_invalid']} |"
            )
    for backend, part in results["backends"].items():
        lines.append(f"\n{backend}: `tuneloop serve` ready in {part['startup_s']} s")
        if "many_versions" in part:
            many = part["many_versions"]
            lines.append(
                f"{backend}: {MANY_VERSIONS} versions round-robin (--max-adapters {MAX_ADAPTERS}) ÷ one version, "
                f"c={many['concurrency']}: {many['versions_round_robin']['requests_per_s']:.3f} / "
                f"{many['one_version']['requests_per_s']:.3f} rps = **{many['ratio_requests_per_s']}** (goal ≥ 0.8); "
                f"{many['adapter_loads']} adapter loads, {many['adapter_evictions']} evictions"
            )
        if "direct" in part:
            direct = part["direct"]
            lines.append(
                f"vllm: through tuneloop serve ÷ vLLM called directly, c={direct['concurrency']}: "
                f"{direct['through_tuneloop_serve']['requests_per_s']:.3f} / "
                f"{direct['vllm_direct']['requests_per_s']:.3f} rps = **{direct['ratio_requests_per_s']}** "
                f"(goal ≥ 0.95); output tokens/s ratio {direct['ratio_output_tokens_per_s']}"
            )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--backends", default=",".join(BACKENDS), help="comma-separated, in the order run")
    parser.add_argument("--concurrency", default="1,8,32", help="the table's concurrency levels")
    parser.add_argument(
        "--rounds", type=int, default=2, help="requests per level: rounds × c (at least --min-requests)"
    )
    parser.add_argument("--min-requests", type=int, default=8)
    parser.add_argument("--many-requests", type=int, default=20, help="per side of the many-versions ratio")
    parser.add_argument("--many-concurrency", type=int, default=8)
    parser.add_argument("--direct-concurrency", type=int, default=32)
    parser.add_argument("--direct-turns", type=int, default=2, help="turns each of served and direct vLLM")
    parser.add_argument("--skip-table", action="store_true", help="no backend table (only the ratios)")
    parser.add_argument("--skip-many", action="store_true", help="no many-versions ratio")
    parser.add_argument("--skip-direct", action="store_true", help="no vLLM direct ratio")
    parser.add_argument("--threads", type=int, default=None, help="llama.cpp threads (default: serve's)")
    parser.add_argument("--vllm-python", default=None, help="default: tuneloop serve's (--vllm-python)")
    parser.add_argument("--startup-timeout", type=float, default=900)
    parser.add_argument("--max-tokens", type=int, default=None, help="cap answers (dry runs; default: the task's)")
    parser.add_argument("--quick", action="store_true", help="a dry run: c=1,8, 1 round, 4 requests, 10 many")
    parser.add_argument("--json", type=Path, default=None, help="also write the figures here")
    parser.add_argument(
        "--merge",
        type=Path,
        nargs="+",
        default=None,
        help="print one table from earlier runs' --json files, run nothing",
    )
    args = parser.parse_args()
    if args.merge:
        merged: dict[str, Any] = {"backends": {}}
        for path in args.merge:  # runs of one backend's parts (--skip-...) add up
            for backend, part in json.loads(path.read_text())["backends"].items():
                into = merged["backends"].setdefault(backend, {"table": []})
                into.update({**part, "table": into["table"] + part["table"]})
        print(markdown(merged))
        return
    if args.quick:
        args.concurrency, args.rounds, args.min_requests, args.many_requests = "1,8", 1, 4, 10
        args.direct_concurrency = 8
    backends = [name.strip() for name in args.backends.split(",") if name.strip()]
    unknown = [name for name in backends if name not in BACKENDS]
    if unknown:
        raise SystemExit(f"--backends: unknown {unknown[0]!r}; use some of {', '.join(BACKENDS)}")
    levels = [int(value) for value in args.concurrency.split(",")]
    max_queue = 2 * max([*levels, args.many_concurrency, args.direct_concurrency])

    home = Path(tempfile.mkdtemp(prefix="tuneloop-serve-backends-"))
    os.environ["TUNELOOP_HOME"] = str(home)
    started = time.monotonic()
    versions = register_versions(home)
    print(f"{len(versions)} versions registered and exported in {time.monotonic() - started:.0f} s", flush=True)
    results: dict[str, Any] = {
        "cpu_count": os.cpu_count(),
        "load_at_start": os.getloadavg(),
        "args": {key: str(value) for key, value in vars(args).items()},
        "backends": {},
    }
    print(f"TUNELOOP_HOME={home} (server logs there)", flush=True)
    for backend in backends:
        print(f"{backend}:", flush=True)
        server = tuneloop_serve(backend, home, versions[0].id, args, max_queue)
        try:
            part: dict[str, Any] = {"startup_s": round(server.wait_ready(args.startup_timeout))}
            warm(server, versions, args.max_tokens)
            part["table"] = [] if args.skip_table else table(server, versions[0].id, levels, args)
            if backend in ("llamacpp", "vllm") and not args.skip_many:
                part["many_versions"] = many_versions(server, versions, args)
            if backend == "vllm" and not args.skip_direct:
                part["direct"] = vllm_direct(server, versions, home, args)
        finally:
            server.stop()
        results["backends"][backend] = part
    results["load_at_end"] = os.getloadavg()
    results["wall_s"] = round(time.monotonic() - started)
    if args.json:
        args.json.write_text(json.dumps(results, indent=1))
    shutil.rmtree(home, ignore_errors=True)  # kept when the run failed: the servers' logs are there
    print(json.dumps(results, indent=1))
    print(markdown(results))


if __name__ == "__main__":
    main()

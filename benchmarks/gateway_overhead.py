"""What the gateway adds: latency (p50/p99) over calling the upstream directly, and requests/s, in one run.

    .venv/bin/python benchmarks/gateway_overhead.py [--litellm /tmp/litellm-venv/bin/litellm] [--scale 1.0]

Everything runs on this machine, each in its own process: a fast fake upstream (our own; the benchmark is
about our side of the wire), ``tuneloop gateway`` (logging every call to SQLite, policy block: nothing
may be dropped), optionally LiteLLM's proxy on the same upstream, and the load generator
(``tuneloop.testing.loadtest``: closed loop, keep-alive connections). For each concurrency (1, 16, 64)
each target gets a warm-up and then a measured run; added latency is the target's percentile minus the
direct call's at the same concurrency. Against that fast upstream, 64 clients in a closed loop saturate any
proxy, so the latency at c=64 is mostly queueing (about 64 / requests per second); a last run at c=64 goes to a
second fake upstream that answers after ``--slow-ms`` ± 50 % (100 ms by default; an LLM takes longer), where the
proxy is not saturated and the added latency is what one call costs. Also reported: the gateway's own
account of its overhead (``x-tuneloop-overhead-ms``: time in its code minus upstream waits), CPU per request
of each proxy process, and, at the end, that the store holds one row per request sent through the gateway.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import signal
import sqlite3
import subprocess
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import psutil
import yaml
from harness import cpu_seconds, free_port, wait_http

from tuneloop.testing.loadtest import chat_body, percentile, run_load

LEVELS = ((1, 1000), (16, 4000), (64, 8000))  # (concurrency, requests measured), fast upstream
SLOW_LEVEL = (64, 4000)  # the same at c=64 against an upstream that takes --slow-ms to answer
WARMUP = 300


def measure(url: str, model: str, concurrency: int, total: int, process: psutil.Process | None) -> dict[str, Any]:
    body = chat_body(model)
    asyncio.run(run_load(url, body, total=WARMUP, concurrency=concurrency))
    cpu_before = cpu_seconds(process)
    result = asyncio.run(run_load(url, body, total=total, concurrency=concurrency))
    cpu_after = cpu_seconds(process)
    problems = (
        len(result.client_errors)
        + len(result.malformed)
        + sum(count for status, count in result.statuses.items() if status != 200)
    )
    return {
        "p50_ms": percentile(result.latencies_ms, 50),
        "p99_ms": percentile(result.latencies_ms, 99),
        "rps": result.requests_per_s,
        "failed": problems,
        "cpu_ms_per_request": (cpu_after - cpu_before) * 1000 / total if process else None,
        "overhead_p50_ms": percentile(result.overhead_ms, 50) if result.overhead_ms else None,
        "overhead_p99_ms": percentile(result.overhead_ms, 99) if result.overhead_ms else None,
        "sent": total + WARMUP,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    default_litellm = "/tmp/litellm-venv/bin/litellm"
    parser.add_argument("--litellm", default=default_litellm if Path(default_litellm).exists() else None)
    parser.add_argument("--scale", type=float, default=1.0, help="Multiply the request counts (0.2 for a quick run).")
    parser.add_argument("--json", type=Path, help="Also write the results here.")
    parser.add_argument(
        "--slow-ms",
        type=float,
        default=100.0,
        help="Latency of the second fake upstream (an LLM answers in hundreds of ms or more); 0 skips it.",
    )
    args = parser.parse_args()

    work = Path(tempfile.mkdtemp(prefix="tuneloop-bench-"))
    processes: list[subprocess.Popen[bytes]] = []
    env = {**os.environ, "TUNELOOP_HOME": str(work / "home")}
    env.pop("TUNELOOP_DATABASE_URL", None)

    def start(command: list[str], **kwargs: Any) -> subprocess.Popen[bytes]:
        log = (work / f"{Path(command[0]).name}-{len(processes)}.log").open("wb")
        process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, **kwargs)
        processes.append(process)
        return process

    try:
        upstream_port, slow_port, gateway_port, litellm_port = free_port(), free_port(), free_port(), free_port()
        upstream_url = f"http://127.0.0.1:{upstream_port}/v1"
        slow_url = f"http://127.0.0.1:{slow_port}/v1"
        start([sys.executable, "-m", "tuneloop.testing.fake_upstream", "--port", str(upstream_port)])
        fake_upstream = [sys.executable, "-m", "tuneloop.testing.fake_upstream"]
        start([*fake_upstream, "--port", str(slow_port), "--latency-ms", str(args.slow_ms), "--latency-spread", "0.5"])
        wait_http(upstream_url + "/models")
        wait_http(slow_url + "/models")

        config = work / "gateway.yaml"
        config.write_text(
            yaml.safe_dump({"upstreams": {"fake": {"base_url": upstream_url}, "slow": {"base_url": slow_url}}})
        )
        tuneloop_bin = str(Path(sys.executable).parent / "tuneloop")
        gateway = start([tuneloop_bin, "gateway", "--config", str(config), "--port", str(gateway_port)], env=env)
        wait_http(f"http://127.0.0.1:{gateway_port}/healthz")

        upstream_urls = {"fake": upstream_url, "slow": slow_url}
        # Each target's chat URL and the model name it is asked for, given the upstream ("fake" or "slow").
        targets: dict[str, tuple[Callable[[str], tuple[str, str]], psutil.Process | None]] = {
            "direct": (lambda upstream: (f"{upstream_urls[upstream]}/chat/completions", "m"), None),
            "tuneloop": (
                lambda upstream: (f"http://127.0.0.1:{gateway_port}/v1/chat/completions", f"{upstream}/m"),
                psutil.Process(gateway.pid),
            ),
        }
        litellm_version = None
        if args.litellm:
            litellm_config = work / "litellm.yaml"
            litellm_config.write_text(
                yaml.safe_dump(
                    {
                        "model_list": [
                            {
                                "model_name": f"{upstream}/m",
                                "litellm_params": {"model": "openai/m", "api_base": url, "api_key": "fake"},
                            }
                            for upstream, url in upstream_urls.items()
                        ],
                    }
                )
            )
            litellm_env = {k: v for k, v in os.environ.items() if not k.startswith(("DATABASE_URL", "TUNELOOP_"))}
            litellm = start(
                [args.litellm, "--config", str(litellm_config), "--port", str(litellm_port), "--num_workers", "1"],
                env=litellm_env,
            )
            wait_http(f"http://127.0.0.1:{litellm_port}/health/liveliness", timeout=300)
            targets["litellm"] = (
                lambda upstream: (f"http://127.0.0.1:{litellm_port}/v1/chat/completions", f"{upstream}/m"),
                psutil.Process(litellm.pid),
            )
            pip = Path(args.litellm).parent / "pip"
            shown = subprocess.run([str(pip), "show", "litellm"], capture_output=True, text=True).stdout
            litellm_version = next((line.split()[-1] for line in shown.splitlines() if line.startswith("Version")), "?")

        # (label, concurrency, requests, upstream): the fast upstream at each concurrency, then the slow one.
        scenarios = [(str(concurrency), concurrency, count, "fake") for concurrency, count in LEVELS]
        if args.slow_ms > 0:
            scenarios.append((f"{SLOW_LEVEL[0]}, upstream {args.slow_ms:g} ms", *SLOW_LEVEL, "slow"))
        results: dict[str, dict[str, dict[str, Any]]] = {name: {} for name in targets}
        for label, concurrency, count, upstream in scenarios:
            total = max(100, int(count * args.scale))
            for name, (address, process) in targets.items():
                url, model = address(upstream)
                # The other proxies are paused meanwhile: an idle LiteLLM proxy keeps a core partly busy with
                # its own background tasks, which would be charged to whoever is measured next to it.
                others = [other for _, other in targets.values() if other is not None and other is not process]
                for other in others:
                    other.suspend()
                try:
                    results[name][label] = measure(url, model, concurrency, total, process)
                finally:
                    for other in others:
                        other.resume()
                print(f"c={label} {name:>9}: {json.dumps(results[name][label])}", flush=True)

        # Every call through the gateway must be in the store once it has shut down (SIGTERM drains).
        gateway.send_signal(signal.SIGTERM)
        gateway.wait(120)
        sent = sum(level["sent"] for level in results["tuneloop"].values())
        database = work / "home" / "tuneloop.db"
        with sqlite3.connect(database) as connection:
            logged = connection.execute("SELECT count(*) FROM requests").fetchone()[0]
        print(
            f"\ngateway: {sent} requests sent, {logged} rows logged ({'none lost' if logged == sent else 'LOST ROWS'})"
        )
        print_table(results, litellm_version)
        if args.json:
            args.json.write_text(json.dumps({"results": results, "sent": sent, "logged": logged}, indent=2))
    finally:
        for process in processes:
            if process.poll() is None:
                process.terminate()
        for process in processes:
            try:
                process.wait(30)
            except subprocess.TimeoutExpired:
                process.kill()
        shutil.rmtree(work, ignore_errors=True)


def print_table(results: dict[str, dict[str, dict[str, Any]]], litellm_version: str | None) -> None:
    direct = results["direct"]
    columns = "proxy | c | p50 ms | p99 ms | added p50 ms | added p99 ms | requests/s | CPU ms/request | own p50/p99 ms"
    print(f"\n| {columns} |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|")
    for name, levels in results.items():
        label = f"LiteLLM {litellm_version}" if name == "litellm" else name
        for concurrency, row in levels.items():
            added50 = row["p50_ms"] - direct[concurrency]["p50_ms"] if name != "direct" else 0.0
            added99 = row["p99_ms"] - direct[concurrency]["p99_ms"] if name != "direct" else 0.0
            cpu = f"{row['cpu_ms_per_request']:.2f}" if row["cpu_ms_per_request"] is not None else "-"
            own = (
                f"{row['overhead_p50_ms']:.3f} / {row['overhead_p99_ms']:.3f}"
                if row["overhead_p50_ms"] is not None
                else "-"
            )
            failed = f" ({row['failed']} failed)" if row["failed"] else ""
            print(
                f"| {label}{failed} | {concurrency} | {row['p50_ms']:.2f} | {row['p99_ms']:.2f} | {added50:.2f} | "
                f"{added99:.2f} | {row['rps']:.0f} | {cpu} | {own} |"
            )


if __name__ == "__main__":
    main()

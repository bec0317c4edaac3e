"""Requests/s of `tuneloop gateway --workers 1` and `--workers 2` on this machine, side by side in one run.

    eval "$(sudo .ci/postgres.sh)"    # or set TUNELOOP_DATABASE_URL to a PostgreSQL database of your own
    .venv/bin/python benchmarks/gateway_workers.py [--requests 6000] [--concurrency 64] [--latency-ms 20] [--rounds 2]

Each in its own process on this machine: a fake upstream (tuneloop.testing.fake_upstream) that answers after
``--latency-ms`` ± 50 % (an LLM takes longer; this keeps the gateway, not the upstream, the bottleneck), the
gateway logging every call to PostgreSQL (several workers need it; one worker logs there too, so the two
differ only in their process count), and the closed-loop load generator (tuneloop.testing.loadtest,
keep-alive connections) in this process. The settings alternate (1, 2, 1, 2, ...) over ``--rounds``, each a
fresh gateway, warmed up, then measured; the median of each is compared. Also reported: the gateway's CPU
per request (the supervisor and its workers), the machine's load average before and after, and that the
store holds one row per request sent. Everything shares this machine's cores: the load generator, the
upstream and PostgreSQL take their part, so the ratio is what this machine gives, not what N cores would.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

import httpx
import psutil
import sqlalchemy as sa
import yaml
from harness import cpu_seconds, free_port

from tuneloop.testing.loadtest import chat_body, percentile, run_load

WARMUP = 500


def wait_workers(url: str, workers: int, timeout: float = 180.0) -> None:
    """Until ``workers`` distinct worker pids have answered /healthz (fresh connections, many at once)."""

    async def ask() -> set[int]:
        seen: set[int] = set()
        deadline = time.monotonic() + timeout
        while len(seen) < workers and time.monotonic() < deadline:
            async with httpx.AsyncClient(limits=httpx.Limits(max_keepalive_connections=0), timeout=5) as client:
                replies = await asyncio.gather(*(client.get(url) for _ in range(16)), return_exceptions=True)
            seen |= {r.json()["pid"] for r in replies if isinstance(r, httpx.Response) and r.status_code == 200}
            await asyncio.sleep(0.2)
        return seen

    seen = asyncio.run(ask())
    if len(seen) < workers:
        raise RuntimeError(f"{len(seen)} of {workers} workers answered at {url}")


def scratch_database(url: str) -> tuple[str, sa.Engine, str]:
    """A new database on the server of ``url`` (its role needs CREATEDB): its URL, an admin engine, its name."""
    from tuneloop.store.db import resolve_url

    admin_url = sa.make_url(resolve_url(url))
    admin = sa.create_engine(admin_url, isolation_level="AUTOCOMMIT")
    name = f"tuneloop_bench_{uuid.uuid4().hex[:10]}"
    with admin.connect() as connection:
        connection.exec_driver_sql(f'CREATE DATABASE "{name}"')
    return admin_url.set(database=name).render_as_string(hide_password=False), admin, name


def measure(
    work: Path, config: Path, database_url: str, workers: int, args: argparse.Namespace, label: str
) -> dict[str, Any]:
    port = free_port()
    env = {**os.environ, "TUNELOOP_HOME": str(work / "home"), "TUNELOOP_DATABASE_URL": database_url}
    tuneloop_bin = str(Path(sys.executable).parent / "tuneloop")
    command = [tuneloop_bin, "gateway", "--config", str(config), "--port", str(port), "--workers", str(workers)]
    log = (work / f"gateway-{label}.log").open("wb")
    gateway = subprocess.Popen(command, env=env, stdout=log, stderr=subprocess.STDOUT)
    base = f"http://127.0.0.1:{port}"
    try:
        wait_workers(base + "/healthz", workers)
        url = base + "/v1/chat/completions"
        body = chat_body("fake/m")
        asyncio.run(run_load(url, body, total=WARMUP, concurrency=args.concurrency))
        process = psutil.Process(gateway.pid)
        cpu_before = cpu_seconds(process)
        result = asyncio.run(run_load(url, body, total=args.requests, concurrency=args.concurrency))
        cpu = cpu_seconds(process) - cpu_before
        failed = len(result.client_errors) + len(result.malformed) + result.completed - result.statuses.get(200, 0)
        gateway.send_signal(signal.SIGTERM)
        code = gateway.wait(120)
    finally:
        if gateway.poll() is None:
            gateway.kill()
        log.close()
    return {
        "workers": workers,
        "rps": result.requests_per_s,
        "p50_ms": percentile(result.latencies_ms, 50),
        "p99_ms": percentile(result.latencies_ms, 99),
        "cpu_ms_per_request": cpu * 1000 / args.requests,
        "failed": failed,
        "sent": WARMUP + args.requests,
        "exit_code": code,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--database-url", help="PostgreSQL server to make a scratch database on "
                        "(default: $TUNELOOP_TEST_POSTGRES_URL, else $TUNELOOP_DATABASE_URL)")  # fmt: skip
    parser.add_argument("--requests", type=int, default=6000, help="Measured requests per run.")
    parser.add_argument("--concurrency", type=int, default=64)
    parser.add_argument("--latency-ms", type=float, default=20.0, help="The fake upstream's latency (± 50 %%).")
    parser.add_argument("--rounds", type=int, default=2, help="Runs of each setting, alternating.")
    parser.add_argument("--json", type=Path, help="Also write the results here.")
    args = parser.parse_args()
    server_url = (
        args.database_url or os.environ.get("TUNELOOP_TEST_POSTGRES_URL") or os.environ.get("TUNELOOP_DATABASE_URL")
    )
    if not server_url or not server_url.startswith("postgres"):
        sys.exit('several workers need PostgreSQL: run `eval "$(sudo .ci/postgres.sh)"` or pass --database-url')

    load_before = os.getloadavg()
    work = Path(tempfile.mkdtemp(prefix="tuneloop-bench-workers-"))
    database_url, admin, database = scratch_database(server_url)
    upstream: subprocess.Popen[bytes] | None = None
    try:
        upstream_port = free_port()
        upstream = subprocess.Popen(
            [sys.executable, "-m", "tuneloop.testing.fake_upstream", "--port", str(upstream_port),
             "--latency-ms", str(args.latency_ms), "--latency-spread", "0.5"],
            stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT,
        )  # fmt: skip
        upstream_url = f"http://127.0.0.1:{upstream_port}/v1"
        config = work / "gateway.yaml"
        config.write_text(yaml.safe_dump({"upstreams": {"fake": {"base_url": upstream_url}}}))
        runs: list[dict[str, Any]] = []
        for round_index in range(args.rounds):
            for workers in (1, 2):
                run = measure(work, config, database_url, workers, args, f"{workers}w-{round_index}")
                runs.append(run)
                print(json.dumps(run), flush=True)
        engine = sa.create_engine(database_url)
        with engine.connect() as connection:
            logged = connection.exec_driver_sql("SELECT count(*) FROM requests").scalar()
        engine.dispose()
    finally:
        if upstream is not None:
            upstream.terminate()
            upstream.wait(30)
        with admin.connect() as connection:
            connection.exec_driver_sql(f'DROP DATABASE IF EXISTS "{database}" WITH (FORCE)')
        admin.dispose()
        shutil.rmtree(work, ignore_errors=True)
    load_after = os.getloadavg()

    sent = sum(run["sent"] for run in runs)
    median = {
        workers: {key: statistics.median(run[key] for run in runs if run["workers"] == workers) for key in runs[0]}
        for workers in (1, 2)
    }
    print(f"\nupstream {args.latency_ms:g} ms ± 50 %, c={args.concurrency}, {args.requests} requests per run, "
          f"{args.rounds} runs of each, {os.cpu_count()} CPUs")  # fmt: skip
    print("load average (1, 5, 15 min): before " + ", ".join(f"{x:.2f}" for x in load_before)
          + " · after " + ", ".join(f"{x:.2f}" for x in load_after))  # fmt: skip
    print(f"store: {sent} requests sent, {logged} rows logged ({'none lost' if logged == sent else 'ROWS MISSING'})")
    print("\n| workers | requests/s (each run) | median requests/s | p50 ms | p99 ms | gateway CPU ms/request |")
    print("|---:|---|---:|---:|---:|---:|")
    for workers in (1, 2):
        each = ", ".join(f"{run['rps']:.0f}" for run in runs if run["workers"] == workers)
        row = median[workers]
        print(f"| {workers} | {each} | {row['rps']:.0f} | {row['p50_ms']:.1f} | {row['p99_ms']:.1f} | "
              f"{row['cpu_ms_per_request']:.2f} |")  # fmt: skip
    print(f"\n2 workers / 1 worker: {median[2]['rps'] / median[1]['rps']:.2f}x requests/s")
    failed = sum(run["failed"] for run in runs)
    if failed or any(run["exit_code"] != 0 for run in runs if run["workers"] > 1):
        print(f"PROBLEMS: {failed} failed requests; exit codes {[run['exit_code'] for run in runs]}")
    if args.json:
        args.json.write_text(json.dumps({"runs": runs, "sent": sent, "logged": logged}, indent=2))


if __name__ == "__main__":
    main()

"""What a replica pool costs a call: the gateway's latency routing to one target and to a pool of 2 replicas,
side by side in one run.

    .venv/bin/python benchmarks/gateway_pool.py [--requests 2000] [--concurrency 16] [--upstream-ms 50]

Each part in its own process: two fake upstreams that answer after ``--upstream-ms`` ± ``--spread`` (an LLM
takes that long or longer; the benchmark is about the gateway's side), ``tuneloop gateway`` logging to SQLite,
and the closed-loop load generator (``tuneloop.testing.loadtest``). Upstream ``one`` has one base URL (the first
fake); upstream ``pool`` lists both fakes under ``base_urls`` (least outstanding, affinity, health checks every
5 s). The runs alternate (one, pool, one again, pool again), so drift of the machine shows as a difference
between a run and its repeat. Also reported: the gateway's own account of its time per call
(``x-tuneloop-overhead-ms``), where choosing a replica is counted, and how the pool split its calls.
"""

from __future__ import annotations

import argparse
import json
import signal
import sqlite3
import sys
from pathlib import Path
from typing import Any

import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent))

from harness import Processes, free_port, measure_closed_loop, wait_http
from homes import scratch_home

from tuneloop.testing.loadtest import chat_body


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--requests", type=int, default=2000, help="Measured requests per run.")
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument("--upstream-ms", type=float, default=50.0, help="The fake upstreams' latency.")
    parser.add_argument("--spread", type=float, default=0.5, help="± this share of it, uniformly (0-1).")
    args = parser.parse_args()

    home = scratch_home("tuneloop-pool-bench-")
    with Processes(home) as processes:
        start = processes.start
        urls = []
        for _ in range(2):
            port = free_port()
            start(
                [sys.executable, "-m", "tuneloop.testing.fake_upstream", "--port", str(port),
                 "--latency-ms", str(args.upstream_ms), "--latency-spread", str(args.spread)]
            )  # fmt: skip
            urls.append(f"http://127.0.0.1:{port}/v1")
        for url in urls:
            wait_http(url + "/models")
        config = home / "gateway.yaml"
        upstreams = {"one": {"base_url": urls[0]}, "pool": {"base_urls": urls}}
        config.write_text(yaml.safe_dump({"upstreams": upstreams}))
        gateway_port = free_port()
        tuneloop_bin = str(Path(sys.executable).parent / "tuneloop")
        gateway = start([tuneloop_bin, "gateway", "--config", str(config), "--port", str(gateway_port)])
        wait_http(f"http://127.0.0.1:{gateway_port}/healthz")
        url = f"http://127.0.0.1:{gateway_port}/v1/chat/completions"

        results: dict[str, dict[str, Any]] = {}
        runs = (("one target", "one"), ("pool of 2", "pool"), ("one again", "one"), ("pool again", "pool"))
        for label, upstream in runs:
            results[label] = measure_closed_loop(url, chat_body(f"{upstream}/m"), args.requests, args.concurrency)
            print(f"{label:>10}: {json.dumps(results[label])}", flush=True)

        gateway.send_signal(signal.SIGTERM)
        gateway.wait(120)
        with sqlite3.connect(home / "tuneloop.db") as connection:
            split = connection.execute(
                "SELECT json_extract(attempts, '$[0].replica'), count(*) FROM requests WHERE upstream = 'pool' "
                "GROUP BY 1 ORDER BY 1"
            ).fetchall()
        one = {key: (results["one target"][key] + results["one again"][key]) / 2 for key in ("p50_ms", "p95_ms")}
        setup = f"upstreams {args.upstream_ms:g} ms ± {args.spread:.0%}, c={args.concurrency}"
        print(f"\n{setup}, {args.requests} requests per run")
        columns = "run | p50 ms | p95 ms | p99 ms | p50 ratio | p95 ratio | gateway's own p50 / p95 ms | requests/s"
        print(f"| {columns} | failed |")
        print("|---|---:|---:|---:|---:|---:|---:|---:|---:|")
        for label, row in results.items():
            print(
                f"| {label} | {row['p50_ms']:.1f} | {row['p95_ms']:.1f} | {row['p99_ms']:.1f} | "
                f"{row['p50_ms'] / one['p50_ms']:.3f} | {row['p95_ms'] / one['p95_ms']:.3f} | "
                f"{row['overhead_p50_ms']:.3f} / {row['overhead_p95_ms']:.3f} | {row['rps']:.0f} | {row['failed']} |"
            )
        print("\n(ratios: to the mean of the two one-target runs)")
        print("pool's calls by replica: " + ", ".join(f"{replica}: {count}" for replica, count in split))


if __name__ == "__main__":
    main()

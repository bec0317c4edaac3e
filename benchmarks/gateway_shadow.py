"""What a live shadow costs the calls it mirrors: the gateway's latency with no rollout, shadowing 10 % and
100 % of an alias's calls, side by side in one run.

    .venv/bin/python benchmarks/gateway_shadow.py [--requests 2000] [--concurrency 16] [--upstream-ms 50]

Each part in its own process: a fake upstream that answers after ``--upstream-ms`` ± 50 % (an LLM takes that
long or longer; the benchmark is about the gateway's side), ``tuneloop gateway`` logging to SQLite, and the
closed-loop load generator. The store of a scratch home holds two registered versions of the demo task,
``@1`` as ``@prod``; the shadow mirrors to ``@2`` at the same upstream (the fake's answer misses fields,
but each comparison still runs the task's checks and comparators on both answers). The runs alternate (none, 10 %,
100 %, none again), so drift of the machine shows as a difference between the two "none" runs. At the end:
how many mirrored calls were logged, each linked to its production call.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import sqlite3
import sys
import time
from pathlib import Path
from typing import Any

import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

from harness import Processes, free_port, measure_closed_loop, wait_http
from homes import scratch_home

from tuneloop.testing.loadtest import chat_body

TASK = "liability-extraction"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--requests", type=int, default=2000, help="Measured requests per run.")
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument("--upstream-ms", type=float, default=50.0, help="The fake upstream's latency.")
    args = parser.parse_args()

    home = scratch_home("tuneloop-shadow-bench-")
    os.environ.pop("TUNELOOP_DATABASE_URL", None)
    from test_serve import register_random_version
    from tuneloop.registry.promotion import promote
    from tuneloop.registry.rollouts import start_shadow, stop_rollout

    for seed in (1, 2):
        register_random_version(home / "adapters", seed, layers=2)
    promote(TASK, f"{TASK}@1", "prod", actor="bench")

    with Processes(home) as processes:
        start = processes.start
        upstream_port, gateway_port = free_port(), free_port()
        upstream_url = f"http://127.0.0.1:{upstream_port}/v1"
        start(
            [sys.executable, "-m", "tuneloop.testing.fake_upstream", "--port", str(upstream_port),
             "--latency-ms", str(args.upstream_ms), "--latency-spread", "0.5"]
        )  # fmt: skip
        wait_http(upstream_url + "/models")
        config = home / "gateway.yaml"
        config.write_text(yaml.safe_dump({"upstreams": {"fake": {"base_url": upstream_url}}}))
        tuneloop_bin = str(Path(sys.executable).parent / "tuneloop")
        gateway = start([tuneloop_bin, "gateway", "--config", str(config), "--port", str(gateway_port)])
        wait_http(f"http://127.0.0.1:{gateway_port}/healthz")
        url = f"http://127.0.0.1:{gateway_port}/v1/chat/completions"
        body = chat_body(f"fake/{TASK}@prod")

        results: dict[str, dict[str, Any]] = {}
        for label, percent in (("none", 0), ("shadow 10 %", 10), ("shadow 100 %", 100), ("none again", 0)):
            if percent:
                start_shadow(f"{TASK}@2", "prod", percent, actor="bench")
                time.sleep(1.5)  # the gateway re-reads rollouts every second
            results[label] = measure_closed_loop(url, body, args.requests, args.concurrency)
            if percent:
                stop_rollout(TASK, "prod", "shadow", actor="bench")
                time.sleep(1.5)
            print(f"{label:>13}: {json.dumps(results[label])}", flush=True)

        gateway.send_signal(signal.SIGTERM)
        gateway.wait(120)
        with sqlite3.connect(home / "tuneloop.db") as connection:
            mirrored, linked = connection.execute(
                "SELECT count(*), count(p.id) FROM requests s LEFT JOIN requests p ON p.capture_id = s.shadow_of "
                "WHERE s.rollout_arm = 'shadow'"
            ).fetchone()
        base = results["none"]
        setup = f"upstream {args.upstream_ms:g} ms ± 50 %, c={args.concurrency}, {args.requests} requests per run"
        print(f"\n{setup}")
        print("| run | p50 ms | p95 ms | p99 ms | p50 ratio | p95 ratio | gateway's own p50 ms | requests/s | failed |")
        print("|---|---:|---:|---:|---:|---:|---:|---:|---:|")
        for label, row in results.items():
            print(
                f"| {label} | {row['p50_ms']:.1f} | {row['p95_ms']:.1f} | {row['p99_ms']:.1f} | "
                f"{row['p50_ms'] / base['p50_ms']:.3f} | {row['p95_ms'] / base['p95_ms']:.3f} | "
                f"{row['overhead_p50_ms']:.2f} | {row['rps']:.0f} | {row['failed']} |"
            )
        print(f"\nmirrored calls logged: {mirrored}, each linked to its production call: {linked == mirrored}")


if __name__ == "__main__":
    main()

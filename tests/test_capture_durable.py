"""The gateway as a process: SIGTERM drains the log queue; in --durable mode kill -9 loses nothing."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import httpx
import openai

from test_capture_support import GatewayProcess, count_rows, rows, write_config
from tuneloop.testing.loadtest import chat_body, run_load

# The writer holds records for 5 s (or 100k of them) before a commit: at the kill they are all in memory.
SLOW_COMMITS = {"batch_size": 100_000, "flush_ms": 5000}

pytest_plugins = ["test_capture_support"]  # the fake upstream and gateway fixtures


def send(gateway: GatewayProcess, count: int, concurrency: int = 8) -> None:
    result = asyncio.run(
        run_load(
            gateway.base_url + "/chat/completions",
            lambda i: chat_body("fake/m", f"doc {i}"),
            total=count,
            concurrency=concurrency,
        )
    )
    assert result.statuses == {200: count} and not result.client_errors, (result.statuses, result.client_errors[:3])


def test_sigterm_drains_the_log_queue(tmp_path: Path, fake_url: str, tuneloop_home: Path) -> None:
    config = write_config(tmp_path / "gateway.yaml", fake_url, logging=SLOW_COMMITS)
    gateway = GatewayProcess(config, tuneloop_home)
    try:
        send(gateway, 300)
        assert count_rows() == 0  # nothing committed yet
        assert gateway.terminate()
    finally:
        gateway.close()
    assert count_rows() == 300


def test_kill_9_in_durable_mode_loses_nothing(tmp_path: Path, fake_url: str, tuneloop_home: Path) -> None:
    journal = tmp_path / "journal"
    config = write_config(tmp_path / "gateway.yaml", fake_url, logging={**SLOW_COMMITS, "journal_dir": str(journal)})
    gateway = GatewayProcess(config, tuneloop_home, "--durable")
    try:
        send(gateway, 300)
        # Streams too: the closing [DONE] only goes out once the call is journaled.
        api = openai.OpenAI(base_url=gateway.base_url, api_key="x", max_retries=0)
        for index in range(5):
            stream = api.chat.completions.create(
                model="fake/m", messages=[{"role": "user", "content": f"stream {index}"}], stream=True
            )
            assert "".join(chunk.choices[0].delta.content or "" for chunk in stream if chunk.choices)
        gateway.kill()
    finally:
        gateway.close()
    assert count_rows() < 305  # the kill came before the commit: only the journal has them
    journaled = sum(len(path.read_bytes().splitlines()) for path in journal.glob("journal-*.jsonl"))
    assert journaled == 305

    restarted = GatewayProcess(config, tuneloop_home, "--durable")
    try:
        health = httpx.get(restarted.base_url.replace("/v1", "/healthz")).json()
        assert health["replayed_at_start"] == 305 and health["durable"]
        assert restarted.terminate()
    finally:
        restarted.close()
    logged = rows()
    assert len(logged) == 305 and len({row.capture_id for row in logged}) == 305
    streamed = [row for row in logged if row.request.get("stream")]
    assert len(streamed) == 5 and all(json.dumps(row.response).count("payoff_amount") == 1 for row in streamed)
    assert list(journal.glob("journal-*.jsonl")) == []

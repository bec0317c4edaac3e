"""`tuneloop keys` and `tuneloop logs`: keys shown once and stored hashed; logs listed, shown, exported, filtered."""

from __future__ import annotations

import json
from datetime import timedelta
from pathlib import Path

import pytest
import sqlalchemy as sa
from typer.testing import CliRunner

from test_datasets import answer, log_call
from tuneloop.cli.main import app
from tuneloop.errors import TuneloopError
from tuneloop.store import ApiKey, RequestLog, session_scope, utcnow
from tuneloop.store.keys import hash_key
from tuneloop.store.logs import build_filter, count_logs, parse_time

runner = CliRunner()


def test_keys_create_prints_the_key_once_and_stores_its_hash() -> None:
    created = runner.invoke(app, ["keys", "create", "--name", "app1", "--rate-limit", "60"])
    assert created.exit_code == 0, created.output
    key = created.stdout.strip().splitlines()[0]
    assert key.startswith("tl-") and len(key) > 30
    with session_scope() as session:
        row = session.scalar(sa.select(ApiKey))
        assert row.key_hash == hash_key(key) and key not in (row.key_hash, row.prefix) and row.rate_limit_per_min == 60
    listed = runner.invoke(app, ["keys", "list"])
    assert "app1" in listed.output and key not in listed.output and "60/min" in listed.output
    duplicate = runner.invoke(app, ["keys", "create", "--name", "app1"])
    assert duplicate.exit_code != 0
    revoked = runner.invoke(app, ["keys", "revoke", "app1"])
    assert revoked.exit_code == 0 and "revoked" in revoked.output
    assert "no keys" in runner.invoke(app, ["keys", "list"]).output
    assert "app1" in runner.invoke(app, ["keys", "list", "--all"]).output


def test_logs_list_show_export_with_filters(tmp_path: Path) -> None:
    log_call("letter 1", answer(), tags={"task": "liability-extraction", "env": "prod"})
    log_call("letter 2", answer(), tags={"task": "liability-extraction", "env": "dev"})
    log_call("letter 3", answer(), tags={"task": "summaries"}, model="openai/gpt-4o")
    log_call("letter 4", answer(), status="error")

    listed = runner.invoke(app, ["logs", "list", "--filter", "tag.task=liability-extraction"])
    assert listed.exit_code == 0, listed.output
    assert "2 of 2 matching" in listed.output and "env=dev" in listed.output
    errors = runner.invoke(app, ["logs", "list", "--status", "error"])
    assert "1 of 1" in errors.output

    exported = runner.invoke(app, ["logs", "export", "--filter", "tag.env=prod"])
    [line] = exported.stdout.splitlines()
    call = json.loads(line)
    assert call["request"]["messages"][1]["content"] == "letter 1" and call["metadata"]["env"] == "prod"
    assert {"latency_ms", "ttft_ms", "overhead_ms", "cost_usd", "price_table_version", "tags", "attempts"} <= set(call)

    out = tmp_path / "calls.jsonl"
    to_file = runner.invoke(app, ["logs", "export", "-o", str(out), "--model", "openai/*"])
    assert to_file.exit_code == 0 and len(out.read_text().splitlines()) == 1

    shown = runner.invoke(app, ["logs", "show", str(call["id"])])
    assert json.loads(shown.stdout)["id"] == call["id"]
    assert runner.invoke(app, ["logs", "show", "999"]).exit_code != 0


def test_time_and_label_filters() -> None:
    log_call("old", answer(), tags={"task": "t"})
    with session_scope() as session:
        session.execute(sa.update(RequestLog).values(created_at=utcnow() - timedelta(days=3), tags=["nightly"]))
    log_call("new", answer(), tags={"task": "t"})
    assert count_logs(build_filter(since="2d")) == 1
    assert count_logs(build_filter(until="1d")) == 1
    assert count_logs(build_filter(["tag.nightly"])) == 1
    assert count_logs(build_filter(["task=t", "status=ok"])) == 2
    assert parse_time("2025-06-01", "--since").tzinfo is not None
    for bad in (["nonsense"], ["tag."], ["colour=red"]):
        with pytest.raises(TuneloopError):
            build_filter(bad)
    with pytest.raises(TuneloopError, match="not a time"):
        build_filter(since="yesterday")

"""Datasets: import, from logs, dedup by content hash, stable splits, provenance and lineage, export, show."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import sqlalchemy as sa
from typer.testing import CliRunner

from tuneloop.capture.logwriter import StoreSink
from tuneloop.capture.records import CallRecord
from tuneloop.cli.main import app
from tuneloop.data.datasets import (
    dataset_from_logs,
    export_rows,
    import_jsonl,
    input_hash,
    split_for,
    summarize_dataset,
    training_entries,
)
from tuneloop.data.jsonl import write_rows
from tuneloop.errors import TuneloopError
from tuneloop.store import DatasetEntry, RequestLog, session_scope
from tuneloop.store.logs import build_filter
from tuneloop.task import load_task

TASK = "liability-extraction"
SYSTEM = {"role": "system", "content": "Extract the liability fields."}


def answer(payoff: float | None = 1200.0, rate: float | None = 6.5, **fields: object) -> str:
    values = {
        "payoff_amount": payoff,
        "escrow_balance": 300.0,
        "next_due_date": "2026-01-01",
        "interest_rate": rate,
        "account_last4": "1234",
        "servicer": "Acme Loans",
        **fields,
    }
    return json.dumps(values)


def chat(text: str, reply: str) -> list[dict[str, str]]:
    return [SYSTEM, {"role": "user", "content": text}, {"role": "assistant", "content": reply}]


def log_call(
    text: str, reply: str, *, tags: dict[str, str] | None = None, status: str = "ok", model: str = "local/base"
) -> None:
    request = {"model": model, "messages": chat(text, reply)[:-1], "metadata": tags or {}}
    completion = {
        "id": "c",
        "object": "chat.completion",
        "created": 1,
        "model": "base",
        "choices": [{"index": 0, "message": {"role": "assistant", "content": reply}, "finish_reason": "stop"}],
    }
    record = CallRecord(
        model_requested=model,
        request=request,
        status=status,
        http_status=200 if status == "ok" else 500,
        upstream="local",
        upstream_model="base",
        response=completion if status == "ok" else {"error": {"message": "boom"}},
        tags=[f"{k}={v}" for k, v in (tags or {}).items()],
        metadata=tags or {},
    )
    StoreSink().write([record])


def test_hashes_and_split_are_stable_and_content_based() -> None:
    prompt = [SYSTEM, {"role": "user", "content": "doc"}]
    digest = input_hash(prompt, None)
    assert digest == input_hash([{**m, "name": None} for m in prompt], {})  # nulls and empty options don't count
    assert digest != input_hash(prompt, {"response_format": {"type": "json_object"}})
    assert split_for(digest, 0.0) == "train" and split_for(digest, 1.0) == "test"
    splits = [split_for(input_hash([{"role": "user", "content": str(i)}], None), 0.2) for i in range(2000)]
    assert 0.15 < splits.count("test") / 2000 < 0.25


def test_import_dedups_parses_and_keeps_given_splits(tmp_path: Path) -> None:
    rows = [
        {"messages": chat("doc 1", answer())},
        {"messages": chat("doc 1", "```json\n" + answer() + "\n```")},  # the same answer, fenced: a duplicate
        {"messages": chat("doc 2", answer(rate=45.0)), "metadata": {"split": "test"}},  # fails a check
        {"messages": chat("doc 3", "not json")},
        {"messages": chat("doc 4", answer()), "tools": [{"type": "function", "function": {"name": "f"}}]},
    ]
    path = tmp_path / "data.jsonl"
    write_rows(path, rows)
    result = import_jsonl(path, "liab", task=TASK, test_fraction=0.0)
    assert (result.added, result.duplicates, result.failing) == (4, 1, 2)
    again = import_jsonl(path, "liab", task=TASK)
    assert (again.added, again.duplicates) == (0, 5)

    with session_scope() as session:
        entries = list(session.scalars(sa.select(DatasetEntry).order_by(DatasetEntry.id)))
    first = entries[0]
    assert first.provenance == "upload" and first.split == "train"
    assert first.messages[-1]["content"] == load_task(TASK).answer_json(first.fields)  # canonical answer
    assert entries[1].split == "test" and entries[1].check_failures and "interest_rate" in entries[1].check_failures[0]
    assert entries[2].fields is None and entries[2].check_failures[0].startswith("invalid answer")
    assert entries[3].options == {"tools": [{"type": "function", "function": {"name": "f"}}]}

    exported = export_rows("liab")
    assert [row["messages"][1]["content"] for row in exported] == ["doc 1", "doc 4"]  # failing ones never train
    assert exported[1]["tools"] and exported[0]["metadata"]["provenance"] == "upload"
    assert len(export_rows("liab", everything=True)) == 4


def test_import_errors_name_the_row(tmp_path: Path) -> None:
    path = tmp_path / "bad.jsonl"
    write_rows(path, [{"messages": chat("a", answer())}, {"messages": [{"role": "user", "content": "no answer"}]}])
    with pytest.raises(TuneloopError) as error:
        import_jsonl(path, "x")
    assert error.value.where == f"{path} row 2"
    with pytest.raises(TuneloopError, match="'upload' or 'human'"):
        import_jsonl(path, "x", provenance="teacher")
    with session_scope() as session:  # nothing half-written
        assert session.scalar(sa.select(sa.func.count()).select_from(DatasetEntry)) == 0


def test_from_logs_filters_samples_and_keeps_lineage() -> None:
    for index in range(40):
        log_call(f"letter {index}", answer(payoff=1000.0 + index), tags={"task": TASK})
    log_call("letter 0", answer(payoff=1000.0), tags={"task": TASK})  # asked twice, same answer
    log_call("other task", answer(), tags={"task": "summaries"})
    log_call("failed call", answer(), tags={"task": TASK}, status="error")

    result = dataset_from_logs("prod", build_filter([f"tag.task={TASK}"]), test_fraction=0.25)
    assert result.matched == 41 and result.added == 40 and result.duplicates == 1
    assert 0 < result.by_split["test"] < 40
    with session_scope() as session:
        entry = session.scalars(sa.select(DatasetEntry).order_by(DatasetEntry.id)).first()
        source = session.get(RequestLog, entry.source_request_id)
        assert entry.provenance == "log" and entry.source_model == "local/base"
        assert source.request["messages"][1]["content"] == entry.messages[1]["content"]

    half = dataset_from_logs("prod-half", build_filter([f"tag.task={TASK}"]), sample=0.5, seed=1)
    assert 10 < half.added < 30 and half.sampled_out + half.added + half.duplicates == 41
    same = dataset_from_logs("prod-half-again", build_filter([f"tag.task={TASK}"]), sample=0.5, seed=1)
    assert same.added == half.added  # deterministic by input

    # Run again later: only the new calls are added.
    log_call("letter new", answer(), tags={"task": TASK})
    assert dataset_from_logs("prod", build_filter([f"tag.task={TASK}"])).added == 1
    with pytest.raises(TuneloopError, match="no successful logged calls match"):
        dataset_from_logs("empty", build_filter(["tag.task=nothing"]))
    assert summarize_dataset("prod").task == TASK


def test_resolved_view_prefers_human_then_teacher_then_upload_then_log(tmp_path: Path) -> None:
    log_call("doc", answer(payoff=1000.0), tags={"task": TASK})
    dataset_from_logs("mix", build_filter([f"tag.task={TASK}"]))
    assert training_entries("mix")[0].provenance == "log"
    path = tmp_path / "upload.jsonl"
    write_rows(path, [{"messages": chat("doc", answer(payoff=2000.0))}])
    import_jsonl(path, "mix")
    assert training_entries("mix")[0].provenance == "upload"
    write_rows(path, [{"messages": chat("doc", answer(payoff=3000.0))}])
    import_jsonl(path, "mix", provenance="human")
    [best] = training_entries("mix")
    assert best.provenance == "human" and best.fields["payoff_amount"] == 3000.0
    summary = summarize_dataset("mix")
    assert summary.entries == 3 and summary.inputs == 1 and sum(summary.resolved_by_split.values()) == 1


def test_data_cli(tmp_path: Path) -> None:
    runner = CliRunner()
    for index in range(5):
        log_call(f"letter {index}", answer(), tags={"task": TASK})
    log_call("bad", answer(rate=99.0), tags={"task": TASK})
    created = runner.invoke(
        app, ["data", "from-logs", "--name", "cli", "--filter", f"tag.task={TASK}", "--test-fraction", "0"]
    )
    assert created.exit_code == 0, created.output
    assert "added 6 entries" in created.output and "1 unfit for training" in created.output
    shown = runner.invoke(app, ["data", "show", "cli"])
    assert shown.exit_code == 0 and "interest_rate" in shown.output and "6 entries" in shown.output
    out = tmp_path / "train.jsonl"
    exported = runner.invoke(app, ["data", "export", "cli", "--split", "train", "-o", str(out)])
    assert exported.exit_code == 0 and len(out.read_text().splitlines()) == 5
    stdout = runner.invoke(app, ["data", "export", "cli", "--all"])
    assert len(stdout.output.splitlines()) == 6
    imported = runner.invoke(
        app, ["data", "import", str(out), "--name", "copy", "--task", TASK, "--provenance", "human"]
    )
    assert imported.exit_code == 0 and "added 5 entries" in imported.output
    missing = runner.invoke(app, ["data", "show", "nope"])
    assert missing.exit_code != 0


def test_an_input_keeps_the_split_it_first_had(tmp_path: Path) -> None:
    # Verified labels imported with their own split first, then the same inputs arrive from the logs.
    path = tmp_path / "gold.jsonl"
    write_rows(path, [{"messages": chat(f"doc {i}", answer()), "metadata": {"split": "test"}} for i in range(10)])
    import_jsonl(path, "demo", task=TASK, provenance="human")
    for index in range(10):
        log_call(f"doc {index}", "a weak answer", tags={"task": TASK})
    dataset_from_logs("demo", build_filter([f"tag.task={TASK}"]), test_fraction=0.0)
    with session_scope() as session:
        splits = {entry.split for entry in session.scalars(sa.select(DatasetEntry))}
    assert splits == {"test"}

"""Relabelling with a teacher: lineage, checks, human entries untouched, cache, retries, resume."""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
import yaml
from typer.testing import CliRunner

from test_datasets import TASK, answer, chat, log_call
from tuneloop.cli.main import app
from tuneloop.data.datasets import dataset_from_logs, export_rows, import_jsonl, training_entries
from tuneloop.data.jsonl import write_rows
from tuneloop.data.relabel import openai_asker, relabel, resolve_teacher
from tuneloop.errors import TuneloopError
from tuneloop.store import DatasetEntry, TeacherLabel, session_scope
from tuneloop.store.logs import build_filter
from tuneloop.testing.fake_upstream import FakeUpstream

TEACHER = "openai/gpt-4o-mini"  # the `openai` upstream is pointed at the fake teacher


def teacher_answer(body: dict[str, Any]) -> str:
    """The teacher reads the number out of "letter N" (and gets the rate wrong for "bad" letters)."""
    text = body["messages"][-1]["content"]
    number = int(re.search(r"\d+", text).group())
    return answer(payoff=2000.0 + number, rate=99.0 if text.startswith("bad") else 5.0)


@pytest.fixture
def teacher(tuneloop_home: Path) -> Iterator[FakeUpstream]:
    fake = FakeUpstream(teacher_answer)
    fake.keep_requests = True
    with fake.running() as url:
        (tuneloop_home / "config.yaml").write_text(yaml.safe_dump({"upstreams": {"openai": {"base_url": url}}}))
        yield fake


def logged_dataset(name: str = "prod", count: int = 6, bad: int = 1) -> None:
    for index in range(count):
        log_call(
            f"letter {index}", "I think the payoff is about a thousand", tags={"task": TASK}
        )  # a weak base's answer
    for index in range(bad):
        log_call(f"bad letter {index}", "no idea", tags={"task": TASK})
    dataset_from_logs(name, build_filter([f"tag.task={TASK}"]), test_fraction=0.0)


def test_relabel_adds_teacher_entries_with_lineage_and_keeps_failures_out(teacher: FakeUpstream) -> None:
    logged_dataset()
    result = relabel("prod", TEACHER, concurrency=4)
    assert (result.inputs, result.asked, result.kept, len(result.failing), result.errors) == (7, 7, 6, 1, [])
    assert result.cost_usd > 0  # gpt-4o-mini is in the price table

    sent = teacher.requests[0]
    assert sent["model"] == "gpt-4o-mini" and sent["temperature"] == 0.0 and sent["messages"][0]["role"] == "system"
    with session_scope() as session:
        entries = list(session.scalars(sa.select(DatasetEntry).order_by(DatasetEntry.id)))
        labels = session.scalar(sa.select(sa.func.count()).select_from(TeacherLabel))
    logs = {e.id: e for e in entries if e.provenance == "log"}
    taught = [e for e in entries if e.provenance == "teacher"]
    assert len(taught) == 7 and labels == 7
    for entry in taught:
        parent = logs[entry.parent_entry_id]
        assert entry.source_request_id == parent.source_request_id and entry.input_hash == parent.input_hash
        assert entry.source_model == TEACHER and entry.split == parent.split
    failing = [e for e in taught if e.check_failures]
    assert [e.id for e in failing] == [result.failing[0][0]] and "interest_rate" in result.failing[0][1][0]

    trained = export_rows("prod")
    assert len(trained) == 6 and {row["metadata"]["provenance"] for row in trained} == {"teacher"}
    assert all(json.loads(row["messages"][-1]["content"])["payoff_amount"] >= 2000 for row in trained)


def test_human_entries_are_never_sent_and_answers_are_cached(teacher: FakeUpstream, tmp_path: Path) -> None:
    logged_dataset(count=4, bad=0)
    human = tmp_path / "verified.jsonl"
    write_rows(human, [{"messages": chat("letter 0", answer(payoff=1500.0))}])
    import_jsonl(human, "prod", provenance="human")

    first = relabel("prod", TEACHER)
    assert (first.skipped_human, first.asked, first.kept) == (1, 3, 3)
    assert all(body["messages"][-1]["content"] != "letter 0" for body in teacher.requests)
    [verified] = [e for e in training_entries("prod") if e.messages[1]["content"] == "letter 0"]
    assert verified.provenance == "human" and verified.fields["payoff_amount"] == 1500.0

    again = relabel("prod", TEACHER)
    assert (again.already_done, again.asked) == (3, 0)
    # Another dataset with the same inputs reuses the (teacher, input) cache: nothing is paid twice.
    # ("letter 0" has no human answer there, so it is asked now, once.)
    dataset_from_logs("copy", build_filter([f"tag.task={TASK}"]))
    reused = relabel("copy", TEACHER)
    assert (reused.cached, reused.asked, reused.kept) == (3, 1, 4)
    assert len(teacher.requests) == 4


def test_429_and_5xx_are_retried_with_backoff(teacher: FakeUpstream) -> None:
    logged_dataset(count=8, bad=0)
    teacher.fault_rate, teacher.faults = 0.3, ("429", "500", "503")
    result = relabel("prod", TEACHER, concurrency=8, max_retries=8)
    assert result.errors == [] and result.kept == 8
    assert sum(teacher.served[kind] for kind in ("429", "500", "503")) > 0  # faults happened and were absorbed


def test_an_interrupted_run_resumes_without_asking_twice(teacher: FakeUpstream) -> None:
    logged_dataset(count=10, bad=0)
    real = openai_asker(resolve_teacher(TEACHER))
    calls = {"n": 0}

    def ask_then_interrupt(messages: list[dict[str, Any]], arguments: dict[str, Any]) -> Any:
        calls["n"] += 1
        if calls["n"] == 5:
            raise KeyboardInterrupt  # Ctrl-C while requests are in flight
        return real(messages, arguments)

    stopped = relabel("prod", TEACHER, concurrency=1, ask=ask_then_interrupt)
    assert stopped.interrupted and stopped.kept == 4
    resumed = relabel("prod", TEACHER, concurrency=4)
    assert (resumed.already_done, resumed.asked, resumed.kept) == (4, 6, 6)
    assert len(teacher.requests) == 10


def test_a_teacher_must_be_an_endpoint_with_its_key(tuneloop_home: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(TuneloopError, match="behind an OpenAI-compatible endpoint"):
        resolve_teacher("smollm2-135m-instruct")
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    with pytest.raises(TuneloopError, match="OPENAI_API_KEY is not set"):
        resolve_teacher("openai/gpt-4o")


def test_relabel_cli(teacher: FakeUpstream) -> None:
    logged_dataset(count=3, bad=1)
    result = CliRunner().invoke(app, ["data", "relabel", "prod", "--teacher", TEACHER, "--concurrency", "2"])
    assert result.exit_code == 0, result.output
    assert "kept 3 teacher answers" in result.output and "1 failed checks" in result.output
    assert "failed checks: entry" in result.output

"""The review queue on the store (SQLite and PostgreSQL): locks, decisions, corrections reaching datasets, CLI."""

from __future__ import annotations

import json
from datetime import timedelta
from pathlib import Path

import pytest
from typer.testing import CliRunner

from tuneloop.cli.main import app
from tuneloop.data.datasets import training_entries
from tuneloop.errors import TuneloopError
from tuneloop.review import queue
from tuneloop.store import DatasetEntry, RequestLog, ReviewItem, session_scope, utcnow
from tuneloop.task import load_task

TASK = "liability-extraction"
MESSAGES = [
    {"role": "system", "content": "Extract the liability fields."},
    {"role": "user", "content": "Payoff $182,440.19, escrow $2,310.55, rate 6.125%, Lakeview."},
]
DRAFT = {
    "payoff_amount": 182440.19,
    "escrow_balance": 2310.55,
    "next_due_date": None,
    "interest_rate": 61.25,
    "account_last4": None,
    "servicer": "Lakeview",
}


@pytest.fixture(params=["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)])
def db_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'store.db'}"
    return request.getfixturevalue("postgres_url")


def new_item(url: str | None, *, capture_id: str | None = None, draft: dict | None = DRAFT) -> int:
    text = json.dumps(draft) if draft is not None else "Payoff is 182k"
    return queue.create_item(
        task=TASK,
        request={"model": "openai/gpt-4o-mini", "messages": MESSAGES, "metadata": {"task": TASK}},
        draft_text=text,
        draft_fields=draft,
        failed_checks=["interest_rate: 61.25 is outside [0, 30]"],
        model="openai/gpt-4o-mini",
        capture_id=capture_id,
        url=url,
    )


def test_a_lock_refuses_another_reviewer_until_it_expires(db_url: str) -> None:
    item_id = new_item(db_url)
    locked = queue.lock_item(item_id, "ana", url=db_url)
    assert locked.locked_by == "ana" and locked.is_locked()
    assert timedelta(minutes=4, seconds=50) < locked.lock_expires_at - utcnow() <= timedelta(minutes=5)

    with pytest.raises(queue.ItemLocked) as refused:
        queue.lock_item(item_id, "bob", url=db_url)
    assert "locked by 'ana'" in str(refused.value) and "s from now" in str(refused.value)
    with pytest.raises(queue.ItemLocked):
        queue.approve_item(item_id, "bob", url=db_url)
    with pytest.raises(queue.ItemLocked):
        queue.correct_item(item_id, "bob", {"interest_rate": 6.125}, url=db_url)
    assert queue.get_item(item_id, url=db_url).status == "pending"

    # Ana renews her own lock; once it has run out, Bob may take it.
    assert queue.lock_item(item_id, "ana", url=db_url).locked_by == "ana"
    queue.lock_item(item_id, "ana", now=utcnow() - timedelta(minutes=6), url=db_url)
    assert queue.lock_item(item_id, "bob", url=db_url).locked_by == "bob"


def test_release_gives_the_item_back(db_url: str) -> None:
    item_id = new_item(db_url)
    queue.lock_item(item_id, "ana", url=db_url)
    queue.release_item(item_id, "bob", url=db_url)  # not Bob's to release
    assert queue.get_item(item_id, url=db_url).locked_by == "ana"
    queue.release_item(item_id, "ana", url=db_url)
    assert queue.lock_item(item_id, "bob", url=db_url).locked_by == "bob"


def test_a_correction_becomes_a_human_entry_linked_to_its_request(db_url: str) -> None:
    # The gateway writes the log row after answering: the item knows the call by its capture id.
    with session_scope(db_url) as session:
        logged = RequestLog(
            model_requested="openai/gpt-4o-mini", status="ok", request={"messages": MESSAGES}, capture_id="cap-1"
        )
        session.add(logged)
        session.flush()
        request_id = logged.id
    item_id = new_item(db_url, capture_id="cap-1")
    assert queue.get_item(item_id, url=db_url).request_id == request_id

    queue.lock_item(item_id, "ana", now=utcnow() - timedelta(seconds=42), url=db_url)
    decision = queue.correct_item(item_id, "ana", {"interest_rate": 6.125}, url=db_url)
    assert decision.dataset == f"{TASK}-reviewed" and decision.entry_id is not None
    assert decision.check_failures == [] and not decision.duplicate
    item = decision.item
    assert (item.status, item.reviewer, item.locked_by) == ("corrected", "ana", None)
    assert item.correction == {**DRAFT, "interest_rate": 6.125}
    assert 41 <= item.time_spent_s < 60

    [entry] = training_entries(f"{TASK}-reviewed", url=db_url)
    assert entry.provenance == "human" and entry.source_request_id == request_id
    assert entry.fields["interest_rate"] == 6.125 and entry.check_failures == []
    assert entry.messages[:-1] == MESSAGES
    assert json.loads(entry.messages[-1]["content"]) == {**DRAFT, "interest_rate": 6.125}
    with session_scope(db_url) as session:
        assert session.get_one(ReviewItem, item_id).verified_entry_id == entry.id

    # Decided once: a second decision is refused, naming who decided.
    with pytest.raises(TuneloopError, match="already corrected by ana"):
        queue.approve_item(item_id, "bob", url=db_url)


def test_a_correction_of_a_dataset_entry_outranks_it_in_that_dataset(db_url: str) -> None:
    from tuneloop.data.datasets import EntryDraft, add_entries, get_or_create_dataset

    task = load_task(TASK)
    with session_scope(db_url) as session:
        dataset = get_or_create_dataset(session, "liability-logs", TASK)
        answer = {"role": "assistant", "content": json.dumps(DRAFT)}
        added = add_entries(session, dataset, [EntryDraft(messages=[*MESSAGES, answer], provenance="log")], task, 0.0)
        entry_id = added.entry_ids[0]
    item_id = queue.create_item(
        task=TASK, request=None, draft_text=json.dumps(DRAFT), draft_fields=DRAFT,
        failed_checks=["interest_rate: 61.25 is outside [0, 30]"], model="liability-extraction@1",
        entry_id=entry_id, url=db_url,
    )  # fmt: skip
    assert queue.get_item(item_id, url=db_url).messages == MESSAGES  # the prompt comes from the entry

    decision = queue.correct_item(item_id, "ana", {"interest_rate": 6.125}, url=db_url)
    assert decision.dataset == "liability-logs"
    [resolved] = training_entries("liability-logs", url=db_url)
    assert resolved.id == decision.entry_id and resolved.provenance == "human"
    assert resolved.parent_entry_id == entry_id and resolved.fields["interest_rate"] == 6.125


def test_corrections_are_checked_against_the_schema(db_url: str) -> None:
    item_id = new_item(db_url)
    with pytest.raises(TuneloopError, match="not a field of task"):
        queue.correct_item(item_id, "ana", {"rate": 6.1}, url=db_url)
    with pytest.raises(TuneloopError, match="does not fit the task's output schema"):
        queue.correct_item(item_id, "ana", {"account_last4": "12"}, url=db_url)
    assert queue.get_item(item_id, url=db_url).status == "pending"


def test_an_unparseable_draft_must_be_corrected_not_approved(db_url: str) -> None:
    item_id = new_item(db_url, draft=None)
    with pytest.raises(TuneloopError, match="cannot be approved"):
        queue.approve_item(item_id, "ana", url=db_url)
    fields = {name: None for name in load_task(TASK).field_names} | {"payoff_amount": 182000.0}
    decision = queue.correct_item(item_id, "ana", {"payoff_amount": 182000.0}, url=db_url)
    assert decision.item.correction == fields


def test_approve_and_reject(db_url: str) -> None:
    approved = new_item(db_url, draft={**DRAFT, "interest_rate": 6.125})
    decision = queue.approve_item(approved, "ana", dataset="audited", url=db_url)
    assert decision.item.status == "approved" and decision.dataset == "audited"
    with session_scope(db_url) as session:
        assert session.get_one(DatasetEntry, decision.entry_id).provenance == "human"

    rejected = new_item(db_url)
    decision = queue.reject_item(rejected, "ana", note="spam", url=db_url)
    assert (decision.item.status, decision.item.note, decision.entry_id) == ("rejected", "spam", None)
    assert queue.queue_depth(url=db_url) == {}
    assert [item.id for item in queue.list_items(status=None, url=db_url)] == [approved, rejected]


def test_queue_depth_counts_pending_items_per_model(db_url: str) -> None:
    new_item(db_url)
    new_item(db_url)
    assert queue.queue_depth(url=db_url) == {"openai/gpt-4o-mini": 2}


def test_field_values_are_parsed_by_schema_type() -> None:
    task = load_task(TASK)
    assert queue.parse_field_value(task, "payoff_amount", "$182,440.19") == 182440.19
    assert queue.parse_field_value(task, "payoff_amount", "null") is None
    assert queue.parse_field_value(task, "account_last4", "0042") == "0042"
    assert queue.parse_field_value(task, "servicer", '"Lakeview"') == "Lakeview"
    with pytest.raises(TuneloopError, match="not a number"):
        queue.parse_field_value(task, "interest_rate", "six")
    with pytest.raises(TuneloopError, match="not a field"):
        queue.parse_field_value(task, "rate", "6")


def test_cli_list_show_lock_and_correct() -> None:
    item_id = new_item(None)
    runner = CliRunner(env={"COLUMNS": "250"})  # wide enough that rich does not fold the table
    listed = runner.invoke(app, ["review", "list"])
    assert listed.exit_code == 0 and "interest_rate: 61.25 is outside" in listed.output

    shown = runner.invoke(app, ["review", "show", str(item_id), "--lock", "--reviewer", "ana"])
    assert shown.exit_code == 0, shown.output
    assert "locked by ana" in shown.output and "payoff_amount" in shown.output

    refused = runner.invoke(
        app, ["review", "correct", str(item_id), "--set", "interest_rate=6.125", "--reviewer", "bob"]
    )
    assert refused.exit_code != 0 and isinstance(refused.exception, queue.ItemLocked)

    done = runner.invoke(app, ["review", "correct", str(item_id), "--set", "interest_rate=6.125", "--reviewer", "ana"])
    assert done.exit_code == 0, done.output
    assert f"dataset {TASK}-reviewed entry" in done.output and "provenance human" in done.output
    assert runner.invoke(app, ["review", "list"]).output.startswith("no pending review items")

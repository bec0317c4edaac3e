"""on_check_failure through the gateway, end to end: the official openai client → gateway → a fake upstream.

The fake answers per model: ``fake/bad`` with an interest rate of 61.25 % (fails the task's range
check), ``fake/good`` with a plausible answer. Tasks differ only in ``on_check_failure``.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest

from test_capture_support import gateway_config, rows, wait_for_rows
from tuneloop.capture.server import RunningGateway, running_gateway
from tuneloop.review import queue
from tuneloop.task import packaged_task_names
from tuneloop.testing.fake_upstream import FakeUpstream

pytest_plugins = ["test_capture_support"]

MESSAGES = [{"role": "user", "content": "Payoff $182,440.19, escrow $2,310.55, rate 6.125%, Lakeview."}]
GOOD = {
    "payoff_amount": 182440.19,
    "escrow_balance": 2310.55,
    "next_due_date": None,
    "interest_rate": 6.125,
    "account_last4": None,
    "servicer": "Lakeview",
}
BAD = {**GOOD, "interest_rate": 61.25}


def write_task(home: Path, name: str, action: str) -> str:
    """The demo task under another name, with ``on_check_failure: action``."""
    from importlib.resources import files

    assert "liability-extraction" in packaged_task_names()
    text = (files("tuneloop") / "tasks" / "liability-extraction.yaml").read_text(encoding="utf-8")
    text = text.replace("name: liability-extraction", f"name: {name}", 1)
    text = text.replace("on_check_failure: escalate", f"on_check_failure: {action}", 1)
    (home / "tasks").mkdir(exist_ok=True)
    (home / "tasks" / f"{name}.yaml").write_text(text, encoding="utf-8")
    return name


def answer(body: dict[str, Any]) -> str:
    return json.dumps(BAD if body.get("model") == "bad" else GOOD)


@pytest.fixture
def fake() -> Iterator[FakeUpstream]:
    upstream = FakeUpstream(answer, models=("bad", "good"))  # listed, so the metrics label them by name
    upstream.keep_requests = True
    yield upstream


@pytest.fixture
def gateway(tmp_path: Path, fake_url: str) -> Iterator[RunningGateway]:
    with running_gateway(gateway_config(tmp_path, fake_url)) as running:
        yield running


def ask(gateway: RunningGateway, task: str, model: str = "fake/bad") -> Any:
    client = openai.OpenAI(base_url=gateway.base_url, api_key="unused", max_retries=0)
    return client.chat.completions.with_raw_response.create(model=model, messages=MESSAGES, metadata={"task": task})


def test_escalate_queues_the_draft_and_flags_the_response(gateway: RunningGateway, tuneloop_home: Path) -> None:
    task = write_task(tuneloop_home, "rev-escalate", "escalate")
    raw = ask(gateway, task)
    review_id = int(raw.headers["x-tuneloop-review"])
    completion = raw.parse()
    assert json.loads(completion.choices[0].message.content) == BAD  # the draft is returned, held
    extension = completion.model_extra["tuneloop"]
    assert extension["review"] == {"id": review_id, "reason": "check_failed", "status": "pending", "hold": True}
    # The checks and the review item's durable write are the task's cost, reported apart from the gateway's.
    checks_ms, overhead_ms = float(raw.headers["x-tuneloop-checks-ms"]), float(raw.headers["x-tuneloop-overhead-ms"])
    assert checks_ms > 0 and overhead_ms >= 0
    assert extension["checks"]["passed"] is False and extension["checks"]["action"] == "escalate"
    assert extension["checks"]["failures"] == ["interest_rate: 61.25 is outside [0, 30]"]

    item = queue.get_item(review_id)
    assert (item.task, item.model, item.status) == (task, "fake/bad", "pending")
    assert item.messages == MESSAGES and item.draft_fields == BAD
    assert wait_for_rows(1) == 1
    [row] = rows()
    assert row.response["tuneloop"]["review"]["id"] == review_id  # the log keeps what the client got

    # The correction reaches a dataset, linked to the logged call.
    decision = queue.correct_item(review_id, "ana", {"interest_rate": 6.125})
    assert decision.item.request_id == row.id
    from tuneloop.data.datasets import training_entries

    [entry] = training_entries(f"{task}-reviewed")
    assert (entry.provenance, entry.source_request_id, entry.fields) == ("human", row.id, GOOD)


def test_a_passing_answer_is_not_queued(gateway: RunningGateway, tuneloop_home: Path) -> None:
    task = write_task(tuneloop_home, "rev-escalate", "escalate")
    raw = ask(gateway, task, model="fake/good")
    assert "x-tuneloop-review" not in raw.headers
    checks = raw.parse().model_extra["tuneloop"]["checks"]
    assert checks == {"task": task, "passed": True, "failures": [], "confidence": None, "action": "passed"}
    assert queue.list_items() == []


def test_reject_answers_422_check_failed_and_logs_the_draft(gateway: RunningGateway, tuneloop_home: Path) -> None:
    task = write_task(tuneloop_home, "rev-reject", "reject")
    with pytest.raises(openai.UnprocessableEntityError) as rejected:
        ask(gateway, task)
    error = rejected.value
    assert error.status_code == 422 and error.code == "check_failed"
    assert "interest_rate: 61.25 is outside [0, 30]" in error.message and "fake/bad" in error.message
    assert queue.list_items() == []
    assert wait_for_rows(1) == 1
    [row] = rows()
    assert (row.status, row.http_status) == ("error", 422)
    assert json.loads(row.response["choices"][0]["message"]["content"]) == BAD


def test_fallback_answers_from_the_other_model_and_logs_both(
    gateway: RunningGateway, fake: FakeUpstream, tuneloop_home: Path
) -> None:
    task = write_task(tuneloop_home, "rev-fallback", "fallback:fake/good")
    raw = ask(gateway, task)
    completion = raw.parse()
    assert json.loads(completion.choices[0].message.content) == GOOD
    assert completion.model == "fake/good"
    extension = completion.model_extra["tuneloop"]
    assert extension["checks"]["passed"] is True and extension["checks"]["action"] == "fallback"
    assert extension["fallback"]["model"] == "fake/bad" and extension["fallback"]["to"] == "fake/good"
    assert extension["fallback"]["failures"] == ["interest_rate: 61.25 is outside [0, 30]"]
    assert "x-tuneloop-review" not in raw.headers and queue.list_items() == []
    assert [sent["model"] for sent in fake.requests] == ["bad", "good"]

    assert wait_for_rows(2) == 2
    draft, second = sorted(rows(), key=lambda row: "fallback" in row.tags)
    assert draft.model_resolved == "fake/bad" and draft.status == "ok"
    assert second.model_resolved == "fake/good" and second.metadata_["fallback_for"] == draft.capture_id


def test_a_fallback_that_fails_too_is_escalated(gateway: RunningGateway, tuneloop_home: Path) -> None:
    task = write_task(tuneloop_home, "rev-fallback-bad", "fallback:fake/bad")
    raw = ask(gateway, task)
    review_id = int(raw.headers["x-tuneloop-review"])
    assert queue.get_item(review_id).model == "fake/bad"


def test_pass_returns_the_answer_and_reports_the_failure(gateway: RunningGateway, tuneloop_home: Path) -> None:
    task = write_task(tuneloop_home, "rev-pass", "pass")
    raw = ask(gateway, task)
    assert "x-tuneloop-review" not in raw.headers
    completion = raw.parse()
    assert json.loads(completion.choices[0].message.content) == BAD
    checks = completion.model_extra["tuneloop"]["checks"]
    assert checks["passed"] is False and checks["action"] == "pass"
    assert queue.list_items() == []


def test_metrics_count_failures_actions_and_queue_depth(gateway: RunningGateway, tuneloop_home: Path) -> None:
    task = write_task(tuneloop_home, "rev-escalate", "escalate")
    ask(gateway, task)
    ask(gateway, task)
    ask(gateway, task, model="fake/good")
    text = httpx.get(gateway.base_url.removesuffix("/v1") + "/metrics").text
    assert 'tuneloop_gateway_checked_outputs_total{model="fake/bad",outcome="failed"} 2.0' in text
    assert 'tuneloop_gateway_checked_outputs_total{model="fake/good",outcome="passed"} 1.0' in text
    assert 'tuneloop_gateway_check_failures_total{kind="field",model="fake/bad"} 2.0' in text
    assert 'tuneloop_gateway_escalations_total{model="fake/bad",reason="check_failed"} 2.0' in text
    assert 'tuneloop_review_queue_depth{model="fake/bad"} 2.0' in text


def test_untagged_calls_are_not_checked(gateway: RunningGateway) -> None:
    client = openai.OpenAI(base_url=gateway.base_url, api_key="unused", max_retries=0)
    raw = client.chat.completions.with_raw_response.create(model="fake/bad", messages=MESSAGES)
    assert "tuneloop" not in (raw.parse().model_extra or {})
    assert "x-tuneloop-checks-ms" not in raw.headers and "x-tuneloop-overhead-ms" in raw.headers


# --- streamed answers ----------------------------------------------------------------------------------


def ask_streamed(gateway: RunningGateway, task: str | None, model: str = "fake/bad", **extra: Any) -> tuple[Any, list]:
    """The response's headers and every chunk the client got."""
    client = openai.OpenAI(base_url=gateway.base_url, api_key="unused", max_retries=0)
    metadata = {"metadata": {"task": task}} if task else {}
    raw = client.chat.completions.with_raw_response.create(
        model=model, messages=MESSAGES, stream=True, **metadata, **extra
    )
    return raw.headers, list(raw.parse())


def streamed_text(chunks: list) -> str:
    return "".join(chunk.choices[0].delta.content or "" for chunk in chunks if chunk.choices)


def test_a_streamed_escalation_ends_with_the_review(gateway: RunningGateway, tuneloop_home: Path) -> None:
    task = write_task(tuneloop_home, "rev-escalate", "escalate")
    headers, chunks = ask_streamed(gateway, task)
    assert json.loads(streamed_text(chunks)) == BAD  # streamed as it came (live)
    assert "x-tuneloop-review" not in headers  # the status line left before the answer was checked
    last = chunks[-1]
    assert last.choices == [] and last.object == "chat.completion.chunk"
    result = last.model_extra["tuneloop"]
    review_id = result["review"]["id"]
    assert result["review"] == {"id": review_id, "reason": "check_failed", "status": "pending", "hold": True}
    assert result["checks"]["action"] == "escalate" and result["checks"]["failures"]
    assert [item.id for item in queue.list_items()] == [review_id]

    assert wait_for_rows(1) == 1
    [row] = rows()
    assert row.response["tuneloop"]["checks"]["passed"] is False  # what drift reads
    assert queue.get_item(review_id).capture_id == row.capture_id


def test_a_streamed_reject_is_a_422_before_any_chunk(
    gateway: RunningGateway, fake: FakeUpstream, tuneloop_home: Path
) -> None:
    task = write_task(tuneloop_home, "rev-reject", "reject")
    with pytest.raises(openai.UnprocessableEntityError) as rejected:
        ask_streamed(gateway, task)
    assert rejected.value.code == "check_failed" and "interest_rate" in rejected.value.message
    assert "stream" not in fake.requests[-1]  # asked for whole, checked before anything left
    assert wait_for_rows(1) == 1
    assert rows()[0].http_status == 422


def test_a_streamed_fallback_streams_the_fallbacks_answer(
    gateway: RunningGateway, fake: FakeUpstream, tuneloop_home: Path
) -> None:
    task = write_task(tuneloop_home, "rev-fallback", "fallback:fake/good")
    headers, chunks = ask_streamed(gateway, task, stream_options={"include_usage": True})
    assert headers["content-type"].startswith("text/event-stream")
    assert json.loads(streamed_text(chunks)) == GOOD and chunks[0].model == "fake/good"
    [finish] = [chunk for chunk in chunks if chunk.choices and chunk.choices[0].finish_reason]
    extension = finish.model_extra["tuneloop"]
    assert extension["fallback"]["model"] == "fake/bad" and extension["checks"]["action"] == "fallback"
    assert chunks[-1].choices == [] and chunks[-1].usage.total_tokens > 0
    assert [(sent["model"], "stream" in sent) for sent in fake.requests] == [("bad", False), ("good", False)]


def test_a_streamed_pass_reports_the_failure_last(gateway: RunningGateway, tuneloop_home: Path) -> None:
    task = write_task(tuneloop_home, "rev-pass", "pass")
    _, chunks = ask_streamed(gateway, task)
    assert json.loads(streamed_text(chunks)) == BAD
    result = chunks[-1].model_extra["tuneloop"]
    assert result["checks"]["passed"] is False and result["checks"]["action"] == "pass" and "review" not in result
    assert queue.list_items() == []


def test_a_streamed_call_without_a_task_is_relayed_as_it_came(gateway: RunningGateway, fake: FakeUpstream) -> None:
    _, chunks = ask_streamed(gateway, None)
    assert json.loads(streamed_text(chunks)) == BAD
    assert not any("tuneloop" in (chunk.model_extra or {}) for chunk in chunks)
    assert chunks[-1].choices[0].finish_reason == "stop" and fake.requests[-1]["stream"] is True


def test_a_reject_decided_after_the_stream_began_ends_it_with_an_error(
    gateway: RunningGateway, tuneloop_home: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # As if the task spec turned to reject while the answer was streaming: it went out live.
    from tuneloop.review.policy import ReviewPolicy

    monkeypatch.setattr(ReviewPolicy, "stream_mode", lambda self, model, request: "live")
    task = write_task(tuneloop_home, "rev-reject", "reject")
    with pytest.raises(openai.APIError) as failed:
        ask_streamed(gateway, task)
    assert failed.value.code == "check_failed" and "interest_rate" in failed.value.message
    assert wait_for_rows(1) == 1
    assert rows()[0].status == "error"

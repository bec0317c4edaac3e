"""on_check_failure in ``tuneloop serve``, end to end: the official openai client → a live server (llama.cpp,
the bundled base) on loopback. A fake OpenAI-compatible upstream stands in for the fallback teacher.

The tasks' one check can never pass for the base model (``answer`` must be ``__never__``), so every
answer it gives fails; the teacher answers ``__never__`` and passes.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import httpx
import openai
import pytest
import yaml

from tuneloop.review import queue
from tuneloop.testing.fake_upstream import FakeUpstream

pytestmark = pytest.mark.slow

BASE = "smollm2-135m-instruct"
SCHEMA = {
    "type": "object",
    "properties": {"answer": {"type": "string"}},
    "required": ["answer"],
    "additionalProperties": False,
}
MESSAGES = [{"role": "user", "content": "Name a colour. Answer as JSON."}]


def write_task(home: Path, name: str, action: str) -> None:
    spec = {
        "name": name,
        "instructions": "Answer with JSON only.",
        "input": "{text}",
        "output_schema": SCHEMA,
        "checks": [{"field": "answer", "one_of": ["__never__"]}],
        "on_check_failure": action,
    }
    (home / "tasks").mkdir(exist_ok=True)
    (home / "tasks" / f"{name}.yaml").write_text(yaml.safe_dump(spec), encoding="utf-8")


@pytest.fixture(scope="module")
def module_home(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("review-serve-home")


@pytest.fixture(autouse=True)
def _use_module_home(tuneloop_home: Path, module_home: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # The server outlives one test, so every test of this module shares its TUNELOOP_HOME (store, tasks).
    monkeypatch.setenv("TUNELOOP_HOME", str(module_home))


@pytest.fixture(scope="module")
def teacher(module_home: Path) -> Iterator[FakeUpstream]:
    upstream = FakeUpstream('{"answer": "__never__"}')
    upstream.keep_requests = True
    with upstream.running() as url:
        config = {"upstreams": {"teacher": {"base_url": url, "timeout_s": 5}}}
        (module_home / "config.yaml").write_text(yaml.safe_dump(config), encoding="utf-8")
        yield upstream


@pytest.fixture(scope="module")
def server(module_home: Path, teacher: FakeUpstream) -> Iterator:
    from tuneloop.serve.app import start_background_server
    from tuneloop.serve.engine import build_engine

    for name, action in (
        ("rev-escalate", "escalate"),
        ("rev-reject", "reject"),
        ("rev-fallback", "fallback:teacher/big-model"),
        ("rev-pass", "pass"),
    ):
        write_task(module_home, name, action)
    previous = os.environ.get("TUNELOOP_HOME")
    os.environ["TUNELOOP_HOME"] = str(module_home)
    engine = build_engine(backend="llamacpp", threads=1, max_queue=3)
    running = start_background_server(engine)
    yield running
    running.stop()
    if previous is not None:
        os.environ["TUNELOOP_HOME"] = previous


@pytest.fixture
def client(server) -> openai.OpenAI:
    return openai.OpenAI(base_url=server.base_url, api_key="unused", max_retries=0, timeout=120)


def ask(client: openai.OpenAI, task: str, **extra):
    return client.chat.completions.with_raw_response.create(
        model=BASE,
        messages=MESSAGES,
        max_tokens=24,
        metadata={"task": task},
        response_format={"type": "json_schema", "json_schema": {"name": "answer", "schema": SCHEMA}},
        **extra,
    )


def ask_streamed(client: openai.OpenAI, task: str) -> tuple:
    """The response's headers, the streamed text, and the chunk that carries the finish reason."""
    raw = ask(client, task, stream=True)
    chunks = list(raw.parse())
    text = "".join(chunk.choices[0].delta.content or "" for chunk in chunks if chunk.choices)
    [finish] = [chunk for chunk in chunks if chunk.choices and chunk.choices[0].finish_reason]
    return raw.headers, text, finish


def test_escalate_creates_a_review_item_and_flags_the_response(client: openai.OpenAI) -> None:
    raw = ask(client, "rev-escalate")
    review_id = int(raw.headers["x-tuneloop-review"])
    completion = raw.parse()
    extension = completion.model_extra["tuneloop"]
    assert extension["review"]["id"] == review_id and extension["review"]["hold"] is True
    assert extension["checks"]["action"] == "escalate" and extension["checks"]["failures"]
    item = queue.get_item(review_id)
    assert (item.task, item.model, item.reason) == ("rev-escalate", BASE, "check_failed")
    assert item.draft_text == completion.choices[0].message.content and item.messages == MESSAGES


def test_reject_is_an_openai_shaped_422(client: openai.OpenAI) -> None:
    before = len(queue.list_items(status=None))
    with pytest.raises(openai.UnprocessableEntityError) as rejected:
        ask(client, "rev-reject")
    assert rejected.value.code == "check_failed" and "rev-reject" in rejected.value.message
    assert rejected.value.body["type"] == "invalid_request_error"
    assert len(queue.list_items(status=None)) == before


def test_fallback_retries_on_the_teacher(client: openai.OpenAI, teacher: FakeUpstream) -> None:
    raw = ask(client, "rev-fallback")
    completion = raw.parse()
    assert completion.choices[0].message.content == '{"answer": "__never__"}'
    assert completion.model == "teacher/big-model" and raw.headers["x-tuneloop-model"] == "teacher/big-model"
    extension = completion.model_extra["tuneloop"]
    assert extension["checks"]["passed"] is True and extension["fallback"]["model"] == BASE
    assert extension["fallback"]["failures"] and "x-tuneloop-review" not in raw.headers
    sent = teacher.requests[-1]
    assert sent["model"] == "big-model" and sent["messages"] == MESSAGES and "metadata" not in sent


def test_pass_returns_the_draft_with_its_failures(client: openai.OpenAI) -> None:
    raw = ask(client, "rev-pass")
    assert "x-tuneloop-review" not in raw.headers
    checks = raw.parse().model_extra["tuneloop"]["checks"]
    assert checks["passed"] is False and checks["action"] == "pass" and checks["failures"]


def test_metrics_name_the_resolved_model(server, client: openai.OpenAI) -> None:
    ask(client, "rev-escalate")
    text = httpx.get(server.base_url.removesuffix("/v1") + "/metrics").text
    assert f'tuneloop_serve_checked_outputs_total{{model="{BASE}",outcome="failed"}}' in text
    assert f'tuneloop_serve_check_actions_total{{action="escalate",model="{BASE}"}}' in text
    assert f'tuneloop_review_queue_depth{{model="{BASE}"}}' in text


def test_a_streamed_escalation_carries_the_review_in_its_finish_chunk(client: openai.OpenAI) -> None:
    headers, text, finish = ask_streamed(client, "rev-escalate")
    assert "x-tuneloop-review" not in headers  # streamed live: the check ran after the status line
    extension = finish.model_extra["tuneloop"]
    assert extension["model"] == BASE  # the engine's own fields are kept
    assert extension["checks"]["action"] == "escalate" and extension["checks"]["failures"]
    review = extension["review"]
    assert review["hold"] is True and review["reason"] == "check_failed"
    item = queue.get_item(review["id"])
    assert (item.task, item.model, item.draft_text) == ("rev-escalate", BASE, text)


def test_a_streamed_reject_is_a_422_before_any_chunk(client: openai.OpenAI) -> None:
    before = len(queue.list_items(status=None))
    with pytest.raises(openai.UnprocessableEntityError) as rejected:
        ask_streamed(client, "rev-reject")
    assert rejected.value.code == "check_failed" and "rev-reject" in rejected.value.message
    assert len(queue.list_items(status=None)) == before


def test_a_streamed_fallback_streams_the_teachers_answer(client: openai.OpenAI, teacher: FakeUpstream) -> None:
    headers, text, finish = ask_streamed(client, "rev-fallback")
    assert headers["x-tuneloop-model"] == "teacher/big-model" and finish.model == "teacher/big-model"
    assert text == '{"answer": "__never__"}'
    extension = finish.model_extra["tuneloop"]
    assert extension["checks"]["passed"] is True and extension["fallback"]["model"] == BASE
    assert "stream" not in teacher.requests[-1]

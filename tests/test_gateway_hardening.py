"""Hostile input at the gateway, over real HTTP on loopback (the official client, or a raw socket where the
point is what the gateway does before a request is whole): body limits, the key checked before the body,
client text never used as a path, bounded metric labels, strict booleans, upstream answers that are not
answers, integers the gateway cannot forward exactly.
"""

from __future__ import annotations

import json
import socket
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest

from test_capture_support import count_rows, gateway_config, rows, wait_for_rows
from tuneloop.capture.records import CallRecord
from tuneloop.capture.server import RunningGateway, running_gateway
from tuneloop.testing.fake_upstream import FakeUpstream

pytest_plugins = ["test_capture_support"]

MESSAGES = [{"role": "user", "content": "Payoff is $1,200.00."}]
LIMITS = {"max_request_bytes": 8192, "max_upload_bytes": 8192, "max_upload_records": 3}


@pytest.fixture
def gateway(tmp_path: Path, fake_url: str) -> Iterator[RunningGateway]:
    with running_gateway(gateway_config(tmp_path, fake_url, limits=LIMITS)) as running:
        yield running


def client(gateway: RunningGateway) -> openai.OpenAI:
    return openai.OpenAI(base_url=gateway.base_url, api_key="unused", max_retries=0)


def chat(gateway: RunningGateway, body: dict[str, Any] | bytes, **headers: str) -> httpx.Response:
    content = body if isinstance(body, bytes) else json.dumps(body).encode()
    return httpx.post(
        gateway.base_url + "/chat/completions",
        content=content,
        headers={"content-type": "application/json", **headers},
        timeout=10,
    )


def raw_exchange(gateway: RunningGateway, head: str, body_parts: list[bytes], timeout: float = 5.0) -> bytes:
    """Send a request head and some body parts (not necessarily all of the body), then read what comes back
    until the gateway closes the connection or ``timeout`` passes (a gateway waiting for the rest of the
    body answers nothing: the test sees an empty reply)."""
    host, port = gateway.base_url.removeprefix("http://").split("/")[0].split(":")
    with socket.create_connection((host, int(port)), timeout=timeout) as sock:
        sock.sendall(head.replace("\n", "\r\n").encode() + b"\r\n")
        for part in body_parts:
            sock.sendall(part)
        received = b""
        try:
            while chunk := sock.recv(65536):
                received += chunk
                if b"\r\n\r\n" in received and b'"error"' in received:
                    break
        except TimeoutError:
            pass
    return received


def error_of(reply: bytes) -> tuple[int, dict[str, Any]]:
    head, _, body = reply.partition(b"\r\n\r\n")
    assert head, "the gateway answered nothing (it was waiting for the rest of the body)"
    status = int(head.split(b" ", 2)[1])
    return status, json.loads(body[body.index(b"{") : body.rindex(b"}") + 1])["error"]


# --- body limits ---------------------------------------------------------------------------------------


def test_a_declared_length_over_the_limit_is_refused_before_the_body_is_read(gateway: RunningGateway) -> None:
    head = (
        "POST /v1/chat/completions HTTP/1.1\nhost: gateway\ncontent-type: application/json\n"
        "content-length: 1000000000\n"
    )
    status, error = error_of(raw_exchange(gateway, head, [b'{"model": "fake/x", "messages": [']))
    assert status == 413 and error["code"] == "request_too_large" and error["type"] == "invalid_request_error"
    assert "8192 bytes" in error["message"] and "limits.max_request_bytes" in error["message"]
    assert count_rows() == 0


def test_a_chunked_body_is_refused_once_it_passes_the_limit(gateway: RunningGateway) -> None:
    head = (
        "POST /v1/chat/completions HTTP/1.1\nhost: gateway\ncontent-type: application/json\n"
        "transfer-encoding: chunked\n"
    )
    chunk = b"x" * 1024
    parts = [f"{len(chunk):x}\r\n".encode() + chunk + b"\r\n" for _ in range(12)]  # 12 KiB, never terminated
    status, error = error_of(raw_exchange(gateway, head, parts))
    assert status == 413 and error["code"] == "request_too_large"


def test_the_official_client_gets_413_for_a_large_chat_and_an_answer_below_the_limit(gateway: RunningGateway) -> None:
    with pytest.raises(openai.APIStatusError) as caught:
        client(gateway).chat.completions.create(
            model="fake/fake-small", messages=[{"role": "user", "content": "y" * 9000}]
        )
    assert caught.value.status_code == 413
    assert caught.value.body["code"] == "request_too_large"  # type: ignore[index]
    answer = client(gateway).chat.completions.create(
        model="fake/fake-small", messages=[{"role": "user", "content": "y" * 7000}]
    )
    assert answer.choices[0].message.content
    assert wait_for_rows(1) == 1


def upload(gateway: RunningGateway, records: list[dict[str, Any]]) -> httpx.Response:
    return httpx.post(gateway.base_url + "/tuneloop/logs", json={"records": records}, timeout=10)


def a_record(index: int) -> dict[str, Any]:
    return CallRecord(model_requested=f"m{index}", request={"model": f"m{index}"}, status="ok").to_json()


def test_log_uploads_are_bounded_in_records_and_bytes(gateway: RunningGateway) -> None:
    too_many = upload(gateway, [a_record(i) for i in range(4)])
    assert too_many.status_code == 413, too_many.text
    assert too_many.json()["error"]["code"] == "too_many_records" and too_many.json()["error"]["param"] == "records"
    too_big = upload(gateway, [{**a_record(0), "request": {"text": "z" * 9000}}])
    assert too_big.status_code == 413 and too_big.json()["error"]["code"] == "request_too_large"
    head = "POST /v1/tuneloop/logs HTTP/1.1\nhost: gateway\ncontent-type: application/json\ncontent-length: 99999999\n"
    status, error = error_of(raw_exchange(gateway, head, [b'{"records": [']))
    assert status == 413 and "limits.max_upload_bytes" in error["message"]
    accepted = upload(gateway, [a_record(i) for i in range(3)])
    assert accepted.status_code == 200 and accepted.json() == {"accepted": 3}
    assert wait_for_rows(3) == 3


def test_the_key_is_checked_before_the_body_is_read(tmp_path: Path, fake_url: str) -> None:
    config = gateway_config(tmp_path, fake_url, auth="required", limits=LIMITS)
    with running_gateway(config) as gateway:
        for path in ("/v1/chat/completions", "/v1/tuneloop/logs"):
            for authorization in ("", "authorization: Bearer tl-not-a-key\n"):
                # 4000 bytes announced, none sent: a gateway that reads first waits for them and says nothing
                head = f"POST {path} HTTP/1.1\nhost: gateway\ncontent-type: application/json\n{authorization}"
                status, error = error_of(raw_exchange(gateway, head + "content-length: 4000\n", []))
                assert status == 401 and error["code"] == "invalid_api_key", (path, authorization)


# --- client text is never a path ------------------------------------------------------------------------


def rejecting_task(name: str) -> str:
    """A task spec whose checks the fake's answer fails, with ``on_check_failure: reject`` (so a call to which
    it applies gets 422)."""
    from importlib.resources import files

    text = (files("tuneloop") / "tasks" / "liability-extraction.yaml").read_text(encoding="utf-8")
    text = text.replace("name: liability-extraction", f"name: {name}", 1)
    return text.replace("on_check_failure: escalate", "on_check_failure: reject", 1)


@pytest.mark.parametrize(
    "reference",
    [
        "{outside}/evil.yaml",  # an absolute path
        "evil.yaml",  # relative to the gateway's working directory (and a valid task name, too)
        "evil.yml",
        "./evil.yaml",
        "../outside/evil.yaml",
        "~/evil.yaml",
    ],
)
def test_metadata_task_is_a_task_name_never_a_path(
    reference: str, tmp_path: Path, fake_url: str, tuneloop_home: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    outside = tmp_path / "outside"
    outside.mkdir()
    for folder in (outside, tmp_path / "cwd", Path(str(tuneloop_home))):
        folder.mkdir(exist_ok=True)
        for file in ("evil.yaml", "evil.yml"):
            (folder / file).write_text(rejecting_task("evil"), encoding="utf-8")
    monkeypatch.chdir(tmp_path / "cwd")
    monkeypatch.setenv("HOME", str(tmp_path / "cwd"))
    with running_gateway(gateway_config(tmp_path, fake_url)) as gateway:
        task = reference.format(outside=outside)
        answer = client(gateway).chat.completions.create(
            model="fake/fake-small", messages=MESSAGES, metadata={"task": task}
        )
        # No spec was opened, so no checks ran (a spec that had been read would have rejected this answer).
        assert "tuneloop" not in (answer.model_extra or {})
        # A task of the home's tasks folder, named by its name, still applies.
        (tuneloop_home / "tasks").mkdir(exist_ok=True)
        (tuneloop_home / "tasks" / "evil.yaml").write_text(rejecting_task("evil"), encoding="utf-8")
        with pytest.raises(openai.UnprocessableEntityError):
            client(gateway).chat.completions.create(
                model="fake/fake-small", messages=MESSAGES, metadata={"task": "evil"}
            )


def test_the_task_cache_is_bounded(tuneloop_home: Path) -> None:
    from tuneloop.review import policy

    for index in range(policy.TASK_CACHE_LIMIT * 3):
        assert policy.task_for("fake/fake-small", {"task": f"made-up-{index}"}) is None
    assert len(policy.task_cache) <= policy.TASK_CACHE_LIMIT
    assert policy.task_for(None, {"task": "liability-extraction"}) is not None  # real names still load


# --- metric labels -------------------------------------------------------------------------------------


def model_labels(gateway: RunningGateway, metric: str = "tuneloop_gateway_requests_total") -> dict[str, float]:
    from prometheus_client.parser import text_string_to_metric_families

    text = httpx.get(gateway.base_url.removesuffix("/v1") + "/metrics").text
    totals: dict[str, float] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == metric:
                totals[sample.labels["model"]] = totals.get(sample.labels["model"], 0) + sample.value
    return totals


def test_model_names_a_client_makes_up_do_not_become_metric_series(gateway: RunningGateway) -> None:
    run = uuid.uuid4().hex[:8]
    before = model_labels(gateway)
    assert "fake/fake-small" in {model.id for model in client(gateway).models.list()}
    for index in range(30):  # the fake upstream answers any name, as many OpenAI-compatible servers do
        client(gateway).chat.completions.create(model=f"fake/made-up-{run}-{index}", messages=MESSAGES)
    list(client(gateway).chat.completions.create(model=f"fake/made-up-{run}-s", messages=MESSAGES, stream=True))
    client(gateway).chat.completions.create(model="fake/fake-small", messages=MESSAGES)  # listed by the upstream
    after = model_labels(gateway)
    assert not [label for label in after if run in label]
    assert after["other"] - before.get("other", 0) == 31
    assert after["fake/fake-small"] - before.get("fake/fake-small", 0) == 1
    for metric in ("tuneloop_gateway_latency_seconds_count", "tuneloop_gateway_tokens_total"):
        assert not [label for label in model_labels(gateway, metric) if run in label]


def test_model_labels_have_a_hard_cap(tmp_path: Path, fake_url: str) -> None:
    run = uuid.uuid4().hex[:8]
    names = [f"{run}-{index}" for index in range(5)]
    routes = [{"match": name, "upstream": "fake", "model": name} for name in names]  # known: the config names them
    config = gateway_config(tmp_path, fake_url, routes=routes, limits={"max_model_labels": 2})
    with running_gateway(config) as gateway:
        before = model_labels(gateway).get("other", 0)
        for name in names:
            client(gateway).chat.completions.create(model=name, messages=MESSAGES)
        after = model_labels(gateway)
    assert len([label for label in after if run in label]) == 2
    assert after["other"] - before == 3


def test_serve_metrics_have_a_hard_cap_on_model_labels() -> None:
    from tuneloop.review.metrics import DEFAULT_MAX_MODEL_LABELS, OTHER_MODELS
    from tuneloop.serve.metrics import ServeMetrics

    metrics = ServeMetrics()
    for index in range(DEFAULT_MAX_MODEL_LABELS + 100):
        metrics.observe_success(f"task@{index + 1}", latency_s=0.1, ttft_s=0.01, prompt_tokens=1, completion_tokens=1)
        metrics.observe_error(f"task@{index + 1}", 400, "invalid_request_error")
        metrics.review.observe_check(f"task@{index + 1}", ["schema: x"])
    models = {
        sample.labels["model"]
        for family in metrics.registry.collect()
        for sample in family.samples
        if "model" in sample.labels
    }
    assert len(models) == DEFAULT_MAX_MODEL_LABELS + 1 and OTHER_MODELS in models


# --- what is read as a boolean, what an upstream's 200 must be, numbers ------------------------------------


@pytest.mark.parametrize("store", [0, 1, "false", "true", "no", [], {}])
def test_store_must_be_a_boolean(gateway: RunningGateway, store: Any) -> None:
    reply = chat(gateway, {"model": "fake/fake-small", "messages": MESSAGES, "store": store})
    assert reply.status_code == 400, reply.text
    assert reply.json()["error"]["param"] == "store"
    assert wait_for_rows(1, timeout=0.5) == 0


def test_store_false_is_not_logged_and_null_is(gateway: RunningGateway) -> None:
    assert chat(gateway, {"model": "fake/fake-small", "messages": MESSAGES, "store": False}).status_code == 200
    assert chat(gateway, {"model": "fake/fake-small", "messages": MESSAGES, "store": None}).status_code == 200
    assert wait_for_rows(1) == 1 and wait_for_rows(2, timeout=0.5) == 1


def test_stream_must_be_a_boolean(gateway: RunningGateway) -> None:
    reply = chat(gateway, {"model": "fake/fake-small", "messages": MESSAGES, "stream": "false"})
    assert reply.status_code == 400 and reply.json()["error"]["param"] == "stream"


def test_an_upstream_200_that_is_not_json_is_a_502_logged_as_an_error(gateway: RunningGateway) -> None:
    reply = chat(gateway, {"model": "fake/fault-html", "messages": MESSAGES})
    assert reply.status_code == 502, reply.text
    error = reply.json()["error"]
    assert error["code"] == "upstream_invalid_response" and error["type"] == "server_error"
    assert "not a JSON object" in error["message"] and "text/html" in error["message"]
    assert wait_for_rows(1) == 1
    row = rows()[0]
    assert row.status == "error" and row.http_status == 502
    assert [attempt["outcome"] for attempt in row.attempts] == ["invalid_response"] * len(row.attempts)


def test_an_upstream_200_that_is_not_json_moves_on_to_the_fallback(tmp_path: Path, fake_url: str) -> None:
    routes = [{"match": "broken", "upstream": "fake", "model": "fault-html", "retries": 0, "fallbacks": ["fake/ok"]}]
    with running_gateway(gateway_config(tmp_path, fake_url, routes=routes)) as gateway:
        answer = client(gateway).chat.completions.create(model="broken", messages=MESSAGES)
    assert answer.model == "ok"


def test_integers_wider_than_64_bits_are_refused_naming_the_field(gateway: RunningGateway) -> None:
    prefix = json.dumps({"model": "fake/fake-small", "messages": MESSAGES}).encode()[:-1]
    cases = [
        (b'"extra": {"values": [1, -9223372036854775809]}', "extra.values[1]"),  # -2**63 - 1
        (b'"logit_bias": {"50256": ' + b"9" * 100 + b"}", "logit_bias.50256"),
        (b'"seed": 18446744073709551616', "seed"),  # 2**64
        (b'"n": ' + b"7" * 5000, None),  # too many digits for any reader to keep
    ]
    for member, param in cases:
        reply = chat(gateway, prefix + b", " + member + b"}")
        assert reply.status_code == 400, (member[:40], reply.text)
        error = reply.json()["error"]
        assert error["type"] == "invalid_request_error"
        if param is not None:
            assert error["param"] == param and "64 bits" in error["message"], error
    assert wait_for_rows(1, timeout=0.5) == 0


def test_64_bit_integers_reach_the_upstream_exactly(gateway: RunningGateway, fake: FakeUpstream) -> None:
    exact = {
        "seed": 2**64 - 1,
        "extra": {"low": -(2**63), "high": 2**63, "text": "card 4111111111111111111111 and 12345678901234567890"},
    }
    reply = chat(gateway, {"model": "fake/fake-small", "messages": MESSAGES, **exact})
    assert reply.status_code == 200, reply.text
    received = fake.requests[-1]
    assert received["seed"] == 2**64 - 1 and isinstance(received["seed"], int)
    assert received["extra"] == exact["extra"]


def test_the_limits_hold_under_a_root_path_too(tmp_path: Path, fake_url: str) -> None:
    """Behind a proxy that mounts the gateway under a prefix, chat calls come through FastAPI's routing."""
    from starlette.testclient import TestClient

    from tuneloop.capture.gateway import create_app

    app = create_app(gateway_config(tmp_path, fake_url, limits=LIMITS))
    with TestClient(app, root_path="/gateway") as test_client:
        path = "/gateway/v1/chat/completions"
        big = {"model": "fake/fake-small", "messages": [{"role": "user", "content": "y" * 9000}]}
        assert test_client.post(path, json=big).status_code == 413
        small = {"model": "fake/fake-small", "messages": MESSAGES, "store": False}
        assert test_client.post(path, json=small).status_code == 200


@pytest.mark.parametrize("depth", [260, 1000])
def test_a_body_nested_deeper_than_the_log_can_hold_is_refused(gateway: RunningGateway, depth: int) -> None:
    # orjson reads up to 1024 levels but writes 254: before, such a body was a 500 on the way upstream.
    prefix = json.dumps({"model": "fake/fake-small", "messages": MESSAGES}).encode()[:-1]
    reply = chat(gateway, prefix + b', "extra": ' + b"[" * depth + b"]" * depth + b"}")
    assert reply.status_code == 400, reply.text[:200]
    error = reply.json()["error"]
    assert error["code"] == "too_deeply_nested" and "nested deeper than" in error["message"]
    assert wait_for_rows(1, timeout=0.5) == 0


def test_a_body_nested_as_deep_as_the_log_holds_is_forwarded_and_logged_whole(
    tmp_path: Path, fake_url: str, fake: FakeUpstream
) -> None:
    depth = 150
    nested: Any = []
    for _ in range(depth - 1):
        nested = [nested]
    journal = {"durable": True, "journal_dir": str(tmp_path / "journal")}
    with running_gateway(gateway_config(tmp_path, fake_url, limits=LIMITS, logging=journal)) as durable:
        reply = chat(durable, {"model": "fake/fake-small", "messages": MESSAGES, "extra": nested})
        assert reply.status_code == 200, reply.text
        assert fake.requests[-1]["extra"] == nested
        assert wait_for_rows(1) == 1
    [row] = rows()
    assert row.request["extra"] == nested

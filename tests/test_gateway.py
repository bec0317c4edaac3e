"""The gateway end to end: the official openai client → the gateway (uvicorn, loopback) → a fake upstream."""

from __future__ import annotations

from pathlib import Path

import httpx
import openai
import pytest

from test_capture_support import count_rows, gateway_config, rows, wait_for_rows
from tuneloop.capture.server import RunningGateway, running_gateway
from tuneloop.store import RequestLog
from tuneloop.store.keys import create_key, revoke_key
from tuneloop.testing.fake_upstream import FakeUpstream

MESSAGES = [{"role": "user", "content": "Payoff is $1,200.00. Write to jane@example.com"}]

pytest_plugins = ["test_capture_support"]  # the fake upstream and gateway fixtures


def client(running: RunningGateway, api_key: str = "unused") -> openai.OpenAI:
    return openai.OpenAI(base_url=running.base_url, api_key=api_key, max_retries=0)


def test_a_call_is_answered_and_logged_in_full(gateway: RunningGateway, fake: FakeUpstream) -> None:
    raw = client(gateway).chat.completions.with_raw_response.create(
        model="openai/gpt-4o-mini",
        messages=MESSAGES,
        metadata={"task": "liability-extraction", "env": "test"},
        temperature=0,
        extra_headers={"x-tuneloop-tags": "nightly, team=ops"},
        extra_body={"provider_specific": {"x": 1}},
    )
    completion = raw.parse()
    assert completion.choices[0].message.content == fake.answer
    assert float(raw.headers["x-tuneloop-overhead-ms"]) >= 0

    # The upstream got the model after the prefix, the unknown field, and none of tuneloop's fields.
    sent = fake.requests[-1]
    assert sent["model"] == "gpt-4o-mini" and sent["provider_specific"] == {"x": 1}
    assert "metadata" not in sent and "store" not in sent
    assert "x-tuneloop-tags" not in fake.headers[-1]

    assert wait_for_rows(1) == 1
    [row] = rows()
    assert (row.model_requested, row.model_resolved, row.upstream) == (
        "openai/gpt-4o-mini",
        "openai/gpt-4o-mini",
        "openai",
    )
    assert (row.status, row.http_status, row.error) == ("ok", 200, None)
    assert row.request["messages"] == MESSAGES and row.request["metadata"]["env"] == "test"
    assert row.response["choices"][0]["message"]["content"] == fake.answer
    assert row.task == "liability-extraction"
    assert row.metadata_ == {"task": "liability-extraction", "env": "test", "team": "ops"}
    assert set(row.tags) == {"task=liability-extraction", "env=test", "team=ops", "nightly"}
    assert row.prompt_tokens and row.completion_tokens
    assert row.cost_usd is not None and row.cost_usd > 0 and row.price_table_version  # gpt-4o-mini is priced
    assert row.latency_ms > 0 and 0 <= row.overhead_ms <= row.latency_ms
    assert row.attempts == [
        {
            "upstream": "openai",
            "model": "gpt-4o-mini",
            "outcome": "ok",
            "http_status": 200,
            "latency_ms": row.attempts[0]["latency_ms"],
        }
    ]
    assert row.capture_id


def test_streams_pass_through_and_are_logged_reassembled(gateway: RunningGateway, fake: FakeUpstream) -> None:
    stream = client(gateway).chat.completions.create(
        model="fake/fake-small", messages=MESSAGES, stream=True, stream_options={"include_usage": True}
    )
    pieces = [chunk.choices[0].delta.content or "" for chunk in stream if chunk.choices]
    assert len(pieces) > 2 and "".join(pieces) == fake.answer
    assert wait_for_rows(1) == 1
    [row] = rows()
    assert row.status == "ok" and row.ttft_ms is not None and row.ttft_ms <= row.latency_ms
    message = row.response["choices"][0]
    assert message["message"] == {"role": "assistant", "content": fake.answer} and message["finish_reason"] == "stop"
    assert row.response["object"] == "chat.completion" and row.prompt_tokens and row.completion_tokens


def test_store_false_is_answered_but_not_logged(gateway: RunningGateway) -> None:
    client(gateway).chat.completions.create(model="fake/a", messages=MESSAGES, store=False)
    client(gateway).chat.completions.create(model="fake/b", messages=MESSAGES)
    assert wait_for_rows(1) == 1
    assert [row.model_requested for row in rows()] == ["fake/b"]


@pytest.mark.parametrize("fault", ["500", "503", "429", "reset", "timeout"])
def test_retries_then_falls_back_on_5xx_429_reset_and_timeout(tmp_path: Path, fake_url: str, fault: str) -> None:
    routes = [
        {
            "match": "team/*",
            "upstream": "fake",
            "fallbacks": ["fake/backup"],
            "retries": 1,
            "backoff_ms": 1,
            "timeout_s": 0.3,
        }
    ]
    with running_gateway(gateway_config(tmp_path, fake_url, routes=routes)) as running:
        completion = client(running).chat.completions.create(model=f"team/fault-{fault}", messages=MESSAGES)
        assert completion.model == "backup"
        assert wait_for_rows(1) == 1
    [row] = rows()
    assert (row.status, row.model_requested, row.model_resolved) == ("ok", f"team/fault-{fault}", "fake/backup")
    outcomes = [attempt["outcome"] for attempt in row.attempts]
    assert outcomes[-1] == "ok" and len(outcomes) == 3  # two tries of the primary (1 retry), then the fallback
    assert row.overhead_ms < row.latency_ms


def test_a_client_error_is_passed_on_without_retrying(gateway: RunningGateway, fake: FakeUpstream) -> None:
    before = len(fake.requests)
    response = httpx.post(
        gateway.base_url + "/chat/completions",
        json={"model": "team/x", "messages": MESSAGES},
        headers={"x-fake-fault": "500"},  # client headers are not forwarded: this is an ordinary call
    )
    assert response.status_code == 200 and len(fake.requests) == before + 1


def test_every_failure_is_an_openai_shaped_error(tmp_path: Path, fake_url: str) -> None:
    config = gateway_config(tmp_path, fake_url)
    with running_gateway(config) as running:
        api = client(running)
        with pytest.raises(openai.NotFoundError) as not_found:
            api.chat.completions.create(model="gpt-4o", messages=MESSAGES)  # no route, no upstream prefix
        assert not_found.value.code == "model_not_found" and "upstreams: fake" in not_found.value.message
        with pytest.raises(openai.BadRequestError) as bad:
            api.chat.completions.create(model="fake/x", messages=[])
        assert bad.value.param == "messages"
        with pytest.raises(openai.BadRequestError) as bad_role:
            api.chat.completions.create(model="fake/x", messages=[{"content": "no role"}])  # type: ignore[list-item]
        assert bad_role.value.param == "messages[0].role"
        for body in (b"{not json", b"[1, 2]", b'{"model": "fake/x", "messages": "\xff"}'):
            response = httpx.post(running.base_url + "/chat/completions", content=body)
            assert response.status_code == 400 and set(response.json()["error"]) == {"message", "type", "param", "code"}
        response = httpx.post(running.base_url + "/chat/completions", content=b'{"model": "fake/x",\n "messages": [}')
        assert (
            "not valid JSON" in response.json()["error"]["message"]
            and "at byte 34" in response.json()["error"]["message"]
        )
        with pytest.raises(openai.InternalServerError) as upstream_500:
            api.chat.completions.create(model="fake/fault-500", messages=MESSAGES)
        assert upstream_500.value.status_code == 500
        with pytest.raises(openai.APIStatusError) as reset:
            api.chat.completions.create(model="fake/fault-reset", messages=MESSAGES)
        assert reset.value.status_code == 502 and reset.value.code == "upstream_unavailable"
        response = httpx.get(running.base_url + "/nowhere")
        assert response.status_code == 404 and response.json()["error"]["type"] == "not_found_error"
        assert wait_for_rows(2) == 2  # the two upstream failures were calls; client mistakes were not
    assert [row.status for row in rows()] == ["error", "error"]
    assert rows()[1].http_status == 502 and "Connection reset by peer" in rows()[1].error


def test_a_bug_on_the_chat_path_is_a_500_in_openai_shape(
    gateway: RunningGateway, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Chat completions skip FastAPI's layers (GatewayApp); their errors must still be answered like the rest.
    def broken(model: str) -> None:
        raise RuntimeError("a bug")

    monkeypatch.setattr(gateway.gateway.router, "targets_for", broken)
    response = httpx.post(gateway.base_url + "/chat/completions", json={"model": "fake/x", "messages": MESSAGES})
    assert response.status_code == 500 and response.json()["error"]["type"] == "server_error"
    assert "a bug" not in response.text  # the traceback goes to the server log only
    wrong_method = httpx.get(gateway.base_url + "/chat/completions")
    assert wrong_method.status_code == 405 and "error" in wrong_method.json()


def test_models_lists_routes_and_upstream_models(tmp_path: Path, fake_url: str) -> None:
    config = gateway_config(
        tmp_path, fake_url, routes=[{"match": "extractor", "upstream": "fake", "model": "fake-small"}]
    )
    with running_gateway(config) as running:
        ids = [model.id for model in client(running).models.list()]
        assert "extractor" in ids and "fake/fake-small" in ids and "openai/fake-large" in ids
        assert client(running).chat.completions.create(model="extractor", messages=MESSAGES).model == "fake-small"


def test_keys_authenticate_rate_limit_and_revoke(tmp_path: Path, fake_url: str) -> None:
    key = create_key("app1", rate_limit_per_min=3)
    config = gateway_config(tmp_path, fake_url, keys_refresh_s=0.2)
    with running_gateway(config) as running:
        missing = httpx.post(running.base_url + "/chat/completions", json={"model": "fake/x", "messages": MESSAGES})
        assert missing.status_code == 401 and missing.json()["error"]["code"] == "invalid_api_key"
        with pytest.raises(openai.AuthenticationError):
            client(running, api_key="tl-wrong").chat.completions.create(model="fake/x", messages=MESSAGES)
        for _ in range(3):
            client(running, key.key).chat.completions.create(model="fake/x", messages=MESSAGES)
        with pytest.raises(openai.RateLimitError) as limited:
            client(running, key.key).chat.completions.create(model="fake/x", messages=MESSAGES)
        assert int(limited.value.response.headers["retry-after"]) >= 1

        later = create_key("app2")  # created while the gateway runs: works at once
        client(running, later.key).chat.completions.create(model="fake/x", messages=MESSAGES)
        revoke_key("app2")
        import time

        time.sleep(0.5)  # > keys_refresh_s
        with pytest.raises(openai.AuthenticationError):
            client(running, later.key).chat.completions.create(model="fake/x", messages=MESSAGES)
        assert wait_for_rows(5) == 5
    logged = rows()
    assert [row.api_key_id for row in logged] == [key.id] * 4 + [later.id]
    assert [row.http_status for row in logged[:4]] == [200, 200, 200, 429]


def test_auth_can_be_disabled_for_local_development(tmp_path: Path, fake_url: str) -> None:
    create_key("someone")
    with running_gateway(gateway_config(tmp_path, fake_url, auth="disabled")) as running:
        client(running, api_key="anything").chat.completions.create(model="fake/x", messages=MESSAGES)


def test_provider_keys_go_upstream_but_never_into_the_log(
    tmp_path: Path, fake_url: str, fake: FakeUpstream, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("FAKE_PROVIDER_KEY", "sk-secret-provider-key")
    config = gateway_config(
        tmp_path, fake_url, upstreams={"paid": {"base_url": fake_url, "api_key_env": "FAKE_PROVIDER_KEY"}}
    )
    with running_gateway(config) as running:
        client(running, api_key="client-side").chat.completions.create(model="paid/m", messages=MESSAGES)
        assert wait_for_rows(1) == 1
    assert fake.headers[-1]["authorization"] == "Bearer sk-secret-provider-key"
    from tuneloop.store.logs import log_to_json

    assert "sk-secret" not in str(log_to_json(rows()[0]))


def test_redaction_before_storage(tmp_path: Path, fake_url: str, fake: FakeUpstream) -> None:
    redact = {"emails": True, "card_numbers": True, "patterns": [{"name": "ssn", "regex": r"\b\d{3}-\d{2}-\d{4}\b"}]}
    fake.answer = "Card 4111 1111 1111 1111 on file; loan 1234567890123 is not a card; ssn 123-45-6789"
    with running_gateway(gateway_config(tmp_path, fake_url, redact=redact)) as running:
        answer = client(running).chat.completions.create(model="fake/x", messages=MESSAGES)
        assert "4111 1111 1111 1111" in answer.choices[0].message.content  # the client sees the real answer
        assert wait_for_rows(1) == 1
    assert fake.requests[-1]["messages"][0]["content"].endswith("jane@example.com")  # upstream too
    row = rows()[0]
    assert row.request["messages"][0]["content"] == "Payoff is $1,200.00. Write to [EMAIL]"
    assert row.response["choices"][0]["message"]["content"] == (
        "Card [CARD] on file; loan 1234567890123 is not a card; ssn [REDACTED:ssn]"
    )


def test_config_errors_name_the_file_and_key(tmp_path: Path, fake_url: str) -> None:
    from test_capture_support import write_config
    from tuneloop.capture.config import load_gateway_config
    from tuneloop.errors import TuneloopError

    bad_route = write_config(tmp_path / "a.yaml", fake_url, routes=[{"match": "x/*", "upstream": "nope"}])
    with pytest.raises(TuneloopError, match="no upstream named 'nope'"):
        load_gateway_config(bad_route)
    bad_key = write_config(tmp_path / "b.yaml", fake_url, logging={"polcy": "drop"})
    with pytest.raises(TuneloopError) as unknown:
        load_gateway_config(bad_key)
    assert unknown.value.where == f"{bad_key}: logging.polcy"
    bad_upstream = write_config(tmp_path / "c.yaml", fake_url)
    bad_upstream.write_text("upstreams: {x: {base_url: ftp://nowhere}}\n")
    with pytest.raises(TuneloopError) as upstream_error:
        load_gateway_config(bad_upstream)
    assert str(bad_upstream) in str(upstream_error.value.where)
    durable_drop = write_config(tmp_path / "d.yaml", fake_url, logging={"durable": True, "policy": "drop"})
    with pytest.raises(TuneloopError, match="cannot drop"):
        load_gateway_config(durable_drop)


def metric(text: str, name: str, **labels: str) -> float:
    from prometheus_client.parser import text_string_to_metric_families

    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == name and all(sample.labels.get(k) == v for k, v in labels.items()):
                return sample.value
    return 0.0


def test_metrics_and_health(gateway: RunningGateway) -> None:
    root = gateway.base_url.removesuffix("/v1")
    before = httpx.get(root + "/metrics").text
    assert "fake/fake-small" in {model.id for model in client(gateway).models.list()}  # an upstream lists it
    reply = client(gateway).chat.completions.create(model="fake/fake-small", messages=MESSAGES)
    streamed = list(client(gateway).chat.completions.create(model="fake/fake-small", messages=MESSAGES, stream=True))
    assert wait_for_rows(2) == 2 and streamed
    metrics = httpx.get(root + "/metrics").text
    assert "tuneloop_gateway_overhead_seconds_bucket" in metrics and "tuneloop_capture_records_total" in metrics
    # Labelled by the model that answered (upstream/model), whole and streamed calls alike.
    answered = {"model": "fake/fake-small"}

    def grew(name: str, **labels: str) -> float:
        return metric(metrics, name, **answered, **labels) - metric(before, name, **answered, **labels)

    assert grew("tuneloop_gateway_requests_total", status="200") == 2
    assert grew("tuneloop_gateway_latency_seconds_count") == 2
    assert grew("tuneloop_gateway_time_to_first_token_seconds_count") == 1  # the stream's
    assert grew("tuneloop_gateway_tokens_total", kind="completion") >= reply.usage.completion_tokens
    health = httpx.get(root + "/healthz").json()
    assert health["status"] == "ok" and health["logged"] >= 1 and health["dropped"] == 0
    assert count_rows() == 2 and isinstance(rows()[0], RequestLog)


def test_send_prompts_through_the_gateway(gateway: RunningGateway, fake: FakeUpstream) -> None:
    from tuneloop.testing.traffic import send_prompts

    prompts = [[{"role": "user", "content": f"letter {index}"}] for index in range(5)]
    done: list[int] = []
    answers = send_prompts(
        gateway.base_url,
        "fake/base",
        prompts,
        metadata={"task": "t", "run": "demo-1"},
        on_done=lambda i, _: done.append(i),
    )
    assert answers == [fake.answer] * 5 and sorted(done) == list(range(5))
    assert wait_for_rows(5) == 5
    assert all(row.metadata_ == {"task": "t", "run": "demo-1"} for row in rows())


def test_the_first_key_closes_an_open_gateway_as_soon_as_it_is_used(tmp_path: Path, fake_url: str) -> None:
    with running_gateway(gateway_config(tmp_path, fake_url)) as running:  # refresh every 5 s
        client(running, "anything").chat.completions.create(model="fake/x", messages=MESSAGES)  # open: no key yet
        key = create_key("first")
        client(running, key.key).chat.completions.create(model="fake/x", messages=MESSAGES)
        with pytest.raises(openai.AuthenticationError):
            client(running, "anything").chat.completions.create(model="fake/x", messages=MESSAGES)
        assert wait_for_rows(2) == 2
    assert [row.api_key_id for row in rows()] == [None, key.id]


def test_the_overhead_header_leaves_out_the_time_spent_waiting_on_the_upstream(tmp_path: Path) -> None:
    slow = FakeUpstream(latency_ms=300, latency_spread=0.5)  # answers after 150-450 ms
    with slow.running() as slow_url, running_gateway(gateway_config(tmp_path, slow_url)) as running:
        for stream in (False, True):
            response = httpx.post(
                running.base_url + "/chat/completions",
                json={"model": "fake/m", "messages": MESSAGES, "stream": stream},
                timeout=30,
            )
            assert response.status_code == 200
            assert response.elapsed.total_seconds() >= 0.15  # the upstream's latency reached the client
            assert float(response.headers["x-tuneloop-overhead-ms"]) < 100  # ...but is not counted as ours
        assert wait_for_rows(2) == 2
    for row in rows():
        assert row.latency_ms >= 150 and row.overhead_ms < row.latency_ms - 100

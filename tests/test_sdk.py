"""`from tuneloop import OpenAI`: the official client, logging every chat completion, never breaking a call."""

from __future__ import annotations

import asyncio
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import openai
import pytest

import tuneloop
from test_capture_support import gateway_config, rows, wait_for_rows
from tuneloop.capture import sdk
from tuneloop.capture.server import running_gateway
from tuneloop.store.keys import create_key
from tuneloop.testing.fake_upstream import FakeUpstream

MESSAGES = [{"role": "user", "content": "Escrow balance is $310.22"}]

pytest_plugins = ["test_capture_support"]  # the fake upstream and gateway fixtures


@pytest.fixture(autouse=True)
def fresh_writers() -> Iterator[None]:
    # Each test has its own store (TUNELOOP_HOME): writers bound to an earlier one must not be reused.
    sdk.close_writers(timeout=1)
    yield
    sdk.close_writers(timeout=1)


def flush() -> None:
    for writer in list(sdk._writers.values()):
        assert writer.flush(10)


def test_import_tuneloop_is_cheap_and_exports_the_clients() -> None:
    code = (
        "import sys, tuneloop; assert 'openai' not in sys.modules and 'sqlalchemy' not in sys.modules; "
        "print(tuneloop.OpenAI)"
    )
    output = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert "tuneloop.capture.sdk.OpenAI" in output
    assert issubclass(tuneloop.OpenAI, openai.OpenAI) and issubclass(tuneloop.AsyncOpenAI, openai.AsyncOpenAI)


def test_calls_are_logged_with_tags_off_the_request(fake_url: str, fake: FakeUpstream) -> None:
    client = tuneloop.OpenAI(base_url=fake_url, api_key="sk-test", max_retries=0)
    answer = client.chat.completions.create(
        model="fake-small", messages=MESSAGES, metadata={"task": "liability-extraction"}
    )
    assert answer.choices[0].message.content == fake.answer
    stream = client.chat.completions.create(
        model="fake-small", messages=MESSAGES, stream=True, extra_headers={"x-tuneloop-tags": "env=dev, nightly"}
    )
    assert "".join(chunk.choices[0].delta.content or "" for chunk in stream if chunk.choices) == fake.answer
    client.chat.completions.create(model="fake-small", messages=MESSAGES, store=False)
    client.with_options(timeout=5).chat.completions.create(model="fake-small", messages=MESSAGES)  # a copy logs too
    client.models.list()  # not a chat completion: passed through, not logged
    flush()

    assert all("metadata" not in body and "store" not in body for body in fake.requests)
    assert all("x-tuneloop-tags" not in headers for headers in fake.headers)
    logged = rows()
    assert len(logged) == 3
    first, streamed, copied = logged
    assert first.task == "liability-extraction" and first.tags == ["task=liability-extraction"]
    assert first.response["choices"][0]["message"]["content"] == fake.answer and first.prompt_tokens
    assert streamed.ttft_ms is not None and streamed.response["choices"][0]["message"]["content"] == fake.answer
    assert streamed.metadata_ == {"env": "dev"} and "nightly" in streamed.tags
    assert copied.status == "ok" and copied.upstream == "127.0.0.1"


def test_errors_are_logged_and_raised_as_usual(fake_url: str) -> None:
    client = tuneloop.OpenAI(base_url=fake_url, api_key="sk-test", max_retries=0)
    with pytest.raises(openai.InternalServerError):
        client.chat.completions.create(model="fault-500", messages=MESSAGES)
    dead = tuneloop.OpenAI(base_url="http://127.0.0.1:9/v1", api_key="sk-test", max_retries=0)
    with pytest.raises(openai.APIConnectionError):
        dead.chat.completions.create(model="m", messages=MESSAGES)
    flush()
    server_error, unreachable = rows()
    assert (server_error.status, server_error.http_status) == ("error", 500)
    assert server_error.response["error"]["message"] == "injected fault 500"
    assert unreachable.status == "error" and unreachable.http_status is None and "ConnectError" in unreachable.error


def test_async_client(fake_url: str, fake: FakeUpstream) -> None:
    async def main() -> None:
        client = tuneloop.AsyncOpenAI(base_url=fake_url, api_key="sk-test", max_retries=0)
        answer = await client.chat.completions.create(model="fake-small", messages=MESSAGES, metadata={"k": "v"})
        assert answer.choices[0].message.content == fake.answer
        stream = await client.chat.completions.create(model="fake-small", messages=MESSAGES, stream=True)
        pieces = [chunk.choices[0].delta.content or "" async for chunk in stream if chunk.choices]
        assert "".join(pieces) == fake.answer
        await client.close()

    asyncio.run(main())
    flush()
    logged = rows()
    assert [row.metadata_ for row in logged] == [{"k": "v"}, {}]
    assert logged[1].response["choices"][0]["message"]["content"] == fake.answer


def test_a_logging_failure_never_breaks_the_call(
    fake_url: str, fake: FakeUpstream, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A gateway that does not exist: uploads fail (and are retried in the background), calls succeed.
    client = tuneloop.OpenAI(
        base_url=fake_url, api_key="sk-test", max_retries=0, tuneloop_log_to="http://127.0.0.1:9/v1"
    )
    assert client.chat.completions.create(model="fake-small", messages=MESSAGES).choices[0].message.content
    # The wrapper itself failing: the call goes through unlogged, the failure is counted.
    before = sdk.internal_errors

    def broken(*_args: object, **_kwargs: object) -> None:
        raise RuntimeError("bug in the wrapper")

    monkeypatch.setattr(sdk._Capture, "record", broken)
    working = tuneloop.OpenAI(base_url=fake_url, api_key="sk-test", max_retries=0)
    assert working.chat.completions.create(model="fake-small", messages=MESSAGES).choices[0].message.content
    assert sdk.internal_errors == before + 1


def test_logging_through_a_gateway(tmp_path: Path, fake_url: str) -> None:
    key = create_key("sdk-app")
    with running_gateway(gateway_config(tmp_path, fake_url)) as gateway:
        client = tuneloop.OpenAI(
            base_url=fake_url,
            api_key="sk-provider",
            max_retries=0,
            tuneloop_log_to=gateway.base_url,
            tuneloop_api_key=key.key,
        )
        client.chat.completions.create(model="fake-small", messages=MESSAGES, metadata={"task": "t"})
        flush()  # uploaded to the gateway
        assert wait_for_rows(1) == 1
    [row] = rows()
    assert row.api_key_id == key.id and row.task == "t" and row.status == "ok"
    assert "sk-provider" not in str(row.request)


def test_an_upload_over_the_gateways_limit_is_split_not_retried_forever(tmp_path: Path, fake_url: str) -> None:
    from tuneloop.capture.config import LoggingConfig

    key = create_key("sdk-batches")
    config = gateway_config(tmp_path, fake_url, limits={"max_upload_records": 2})
    with running_gateway(config) as gateway:
        client = tuneloop.OpenAI(
            base_url=fake_url,
            api_key="sk-provider",
            max_retries=0,
            tuneloop_log_to=gateway.base_url,
            tuneloop_api_key=key.key,
            # One batch of all five calls: the gateway takes at most two records an upload.
            tuneloop_logging=LoggingConfig(batch_size=100, flush_ms=3000),
        )
        for index in range(5):
            client.chat.completions.create(model="fake-small", messages=MESSAGES, metadata={"n": str(index)})
        flush()
        assert wait_for_rows(5) == 5
    assert sorted(row.metadata_["n"] for row in rows()) == ["0", "1", "2", "3", "4"]

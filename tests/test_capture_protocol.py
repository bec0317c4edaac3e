"""protocol.py: request models that pass unknown fields through, stream reassembly, OpenAI-shaped errors."""

from __future__ import annotations

import json

from fastapi import FastAPI
from fastapi.testclient import TestClient
from pydantic import BaseModel

from tuneloop.capture.config import RedactConfig
from tuneloop.capture.records import parse_tags
from tuneloop.capture.redaction import Redactor, luhn_valid
from tuneloop.protocol import (
    ChatCompletionRequest,
    OpenAIError,
    SSEDecoder,
    completion_sse,
    install_error_handlers,
    reassemble_sse,
    sse_event,
)


def test_requests_keep_unknown_fields() -> None:
    request = ChatCompletionRequest.model_validate(
        {
            "model": "m",
            "messages": [{"role": "user", "content": "hi", "cache_control": {"type": "ephemeral"}}],
            "top_k": 5,
        }
    )
    dumped = request.model_dump(exclude_none=True)
    assert dumped["top_k"] == 5 and dumped["messages"][0]["cache_control"] == {"type": "ephemeral"}


def chunk(delta: dict, finish: str | None = None, **extra: object) -> bytes:
    return sse_event(
        {
            "id": "c1",
            "object": "chat.completion.chunk",
            "created": 1,
            "model": "m",
            "choices": [{"index": 0, "delta": delta, "finish_reason": finish}],
            **extra,
        }
    )


def test_streams_reassemble_content_tool_calls_and_usage() -> None:
    body = b"".join(
        [
            chunk({"role": "assistant", "content": ""}),
            chunk({"content": "Hel"}),
            chunk({"content": "lo"}),
            chunk(
                {
                    "tool_calls": [
                        {
                            "index": 0,
                            "id": "call_1",
                            "type": "function",
                            "function": {"name": "get", "arguments": '{"a"'},
                        }
                    ]
                }
            ),
            chunk({"tool_calls": [{"index": 0, "function": {"arguments": ": 1}"}}]}),
            chunk({}, "tool_calls"),
            sse_event(
                {
                    "id": "c1",
                    "object": "chat.completion.chunk",
                    "created": 1,
                    "model": "m",
                    "choices": [],
                    "usage": {"prompt_tokens": 3, "completion_tokens": 4, "total_tokens": 7},
                }
            ),
            b"data: [DONE]\n\n",
        ]
    )
    # Split anywhere: the decoder must not care where TCP cut the stream.
    decoder = SSEDecoder()
    events = []
    for start in range(0, len(body), 7):
        events += decoder.feed(body[start : start + 7])
    assert len(events + decoder.close()) == 8
    completion, error = reassemble_sse(body)
    assert error is None and completion["usage"]["total_tokens"] == 7
    message = completion["choices"][0]["message"]
    assert message["content"] == "Hello" and completion["choices"][0]["finish_reason"] == "tool_calls"
    assert message["tool_calls"] == [
        {"id": "call_1", "type": "function", "function": {"name": "get", "arguments": '{"a": 1}'}}
    ]


def test_an_error_inside_a_stream_is_reported() -> None:
    body = chunk({"content": "par"}) + sse_event({"error": {"message": "overloaded", "type": "server_error"}})
    completion, error = reassemble_sse(body)
    assert completion["choices"][0]["message"]["content"] == "par" and error["message"] == "overloaded"


def test_a_whole_completion_sent_as_a_stream_reassembles_unchanged() -> None:
    token = {"token": "{}", "logprob": -0.1, "bytes": [123, 125], "top_logprobs": []}
    completion = {
        "id": "c1",
        "object": "chat.completion",
        "created": 1,
        "model": "m",
        "choices": [
            {
                "index": 0,
                "message": {"role": "assistant", "content": "{}"},
                "finish_reason": "stop",
                "logprobs": {"content": [token], "refusal": None},
            }
        ],
        "usage": {"prompt_tokens": 3, "completion_tokens": 1, "total_tokens": 4},
        "system_fingerprint": "fp",
        "tuneloop": {"checks": {"passed": True}},
    }
    body = completion_sse(completion, include_usage=True)
    assert body.endswith(b"data: [DONE]\n\n") and reassemble_sse(body) == (completion, None)
    without_usage, _ = reassemble_sse(completion_sse(completion))
    assert "usage" not in without_usage


class Body(BaseModel):
    count: int


def test_error_handlers_answer_in_openai_shape() -> None:
    app = FastAPI()
    install_error_handlers(app)

    @app.post("/typed")
    async def typed(body: Body) -> dict:
        return {"count": body.count}

    @app.get("/raises")
    async def raises() -> dict:
        raise OpenAIError(429, "slow down", code="rate_limit_exceeded", headers={"retry-after": "2"})

    @app.get("/bug")
    async def bug() -> dict:
        raise RuntimeError("secret internals")

    client = TestClient(app, raise_server_exceptions=False)
    invalid = client.post("/typed", json={"count": "many"})
    assert invalid.status_code == 400
    assert invalid.json()["error"]["param"] == "count" and invalid.json()["error"]["type"] == "invalid_request_error"
    limited = client.get("/raises")
    assert limited.status_code == 429 and limited.headers["retry-after"] == "2"
    assert limited.json() == {
        "error": {"message": "slow down", "type": "rate_limit_error", "param": None, "code": "rate_limit_exceeded"}
    }
    crashed = client.get("/bug")
    assert (
        crashed.status_code == 500
        and "secret" not in crashed.text
        and crashed.json()["error"]["type"] == "server_error"
    )
    assert client.get("/missing").json()["error"]["type"] == "not_found_error"


def test_tags_from_metadata_and_header() -> None:
    tags, metadata = parse_tags("task=x, nightly ,env = prod", {"task": "y", "team": "a"})
    assert metadata == {"task": "x", "team": "a", "env": "prod"}
    assert tags == ["task=x", "team=a", "env=prod", "nightly"]


def test_redaction() -> None:
    redactor = Redactor(RedactConfig(emails=True, card_numbers=True))
    assert luhn_valid("4111111111111111") and not luhn_valid("4111111111111112")
    value = {"content": "mail a.b+c@ex-ample.co.uk, card 4111-1111-1111-1111, amount 1234567812345678", "n": 5}
    assert redactor.json(value) == {"content": "mail [EMAIL], card [CARD], amount 1234567812345678", "n": 5}
    assert json.loads(json.dumps(redactor.json([value])))  # stays JSON

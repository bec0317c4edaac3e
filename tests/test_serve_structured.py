"""Structured output on the transformers backend: llguidance masks the logits, so the bundled model's
answer fits the schema; a live server on loopback, the official ``openai`` client."""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from pathlib import Path

import httpx
import openai
import pytest

from tuneloop.serve.grammar import llguidance_grammar, validate_answer
from tuneloop.task import load_task

pytestmark = pytest.mark.slow

BASE = "smollm2-135m-instruct"
TASK = "liability-extraction"
TEXT = (
    "Payoff quote for loan ending 4821: $182,440.19 good through May 2. Escrow balance $2,310.55. "
    "Next payment due 2025-06-01 at 6.125%. Lakeview Loan Servicing."
)


@pytest.fixture(scope="module")
def server(converted_home: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator:
    from tuneloop.serve.app import start_background_server
    from tuneloop.serve.engine import build_engine

    home = tmp_path_factory.mktemp("structured")
    (home / "cache").symlink_to(converted_home / "cache", target_is_directory=True)
    previous = os.environ.get("TUNELOOP_HOME")
    os.environ["TUNELOOP_HOME"] = str(home)
    running = start_background_server(build_engine(backend="transformers"))
    yield running
    running.stop()
    if previous is None:
        os.environ.pop("TUNELOOP_HOME", None)
    else:
        os.environ["TUNELOOP_HOME"] = previous


@pytest.fixture
def client(server) -> openai.OpenAI:
    return openai.OpenAI(base_url=server.base_url, api_key="unused", max_retries=0, timeout=300)


def test_a_json_schema_constrains_the_bundled_model_on_transformers(client: openai.OpenAI) -> None:
    # Two of the demo task's fields: nullable, one with a format, one with a pattern (kept small: the
    # transformers backend is slow on CPU).
    properties = {
        name: load_task(TASK).output_schema["properties"][name] for name in ("next_due_date", "account_last4")
    }
    schema = {"type": "object", "properties": properties, "required": list(properties), "additionalProperties": False}
    reply = client.chat.completions.create(
        model=BASE,
        messages=[
            {"role": "user", "content": f"{TEXT}\nGive the next due date and the account's last 4 digits as JSON."}
        ],
        max_tokens=40,
        response_format={"type": "json_schema", "json_schema": {"name": "liability", "schema": schema}},
    )
    content = reply.choices[0].message.content
    assert reply.choices[0].finish_reason == "stop", content
    answer = json.loads(content)
    assert list(answer) == list(properties)  # schema order, every field
    assert validate_answer(content, schema).valid, content  # formats and patterns checked
    assert "\n" not in content and "  " not in content  # strict whitespace
    assert reply.model_extra["tuneloop"]["schema_valid"] is True


def test_a_request_schema_holds_when_streamed(client: openai.OpenAI) -> None:
    schema = {
        "type": "object",
        "properties": {"amount": {"type": "number"}, "currency": {"type": "string", "enum": ["USD", "EUR"]}},
        "required": ["amount", "currency"],
        "additionalProperties": False,
    }
    chunks = list(
        client.chat.completions.create(
            model=BASE,
            messages=[{"role": "user", "content": "The payoff is $1,234.56. Give amount and currency as JSON."}],
            max_tokens=40,
            stream=True,
            response_format={"type": "json_schema", "json_schema": {"name": "money", "schema": schema}},
        )
    )
    content = "".join(chunk.choices[0].delta.content or "" for chunk in chunks if chunk.choices)
    assert validate_answer(content, schema).valid, content
    final = next(chunk for chunk in chunks if chunk.choices and chunk.choices[0].finish_reason)
    assert final.model_extra["tuneloop"]["schema_valid"] is True


def test_a_schema_the_grammar_engine_cannot_express_is_400(server) -> None:
    schema = {"type": "object", "properties": {"x": {"$ref": "https://example.com/elsewhere.json"}}}
    body = {
        "model": BASE,
        "messages": [{"role": "user", "content": "hi"}],
        "max_tokens": 1,
        "response_format": {"type": "json_schema", "json_schema": {"name": "x", "schema": schema}},
    }
    response = httpx.post(f"{server.base_url}/chat/completions", json=body, timeout=60)
    assert response.status_code == 400, response.text
    assert response.json()["error"]["param"] == "response_format.json_schema.schema"


def test_the_grammar_allows_single_spaces_only(server) -> None:
    from llguidance import LLMatcher

    schema = {"type": "object", "properties": {"a": {"type": "integer"}}, "required": ["a"]}
    grammar = llguidance_grammar(schema)
    assert llguidance_grammar(schema) is grammar  # cached
    tokenizer = server.engine.backend.llg_tokenizer

    def accepted(text: str) -> bool:
        matcher = LLMatcher(tokenizer, grammar, log_level=0)
        tokens = tokenizer.tokenize_str(text)
        return matcher.try_consume_tokens(tokens) == len(tokens) and matcher.is_accepting()

    assert accepted('{"a": 1}') and accepted('{"a":1}') and accepted('{ "a" : 1 }')
    assert not accepted('{"a":  1}') and not accepted('{"a":\n1}') and not accepted('{"a":\t1}')
    assert not accepted('{"a": "1"}')
    # The GBNF llama.cpp gets, not llguidance's own JSON compiler: numbers stop at 16 digits in both engines.
    assert accepted('{"a": 1234567890123456}') and not accepted('{"a": 12345678901234567}')

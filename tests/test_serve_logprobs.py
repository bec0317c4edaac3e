"""logprobs / top_logprobs on /v1/chat/completions: the official ``openai`` client against a live server on
loopback, for both CPU backends over the bundled model (whole and streamed replies)."""

from __future__ import annotations

import math
import os
from collections.abc import Iterator
from pathlib import Path

import httpx
import openai
import pytest

from tuneloop.serve.backends import GenerationParams

pytestmark = pytest.mark.slow

BASE = "smollm2-135m-instruct"
CHAT = [{"role": "user", "content": "Name three colours of the rainbow."}]


@pytest.fixture(scope="module", params=["llamacpp", "transformers"])
def server(request: pytest.FixtureRequest, converted_home: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator:
    from tuneloop.serve.app import start_background_server
    from tuneloop.serve.engine import build_engine

    # Its own home (store), sharing the session's transformers conversion of the bundled model.
    home = tmp_path_factory.mktemp(f"logprobs-{request.param}")
    (home / "cache").symlink_to(converted_home / "cache", target_is_directory=True)
    previous = os.environ.get("TUNELOOP_HOME")
    os.environ["TUNELOOP_HOME"] = str(home)
    running = start_background_server(build_engine(backend=request.param, threads=1))
    yield running
    running.stop()
    if previous is None:
        os.environ.pop("TUNELOOP_HOME", None)
    else:
        os.environ["TUNELOOP_HOME"] = previous


@pytest.fixture
def client(server) -> openai.OpenAI:
    return openai.OpenAI(base_url=server.base_url, api_key="unused", max_retries=0, timeout=120)


def assert_well_formed(content: list, text: str, top: int, *, token_is_its_bytes: bool = True) -> None:
    """Every token: a log probability (<= 0), its bytes, ``top`` alternatives best first; together the
    tokens' bytes are the reply. ``token_is_its_bytes``: each token's text is its bytes decoded (vLLM names
    a token that ends inside a character otherwise)."""
    assert content, "no tokens"
    for item in content:
        assert item.logprob <= 0 and math.isfinite(item.logprob)
        if token_is_its_bytes:
            assert bytes(item.bytes).decode("utf-8", errors="replace") == item.token
        assert len(item.top_logprobs) == top
        alternatives = [alternative.logprob for alternative in item.top_logprobs]
        assert alternatives == sorted(alternatives, reverse=True) and all(value <= 0 for value in alternatives)
    assert b"".join(bytes(item.bytes) for item in content) == text.encode()


def test_greedy_logprobs_name_the_chosen_token_as_the_likeliest(client: openai.OpenAI) -> None:
    reply = client.chat.completions.create(
        model=BASE, messages=CHAT, max_tokens=8, temperature=0, logprobs=True, top_logprobs=5
    )
    choice = reply.choices[0]
    content = choice.logprobs.content
    assert_well_formed(content, choice.message.content, 5)
    assert "".join(item.token for item in content) == choice.message.content
    assert len(content) == reply.usage.completion_tokens
    for item in content:  # greedy, no grammar: the chosen token is the model's first choice
        assert item.token == item.top_logprobs[0].token
        assert item.logprob == pytest.approx(item.top_logprobs[0].logprob)
    # probabilities of the alternatives cannot add up to more than 1
    assert all(sum(math.exp(alt.logprob) for alt in item.top_logprobs) <= 1 + 1e-6 for item in content)


def test_logprobs_without_top_logprobs_and_not_asked_for(client: openai.OpenAI) -> None:
    reply = client.chat.completions.create(model=BASE, messages=CHAT, max_tokens=4, logprobs=True)
    assert_well_formed(reply.choices[0].logprobs.content, reply.choices[0].message.content, 0)
    plain = client.chat.completions.create(model=BASE, messages=CHAT, max_tokens=4)
    assert plain.choices[0].logprobs is None


def test_logprobs_under_a_grammar_are_the_models_own(client: openai.OpenAI) -> None:
    schema = {
        "type": "object",
        "properties": {"colour": {"type": "string", "enum": ["red", "green", "blue"]}},
        "required": ["colour"],
        "additionalProperties": False,
    }
    reply = client.chat.completions.create(
        model=BASE,
        messages=[{"role": "user", "content": "Pick a colour and answer in JSON."}],
        max_tokens=20,
        logprobs=True,
        top_logprobs=3,
        response_format={"type": "json_schema", "json_schema": {"name": "pick", "schema": schema}},
    )
    choice = reply.choices[0]
    assert reply.model_extra["tuneloop"]["schema_valid"] is True
    # The grammar picks among allowed tokens, so the chosen one need not be the model's favourite;
    # its log probability is still the model's, never above the best alternative's.
    assert_well_formed(choice.logprobs.content, choice.message.content, 3)
    for item in choice.logprobs.content:
        assert item.logprob <= item.top_logprobs[0].logprob + 1e-6


def test_logprobs_stay_with_their_text_when_a_stop_string_cuts_the_reply(server) -> None:
    backend = server.engine.backend
    whole = backend.generate(CHAT, GenerationParams(max_tokens=8, logprobs=True))
    stop = whole.text[len(whole.text) // 2 :][:3]
    cut = backend.generate(CHAT, GenerationParams(max_tokens=8, logprobs=True, stop=[stop]))
    assert cut.finish_reason == "stop" and len(cut.text) < len(whole.text)
    joined = b"".join(token.data for token in cut.logprobs)
    # Tokens of the stop string are dropped; one that straddles the cut keeps its whole text.
    assert joined.startswith(cut.text.encode()) and len(joined) < len(whole.text.encode())
    assert [token.data for token in cut.logprobs] == [token.data for token in whole.logprobs[: len(cut.logprobs)]]


@pytest.mark.parametrize(
    ("extra", "param"),
    [
        ({"top_logprobs": 3}, "top_logprobs"),
        ({"logprobs": False, "top_logprobs": 3}, "top_logprobs"),
        ({"logprobs": True, "top_logprobs": 21}, "top_logprobs"),
        ({"logprobs": True, "top_logprobs": -1}, "top_logprobs"),
        ({"logprobs": "maybe"}, "logprobs"),
        ({"logprobs": True, "top_logprobs": "many"}, "top_logprobs"),
    ],
)
def test_bad_logprobs_parameters_are_400_naming_them(server, extra: dict, param: str) -> None:
    body = {"model": BASE, "messages": CHAT, "max_tokens": 1, **extra}
    response = httpx.post(f"{server.base_url}/chat/completions", json=body, timeout=60)
    assert response.status_code == 400, response.text
    error = response.json()["error"]
    assert error["type"] == "invalid_request_error" and error["param"] == param, error


def test_a_streamed_reply_reassembles_with_its_logprobs(server, client: openai.OpenAI) -> None:
    from tuneloop.protocol import reassemble_sse

    body = {"model": BASE, "messages": CHAT, "max_tokens": 6, "logprobs": True, "top_logprobs": 1, "stream": True}
    raw = httpx.post(f"{server.base_url}/chat/completions", json=body, timeout=120).content
    completion, error = reassemble_sse(raw)
    assert error is None
    whole = client.chat.completions.create(model=BASE, messages=CHAT, max_tokens=6, logprobs=True, top_logprobs=1)
    folded = completion["choices"][0]["logprobs"]["content"]
    assert [item["token"] for item in folded] == [item.token for item in whole.choices[0].logprobs.content]
    assert completion["choices"][0]["message"]["content"] == whole.choices[0].message.content

"""Property-based requests over the server's own OpenAPI schema (schemathesis): no request, well-formed or
not, gets a 5xx; a client's mistake is a 4xx in OpenAI's error shape.

The app runs in-process (ASGI) over the real llama.cpp engine on the bundled base, so requests that pass
validation really generate. Bounded: a fixed number of examples and no per-example deadline (generation
time varies with the machine's load), so it finishes in well under a minute.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from typing import Any
from urllib.parse import quote

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

pytestmark = pytest.mark.slow

BASE = "smollm2-135m-instruct"
MAX_NEW_TOKENS = 3  # enough to run generation, validation and streaming; short enough to run many


@pytest.fixture(scope="module")
def app(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    from tuneloop.serve.app import create_app
    from tuneloop.serve.engine import build_engine

    previous = os.environ.get("TUNELOOP_HOME")
    os.environ["TUNELOOP_HOME"] = str(tmp_path_factory.mktemp("schemathesis"))
    engine = build_engine(backend="llamacpp", threads=1, n_ctx=256)
    yield create_app(engine, max_body_bytes=64 * 1024)
    engine.close()
    if previous is None:
        os.environ.pop("TUNELOOP_HOME", None)
    else:
        os.environ["TUNELOOP_HOME"] = previous


@pytest.fixture(scope="module")
def schema(app: Any) -> Any:
    import schemathesis

    return schemathesis.openapi.from_asgi("/openapi.json", app)


def assert_no_server_error(case: Any) -> int:
    response = case.call()
    assert response.status_code < 500, f"{case.method} {case.formatted_path} {case.body!r} -> {response.text}"
    if response.status_code >= 400:
        error = json.loads(response.text)["error"]  # OpenAI's shape, whatever went wrong
        assert isinstance(error["message"], str) and error["type"], error
    return response.status_code


def test_the_schema_describes_every_endpoint(schema: Any) -> None:
    paths = set(schema.raw_schema["paths"])
    assert {"/v1/chat/completions", "/v1/models", "/v1/models/{model_id}", "/health", "/metrics"} <= paths


def test_schema_conforming_requests_never_get_a_5xx(schema: Any) -> None:
    # derandomize: a fixed example sequence, so whether generation is reached does not vary between runs
    @settings(max_examples=60, deadline=None, suppress_health_check=list(HealthCheck), database=None, derandomize=True)
    @given(case=schema.as_strategy())
    def run(case: Any) -> None:
        assert_no_server_error(case)

    run()


def test_chat_requests_to_the_served_model_never_get_a_5xx(schema: Any) -> None:
    """Random bodies name an unknown model, unknown roles and out-of-range parameters almost always; these
    name the served base, (mostly) known roles, and leave out some parameters, so that parameter
    validation, generation, structured output, logprobs and streaming all run."""

    def served(case: Any, roles: list[str], texts: list[str | None], dropped: set[str]) -> Any:
        if not isinstance(case.body, dict):
            return case
        for name in dropped:
            case.body.pop(name, None)
        case.body["model"] = BASE
        for name in ("max_tokens", "max_completion_tokens"):
            value = case.body.get(name)
            if isinstance(value, int) and not isinstance(value, bool) and value > MAX_NEW_TOKENS:
                case.body[name] = MAX_NEW_TOKENS
        if case.body.get("max_tokens") is None and case.body.get("max_completion_tokens") is None:
            case.body["max_tokens"] = MAX_NEW_TOKENS
        messages = case.body.get("messages")
        if isinstance(messages, list):
            for message, role, text in zip(messages, roles, texts, strict=False):
                if isinstance(message, dict):
                    message["role"] = role
                    if text is not None and not isinstance(message.get("content"), str):
                        message["content"] = text
        return case

    operation = schema["/v1/chat/completions"]["POST"]
    roles = st.lists(st.sampled_from(["system", "developer", "user", "assistant", "tool"]), min_size=4, max_size=4)
    optional = sorted(
        set(schema.raw_schema["components"]["schemas"]["ChatCompletionRequest"]["properties"]) - {"model", "messages"}
    )
    dropped = st.sets(st.sampled_from(optional))
    texts = st.lists(st.one_of(st.none(), st.text(max_size=40)), min_size=4, max_size=4)
    statuses: list[int] = []

    # derandomize: a fixed example sequence, so whether generation is reached does not vary between runs
    @settings(max_examples=60, deadline=None, suppress_health_check=list(HealthCheck), database=None, derandomize=True)
    @given(case=st.builds(served, operation.as_strategy(), roles, texts, dropped))
    def run(case: Any) -> None:
        statuses.append(assert_no_server_error(case))

    run()
    assert 200 in statuses, statuses  # generation was reached, not only validation


def test_malformed_requests_are_4xx_in_openai_shape(schema: Any) -> None:
    from schemathesis import GenerationMode

    @settings(max_examples=40, deadline=None, suppress_health_check=list(HealthCheck), database=None)
    @given(case=schema["/v1/chat/completions"]["POST"].as_strategy(generation_mode=GenerationMode.NEGATIVE))
    def run(case: Any) -> None:
        assert_no_server_error(case)

    run()


@given(model_id=st.text(min_size=1, max_size=40))
@settings(max_examples=40, deadline=None, suppress_health_check=list(HealthCheck), database=None)
def test_any_model_id_is_found_or_404(app: Any, model_id: str) -> None:
    from starlette.testclient import TestClient

    with TestClient(app) as client:
        response = client.get("/v1/models/" + quote(model_id, safe="@:"))
    assert response.status_code in (200, 404), response.text


@pytest.mark.parametrize(
    ("body", "status", "param"),
    [
        # each of these was a 500 (or crashed the process) before it was found by fuzzing
        (
            b'{"model": "%s", "messages": [{"role": "user", "content": "a\\ud800b"}]}' % BASE.encode(),
            400,
            "messages[0].content",
        ),
        (json.dumps({"model": "x" * 5000, "messages": [{"role": "user", "content": "hi"}]}).encode(), 404, "model"),
        (
            json.dumps({"model": "~nobody/model", "messages": [{"role": "user", "content": "hi"}]}).encode(),
            404,
            "model",
        ),
        (
            json.dumps(
                {
                    "model": BASE,
                    "messages": [{"role": "user", "content": "hi"}],
                    "response_format": {"type": "json_schema", "json_schema": {"name": "x", "schema": {"enum": []}}},
                }
            ).encode(),
            400,
            "response_format.json_schema.schema",
        ),
    ],
    ids=[
        "lone-surrogate",
        "model-name-too-long-for-a-path",
        "model-name-with-unknown-home",
        "schema-accepting-nothing",
    ],
)
def test_requests_that_once_broke_the_server_are_client_errors(app: Any, body: bytes, status: int, param: str) -> None:
    from starlette.testclient import TestClient

    with TestClient(app) as client:
        response = client.post("/v1/chat/completions", content=body, headers={"content-type": "application/json"})
    assert response.status_code == status, response.text
    assert response.json()["error"]["param"] == param

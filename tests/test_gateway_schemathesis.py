"""Property-based requests over the gateway's own OpenAPI document (schemathesis), sent over real HTTP to a
running gateway in front of the fake upstream: no request, well-formed or not, gets a 5xx; a client's mistake
is a 4xx in OpenAI's error shape. Bounded: a fixed number of examples per test.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from test_capture_support import gateway_config
from tuneloop.capture.server import RunningGateway, running_gateway
from tuneloop.testing.fake_upstream import FakeUpstream

SETTINGS = settings(
    max_examples=40, deadline=None, suppress_health_check=list(HealthCheck), database=None, derandomize=True
)


@pytest.fixture(scope="module")
def gateway(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningGateway]:
    home = tmp_path_factory.mktemp("gateway_schemathesis")
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("TUNELOOP_HOME", str(home))
        patch.delenv("TUNELOOP_DATABASE_URL", raising=False)
        routes = [{"match": "routed", "upstream": "fake", "model": "fake-small", "retries": 0}]
        with FakeUpstream().running() as fake_url, running_gateway(gateway_config(home, fake_url, routes=routes)) as gw:
            yield gw


@pytest.fixture(scope="module")
def schema(gateway: RunningGateway) -> Any:
    import schemathesis

    return schemathesis.openapi.from_url(gateway.base_url.removesuffix("/v1") + "/openapi.json")


def assert_no_server_error(case: Any) -> int:
    response = case.call(timeout=10)
    assert response.status_code < 500, f"{case.method} {case.formatted_path} {case.body!r} -> {response.text}"
    if response.status_code >= 400:
        error = json.loads(response.text)["error"]  # OpenAI's shape, whatever went wrong
        assert isinstance(error["message"], str) and error["type"], error
    return response.status_code


def test_the_document_describes_every_endpoint(schema: Any) -> None:
    paths = set(schema.raw_schema["paths"])
    assert {"/v1/chat/completions", "/v1/models", "/v1/tuneloop/logs", "/metrics", "/healthz"} <= paths
    chat = schema.raw_schema["paths"]["/v1/chat/completions"]["post"]
    assert chat["requestBody"]["content"]["application/json"]["schema"]["$ref"].endswith("/ChatCompletionRequest")
    assert "ChatCompletionRequest" in schema.raw_schema["components"]["schemas"]


def test_schema_conforming_requests_never_get_a_5xx(schema: Any) -> None:
    @SETTINGS
    @given(case=schema.as_strategy())
    def run(case: Any) -> None:
        assert_no_server_error(case)

    run()


def test_chat_requests_to_a_routed_model_never_get_a_5xx(schema: Any) -> None:
    """Random bodies almost always name an unknown model (404); these name routed ones, so that the body
    goes upstream and back (streamed or not), and the answer is logged."""

    def routed(case: Any, model: str, stream: bool | None) -> Any:
        if isinstance(case.body, dict):
            case.body["model"] = model
            if stream is not None:
                case.body["stream"] = stream
        return case

    operation = schema["/v1/chat/completions"]["POST"]
    models = st.sampled_from(["routed", "fake/fake-small"])
    statuses: list[int] = []

    @SETTINGS
    @given(case=st.builds(routed, operation.as_strategy(), models, st.one_of(st.none(), st.booleans())))
    def run(case: Any) -> None:
        statuses.append(assert_no_server_error(case))

    run()
    assert 200 in statuses, statuses  # the upstream was reached, not only validation


def test_malformed_requests_are_4xx_in_openai_shape(schema: Any) -> None:
    from schemathesis import GenerationMode

    for path in ("/v1/chat/completions", "/v1/tuneloop/logs"):

        @settings(max_examples=30, deadline=None, suppress_health_check=list(HealthCheck), database=None)
        @given(case=schema[path]["POST"].as_strategy(generation_mode=GenerationMode.NEGATIVE))
        def run(case: Any) -> None:
            assert_no_server_error(case)

        run()


def test_the_document_is_served_without_a_key(tmp_path: Path, fake_url: str) -> None:
    import httpx

    with running_gateway(gateway_config(tmp_path, fake_url, auth="required")) as gateway:
        document = httpx.get(gateway.base_url.removesuffix("/v1") + "/openapi.json", timeout=10)
        chat = httpx.post(gateway.base_url + "/chat/completions", json={}, timeout=10)
    assert document.status_code == 200 and document.json()["info"]["title"] == "tuneloop gateway"
    assert chat.status_code == 401


pytest_plugins = ["test_capture_support"]

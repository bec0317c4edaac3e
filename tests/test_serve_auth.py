"""`tuneloop serve` checks tuneloop keys like the gateway: `auth: auto | required | disabled`, `/health` open,
`/metrics` open unless protected, the key checked from the headers before the body is read, a key's rate
limit applied. Real servers on loopback over one real llama.cpp engine, the official openai client."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import openai
import pytest

from tuneloop.store.keys import create_key, revoke_key

MESSAGES = [{"role": "user", "content": "Say hi."}]
REFRESH_S = 0.2
CLI = [sys.executable, "-c", "from tuneloop.cli.main import main; main()"]


@pytest.fixture(scope="module")
def engine(tmp_path_factory: pytest.TempPathFactory) -> Iterator:
    from tuneloop.serve.engine import build_engine

    previous = os.environ.get("TUNELOOP_HOME")
    os.environ["TUNELOOP_HOME"] = str(tmp_path_factory.mktemp("serve-auth-engine"))
    try:
        engine = build_engine(backend="llamacpp", threads=1, n_ctx=256)
    finally:
        if previous is not None:
            os.environ["TUNELOOP_HOME"] = previous
    yield engine
    engine.close()


@pytest.fixture
def serving(engine):
    """Start servers over the shared engine (each test's own TUNELOOP_HOME holds its keys); stop them after."""
    from tuneloop.serve.app import start_background_server
    from tuneloop.serve.auth import ServeKeys

    started = []

    def start(auth: str, **options):
        server = start_background_server(engine, auth=ServeKeys(auth, refresh_s=REFRESH_S), **options)
        started.append(server)
        return server

    yield start
    for server in started:
        server.stop(close_engine=False)


def client(server, api_key: str) -> openai.OpenAI:
    return openai.OpenAI(base_url=server.base_url, api_key=api_key, max_retries=0, timeout=60)


def ask(server, api_key: str) -> str:
    reply = client(server, api_key).chat.completions.create(
        model="smollm2-135m-instruct", messages=MESSAGES, max_tokens=2, temperature=0
    )
    return reply.model


def refused(server, api_key: str) -> openai.AuthenticationError:
    with pytest.raises(openai.AuthenticationError) as caught:
        client(server, api_key).models.list()
    error = caught.value.body
    assert caught.value.status_code == 401 and error["code"] == "invalid_api_key" and error["type"], error
    return caught.value


def raw_request(server, head: bytes, body: bytes = b"") -> str:
    """Send ``head`` (request line and headers, as bytes: any a client might send) and ``body``; the start
    of the answer, read within 10 s."""
    host, port = server.base_url.removeprefix("http://").removesuffix("/v1").split(":")
    with socket.create_connection((host, int(port)), timeout=10) as connection:
        connection.sendall(head + f"\r\nHost: {host}\r\n\r\n".encode() + body)
        return connection.recv(4096).decode(errors="replace")


def wait_until_refused(server, api_key: str, timeout_s: float = 10.0) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            client(server, api_key).models.list()
        except openai.AuthenticationError:
            return
        time.sleep(REFRESH_S / 2)
    pytest.fail(f"{api_key!r} still accepted {timeout_s} s later")


def test_auto_is_open_until_a_key_exists_and_stays_closed_after_the_last_is_revoked(serving) -> None:
    server = serving("auto")
    assert ask(server, "anything") == "smollm2-135m-instruct"  # no key was ever created: open
    key = create_key("first")
    assert ask(server, key.key) == "smollm2-135m-instruct"  # a new key works at once, and closes the server
    refused(server, "anything")
    assert httpx.get(server.base_url + "/models").status_code == 401  # no Authorization header at all
    revoke_key("first")
    wait_until_refused(server, key.key)
    refused(server, "anything")  # revoking the last key does not open it again


def test_auto_closes_within_the_refresh_interval_when_a_key_is_created_elsewhere(serving) -> None:
    server = serving("auto")
    client(server, "anything").models.list()
    create_key("made-by-someone-else")
    wait_until_refused(server, "anything", timeout_s=5)


def test_required_refuses_missing_wrong_and_revoked_keys(serving) -> None:
    server = serving("required")
    refused(server, "anything")  # no key exists yet: nobody gets in
    missing = httpx.post(server.base_url + "/chat/completions", json={"model": "x", "messages": MESSAGES})
    assert missing.status_code == 401
    assert missing.json()["error"]["code"] == "invalid_api_key" and "tuneloop keys create" in missing.text
    key = create_key("app")
    assert ask(server, key.key) == "smollm2-135m-instruct"
    for wrong in ("tl-" + "x" * 32, key.key + "x", key.key[:-1], key.key.upper(), "Bearer"):
        refused(server, wrong)
    for header in (b"Bearer \xe9\xff" + key.key.encode(), b"Bearer " + b"\x00" * 10, b"Bearer " + b"a" * 8000):
        answer = raw_request(server, b"GET /v1/models HTTP/1.1\r\nAuthorization: " + header)
        assert answer.split(" ")[1] in ("400", "401"), answer  # uvicorn itself refuses a NUL in a header
    for header in (f"Basic {key.key}", key.key, f"Bearer{key.key}"):  # not a bearer token
        answer = httpx.get(server.base_url + "/models", headers={"authorization": header})
        assert answer.status_code == 401 and answer.json()["error"]["code"] == "invalid_api_key", header
    stream = client(server, key.key).chat.completions.create(
        model="smollm2-135m-instruct", messages=MESSAGES, max_tokens=2, temperature=0, stream=True
    )
    assert {chunk.model for chunk in stream} == {"smollm2-135m-instruct"}
    revoke_key("app")
    wait_until_refused(server, key.key)


def test_disabled_needs_no_key_even_when_keys_exist(serving) -> None:
    create_key("someone")
    server = serving("disabled")
    assert ask(server, "anything") == "smollm2-135m-instruct"


def test_health_is_open_and_metrics_open_unless_protected(serving) -> None:
    key = create_key("scraper")
    server = serving("required")
    root = server.base_url.removesuffix("/v1")
    assert httpx.get(root + "/health").status_code == 200
    assert httpx.get(root + "/metrics").status_code == 200
    refused(server, "wrong")
    assert 'tuneloop_serve_errors_total{code="invalid_api_key",model="-"}' in httpx.get(root + "/metrics").text

    protected = serving("required", protect_metrics=True)
    root = protected.base_url.removesuffix("/v1")
    assert httpx.get(root + "/health").status_code == 200
    closed = httpx.get(root + "/metrics")
    assert closed.status_code == 401 and closed.json()["error"]["code"] == "invalid_api_key"
    assert httpx.get(root + "/metrics", headers={"authorization": f"Bearer {key.key}"}).status_code == 200
    for path in ("/v1/models/smollm2-135m-instruct", "/v1/nowhere", "/health/../v1/models", "/HEALTH", "//health"):
        assert httpx.get(root + path).status_code == 401, path


def test_the_key_is_checked_before_the_body_is_read(serving) -> None:
    """A caller without a key who announces a large body and sends a few bytes of it gets 401 at once: the
    server does not wait for (or read) the body."""
    server = serving("required")
    head = b"POST /v1/chat/completions HTTP/1.1\r\nContent-Type: application/json\r\nContent-Length: 500000"
    answer = raw_request(server, head, body=b'{"model": "')
    assert answer.startswith("HTTP/1.1 401"), answer
    assert "invalid_api_key" in answer


def test_a_keys_rate_limit_applies_to_chat_completions(serving) -> None:
    key = create_key("slow", rate_limit_per_min=1)
    server = serving("required")
    with pytest.raises(openai.BadRequestError):  # the one request a minute: spent, even on a bad parameter
        client(server, key.key).chat.completions.create(model="smollm2-135m-instruct", messages=MESSAGES, top_p=7)
    with pytest.raises(openai.RateLimitError) as limited:
        client(server, key.key).chat.completions.create(model="smollm2-135m-instruct", messages=MESSAGES)
    assert limited.value.body["code"] == "rate_limit_exceeded"
    assert int(limited.value.response.headers["retry-after"]) >= 1
    client(server, key.key).models.list()  # listing models does not spend it


def test_the_cli_takes_the_auth_mode(tmp_path: Path, tuneloop_home: Path) -> None:
    """`tuneloop serve --auth required` as a process: /health answers, a call without a key gets 401."""
    create_key("cli")
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    process = subprocess.Popen(
        [*CLI, "serve", "--port", str(port), "--threads", "1", "--n-ctx", "256", "--auth", "required"],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        env={**os.environ, "TUNELOOP_HOME": str(tuneloop_home)},
    )
    root = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and process.poll() is None:
            try:
                if httpx.get(root + "/health", timeout=2).status_code == 200:
                    break
            except httpx.TransportError:
                time.sleep(0.2)
        else:
            pytest.fail(f"tuneloop serve did not come up: {process.communicate(timeout=10)[0]!r}")
        answer = httpx.get(root + "/v1/models")
        assert answer.status_code == 401 and answer.json()["error"]["code"] == "invalid_api_key"
    finally:
        process.terminate()
        output = process.communicate(timeout=30)[0].decode()
    assert "a tuneloop key is required" in output


def test_the_cli_refuses_an_unknown_auth_mode() -> None:
    from typer.testing import CliRunner

    from tuneloop.cli.main import app

    result = CliRunner().invoke(app, ["serve", "--auth", "open"])
    assert result.exit_code == 2
    assert "--auth" in result.output and "required" in result.output

"""Redaction: linear time on any text, the same matches as before on ordinary text, hostile custom patterns refused
at config load, and nothing unredacted reaching the store or the durable journal (tags, metadata, every try's
error, uploads, the journal) through the real gateway."""

from __future__ import annotations

import json
import random
import re
import threading
import time
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import httpx
import openai
import pytest

from test_capture_support import GatewayProcess, gateway_config, rows, wait_for_rows, write_config
from tuneloop.capture import sdk
from tuneloop.capture.config import RedactConfig, load_gateway_config
from tuneloop.capture.redaction import (
    CARD_CANDIDATE,
    CARD_REFERENCE,
    EMAIL_REFERENCE,
    MAX_PATTERN_STEPS,
    PatternTooCostly,
    Redactor,
    check_pattern,
    luhn_valid,
    redact_cards,
    redact_emails,
)
from tuneloop.capture.server import running_gateway
from tuneloop.errors import TuneloopError
from tuneloop.testing.fake_upstream import FakeUpstream

pytest_plugins = ["test_capture_support"]  # the fake upstream and gateway fixtures

EMAIL, CARD = "jane.doe@example.com", "4111 1111 1111 1111"
BOTH = {"emails": True, "card_numbers": True}


def cpu_seconds(work: Callable[[], object]) -> float:
    started = time.process_time()
    work()
    return time.process_time() - started


def growth(work: Callable[[str], object], make: Callable[[int], str], small: int = 1 << 17) -> float:
    """CPU time on 4x the text over CPU time on the text (best of 3 each): ~4 if linear, ~16 if quadratic."""
    small_text, large_text = make(small), make(4 * small)
    small_s = min(cpu_seconds(lambda: work(small_text)) for _ in range(3))
    large_s = min(cpu_seconds(lambda: work(large_text)) for _ in range(3))
    return large_s / max(small_s, 1e-4)


# --- time: linear whatever the text ---------------------------------------------------------------------------

HOSTILE_TEXTS: dict[str, Callable[[int], str]] = {
    "letters without @": lambda n: "a" * n,
    "address characters without @": lambda n: ("ab.c_d%e+f-1" * (n // 12 + 1))[:n],
    "an @ at the end": lambda n: "a" * (n - 1) + "@",
    "a domain that never ends in a TLD": lambda n: "a@" + "b." * (n // 2 - 1),
    "many @s": lambda n: "@" * n,
    "many local parts": lambda n: "a@" * (n // 2),
    "many near-addresses": lambda n: ("x@y.z " * (n // 6 + 1))[:n],
    "many addresses": lambda n: ("x@a.bc " * (n // 7 + 1))[:n],
    "a long digit run": lambda n: "1" * n,
    "digits and spaces": lambda n: "1 " * (n // 2),
    "digits and dashes": lambda n: "1-" * (n // 2),
    "mixed": lambda n: ("4111 1111 1111 1111 a@b.co 12-34 ab@ " * (n // 36 + 1))[:n],
}


@pytest.mark.parametrize("name", list(HOSTILE_TEXTS))
def test_redaction_time_is_linear_on_hostile_text(name: str) -> None:
    # The old email pattern took quadratic time on the first four (1 MB of letters: minutes, not 4x).
    redactor = Redactor(RedactConfig(**BOTH))
    ratio = growth(redactor.text, HOSTILE_TEXTS[name])
    assert ratio < 8, f"{name}: 4x the text took {ratio:.1f}x the time"


def test_two_megabytes_without_at_are_redacted_in_well_under_a_second() -> None:
    text = "a" * (2 << 20)
    # Measured: ~1 ms. The old pattern: over a minute.
    assert cpu_seconds(lambda: Redactor(RedactConfig(**BOTH)).text(text)) < 1.0


def test_custom_patterns_that_load_are_linear_too() -> None:
    # At the step limit, on the text that makes it work hardest.
    patterns = [{"name": "near_limit", "regex": r"[a-z]{1,70}[a-z]{0,1}x"}]
    redactor = Redactor(RedactConfig(patterns=patterns))
    assert check_pattern(patterns[0]["regex"]) <= MAX_PATTERN_STEPS
    assert growth(redactor.text, lambda n: "a" * n, small=1 << 15) < 8


# --- the same matches as before on ordinary text ------------------------------------------------------------


def test_emails_match_exactly_what_the_reference_pattern_matched() -> None:
    rng = random.Random(16)
    alphabet = "ab1Z.@-_%+ x\n"
    for _ in range(20_000):
        text = "".join(rng.choice(alphabet) for _ in range(rng.randint(0, 40)))
        assert redact_emails(text) == EMAIL_REFERENCE.sub("[EMAIL]", text), text
    # Glued addresses: the reference pattern starts the second one where the first ended, inside a run.
    assert redact_emails("a@b.com9x@y.org7z@w.net") == "[EMAIL][EMAIL][EMAIL]"


def test_card_numbers_match_exactly_what_the_reference_pattern_matched() -> None:
    rng = random.Random(16)
    for _ in range(20_000):
        text = "".join(rng.choice("14 -a") for _ in range(rng.randint(0, 48)))
        assert [m.span() for m in CARD_CANDIDATE.finditer(text)] == [m.span() for m in CARD_REFERENCE.finditer(text)]


def test_ordinary_text_is_redacted_as_before() -> None:
    redactor = Redactor(RedactConfig(**BOTH))
    value = {"content": f"mail {EMAIL}, card {CARD}, amount 1234567812345678", "n": 5, "list": [EMAIL, 3]}
    assert redactor.json(value) == {"content": "mail [EMAIL], card [CARD], amount 1234567812345678", "n": 5,
                                    "list": ["[EMAIL]", 3]}  # fmt: skip
    assert redact_cards("4111-1111-1111-1111 and 4111111111111112") == "[CARD] and 4111111111111112"
    assert luhn_valid("4111111111111111") and not luhn_valid("4111111111111112")


def test_json_nested_as_deep_as_the_parser_allows() -> None:
    value: object = EMAIL
    for _ in range(1020):
        value = {"a": [value]}
    redacted = Redactor(RedactConfig(emails=True)).json(value)
    for _ in range(1020):
        assert isinstance(redacted, dict) and list(redacted) == ["a"]
        [redacted] = redacted["a"]
    assert redacted == "[EMAIL]"


# --- custom patterns: refused when their time has no bound ---------------------------------------------------


@pytest.mark.parametrize(
    ("regex", "why"),
    [
        (r"\w+@", "without an upper bound"),
        (r"[a-z]*x", "without an upper bound"),
        (r"\d{2,}", "without an upper bound"),
        (r"\w*+x", "without an upper bound"),
        (r"(a+)+$", "without an upper bound"),
        (r"(\w{1,10}){1,10}", "more than one way"),
        (r"(?:a|ab){1,9}c", "more than one way"),
        (r"(?:-?\d){1,10}", "more than one way"),
        (r"(a)\1", "backreference"),
        (r"\w{0,20}\w{0,20}\w{0,20}!", "backtracking steps"),
        (r"[a-z]{1,5000}x", "backtracking steps"),
    ],
)
def test_a_pattern_whose_time_has_no_bound_is_refused_at_config_load(regex: str, why: str) -> None:
    sections = {"redact": {"patterns": [{"name": "mine", "regex": regex}]}}
    with pytest.raises(TuneloopError) as refused:
        load_gateway_config(sections=sections)
    assert "redact.patterns[0]" in str(refused.value.where)
    assert f"pattern 'mine' ({regex}) is refused" in str(refused.value) and why in str(refused.value)
    with pytest.raises(PatternTooCostly):
        check_pattern(regex)


@pytest.mark.parametrize(
    "regex",
    [
        r"\b\d{3}-\d{2}-\d{4}\b",
        r"\bsk-[A-Za-z0-9]{32,64}\b",
        r"\b[A-Z]{2}\d{2}[A-Z0-9]{11,30}\b",
        r"AKIA[0-9A-Z]{16}",
        r"\b\d{1,3}\.\d{1,3}\.\d{1,3}\.\d{1,3}\b",
        r"(?i)\bpassword[:=] ?\S{1,64}",
    ],
)
def test_realistic_patterns_load(regex: str) -> None:
    config = load_gateway_config(sections={"redact": {"patterns": [{"name": "p", "regex": regex}]}})
    assert config.redact.patterns[0].regex == regex


# --- everything stored goes through redaction (the real gateway) ----------------------------------------------


class EchoingUpstream:
    """An upstream that refuses every call with a 400 whose message quotes the request's first message, as
    providers' validation errors do."""

    def __init__(self) -> None:
        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = json.loads(self.rfile.read(int(self.headers["content-length"])))
                message = f"invalid content: {body['messages'][0]['content']!r}"
                reply = json.dumps({"error": {"message": message, "type": "invalid_request_error"}}).encode()
                self.send_response(400)
                self.send_header("content-type", "application/json")
                self.send_header("content-length", str(len(reply)))
                self.end_headers()
                self.wfile.write(reply)

            def log_message(self, *args: object) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/v1"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def __enter__(self) -> EchoingUpstream:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.shutdown()
        self.server.server_close()


def assert_redacted(value: object) -> None:
    text = json.dumps(value)
    assert EMAIL not in text and CARD not in text and "4111111111111111" not in text, text


def test_tags_metadata_and_model_names_are_redacted(tmp_path: Path, fake_url: str, fake: FakeUpstream) -> None:
    routes = [{"match": "any/*", "upstream": "fake"}]
    with running_gateway(gateway_config(tmp_path, fake_url, redact=BOTH, routes=routes)) as running:
        client = openai.OpenAI(base_url=running.base_url, api_key="unused", max_retries=0)
        client.chat.completions.create(
            model=f"any/{EMAIL}",
            messages=[{"role": "user", "content": "hello"}],
            metadata={"task": EMAIL, "customer": f"card {CARD}"},
            extra_headers={"x-tuneloop-tags": f"contact={EMAIL}, 4111111111111111"},
        )
        assert wait_for_rows(1) == 1
    [row] = rows()
    assert row.metadata_ == {"task": "[EMAIL]", "customer": "card [CARD]", "contact": "[EMAIL]"}
    assert set(row.tags) == {"task=[EMAIL]", "customer=card [CARD]", "contact=[EMAIL]", "[CARD]"}
    assert row.task == "[EMAIL]"
    assert row.model_requested == "any/[EMAIL]" and row.model_resolved == "fake/[EMAIL]"
    assert_redacted([row.request, row.response, row.attempts])


def test_every_tries_error_is_redacted(tmp_path: Path) -> None:
    with EchoingUpstream() as upstream:
        config = gateway_config(tmp_path, upstream.url, redact=BOTH)
        with running_gateway(config) as running:
            client = openai.OpenAI(base_url=running.base_url, api_key="unused", max_retries=0)
            with pytest.raises(openai.BadRequestError) as refused:
                client.chat.completions.create(model="fake/m", messages=[{"role": "user", "content": EMAIL}])
            assert EMAIL in str(refused.value)  # the client gets the upstream's answer as it was
            assert wait_for_rows(1) == 1
    [row] = rows()
    assert row.attempts and row.attempts[0]["error"] == "invalid content: '[EMAIL]'"
    assert "[EMAIL]" in row.error
    assert_redacted([row.error, row.attempts, row.request, row.response])


def test_uploads_are_redacted_even_when_they_claim_to_be(tmp_path: Path, fake_url: str) -> None:
    record = {
        "model_requested": "m",
        "request": {"messages": [{"role": "user", "content": EMAIL}]},
        "status": "error",
        "created_at": "2025-01-31T12:00:00+00:00",
        "error": f"failed for {EMAIL}",
        "tags": [f"who={EMAIL}"],
        "metadata": {"who": EMAIL},
        "attempts": [{"upstream": "u", "model": "m", "outcome": "http_400", "error": EMAIL}],
        "redacted": True,
    }
    with running_gateway(gateway_config(tmp_path, fake_url, redact=BOTH, auth="disabled")) as running:
        reply = httpx.post(running.base_url + "/tuneloop/logs", json={"records": [record]})
        assert reply.status_code == 200, reply.text
        assert wait_for_rows(1) == 1
    [row] = rows()
    assert row.error == "failed for [EMAIL]" and row.tags == ["who=[EMAIL]"] and row.metadata_ == {"who": "[EMAIL]"}
    assert_redacted([row.request, row.attempts])


@pytest.fixture
def fresh_sdk_writers() -> Iterator[None]:
    sdk.close_writers(timeout=1)
    yield
    sdk.close_writers(timeout=1)


def test_the_sdk_redacts_before_uploading(tmp_path: Path, fake_url: str, fresh_sdk_writers: None) -> None:
    import tuneloop

    with running_gateway(gateway_config(tmp_path, fake_url, auth="disabled")) as gateway:  # no redaction there
        client = tuneloop.OpenAI(
            base_url=fake_url,
            api_key="sk-provider",
            max_retries=0,
            tuneloop_log_to=gateway.base_url,
            tuneloop_redact=RedactConfig(**BOTH),
        )
        client.chat.completions.create(model="fake-small", messages=[{"role": "user", "content": EMAIL}])
        for writer in list(sdk._writers.values()):
            assert writer.flush(10)
        assert wait_for_rows(1) == 1
    [row] = rows()
    assert row.request["messages"][0]["content"] == "[EMAIL]"


# A replacement the pattern matches again: redacting twice would show (x1y → x1yy).
TWICE_SHOWS = {**BOTH, "patterns": [{"name": "code", "regex": r"x\d{1,3}", "replace": "x1y"}]}


def journal_text(directory: Path) -> str:
    return "".join(path.read_text() for path in sorted(directory.glob("journal-*.jsonl")))


def test_the_durable_journal_holds_only_redacted_calls(tmp_path: Path, fake_url: str, fake: FakeUpstream) -> None:
    journal = tmp_path / "journal"
    logging = {"durable": True, "journal_dir": str(journal), "batch_size": 100_000, "flush_ms": 60_000}
    fake.answer = f"Reach {EMAIL}, card {CARD}, code x42"
    config = gateway_config(tmp_path, fake_url, redact=TWICE_SHOWS, logging=logging)
    with running_gateway(config) as running:
        client = openai.OpenAI(base_url=running.base_url, api_key="unused", max_retries=0)
        content = f"I am {EMAIL}, card {CARD}, code x42"
        client.chat.completions.create(model="fake/m", messages=[{"role": "user", "content": content}],
                                       metadata={"who": EMAIL})  # fmt: skip
        stream = client.chat.completions.create(
            model="fake/m", messages=[{"role": "user", "content": content}], stream=True
        )
        assert EMAIL in "".join(chunk.choices[0].delta.content or "" for chunk in stream if chunk.choices)
        on_disk = journal_text(journal)  # before any commit: only the journal holds the calls
        assert on_disk.count("\n") == 2
        assert EMAIL not in on_disk and CARD not in on_disk and "x42" not in on_disk
        assert on_disk.count("[EMAIL]") >= 4 and '"redacted":true' in on_disk
    logged = rows()  # written at shutdown from the queue: redacted once, not again
    assert len(logged) == 2
    for row in logged:
        assert row.request["messages"][0]["content"] == "I am [EMAIL], card [CARD], code x1y"
        assert row.response["choices"][0]["message"]["content"] == "Reach [EMAIL], card [CARD], code x1y"


def test_a_replayed_journal_is_stored_redacted_once(tmp_path: Path, fake_url: str, tuneloop_home: Path) -> None:
    journal = tmp_path / "journal"
    logging = {"journal_dir": str(journal), "batch_size": 100_000, "flush_ms": 60_000}
    config = write_config(tmp_path / "gateway.yaml", fake_url, redact=TWICE_SHOWS, logging=logging)
    gateway = GatewayProcess(config, tuneloop_home, "--durable")
    try:
        client = openai.OpenAI(base_url=gateway.base_url, api_key="unused", max_retries=0)
        client.chat.completions.create(model="fake/m", messages=[{"role": "user", "content": f"{EMAIL} x42"}])
        gateway.kill()  # before any commit
    finally:
        gateway.close()
    assert EMAIL not in journal_text(journal) and "[EMAIL] x1y" in journal_text(journal)
    restarted = GatewayProcess(config, tuneloop_home, "--durable")
    try:
        assert restarted.terminate()
    finally:
        restarted.close()
    [row] = rows()
    assert row.request["messages"][0]["content"] == "[EMAIL] x1y"


def test_reference_pattern_is_the_documented_one() -> None:
    assert EMAIL_REFERENCE.pattern == r"[A-Za-z0-9._%+-]+@[A-Za-z0-9.-]+\.[A-Za-z]{2,}"
    assert re.fullmatch(EMAIL_REFERENCE, EMAIL)

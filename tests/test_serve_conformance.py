"""One behaviour on every backend: the same suite against llama.cpp, transformers and vLLM.

Each backend serves the bundled base and three random LoRA versions through the live HTTP server (started
once per backend, ``--max-adapters 2``), called with the official ``openai`` client: adapters loaded on
demand and evicted, answers under the task schema and a request's schema, streaming with usage,
logprobs/top_logprobs, stop strings, seeds, alias moves seen live, tampered versions refused.

vLLM runs from ``.venv-vllm`` (``make vllm``); without it the vllm leg is skipped, except under CI, which
installs it (there a missing vLLM fails).
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest

from conftest import running_in_ci
from test_serve import TASK, register_random_version, tamper, task_messages
from test_serve_logprobs import assert_well_formed
from tuneloop.registry.versions import ModelVersionInfo

pytestmark = pytest.mark.slow

BASE = "smollm2-135m-instruct"
CHAT = [{"role": "user", "content": "Name three colours of the rainbow."}]
COUNT = [{"role": "user", "content": "Count from 1 to 100, separated by commas."}]
BACKENDS = ("llamacpp", "transformers", "vllm")
PICK = {
    "type": "object",
    "properties": {"colour": {"type": "string", "enum": ["red", "green", "blue"]}, "bright": {"type": "boolean"}},
    "required": ["colour", "bright"],
    "additionalProperties": False,
}
TAMPER_SEEDS = {"llamacpp": 11, "transformers": 12, "vllm": 13}  # a fresh version per backend to tamper with


@contextmanager
def home_set_to(home: Path) -> Iterator[None]:
    previous = os.environ.get("TUNELOOP_HOME")
    os.environ["TUNELOOP_HOME"] = str(home)
    try:
        yield
    finally:
        if previous is None:
            os.environ.pop("TUNELOOP_HOME", None)
        else:
            os.environ["TUNELOOP_HOME"] = previous


@pytest.fixture(scope="module")
def module_home(tmp_path_factory: pytest.TempPathFactory, converted_home: Path) -> Path:
    home = tmp_path_factory.mktemp("conformance-home")
    (home / "cache").symlink_to(converted_home / "cache", target_is_directory=True)  # the session's conversion
    return home


@pytest.fixture(autouse=True)
def _use_module_home(tuneloop_home: Path, module_home: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # The servers outlive one test, so every test of this module shares their TUNELOOP_HOME (store, cache).
    monkeypatch.setenv("TUNELOOP_HOME", str(module_home))


@pytest.fixture(scope="module")
def versions(module_home: Path) -> list[ModelVersionInfo]:
    from tuneloop.bases import DEFAULT_BASE, base_weights_hash, resolve_base

    with home_set_to(module_home):
        weights = base_weights_hash(resolve_base(DEFAULT_BASE))
        return [register_random_version(module_home / "made", seed, base_weights_hash=weights) for seed in (1, 2, 3)]


@pytest.fixture(scope="module", params=BACKENDS)
def server(request: pytest.FixtureRequest, versions: list[ModelVersionInfo], module_home: Path) -> Iterator:
    from tuneloop.serve.app import start_background_server
    from tuneloop.serve.backends.vllm import vllm_installed
    from tuneloop.serve.engine import build_engine

    if request.param == "vllm" and not vllm_installed() and not running_in_ci():
        pytest.skip("vLLM is not installed here (`make vllm` installs it; CI always does)")
    with home_set_to(module_home):
        engine = build_engine(backend=request.param, threads=1, max_queue=4, max_adapters=2, alias_refresh_s=0.0)
        running = start_background_server(engine)
        try:
            yield running
        finally:
            running.stop()


@pytest.fixture
def client(server) -> openai.OpenAI:
    return openai.OpenAI(base_url=server.base_url, api_key="unused", max_retries=0, timeout=300)


def ask(client: openai.OpenAI, model: str, **extra: object) -> Any:
    return client.chat.completions.create(model=model, messages=extra.pop("messages", task_messages()), **extra)


# --- versions as adapters ----------------------------------------------------------------------------


def test_adapters_are_loaded_on_demand_and_the_least_recently_used_evicted(server, client, versions) -> None:
    backend = server.engine.backend
    ids = [info.id for info in versions]
    for version_id in ids:
        reply = ask(client, version_id, max_tokens=1)
        assert reply.model == version_id and reply.model_extra["tuneloop"]["model"] == version_id
        assert version_id in backend.loaded_adapters
    assert backend.loaded_adapters == ids[1:]  # --max-adapters 2: the first was unloaded
    assert ask(client, ids[0], max_tokens=1).model == ids[0]  # loaded again on demand
    assert backend.loaded_adapters == [ids[2], ids[0]]
    health = httpx.get(server.base_url.removesuffix("/v1") + "/health").json()
    assert health["loaded_adapters"] == [ids[2], ids[0]]


def test_a_tampered_version_is_refused_before_and_after_eviction(server, client, module_home: Path) -> None:
    from tuneloop.bases import DEFAULT_BASE, base_weights_hash, resolve_base

    weights = base_weights_hash(resolve_base(DEFAULT_BASE))
    made = module_home / "made"
    refused = register_random_version(made, TAMPER_SEEDS[server.engine.backend_name] + 10, base_weights_hash=weights)
    tamper(refused)  # before it was ever served
    with pytest.raises(openai.ConflictError) as caught:
        ask(client, refused.id, max_tokens=1)
    assert caught.value.body["code"] == "model_integrity_error" and refused.id in caught.value.body["message"]

    evicted = register_random_version(made, TAMPER_SEEDS[server.engine.backend_name], base_weights_hash=weights)
    assert ask(client, evicted.id, max_tokens=1).model == evicted.id
    for other in (f"{TASK}@1", f"{TASK}@2"):  # two other versions push it out of the 2 loaded adapters
        ask(client, other, max_tokens=1)
    assert evicted.id not in server.engine.backend.loaded_adapters
    tamper(evicted)  # its files change while it is not loaded: loading it again must check them
    with pytest.raises(openai.ConflictError) as caught:
        ask(client, evicted.id, max_tokens=1)
    assert caught.value.body["code"] == "model_integrity_error" and "content hash" in caught.value.body["message"]


def test_alias_moves_are_seen_live(client, versions) -> None:
    from tuneloop.registry.promotion import promote, rollback

    def resolved() -> str:
        return ask(client, f"{TASK}@prod", max_tokens=1).model

    promote(TASK, f"{TASK}@1", "prod", actor="test")
    assert resolved() == f"{TASK}@1"
    promote(TASK, f"{TASK}@2", "prod", actor="test")
    assert resolved() == f"{TASK}@2"
    rollback(TASK, "prod", actor="test")
    assert resolved() == f"{TASK}@1"


# --- structured output -------------------------------------------------------------------------------


def test_answers_hold_to_the_task_schema_and_to_a_request_schema(client) -> None:
    from tuneloop.task import load_task

    reply = ask(client, f"{TASK}@1", max_tokens=100)
    extension = reply.model_extra["tuneloop"]
    if reply.choices[0].finish_reason == "stop":  # the task schema held to the end: it validates
        assert load_task(TASK).schema_errors(json.loads(reply.choices[0].message.content)) == []
        assert extension["schema_valid"] is True
    else:  # cut by max_tokens: the violation is reported, not hidden
        assert extension["schema_valid"] is False and extension["schema_errors"]

    picked = ask(
        client,
        BASE,
        messages=[{"role": "user", "content": "Pick a colour and say whether it is bright, in JSON."}],
        max_tokens=30,
        response_format={"type": "json_schema", "json_schema": {"name": "pick", "schema": PICK, "strict": True}},
    )
    answer = json.loads(picked.choices[0].message.content)
    assert set(answer) == {"colour", "bright"} and answer["colour"] in ("red", "green", "blue")
    assert isinstance(answer["bright"], bool) and picked.model_extra["tuneloop"]["schema_valid"] is True


# A task whose fields are copied from the input (extraction.py): every backend decodes them under the
# request's own input, so whatever a model samples, each value is one the receipt holds.
COPY_TASK = """
name: copied-receipts
instructions: Answer with JSON only, with the keys shop, address, code, day and total, copied from the receipt.
output_schema:
  type: object
  additionalProperties: false
  required: [shop, address, code, day, total]
  properties:
    shop: {type: [string, "null"]}
    address: {type: [string, "null"]}
    code: {type: [string, "null"], pattern: "^[0-9]{4}$"}
    day: {type: [string, "null"], format: date}
    total: {type: [number, "null"]}
extraction: {whitespace: collapse, case: any}
fields:
  shop: {compare: fuzzy, extract: verbatim}
  address: {compare: fuzzy, extract: spans}
  code: {compare: exact, extract: verbatim}
  day: {compare: date, extract: verbatim, formats: ["%d/%m/%Y", "%d %b %Y"]}
  total: {compare: number, extract: verbatim}
decoding: {temperature: 0.0, max_tokens: 90}
"""
RECEIPT = (
    "SANYU STATIONERY SHOP\nNO. 31G&33G, JALAN SETIA INDAH X ,U13/X\n40170 SETIA ALAM\nTel: 03-3362 4137\n"
    'Date: 19/10/2017 11:05:42  Card "GOLD" exp 3 Mar 2019\nItem 2 x 4.50 9.00\nGST 6% 0.54\nTOTAL RM 9.54\n'
    "CASH 10.00 CHANGE 0.46\nTHANK YOU PLEASE COME AGAIN"
)


@pytest.fixture(scope="module")
def copying_version(module_home: Path) -> ModelVersionInfo:
    from tuneloop.bases import DEFAULT_BASE, base_weights_hash, resolve_base

    (module_home / "tasks").mkdir(exist_ok=True)
    (module_home / "tasks" / "copied-receipts.yaml").write_text(COPY_TASK, encoding="utf-8")
    with home_set_to(module_home):
        weights = base_weights_hash(resolve_base(DEFAULT_BASE))
        # strong enough to move the base off its habits, so the samples wander over the receipt
        return register_random_version(
            module_home / "copying", 7, base_weights_hash=weights, task_name="copied-receipts", strength=0.05
        )


def test_copied_fields_hold_only_values_of_the_request_input(client, copying_version) -> None:
    from tuneloop.extraction import value_in_input
    from tuneloop.task import load_task

    task = load_task("copied-receipts")
    messages = task.build_messages({"text": RECEIPT})
    answers = []
    for seed in range(4):  # sampled at temperature 1: the grammar, not the model's habits, keeps the values
        reply = ask(client, copying_version.id, messages=messages, temperature=1.0, seed=seed, max_tokens=90)
        if reply.choices[0].finish_reason != "stop":
            continue  # cut by max_tokens inside a value: nothing to judge
        answer = json.loads(reply.choices[0].message.content)
        answers.append(answer)
        for name in task.field_names:
            assert value_in_input(task, name, answer[name], RECEIPT), (name, answer[name])
        assert answer["day"] in (None, "2017-10-19", "2019-03-03")  # found in the print, written in ISO
        assert answer["total"] is None or format(answer["total"], "g") in RECEIPT  # a number printed there
    assert answers, "no sampled answer finished within max_tokens"


# --- streaming, logprobs, stop, seed -----------------------------------------------------------------


def test_a_stream_gives_the_whole_reply_in_chunks_with_usage(client) -> None:
    whole = ask(client, f"{TASK}@2", max_tokens=12)
    chunks = list(
        client.chat.completions.create(
            model=f"{TASK}@2",
            messages=task_messages(),
            max_tokens=12,
            stream=True,
            stream_options={"include_usage": True},
        )
    )
    pieces = [chunk.choices[0].delta.content for chunk in chunks if chunk.choices and chunk.choices[0].delta.content]
    assert len(pieces) > 1 and "".join(pieces) == whole.choices[0].message.content
    assert {chunk.model for chunk in chunks} == {f"{TASK}@2"}
    finals = [chunk for chunk in chunks if chunk.choices and chunk.choices[0].finish_reason]
    assert len(finals) == 1 and finals[0].choices[0].finish_reason == whole.choices[0].finish_reason == "length"
    assert finals[0].model_extra["tuneloop"]["model"] == f"{TASK}@2"
    assert chunks[-1].usage.completion_tokens == whole.usage.completion_tokens == 12
    assert chunks[-1].usage.prompt_tokens == whole.usage.prompt_tokens > 0


def test_logprobs_come_back_in_openai_s_shape_whole_and_streamed(client) -> None:
    whole = ask(client, BASE, messages=CHAT, max_tokens=8, logprobs=True, top_logprobs=3)
    content = whole.choices[0].logprobs.content
    assert_well_formed(content, whole.choices[0].message.content, 3, token_is_its_bytes=False)
    assert len(content) == whole.usage.completion_tokens == 8
    for item in content:  # greedy, no grammar: the chosen token is the model's first choice
        assert item.token == item.top_logprobs[0].token
        assert item.logprob == pytest.approx(item.top_logprobs[0].logprob, abs=1e-4)
    chunks = list(
        client.chat.completions.create(
            model=BASE, messages=CHAT, max_tokens=8, logprobs=True, top_logprobs=3, stream=True
        )
    )
    streamed = [
        item
        for chunk in chunks
        if chunk.choices and chunk.choices[0].logprobs
        for item in chunk.choices[0].logprobs.content
    ]
    assert [item.token for item in streamed] == [item.token for item in content]
    assert [item.logprob for item in streamed] == pytest.approx([item.logprob for item in content], abs=1e-3)
    for chunk in chunks:  # each chunk carries the tokens of its own text
        if chunk.choices and chunk.choices[0].delta.content:
            tokens = chunk.choices[0].logprobs.content
            assert b"".join(bytes(item.bytes) for item in tokens) == chunk.choices[0].delta.content.encode()
    assert ask(client, BASE, messages=CHAT, max_tokens=2).choices[0].logprobs is None  # not asked for


def test_a_stop_string_ends_the_reply_before_it(client) -> None:
    whole = ask(client, BASE, messages=CHAT, max_tokens=16).choices[0].message.content
    stop = whole[len(whole) // 2 :][:3]
    assert stop.strip(), whole
    cut = ask(client, BASE, messages=CHAT, max_tokens=16, stop=[stop]).choices[0]
    assert cut.finish_reason == "stop"
    assert cut.message.content == whole[: whole.index(stop)]


def test_the_same_seed_samples_the_same_reply(client) -> None:
    def sample(seed: int) -> str:
        return ask(client, BASE, messages=CHAT, max_tokens=12, temperature=1.0, seed=seed).choices[0].message.content

    assert sample(7) == sample(7)


# --- concurrency --------------------------------------------------------------------------------------


def test_vllm_receives_concurrent_requests_at_once(server, client) -> None:
    """Two streams mid-generation at once: vLLM reports both running. An engine that served one request at
    a time would not start the second stream before the first finished."""
    backend = server.engine.backend
    if server.engine.backend_name != "vllm":
        pytest.skip("vLLM's own metrics show what it runs; the CPU backends' scheduling is tested in test_batching")
    streams = [
        client.chat.completions.create(model=model, messages=COUNT, max_tokens=200, stream=True)
        for model in (f"{TASK}@1", BASE)
    ]
    try:
        for stream in streams:  # the first content of each: both are generating now
            next(chunk for chunk in stream if chunk.choices and chunk.choices[0].delta.content)
        metrics = httpx.get(f"{backend.url}/metrics", timeout=30).text
        running = [line for line in metrics.splitlines() if line.startswith("vllm:num_requests_running")]
        assert running and float(running[0].split()[-1]) == 2, running
    finally:
        for stream in streams:
            stream.close()

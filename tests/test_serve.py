"""tuneloop serve end to end: the official ``openai`` client against a live server on loopback.

One server (llama.cpp, the bundled base) for the module; versions are random LoRAs registered through the
registry's public functions, so resolution, verification, GGUF export and adapters all run for real.
"""

from __future__ import annotations

import json
import os
import stat
import threading
from collections.abc import Iterator
from pathlib import Path

import httpx
import numpy as np
import openai
import pytest

from tuneloop.registry.versions import ModelVersionInfo

pytestmark = pytest.mark.slow

TASK = "liability-extraction"
TEXT = (
    "Payoff quote for loan ending 4821: $182,440.19 good through May 2. Escrow balance $2,310.55. "
    "Next payment due 2025-06-01 at 6.125%. Lakeview Loan Servicing."
)


# --- versions made by hand (shared with test_promotion.py) ----------------------------------------


def write_random_lora(folder: Path, seed: int, *, strength: float = 0.02, layers: int = 30) -> Path:
    """A PEFT LoRA folder for SmolLM2-135M (q and v projections), random but deterministic per seed."""
    from safetensors.numpy import save_file

    rng = np.random.default_rng(seed)
    rank, hidden, kv = 8, 576, 192
    tensors = {}
    for layer in range(layers):
        for module, out in (("q_proj", hidden), ("v_proj", kv)):
            prefix = f"base_model.model.model.layers.{layer}.self_attn.{module}"
            tensors[f"{prefix}.lora_A.weight"] = rng.normal(0, 1 / np.sqrt(hidden), (rank, hidden)).astype(np.float32)
            tensors[f"{prefix}.lora_B.weight"] = rng.normal(0, strength, (out, rank)).astype(np.float32)
    folder.mkdir(parents=True, exist_ok=True)
    config = {
        "peft_type": "LORA",
        "task_type": "CAUSAL_LM",
        "r": rank,
        "lora_alpha": 16,
        "target_modules": ["q_proj", "v_proj"],
        "lora_dropout": 0.0,
        "bias": "none",
        "base_model_name_or_path": None,
    }
    (folder / "adapter_config.json").write_text(json.dumps(config))
    save_file(tensors, str(folder / "adapter_model.safetensors"))
    return folder


def register_random_version(
    folder: Path, seed: int, *, base_weights_hash: str | None = None, task_name: str = TASK, **lora: float
) -> ModelVersionInfo:
    from tuneloop.bases import DEFAULT_BASE
    from tuneloop.registry.versions import register_version
    from tuneloop.task import load_task

    task = load_task(task_name)
    info, _ = register_version(
        task_name,
        write_random_lora(folder / f"lora-{seed}", seed, **lora),
        base_id=DEFAULT_BASE,
        base_weights_hash=base_weights_hash,
        system_prompt=task.system_prompt(),
        input_template=task.input,
        decoding=task.decoding.model_dump(),
    )
    return info


def tamper(info: ModelVersionInfo) -> None:
    weights = info.adapter_path / "adapter_model.safetensors"
    weights.chmod(stat.S_IRUSR | stat.S_IWUSR)
    data = bytearray(weights.read_bytes())
    data[-1] ^= 0x01  # one bit of one weight
    weights.write_bytes(bytes(data))


# --- the live server -------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def module_home(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("serve-home")


@pytest.fixture(autouse=True)
def _use_module_home(tuneloop_home: Path, module_home: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # The server outlives one test, so every test of this module shares its TUNELOOP_HOME (store, cache).
    monkeypatch.setenv("TUNELOOP_HOME", str(module_home))


@pytest.fixture(scope="module")
def versions(module_home: Path) -> list[ModelVersionInfo]:
    from tuneloop.bases import DEFAULT_BASE, base_weights_hash, resolve_base

    previous = os.environ.get("TUNELOOP_HOME")
    os.environ["TUNELOOP_HOME"] = str(module_home)
    try:
        weights = base_weights_hash(resolve_base(DEFAULT_BASE))
        return [register_random_version(module_home / "made", seed, base_weights_hash=weights) for seed in (1, 2, 3)]
    finally:
        if previous is not None:
            os.environ["TUNELOOP_HOME"] = previous


@pytest.fixture(scope="module")
def server(versions: list[ModelVersionInfo], module_home: Path) -> Iterator:
    from tuneloop.serve.app import start_background_server
    from tuneloop.serve.engine import build_engine

    previous = os.environ.get("TUNELOOP_HOME")
    os.environ["TUNELOOP_HOME"] = str(module_home)
    engine = build_engine(backend="llamacpp", threads=1, max_queue=3, max_adapters=2, alias_refresh_s=0.0)
    running = start_background_server(engine, max_body_bytes=64 * 1024)
    yield running
    running.stop()
    if previous is not None:
        os.environ["TUNELOOP_HOME"] = previous


@pytest.fixture
def client(server) -> openai.OpenAI:
    return openai.OpenAI(base_url=server.base_url, api_key="unused", max_retries=0, timeout=120)


def task_messages() -> list[dict[str, str]]:
    from tuneloop.task import load_task

    return load_task(TASK).build_messages({"text": TEXT})


# --- the openai client: whole, streamed, structured -----------------------------------------------


def test_openai_client_non_stream_names_the_resolved_version(client: openai.OpenAI, versions) -> None:
    from tuneloop.task import load_task

    reply = client.chat.completions.create(model=f"{TASK}@1", messages=task_messages(), max_tokens=120)
    assert reply.model == f"{TASK}@1"
    assert reply.system_fingerprint == f"tl-{versions[0].content_hash[:12]}"
    assert reply.usage.prompt_tokens > 0 and reply.usage.completion_tokens > 0
    extension = reply.model_extra["tuneloop"]
    assert extension["model"] == f"{TASK}@1" and extension["requested_model"] == f"{TASK}@1"
    if reply.choices[0].finish_reason == "stop":  # the task schema's grammar held: it must validate
        answer = json.loads(reply.choices[0].message.content)
        assert load_task(TASK).schema_errors(answer) == []
        assert extension["schema_valid"] is True
    else:  # cut by max_tokens: the violation is reported, not hidden
        assert extension["schema_valid"] is False and extension["schema_errors"]


def test_json_schema_response_format_constrains_the_base(client: openai.OpenAI) -> None:
    schema = {
        "type": "object",
        "properties": {"amount": {"type": "number"}, "currency": {"type": "string", "enum": ["USD", "EUR"]}},
        "required": ["amount", "currency"],
        "additionalProperties": False,
    }
    reply = client.chat.completions.create(
        model="smollm2-135m-instruct",
        messages=[{"role": "user", "content": "The payoff is $1,234.56. Give amount and currency as JSON."}],
        max_tokens=40,
        response_format={"type": "json_schema", "json_schema": {"name": "money", "schema": schema, "strict": True}},
    )
    answer = json.loads(reply.choices[0].message.content)
    assert set(answer) == {"amount", "currency"} and answer["currency"] in ("USD", "EUR")
    assert "\n" not in reply.choices[0].message.content  # strict whitespace
    assert reply.model_extra["tuneloop"]["schema_valid"] is True
    assert reply.model == "smollm2-135m-instruct"


def test_an_eval_of_a_version_measures_it_as_served(client: openai.OpenAI, tmp_path: Path) -> None:
    """`tuneloop eval run` decodes a task version under its task's schema, as the server does by default:
    the two give the same greedy answer, so the error rate an eval reports is the served model's."""
    import io

    from rich.console import Console

    from tuneloop.data.jsonl import write_rows
    from tuneloop.evals.runner import EvalOptions, run_eval
    from tuneloop.evals.store import run_results
    from tuneloop.task import load_task

    task = load_task(TASK)
    gold = {name: None for name in task.field_names}
    row = {"id": "letter", "messages": [*task_messages(), {"role": "assistant", "content": task.answer_json(gold)}]}
    write_rows(tmp_path / "gold.jsonl", [{**row, "metadata": {"fields": gold}}])
    options = EvalOptions(max_tokens=120, use_cache=False)
    report = run_eval(task, str(tmp_path / "gold.jsonl"), [f"{TASK}@3"], options, console=Console(file=io.StringIO()))
    (result,) = run_results(report.run_id)
    served = client.chat.completions.create(model=f"{TASK}@3", messages=task_messages(), max_tokens=120, temperature=0)
    assert result.output == served.choices[0].message.content
    if served.choices[0].finish_reason == "stop":  # whole under the grammar: it fits the schema
        assert task.schema_errors(json.loads(result.output)) == []


def test_a_truncated_structured_answer_is_reported_not_passed(client: openai.OpenAI) -> None:
    reply = client.chat.completions.create(model=f"{TASK}@1", messages=task_messages(), max_tokens=5)
    assert reply.choices[0].finish_reason == "length"
    extension = reply.model_extra["tuneloop"]
    assert extension["schema_valid"] is False and "not valid JSON" in extension["schema_errors"][0]


def test_greedy_replies_are_identical_across_restarts(server, client: openai.OpenAI) -> None:
    from tuneloop.serve.app import start_background_server
    from tuneloop.serve.engine import build_engine

    def ask(base_url: str) -> str:
        fresh = openai.OpenAI(base_url=base_url, api_key="unused", max_retries=0, timeout=120)
        return (
            fresh.chat.completions.create(model=f"{TASK}@3", messages=task_messages(), max_tokens=30)
            .choices[0]
            .message.content
        )

    first = ask(server.base_url)
    assert ask(server.base_url) == first
    restarted = start_background_server(build_engine(backend="llamacpp", threads=1))
    try:
        assert ask(restarted.base_url) == first
    finally:
        restarted.stop()


# --- pinning: aliases, tamper refusal ---------------------------------------------------------------


def test_versions_resolve_by_hash_and_are_listed_with_their_aliases(client: openai.OpenAI, versions) -> None:
    """(Alias moves seen live: tests/test_serve_conformance.py, on every backend.)"""
    from tuneloop.registry.promotion import promote

    promote(TASK, f"{TASK}@1", "prod", actor="test")
    by_hash = client.chat.completions.create(
        model=f"{TASK}@sha256:{versions[1].content_hash[:12]}", messages=task_messages(), max_tokens=1
    )
    assert by_hash.model == f"{TASK}@2"
    listed = {card.id: card for card in client.models.list().data}
    assert listed[f"{TASK}@1"].model_extra["aliases"] == [f"{TASK}@prod"]
    assert listed[f"{TASK}@1"].model_extra["parent"] == "smollm2-135m-instruct"
    assert "smollm2-135m-instruct" in listed


def test_a_tampered_version_is_refused(client: openai.OpenAI, module_home: Path) -> None:
    from tuneloop.bases import DEFAULT_BASE, base_weights_hash, resolve_base

    info = register_random_version(
        module_home / "made", 9, base_weights_hash=base_weights_hash(resolve_base(DEFAULT_BASE))
    )
    tamper(info)
    with pytest.raises(openai.ConflictError) as caught:
        client.chat.completions.create(model=info.id, messages=task_messages(), max_tokens=1)
    error = caught.value.body
    assert error["code"] == "model_integrity_error" and info.id in error["message"]
    assert "content hash" in error["message"]


# --- error shapes -----------------------------------------------------------------------------------


def test_unknown_models_are_404_model_not_found(client: openai.OpenAI) -> None:
    for name in (f"{TASK}@99", f"{TASK}@nosuch", "other-task@1", "no-such-base", "openai/gpt-4o", "Bad@@"):
        with pytest.raises(openai.NotFoundError) as caught:
            client.chat.completions.create(model=name, messages=task_messages(), max_tokens=1)
        assert caught.value.body["code"] == "model_not_found", name
        assert caught.value.body["param"] == "model"


@pytest.mark.parametrize(
    ("extra", "param"),
    [
        ({"temperature": 3}, "temperature"),
        ({"temperature": "hot"}, "temperature"),
        ({"top_p": 0}, "top_p"),
        ({"max_tokens": 0}, "max_tokens"),
        ({"n": 2}, "n"),
        ({"stop": ["a", "b", "c", "d", "e"]}, "stop"),
        ({"logprobs": True, "top_logprobs": 21}, "top_logprobs"),
        ({"response_format": {"type": "yaml"}}, "response_format.type"),
        ({"response_format": {"type": "json_schema", "json_schema": {"name": "x"}}}, "response_format.json_schema"),
        (
            {"response_format": {"type": "json_schema", "json_schema": {"name": "x", "schema": {"type": "nope"}}}},
            "response_format.json_schema.schema",
        ),
        ({"messages": []}, "messages"),
        ({"messages": [{"role": "tool", "content": "x"}]}, "messages[0].role"),
        (
            {"messages": [{"role": "user", "content": [{"type": "image_url", "image_url": {}}]}]},
            "messages[0].content[0]",
        ),
    ],
)
def test_invalid_parameters_are_400_naming_the_parameter(server, extra: dict, param: str) -> None:
    body = {"model": f"{TASK}@1", "messages": task_messages(), "max_tokens": 1, **extra}
    response = httpx.post(f"{server.base_url}/chat/completions", json=body, timeout=60)
    assert response.status_code == 400, response.text
    error = response.json()["error"]
    assert error["type"] == "invalid_request_error" and error["param"] == param, error


def test_malformed_json_is_400(server) -> None:
    response = httpx.post(
        f"{server.base_url}/chat/completions", content=b"{not json", headers={"content-type": "application/json"}
    )
    assert response.status_code == 400 and response.json()["error"]["type"] == "invalid_request_error"


def test_a_body_too_large_is_413(server) -> None:
    body = {"model": f"{TASK}@1", "messages": [{"role": "user", "content": "x" * 100_000}]}
    response = httpx.post(f"{server.base_url}/chat/completions", json=body)
    assert response.status_code == 413 and response.json()["error"]["code"] == "body_too_large"

    def chunked():  # no Content-Length: counted while read
        yield b'{"model": "x", "messages": [{"role": "user", "content": "'
        for _ in range(100):
            yield b"y" * 1000
        yield b'"}]}'

    response = httpx.post(
        f"{server.base_url}/chat/completions", content=chunked(), headers={"content-type": "application/json"}
    )
    assert response.status_code == 413


def test_a_full_queue_is_429_with_retry_after(server, client: openai.OpenAI) -> None:
    engine = server.engine
    with engine.admitted("test"), engine.admitted("test"), engine.admitted("test"):  # max_queue=3
        response = httpx.post(
            f"{server.base_url}/chat/completions",
            json={"model": f"{TASK}@1", "messages": task_messages(), "max_tokens": 1},
        )
    assert response.status_code == 429 and response.headers["retry-after"] == "1"
    assert response.json()["error"]["type"] == "rate_limit_error"
    assert client.chat.completions.create(model=f"{TASK}@1", messages=task_messages(), max_tokens=1).model


def test_concurrent_requests_for_different_versions_all_get_their_version(server) -> None:
    results: dict[str, str] = {}

    def ask(number: int) -> None:
        fresh = openai.OpenAI(base_url=server.base_url, api_key="unused", max_retries=0, timeout=120)
        results[str(number)] = fresh.chat.completions.create(
            model=f"{TASK}@{number}", messages=task_messages(), max_tokens=2
        ).model

    threads = [threading.Thread(target=ask, args=(number,)) for number in (1, 2, 3)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert results == {str(n): f"{TASK}@{n}" for n in (1, 2, 3)}


# --- health and metrics ----------------------------------------------------------------------------


def test_health_and_metrics_are_labelled_by_resolved_version(server, client: openai.OpenAI) -> None:
    client.chat.completions.create(model=f"{TASK}@1", messages=task_messages(), max_tokens=1)
    root = server.base_url.removesuffix("/v1")
    health = httpx.get(f"{root}/health").json()
    assert health["status"] == "ok" and health["backend"] == "llamacpp"
    text = httpx.get(f"{root}/metrics").text
    assert f'tuneloop_serve_requests_total{{model="{TASK}@1",status="200"}}' in text
    assert f'tuneloop_serve_request_latency_seconds_count{{model="{TASK}@1"}}' in text
    assert 'model="liability-extraction@prod"' not in text  # aliases never label metrics
    assert "tuneloop_serve_queue_depth" in text

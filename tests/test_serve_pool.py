"""One server, many bases: loaded on demand, evicted under a memory budget, fair between models.

A live server on loopback, asked through the official client. The second base is a real one: a copy of the
bundled GGUF under another path (another base id, its own weights hash), so both run on the real llama.cpp
engine; the tiny HF-format base runs beside them on transformers; Gemma 3 270M when it is installed.
"""

from __future__ import annotations

import shutil
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import openai
import pytest

from tuneloop.protocol import OpenAIError

pytestmark = pytest.mark.slow

TEXT = "Payoff quote for loan 4821: $182,440.19 good through May 2. Escrow balance $2,310.55."
N_CTX = 256


@pytest.fixture(scope="module")
def second_base(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The bundled GGUF copied under another path: another base id with its own files."""
    from tuneloop.bases import DEFAULT_BASE, resolve_base

    folder = tmp_path_factory.mktemp("second-base")
    target = folder / "copy-of-smollm2.gguf"
    shutil.copyfile(resolve_base(DEFAULT_BASE).path, target)
    return target


def _footprint(path: Path) -> int:
    from tuneloop.bases import resolve_base
    from tuneloop.serve.backends import LlamaCppOptions
    from tuneloop.serve.pool import estimate_footprint

    return estimate_footprint(resolve_base(str(path)), "llamacpp", LlamaCppOptions(n_ctx=N_CTX))


def _ask(client: openai.OpenAI, model: str, max_tokens: int = 6) -> tuple[str, float, str]:
    """The answer's text, the load time the server reported, and the model that answered."""
    raw = client.chat.completions.with_raw_response.create(
        model=model, messages=[{"role": "user", "content": TEXT}], max_tokens=max_tokens, temperature=0
    )
    completion = raw.parse()
    return completion.choices[0].message.content or "", float(raw.headers["x-tuneloop-load-ms"]), completion.model


def _states(client: openai.OpenAI) -> dict[str, str]:
    return {card.id: card.model_extra["state"] for card in client.models.list().data}


@pytest.fixture
def one_base_budget_server(second_base: Path) -> Iterator[tuple[openai.OpenAI, object]]:
    from tuneloop.serve.app import start_background_server
    from tuneloop.serve.engine import build_engine

    budget = int(_footprint(second_base) * 1.5)  # room for one of the two bases, not both
    engine = build_engine(backend="llamacpp", threads=1, n_ctx=N_CTX, memory_budget=budget, bases=[str(second_base)])
    server = start_background_server(engine, auth="disabled")
    try:
        yield openai.OpenAI(base_url=server.base_url, api_key="unused", max_retries=0), server
    finally:
        server.stop()


def test_any_base_is_loaded_on_demand_and_the_least_recently_used_is_evicted(
    one_base_budget_server: tuple[openai.OpenAI, object], second_base: Path
) -> None:
    from tuneloop.bases import DEFAULT_BASE

    client, server = one_base_budget_server
    other = str(second_base)
    first_text, first_load, first_model = _ask(client, DEFAULT_BASE)
    assert first_model == DEFAULT_BASE and first_load == 0.0  # loaded at startup: hot
    states = _states(client)
    assert states[DEFAULT_BASE] == "hot" and states[other] == "cold"

    text, load_ms, model = _ask(client, other)
    assert model == other and load_ms > 0  # a cold base: loaded for this request, and it says so
    assert text == first_text  # the same weights under another name: the same greedy answer
    states = _states(client)
    assert states[other] == "hot" and states[DEFAULT_BASE] == "warm"  # the budget holds one: evicted

    assert _ask(client, other)[1] == 0.0  # hot now
    assert _ask(client, DEFAULT_BASE)[1] > 0  # back from warm
    assert _states(client)[other] == "warm"

    metrics = httpx.get(server.base_url.removesuffix("/v1") + "/metrics").text
    assert f'tuneloop_serve_base_evictions_total{{base="{DEFAULT_BASE}"}} 1.0' in metrics
    assert f'tuneloop_serve_base_evictions_total{{base="{other}"}} 1.0' in metrics
    assert f'tuneloop_serve_base_load_seconds_count{{base="{other}"}} 1.0' in metrics
    assert f'tuneloop_serve_base_state{{base="{DEFAULT_BASE}",state="hot"}} 1.0' in metrics
    health = httpx.get(server.base_url.removesuffix("/v1") + "/health").json()
    assert health["bases"][DEFAULT_BASE]["loads"] == 2 and health["bases"][other]["state"] == "warm"
    assert health["memory"]["hot_bytes"] <= health["memory"]["budget_bytes"]


def test_a_path_the_server_was_not_given_is_not_a_model(
    one_base_budget_server: tuple[openai.OpenAI, object], tmp_path: Path
) -> None:
    """A client cannot make the server load any GGUF file on its disk by naming its path."""
    from tuneloop.bases import DEFAULT_BASE, resolve_base

    client, _ = one_base_budget_server
    stray = tmp_path / "stray.gguf"
    shutil.copyfile(resolve_base(DEFAULT_BASE).path, stray)
    with pytest.raises(openai.NotFoundError) as refused:
        _ask(client, str(stray))
    assert refused.value.body["code"] == "model_not_found" and "--bases" in refused.value.body["message"]
    assert str(stray) not in _states(client)


def test_models_lists_every_base_and_version_with_state_license_and_hash(
    one_base_budget_server: tuple[openai.OpenAI, object], second_base: Path, tmp_path: Path
) -> None:
    from tuneloop.bases import DEFAULT_BASE, base_weights_hash, resolve_base

    client, _ = one_base_budget_server
    other = resolve_base(str(second_base))
    version = _register_on(other, tmp_path, seed=3)
    cards = {card.id: card.model_extra for card in client.models.list().data}
    bundled = cards[DEFAULT_BASE]
    assert bundled["state"] == "hot" and bundled["license"] == "Apache-2.0"
    assert bundled["content_hash"] == f"sha256:{base_weights_hash(resolve_base(DEFAULT_BASE))}"
    assert cards[other.id]["state"] == "cold" and cards[other.id]["base"] == other.id
    listed = cards[version.id]
    assert listed["base"] == other.id and listed["state"] == "cold"
    assert listed["content_hash"] == f"sha256:{version.content_hash}"
    assert listed["base_content_hash"] == f"sha256:{base_weights_hash(other)}"

    text, load_ms, model = _ask(client, version.id)
    assert model == version.id and load_ms > 0 and text
    assert {card.id: card.model_extra["state"] for card in client.models.list().data}[version.id] == "hot"


def test_a_version_whose_base_changed_is_refused_when_the_base_loads_again(
    one_base_budget_server: tuple[openai.OpenAI, object], tmp_path: Path
) -> None:
    from tuneloop.bases import DEFAULT_BASE, resolve_base

    client, _ = one_base_budget_server
    copy = tmp_path / "will-change.gguf"
    shutil.copyfile(resolve_base(DEFAULT_BASE).path, copy)
    base = resolve_base(str(copy))
    version = _register_on(base, tmp_path, seed=5)
    assert _ask(client, version.id)[2] == version.id
    _ask(client, DEFAULT_BASE)  # the budget holds one base: the changed one is unloaded

    data = bytearray(copy.read_bytes())
    data[-1] ^= 0x01  # one bit of the last tensor
    copy.write_bytes(bytes(data))
    with pytest.raises(openai.ConflictError) as refused:
        _ask(client, version.id)
    error = refused.value.body
    assert error["code"] == "model_integrity_error" and version.id in error["message"]
    assert f"its base {base.id} changed" in error["message"] and "restore" in error["message"]
    assert _ask(client, base.id)[2] == base.id  # the bare base still serves: it names its own hash


def test_a_base_that_cannot_fit_beside_the_pinned_ones_is_a_503(second_base: Path) -> None:
    from tuneloop.bases import DEFAULT_BASE
    from tuneloop.serve.app import start_background_server
    from tuneloop.serve.engine import build_engine

    budget = int(_footprint(second_base) * 1.5)
    engine = build_engine(
        backend="llamacpp",
        threads=1,
        n_ctx=N_CTX,
        memory_budget=budget,
        base=DEFAULT_BASE,
        bases=[str(second_base)],
    )
    server = start_background_server(engine, auth="disabled")
    try:
        client = openai.OpenAI(base_url=server.base_url, api_key="unused", max_retries=0)
        with pytest.raises(openai.InternalServerError) as refused:
            _ask(client, str(second_base))
        assert refused.value.status_code == 503
        body = refused.value.body
        assert body["code"] == "memory_budget_exceeded" and "--memory-budget" in body["message"]
        assert DEFAULT_BASE in body["message"]  # the pinned base it cannot evict
        assert _ask(client, DEFAULT_BASE)[2] == DEFAULT_BASE  # the pinned one is untouched
    finally:
        server.stop()


def test_loading_a_base_does_not_hold_up_requests_for_a_hot_one(second_base: Path) -> None:
    """The pool loads outside its lock: while the second base loads (held at a gate here, to make the
    window wide), the hot base answers."""
    from tuneloop.bases import DEFAULT_BASE, resolve_base
    from tuneloop.serve.app import start_background_server
    from tuneloop.serve.backends import get_backend
    from tuneloop.serve.engine import ServeEngine
    from tuneloop.serve.pool import ModelPool

    gate, loading = threading.Event(), threading.Event()

    def gated_factory(name, base, options):  # type: ignore[no-untyped-def]
        if base.id == str(second_base):
            loading.set()
            assert gate.wait(60)
        return get_backend(name, base, options)

    pool = ModelPool(
        backend_name="llamacpp", flags={"n_threads": 1, "n_ctx": N_CTX}, memory_budget=1 << 40, factory=gated_factory
    )
    engine = ServeEngine(pool, resolve_base(DEFAULT_BASE))
    pool.pin(resolve_base(DEFAULT_BASE))
    pool.slot(resolve_base(str(second_base)))  # a base clients may name
    server = start_background_server(engine, auth="disabled")
    try:
        client = openai.OpenAI(base_url=server.base_url, api_key="unused", max_retries=0, timeout=120)
        result: dict[str, tuple[str, float, str]] = {}
        slow = threading.Thread(target=lambda: result.setdefault("other", _ask(client, str(second_base))))
        slow.start()
        assert loading.wait(60)
        started = time.perf_counter()
        assert _ask(client, DEFAULT_BASE)[2] == DEFAULT_BASE  # answered while the other base is loading
        assert "other" not in result
        waited = time.perf_counter() - started
        gate.set()
        slow.join(120)
        assert result["other"][2] == str(second_base) and result["other"][1] >= waited * 1000
    finally:
        gate.set()
        server.stop()


def test_a_burst_for_one_model_leaves_room_in_the_queue_for_others() -> None:
    from tuneloop.bases import DEFAULT_BASE
    from tuneloop.serve.engine import build_engine

    engine = build_engine(backend="llamacpp", threads=1, n_ctx=N_CTX, max_queue=4, load_default=False)
    try:
        assert engine.max_queue_per_model == 3  # a quarter of the queue is kept for the others
        held = [engine.admitted(DEFAULT_BASE) for _ in range(3)]
        for place in held:
            place.__enter__()
        with pytest.raises(OpenAIError) as refused:
            engine.admitted(DEFAULT_BASE).__enter__()
        assert refused.value.status == 429 and "its share" in refused.value.message
        # another model still gets in, and the global bound holds
        with engine.admitted("demo@1"), pytest.raises(OpenAIError, match="queue is full"):
            engine.admitted("demo@2").__enter__()
        for place in held:
            place.__exit__(None, None, None)
    finally:
        engine.close()


def test_the_fair_worker_takes_turns_between_models() -> None:
    """Five requests for A queued before one for B: B runs second, not sixth."""
    from tuneloop.serve.pool import FairWorker

    worker = FairWorker("test")
    release, order = threading.Event(), []
    try:
        first = worker.submit("A", lambda: (release.wait(10), order.append("A0")))
        time.sleep(0.05)  # A0 is running: what follows waits in the queues
        futures = [worker.submit("A", lambda i=i: order.append(f"A{i}")) for i in range(1, 5)]
        futures.append(worker.submit("B", lambda: order.append("B0")))
        futures.append(worker.submit("C", lambda: order.append("C0")))
        release.set()
        for future in [first, *futures]:
            future.result(10)
        assert order == ["A0", "A1", "B0", "C0", "A2", "A3", "A4"]
    finally:
        worker.close()


def test_an_hf_base_runs_on_transformers_beside_gguf_bases_on_llamacpp(tiny_base: Path) -> None:
    from tuneloop.bases import DEFAULT_BASE
    from tuneloop.serve.app import start_background_server
    from tuneloop.serve.engine import build_engine

    engine = build_engine(backend="llamacpp", threads=1, n_ctx=N_CTX, max_batch_size=1, bases=[str(tiny_base)])
    server = start_background_server(engine, auth="disabled")
    try:
        client = openai.OpenAI(base_url=server.base_url, api_key="unused", max_retries=0)
        assert _ask(client, DEFAULT_BASE)[2] == DEFAULT_BASE
        _, load_ms, model = _ask(client, str(tiny_base), max_tokens=4)
        assert model == str(tiny_base) and load_ms > 0
        cards = {card.id: card.model_extra for card in client.models.list().data}
        assert cards[str(tiny_base)]["engine"] == "transformers" and cards[DEFAULT_BASE]["engine"] == "llamacpp"
        assert cards[str(tiny_base)]["state"] == cards[DEFAULT_BASE]["state"] == "hot"
    finally:
        server.stop()


def _register_on(base, folder: Path, *, seed: int):  # type: ignore[no-untyped-def]
    """A random LoRA registered as a version of ``base`` (SmolLM2's shapes: the copies are SmolLM2)."""
    from test_serve import write_random_lora
    from tuneloop.bases import base_weights_hash
    from tuneloop.registry.versions import register_version
    from tuneloop.task import load_task

    task = load_task("liability-extraction")
    info, _ = register_version(
        task.name,
        write_random_lora(folder / f"lora-{seed}", seed),
        base_id=base.id,
        base_weights_hash=base_weights_hash(base),
        system_prompt=task.system_prompt(),
        input_template=task.input,
        decoding=task.decoding.model_dump(),
    )
    return info


def test_both_bundled_bases_behind_one_server() -> None:
    """SmolLM2 and Gemma 3 from one server, each with its own license on /v1/models."""
    from tuneloop.bases import DEFAULT_BASE, resolve_base
    from tuneloop.errors import TuneloopError
    from tuneloop.serve.app import start_background_server
    from tuneloop.serve.engine import build_engine

    try:
        gemma = resolve_base("gemma3-270m")
    except TuneloopError as exc:
        pytest.skip(f"Gemma 3 270M is not installed: {exc.message}")
    server = start_background_server(build_engine(backend="llamacpp", threads=1, n_ctx=N_CTX), auth="disabled")
    try:
        client = openai.OpenAI(base_url=server.base_url, api_key="unused", max_retries=0)
        for model in (DEFAULT_BASE, gemma.id, DEFAULT_BASE):
            text, _, answered = _ask(client, model)
            assert answered == model and text.strip()
        cards = {card.id: card.model_extra for card in client.models.list().data}
        assert cards[gemma.id]["state"] == cards[DEFAULT_BASE]["state"] == "hot"
        assert cards[DEFAULT_BASE]["license"].lower().startswith("apache")
        assert cards[gemma.id]["license"].lower().startswith("gemma") and cards[gemma.id]["license_id"] == "gemma"
        assert cards[DEFAULT_BASE]["license_id"] == "apache-2.0"
    finally:
        server.stop()


def test_the_cli_serves_a_pinned_base_and_lists_the_pool(tmp_path: Path) -> None:
    """`tuneloop serve --models <base>` as a user runs it (it used to crash printing a base's version hash)."""
    import os
    import socket
    import subprocess
    import sys

    from tuneloop.bases import DEFAULT_BASE

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    command = [str(Path(sys.executable).parent / "tuneloop"), "serve", "--port", str(port), "--auth", "disabled"]
    command += ["--models", DEFAULT_BASE, "--memory-budget", "2GiB", "--threads", "1", "--n-ctx", str(N_CTX)]
    server = subprocess.Popen(command, stderr=subprocess.PIPE, text=True, env=os.environ.copy())
    try:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            try:
                health = httpx.get(f"http://127.0.0.1:{port}/health", timeout=2).json()
                break
            except httpx.HTTPError:
                assert server.poll() is None, server.stderr.read() if server.stderr else ""
                time.sleep(0.3)
        else:
            pytest.fail("tuneloop serve did not start")
        assert health["memory"]["budget_bytes"] == 2 * 1024**3
        assert health["bases"][DEFAULT_BASE]["pinned"] and health["bases"][DEFAULT_BASE]["state"] == "hot"
        client = openai.OpenAI(base_url=f"http://127.0.0.1:{port}/v1", api_key="unused", max_retries=0)
        assert _ask(client, DEFAULT_BASE)[2] == DEFAULT_BASE
    finally:
        server.terminate()
        _, errors = server.communicate(timeout=30)
    assert f"serving the base {DEFAULT_BASE}, pinned" in errors


def test_a_memory_budget_that_is_not_one_is_refused() -> None:
    from tuneloop.errors import TuneloopError
    from tuneloop.serve.pool import parse_bytes

    assert parse_bytes("12GiB") == 12 * 1024**3 and parse_bytes("800MB") == 800 * 1000**2
    assert parse_bytes("5e9") == 5_000_000_000
    for bad in ("lots", "-1GB", "12 parsecs", "0"):
        with pytest.raises(TuneloopError, match="--memory-budget"):
            parse_bytes(bad)

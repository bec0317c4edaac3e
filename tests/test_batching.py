"""The transformers backend decodes concurrent requests together, each row with its own adapter (PEFT's
mixed-batch inference) and its own parameters, and gives every row what it would have got alone."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import pytest

from tuneloop.bases import resolve_base
from tuneloop.errors import TuneloopError
from tuneloop.serve.backends import Adapter, Generation, GenerationParams, Message, TransformersOptions
from tuneloop.serve.backends.transformers import TransformersBackend

SCHEMA = {
    "type": "object",
    "properties": {"amount": {"type": "number"}, "servicer": {"type": "string"}},
    "required": ["amount", "servicer"],
    "additionalProperties": False,
}


def chat(text: str) -> list[Message]:
    return [{"role": "system", "content": "Answer with JSON only."}, {"role": "user", "content": text}]


# Prompts of different lengths, so batches need left padding.
SHORT = chat("payoff $12.50")
MEDIUM = chat("Acme Servicing: payoff $41,230.17 for loan ending 0042.")
LONG = chat("Summit Loans wrote: your payoff amount is $9,876.54, escrow $120.00, next due 2024-05-01, rate 6.5%.")


@pytest.fixture(scope="module")
def adapters(tiny_base: Path, tmp_path_factory: pytest.TempPathFactory) -> list[Adapter]:
    """Two different random LoRAs over the tiny base, strong enough to change its greedy output."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    folder = tmp_path_factory.mktemp("batch-adapters")
    made = []
    for seed in (1, 2):
        model = AutoModelForCausalLM.from_pretrained(tiny_base)
        torch.manual_seed(seed)
        config = LoraConfig(
            r=4, lora_alpha=8, target_modules=["q_proj", "v_proj", "down_proj"], init_lora_weights=False
        )
        peft_model = get_peft_model(model, config)
        with torch.no_grad():
            for name, parameter in peft_model.named_parameters():
                if "lora_" in name:
                    parameter.mul_(3.0)
        peft_dir = folder / f"v{seed}"
        peft_model.save_pretrained(peft_dir)
        made.append(Adapter(id=f"demo@{seed}", peft_dir=peft_dir))
    return made


@pytest.fixture
def backend(tiny_base: Path) -> Iterator[TransformersBackend]:
    # A long gathering window, so requests started together in a test surely share one batch.
    backend = TransformersBackend(
        resolve_base(str(tiny_base)), TransformersOptions(max_batch_size=4, batch_wait_ms=300)
    )
    yield backend
    backend.close()


def together(
    backend: TransformersBackend, calls: list[tuple[list[Message], GenerationParams, Adapter | None]]
) -> list[Generation]:
    """Run the calls from concurrent threads (as the server's workers do); their generations, in order."""
    results: list[Generation | BaseException | None] = [None] * len(calls)

    def run(index: int) -> None:
        messages, params, adapter = calls[index]
        try:
            results[index] = backend.generate(messages, params, adapter)
        except BaseException as exc:
            results[index] = exc

    threads = [threading.Thread(target=run, args=(index,)) for index in range(len(calls))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=120)
    for result in results:
        if isinstance(result, BaseException):
            raise result
    return results  # type: ignore[return-value]


def test_a_mixed_batch_of_base_and_two_adapters_equals_each_alone(
    backend: TransformersBackend, adapters: list[Adapter], tiny_base: Path
) -> None:
    # logprobs give each generated token's bytes: a random model's reply may be no valid UTF-8 text.
    params = GenerationParams(max_tokens=16, logprobs=True)
    calls = [(MEDIUM, params, None), (SHORT, params, adapters[0]), (LONG, params, adapters[1])]
    alone = [backend.generate(*call) for call in calls]
    assert backend.batch_stats[:2] == (3, 3)  # one batch of one row each

    batched = together(backend, calls)

    assert backend.batch_stats[:2] == (4, 6)  # then one batch of all three
    assert [tokens(g) for g in batched] == [tokens(g) for g in alone]
    assert [g.text for g in batched] == [g.text for g in alone]
    assert [g.finish_reason for g in batched] == [g.finish_reason for g in alone]
    assert all(g.completion_tokens >= 4 for g in alone)
    # The adapters matter: the same prompt differs on the base and under each adapter.
    same_prompt = [tokens(backend.generate(MEDIUM, params, adapter)) for adapter in (None, *adapters)]
    assert len(set(same_prompt)) == 3
    # And alone, our decoding loop is transformers' own greedy generate with PEFT's adapter switched on.
    for generation, (messages, _, adapter) in zip(alone, calls, strict=True):
        expected = reference_greedy(tiny_base, adapter, messages, 16)
        assert tokens(generation) == tuple(backend.token_bytes(token) for token in expected)


def tokens(generation: Generation) -> tuple[bytes, ...]:
    assert generation.logprobs is not None
    return tuple(token.data for token in generation.logprobs)


def reference_greedy(tiny_base: Path, adapter: Adapter | None, messages: list[Message], max_new: int) -> list[int]:
    """The generated token ids by ``model.generate``, without the end-of-turn token."""
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(tiny_base)
    model = AutoModelForCausalLM.from_pretrained(tiny_base).eval()
    if adapter is not None:
        model = PeftModel.from_pretrained(model, str(adapter.peft_dir)).eval()
    ids = tokenizer.apply_chat_template(messages, add_generation_prompt=True, return_tensors="pt", return_dict=True)
    end = tokenizer.convert_tokens_to_ids("<|im_end|>")
    with torch.no_grad():
        out = model.generate(
            input_ids=ids["input_ids"],
            attention_mask=ids["attention_mask"],
            max_new_tokens=max_new,
            do_sample=False,
            eos_token_id=end,
            pad_token_id=tokenizer.pad_token_id,
        )
    return [token for token in out[0, ids["input_ids"].shape[1] :].tolist() if token != end]


def test_rows_keep_their_own_parameters_in_a_batch(backend: TransformersBackend, adapters: list[Adapter]) -> None:
    greedy = GenerationParams(max_tokens=12)
    whole = backend.generate(LONG, greedy, adapters[0]).text
    stop = whole[5:7]
    calls = [
        (SHORT, GenerationParams(max_tokens=3), None),  # ends first, by length
        (LONG, GenerationParams(max_tokens=12, stop=[stop]), adapters[0]),
        (MEDIUM, GenerationParams(max_tokens=10, logprobs=True, top_logprobs=3), adapters[1]),
        (MEDIUM, GenerationParams(max_tokens=40, json_schema=SCHEMA), None),
        (SHORT, GenerationParams(max_tokens=10, temperature=0.9, top_p=0.8, seed=7), adapters[1]),
    ]
    alone = [backend.generate(*call) for call in calls]
    batches_before = backend.batch_stats[0]

    batched = together(backend, calls[:4]) + together(backend, calls[4:])

    assert backend.batch_stats[0] == batches_before + 2
    assert [g.text for g in batched] == [g.text for g in alone]
    assert [g.finish_reason for g in batched] == [g.finish_reason for g in alone]
    short, stopped, scored, structured, sampled = batched
    assert (short.finish_reason, short.completion_tokens) == ("length", 3)
    assert stopped.finish_reason == "stop" and stopped.text == whole[: whole.index(stop)]
    assert scored.logprobs is not None and len(scored.logprobs) == scored.completion_tokens
    assert [t.logprob for t in scored.logprobs] == pytest.approx([t.logprob for t in alone[2].logprobs], abs=1e-4)
    assert all(len(t.top) == 3 for t in scored.logprobs)
    assert structured.text.startswith('{"amount"')
    assert sampled.text and sampled.text == backend.generate(*calls[4]).text  # its own seeded RNG


def test_a_row_that_ends_leaves_the_batch(backend: TransformersBackend) -> None:
    calls = [
        (SHORT, GenerationParams(max_tokens=2), None),
        (MEDIUM, GenerationParams(max_tokens=5), None),
        (LONG, GenerationParams(max_tokens=20), None),
    ]
    batched = together(backend, calls)
    batches, rows, row_steps = backend.batch_stats
    assert (batches, rows) == (1, 3)
    # Each row took part in one forward pass per token it produced (an ending end-of-turn token
    # included), not in every pass of the batch's longest row.
    passes = [g.completion_tokens + (g.finish_reason == "stop") for g in batched]
    assert max(passes) > min(passes)
    assert row_steps == sum(passes)


def test_streams_from_one_batch_each_get_their_own_text(backend: TransformersBackend, adapters: list[Adapter]) -> None:
    params = GenerationParams(max_tokens=12)
    expected = [backend.generate(SHORT, params, adapters[0]).text, backend.generate(LONG, params).text]
    got: list[str] = ["", ""]
    abandoned: list[str] = []

    def read(index: int, messages: list[Message], adapter: Adapter | None) -> None:
        got[index] = "".join(backend.stream(messages, params, adapter))

    def abandon() -> None:
        stream = backend.stream(MEDIUM, GenerationParams(max_tokens=40), adapters[1])
        abandoned.append(next(stream))
        stream.close()  # the client went away after one delta

    threads = [
        threading.Thread(target=read, args=(0, SHORT, adapters[0])),
        threading.Thread(target=read, args=(1, LONG, None)),
        threading.Thread(target=abandon),
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=120)
    assert got == expected
    assert len(abandoned) == 1
    assert backend.batch_stats[:2] == (3, 5)  # two alone, then the three together


def test_more_versions_than_loaded_adapters_are_split_over_batches(tiny_base: Path, adapters: list[Adapter]) -> None:
    backend = TransformersBackend(
        resolve_base(str(tiny_base)), TransformersOptions(max_batch_size=4, max_adapters=1, batch_wait_ms=300)
    )
    try:
        params = GenerationParams(max_tokens=8)
        calls = [(SHORT, params, adapters[0]), (MEDIUM, params, adapters[1]), (LONG, params, None)]
        alone = [backend.generate(*call).text for call in calls]
        batches_before = backend.batch_stats[0]
        assert [g.text for g in together(backend, calls)] == alone
        # One version at a time in memory: the second adapter's row waited for the next batch.
        assert backend.batch_stats[0] - batches_before == 2
        assert len(backend.loaded_adapters) == 1
    finally:
        backend.close()


def test_a_broken_adapter_fails_its_own_row_only(
    backend: TransformersBackend, adapters: list[Adapter], tmp_path: Path
) -> None:
    broken = Adapter(id="demo@9", peft_dir=tmp_path / "missing")
    params = GenerationParams(max_tokens=6)
    expected = backend.generate(SHORT, params, adapters[0]).text
    results: dict[str, object] = {}

    def run(key: str, adapter: Adapter) -> None:
        try:
            results[key] = backend.generate(SHORT, params, adapter).text
        except TuneloopError as exc:
            results[key] = exc

    threads = [
        threading.Thread(target=run, args=("good", adapters[0])),
        threading.Thread(target=run, args=("bad", broken)),
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=120)
    assert results["good"] == expected
    assert isinstance(results["bad"], TuneloopError) and "demo@9" in str(results["bad"])


def test_before_load_runs_at_each_load_and_can_refuse_the_files(tiny_base: Path, adapters: list[Adapter]) -> None:
    backend = TransformersBackend(resolve_base(str(tiny_base)), TransformersOptions(max_adapters=1, max_batch_size=2))
    checked: list[str] = []

    def refuse() -> None:
        raise TuneloopError("the files changed", where="demo@2")

    first = replace(adapters[0], before_load=lambda: checked.append("demo@1"))
    try:
        params = GenerationParams(max_tokens=2)
        backend.generate(SHORT, params, first)
        backend.generate(SHORT, params, first)
        assert checked == ["demo@1"]  # loaded once, checked once
        with pytest.raises(TuneloopError, match="the files changed"):
            backend.generate(SHORT, params, replace(adapters[1], before_load=refuse))
        assert backend.loaded_adapters == ["demo@1"]  # nothing of the refused one was loaded
        backend.generate(SHORT, params, adapters[1])  # evicts demo@1 (max_adapters=1)
        backend.generate(SHORT, params, first)
        assert checked == ["demo@1", "demo@1"]  # read again, so checked again
    finally:
        backend.close()


def test_closing_the_backend_refuses_new_calls(tiny_base: Path) -> None:
    backend = TransformersBackend(resolve_base(str(tiny_base)), TransformersOptions(max_batch_size=2))
    assert backend.generate(SHORT, GenerationParams(max_tokens=2)).completion_tokens >= 1
    backend.close()
    with pytest.raises(TuneloopError, match="closed"):
        backend.generate(SHORT, GenerationParams(max_tokens=2))
    with pytest.raises(TuneloopError, match="max_batch_size"):
        TransformersBackend(resolve_base(str(tiny_base)), TransformersOptions(max_batch_size=0))


def test_the_server_sends_concurrent_requests_into_one_batch(tiny_base: Path) -> None:
    from tuneloop.protocol import ChatCompletionRequest
    from tuneloop.serve.engine import build_engine

    engine = build_engine(backend="transformers", base=str(tiny_base), max_batch_size=3)
    backend = engine.backend
    assert isinstance(backend, TransformersBackend) and backend.max_batch_size == 3
    backend.batch_wait_s = 0.3

    async def three() -> list[dict]:
        requests = [
            ChatCompletionRequest(model=engine.base.id, messages=messages, max_tokens=size)
            for messages, size in ((SHORT, 3), (MEDIUM, 6), (LONG, 9))
        ]
        return await asyncio.gather(*(engine.complete(request) for request in requests))

    try:
        answers = asyncio.run(three())
        assert backend.batch_stats[:2] == (1, 3)
        assert [a["usage"]["completion_tokens"] for a in answers] == [
            backend.generate(messages, GenerationParams(max_tokens=size)).completion_tokens
            for messages, size in ((SHORT, 3), (MEDIUM, 6), (LONG, 9))
        ]
    finally:
        engine.close()


def test_a_version_tampered_after_eviction_is_refused_when_its_batch_loads_it(
    tiny_base: Path, adapters: list[Adapter]
) -> None:
    from test_serve import TASK, tamper
    from tuneloop.protocol import ChatCompletionRequest, OpenAIError
    from tuneloop.registry.versions import register_version
    from tuneloop.serve.engine import build_engine
    from tuneloop.task import load_task

    base_id = resolve_base(str(tiny_base)).id
    task = load_task(TASK)
    first, second = (
        register_version(
            TASK,
            adapter.peft_dir,
            base_id=base_id,
            base_weights_hash=None,
            system_prompt=task.system_prompt(),
            input_template=task.input,
            decoding=task.decoding.model_dump(),
        )[0]
        for adapter in adapters
    )
    engine = build_engine(backend="transformers", base=str(tiny_base), max_adapters=1, max_batch_size=4)
    backend = engine.backend
    assert isinstance(backend, TransformersBackend)

    def request(model: str) -> ChatCompletionRequest:
        return ChatCompletionRequest(model=model, messages=SHORT, max_tokens=3)

    async def both(models: list[str]) -> list[object]:
        return await asyncio.gather(*(engine.complete(request(m)) for m in models), return_exceptions=True)

    try:
        assert asyncio.run(engine.complete(request(first.id)))["model"] == first.id
        assert asyncio.run(engine.complete(request(second.id)))["model"] == second.id  # evicts the first
        assert backend.loaded_adapters == [second.id]
        tamper(first)  # after the server checked it, while it is not loaded
        backend.batch_wait_s = 0.3
        tampered, bare = asyncio.run(both([first.id, base_id]))
        assert isinstance(tampered, OpenAIError) and tampered.status == 409
        assert "content hash" in str(tampered.message)
        assert isinstance(bare, dict) and bare["model"] == base_id  # its batch-mate was served
        assert backend.loaded_adapters == [second.id]  # nothing of the tampered files was loaded
    finally:
        engine.close()


def test_serve_passes_max_batch_size_to_the_engine(monkeypatch: pytest.MonkeyPatch) -> None:
    from typer.testing import CliRunner

    import tuneloop.serve.engine
    from tuneloop.cli.main import app

    seen: dict[str, object] = {}

    class Built(Exception):
        pass

    def build_engine(**options: object) -> None:
        seen.update(options)
        raise Built  # stop before a server starts

    monkeypatch.setattr(tuneloop.serve.engine, "build_engine", build_engine)
    result = CliRunner().invoke(app, ["serve", "--backend", "transformers", "--max-batch-size", "5"])
    assert isinstance(result.exception, Built)
    assert seen["backend"] == "transformers" and seen["max_batch_size"] == 5

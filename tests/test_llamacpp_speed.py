"""What makes an extraction fast on llama.cpp: the prompt head's KV cached per version, tokens the grammar
forces appended in one step, and the thread count measured at load. Real llama.cpp on the bundled model."""

from __future__ import annotations

import json
from collections.abc import Iterator

import pytest

from tuneloop.bases import DEFAULT_BASE, resolve_base
from tuneloop.errors import TuneloopError
from tuneloop.serve.backends import (
    Adapter,
    GenerationParams,
    LlamaCppOptions,
    engine_identity,
    get_backend,
)
from tuneloop.serve.backends.llamacpp import LlamaCppBackend
from tuneloop.serve.backends.options import parse_threads
from tuneloop.serve.backends.threads import choose_threads, thread_candidates
from tuneloop.serve.grammar import validate_answer
from tuneloop.task import load_task

TASK = "liability-extraction"
LETTERS = [
    "Payoff quote for loan ending 4821: $182,440.19 good through May 2. Escrow balance $2,310.55.",
    "Your escrow balance is $918.02 and the next payment is due 2026-02-01 at 5.5%. Mr. Cooper.",
]


def chat(letter: str) -> list[dict]:
    return load_task(TASK).build_messages({"text": letter})


@pytest.fixture(scope="module")
def adapters(tmp_path_factory: pytest.TempPathFactory) -> list[Adapter]:
    """Two registered random versions with their GGUF LoRA exports."""
    import os

    from test_serve import register_random_version
    from tuneloop.registry.exports import ensure_gguf_lora

    home = tmp_path_factory.mktemp("speed-home")
    saved = os.environ.get("TUNELOOP_HOME")
    os.environ["TUNELOOP_HOME"] = str(home)
    try:
        infos = [register_random_version(home / "made", seed) for seed in (1, 2)]
        return [Adapter(info.id, info.adapter_path, ensure_gguf_lora(info)) for info in infos]
    finally:
        if saved is None:
            os.environ.pop("TUNELOOP_HOME", None)
        else:
            os.environ["TUNELOOP_HOME"] = saved


def backend_with(**options: object) -> LlamaCppBackend:
    return get_backend("llamacpp", resolve_base(DEFAULT_BASE), LlamaCppOptions(n_threads=1, **options))  # type: ignore[return-value]


@pytest.fixture(scope="module")
def cached() -> Iterator[LlamaCppBackend]:
    backend = backend_with()
    yield backend
    backend.close()


@pytest.fixture(scope="module")
def uncached() -> Iterator[LlamaCppBackend]:
    backend = backend_with(prefix_cache_mb=0)
    yield backend
    backend.close()


def logprob_trace(backend: LlamaCppBackend, messages: list[dict], adapter: Adapter | None) -> list[tuple]:
    params = GenerationParams(max_tokens=8, logprobs=True, top_logprobs=3)
    generation = backend.generate(messages, params, adapter=adapter)
    return [(entry.data, entry.logprob, entry.top) for entry in generation.logprobs or []]


def test_a_restored_head_gives_the_bits_a_fresh_prefill_gives(
    cached: LlamaCppBackend, uncached: LlamaCppBackend, adapters: list[Adapter]
) -> None:
    """The system prompt's KV is saved per version on first use and restored after; every logprob of every
    token is bit-identical to a backend without the cache, for each version and the bare base."""
    for adapter in [None, *adapters]:
        for letter in LETTERS:
            hits = cached.prefix_cache.stats.hits
            assert logprob_trace(cached, chat(letter), adapter) == logprob_trace(uncached, chat(letter), adapter)
            if letter is not LETTERS[0]:
                assert cached.prefix_cache.stats.hits == hits + 1  # the second letter reused the first's head
    # One entry per version and the base: KV under one adapter is never served under another.
    assert cached.prefix_cache.stats.misses == 3
    assert uncached.prefix_cache.stats.hits == uncached.prefix_cache.stats.misses == 0


def test_the_head_is_the_system_prompt_as_the_template_renders_it(cached: LlamaCppBackend) -> None:
    messages = chat(LETTERS[0])
    prompt = cached._tokenize(cached.format_prompt(messages))
    head = cached.prefix_cache.head_length(messages, prompt, cached.format_prompt, cached._tokenize)
    rendered_head = cached.llama.detokenize(prompt[:head], special=True).decode()
    assert rendered_head.endswith(load_task(TASK).system_prompt() + "<|im_end|>\n<|im_start|>user\n")
    # A chat whose system part is too short to be worth it, and one without a message after it, have none.
    short = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"}]
    prompt = cached._tokenize(cached.format_prompt(short))
    assert cached.prefix_cache.head_length(short, prompt, cached.format_prompt, cached._tokenize) == 0
    only_system = messages[:1]
    prompt = cached._tokenize(cached.format_prompt(only_system))
    assert cached.prefix_cache.head_length(only_system, prompt, cached.format_prompt, cached._tokenize) == 0


def test_the_cache_stays_within_its_memory() -> None:
    backend = backend_with(prefix_cache_mb=1)  # one head of this task takes ~2.4 MB
    try:
        backend.generate(chat(LETTERS[0]), GenerationParams(max_tokens=2))
        assert backend.prefix_cache.bytes_used <= 2**20
    finally:
        backend.close()


def test_forced_tokens_go_in_one_step_and_the_answer_still_fits_the_schema(adapters: list[Adapter]) -> None:
    """JSON keys, quotes and colons are appended without a decode step each; the answer is valid JSON of
    the task's schema, and a request asking for logprobs decodes token by token (each has its own)."""
    schema = load_task(TASK).output_schema
    forced = backend_with(prefix_cache_mb=0, forced_tokens=True)
    stepwise = backend_with(prefix_cache_mb=0)
    try:
        for adapter in [None, adapters[0]]:
            params = GenerationParams(max_tokens=120, json_schema=schema)
            fast = forced.generate(chat(LETTERS[0]), params, adapter=adapter)
            slow = stepwise.generate(chat(LETTERS[0]), params, adapter=adapter)
            assert validate_answer(fast.text, schema).valid, fast.text
            assert list(json.loads(fast.text)) == list(schema["properties"])
            assert forced.forced_total > 0 and stepwise.forced_total == 0
            assert fast.finish_reason == slow.finish_reason == "stop"
        before = forced.forced_total
        with_logprobs = forced.generate(
            chat(LETTERS[1]), GenerationParams(max_tokens=60, json_schema=schema, logprobs=True)
        )
        assert forced.forced_total == before
        assert len(with_logprobs.logprobs or []) == with_logprobs.completion_tokens
    finally:
        forced.close()
        stepwise.close()


def test_max_tokens_holds_with_forced_tokens() -> None:
    backend = backend_with(prefix_cache_mb=0, forced_tokens=True)
    try:
        schema = load_task(TASK).output_schema
        for limit in (1, 3, 7):
            generation = backend.generate(chat(LETTERS[0]), GenerationParams(max_tokens=limit, json_schema=schema))
            assert generation.completion_tokens == limit and generation.finish_reason == "length"
    finally:
        backend.close()


def test_forced_tokens_change_the_engine_identity_under_which_eval_answers_are_stored() -> None:
    assert engine_identity("llamacpp", LlamaCppOptions()) == "llamacpp"
    assert engine_identity("llamacpp", LlamaCppOptions(forced_tokens=True)) == "llamacpp:forced"
    assert engine_identity("llamacpp", LlamaCppOptions(weights="f16", forced_tokens=True)) == "llamacpp:f16:forced"
    assert engine_identity("llamacpp", LlamaCppOptions(n_threads="auto", prefix_cache_mb=0)) == "llamacpp"


def test_threads_auto_measures_every_candidate_and_keeps_the_fastest(cached: LlamaCppBackend) -> None:
    choice = choose_threads(cached.llama, [1, 2])
    assert set(choice.timings) == {1, 2}
    assert choice.decode == min(choice.timings, key=lambda count: choice.timings[count][1])
    assert choice.batch == min(choice.timings, key=lambda count: choice.timings[count][0])
    assert all(prefill > 0 and step > 0 for prefill, step in choice.timings.values())
    # The context still answers as before the probe.
    assert cached.generate(chat(LETTERS[0]), GenerationParams(max_tokens=4)).completion_tokens == 4
    assert thread_candidates(1) == [1] and thread_candidates(6) == [1, 2, 4, 6] and thread_candidates(8) == [1, 2, 4, 8]


def test_a_backend_loaded_with_threads_auto_says_what_it_chose() -> None:
    backend = get_backend("llamacpp", resolve_base(DEFAULT_BASE), LlamaCppOptions(n_threads="auto"))
    try:
        assert backend.threads is not None  # type: ignore[attr-defined]
        assert backend.threads.decode in backend.threads.timings  # type: ignore[attr-defined]
    finally:
        backend.close()


@pytest.mark.parametrize("value", ["0", "-2", "many", "1.5"])
def test_threads_must_be_a_count_or_auto(value: str) -> None:
    with pytest.raises(TuneloopError, match="positive number or auto") as caught:
        parse_threads(value)
    assert caught.value.where == "--threads"
    assert parse_threads("auto") == "auto" and parse_threads("3") == 3 and parse_threads(None) is None


def test_sampling_at_a_temperature_repeats_with_its_seed_and_varies_without(cached: LlamaCppBackend) -> None:
    params = GenerationParams(max_tokens=12, temperature=1.0, top_p=0.9, seed=7)
    first = cached.generate(chat(LETTERS[1]), params).text
    assert cached.generate(chat(LETTERS[1]), params).text == first
    unseeded = GenerationParams(max_tokens=12, temperature=1.0)
    others = {cached.generate(chat(LETTERS[1]), unseeded).text for _ in range(3)}
    assert len(others | {first}) > 1


def test_the_saved_heads_are_freed_with_the_backend() -> None:
    backend = backend_with()
    backend.generate(chat(LETTERS[0]), GenerationParams(max_tokens=1))
    assert backend.prefix_cache.bytes_used > 0
    backend.close()
    assert backend.prefix_cache.bytes_used == 0

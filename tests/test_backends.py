"""Generation backends: the shared interface, and llama.cpp and transformers on the bundled model."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tuneloop.bases import DEFAULT_BASE, resolve_base
from tuneloop.errors import TuneloopError
from tuneloop.serve.backends import (
    BACKEND_NAMES,
    CPU_BACKEND_NAMES,
    Backend,
    GenerationParams,
    LlamaCppOptions,
    StopStrings,
    TokenStreamBackend,
    TransformersOptions,
    backend_options,
    engine_identity,
    get_backend,
)
from tuneloop.serve.backends.llamacpp import LlamaCppBackend
from tuneloop.serve.backends.transformers import TransformersBackend

JSON_CHAT = [
    {"role": "system", "content": "Answer with JSON only."},
    {"role": "user", "content": "Extract the amount: Your payoff is $1,234.56."},
]


@pytest.fixture(scope="module", params=CPU_BACKEND_NAMES)
def backend(request: pytest.FixtureRequest, converted_home: Path) -> Iterator[Backend]:
    options = {"cache_dir": converted_home / "cache"} if request.param == "transformers" else {}
    backend = get_backend(request.param, resolve_base(DEFAULT_BASE), backend_options(request.param, options))
    yield backend
    backend.close()


# --- the interface, engine-free -------------------------------------------------------------------


def test_stop_strings_hold_back_a_possible_start_and_cut_at_the_stop() -> None:
    stops = StopStrings(["</answer>", "STOP"])
    assert stops.feed("The total is 5") == ("The total is 5", False)
    assert stops.feed(" </ans") == (" ", False)  # "</ans" may begin "</answer>": not emitted yet
    assert stops.feed("wer> trailing") == ("", True)

    stops = StopStrings(["STOP"])
    assert stops.feed("ST") == ("", False)
    assert stops.feed("ONE") == ("STONE", False)  # it was not a stop after all
    assert stops.feed("S") == ("", False)
    assert stops.flush() == "S"


def test_no_stop_strings_pass_text_straight_through() -> None:
    stops = StopStrings([])
    assert stops.feed("</") == ("</", False)
    assert stops.flush() == ""


def test_generation_params_refuse_impossible_values() -> None:
    assert GenerationParams().greedy
    with pytest.raises(TuneloopError, match="max_tokens"):
        GenerationParams(max_tokens=0)
    with pytest.raises(TuneloopError, match="temperature"):
        GenerationParams(temperature=-0.1)
    with pytest.raises(TuneloopError, match="top_p"):
        GenerationParams(top_p=0)


def test_an_unknown_backend_name_lists_the_known_ones() -> None:
    with pytest.raises(TuneloopError) as caught:
        get_backend("vllm-on-cpu", resolve_base(DEFAULT_BASE))
    assert caught.value.hint is not None and "llamacpp" in caught.value.hint


def test_the_registry_builds_each_backend_s_own_options_and_names_an_unknown_one() -> None:
    assert BACKEND_NAMES == ("llamacpp", "transformers", "vllm")
    assert backend_options("llamacpp", {"weights": "f16"}) == LlamaCppOptions(weights="f16")
    with pytest.raises(TuneloopError, match="no option 'weights'") as caught:
        backend_options("transformers", {"weights": "f16"})
    assert "max_batch_size" in (caught.value.hint or "")
    assert backend_options("vllm", {"n_ctx": 512}, strict=False).tensor_parallel_size == 1
    with pytest.raises(TuneloopError, match="takes TransformersOptions"):
        get_backend("transformers", resolve_base(DEFAULT_BASE), LlamaCppOptions())
    # Part of stored eval cache keys: these strings never change.
    assert engine_identity("llamacpp", LlamaCppOptions()) == "llamacpp"
    assert engine_identity("llamacpp", LlamaCppOptions(weights="f16")) == "llamacpp:f16"
    assert engine_identity("transformers", TransformersOptions()) == engine_identity("transformers") == "transformers"


def test_transformers_backend_runs_any_hf_chat_model(tmp_path: Path) -> None:
    from test_bases import save_tiny_chat_model

    tiny = TransformersBackend(resolve_base(str(save_tiny_chat_model(tmp_path / "tiny"))))
    assert isinstance(tiny, Backend)
    reply = tiny.generate([{"role": "user", "content": "hello world"}], GenerationParams(max_tokens=4))
    # <|im_start|> user hello world <|im_end|> <|im_start|> assistant (its word-level vocab drops newlines)
    assert reply.prompt_tokens == 7
    assert 0 <= reply.completion_tokens <= 4
    assert reply.finish_reason in ("stop", "length")


# --- both engines on the bundled SmolLM2-135M-Instruct ----------------------------------------------


@pytest.mark.slow
def test_greedy_json_answer_stops_at_the_end_of_the_turn(backend: TokenStreamBackend) -> None:
    reply = backend.generate(JSON_CHAT)
    assert reply.finish_reason == "stop"
    assert 0 < reply.completion_tokens < GenerationParams().max_tokens
    assert reply.text.strip()
    assert "1,234.56" in reply.text
    assert "<|im_end|>" not in reply.text and "<|im_start|>" not in reply.text
    assert reply.prompt_tokens > 20
    assert reply.ttft_ms is not None and 0 < reply.ttft_ms <= reply.latency_ms


@pytest.mark.slow
def test_streamed_deltas_add_up_to_the_whole_reply(backend: TokenStreamBackend) -> None:
    deltas = list(backend.stream(JSON_CHAT))
    assert len(deltas) > 1
    assert "".join(deltas) == backend.generate(JSON_CHAT).text


@pytest.mark.slow
def test_max_tokens_ends_the_reply_with_length(backend: TokenStreamBackend) -> None:
    reply = backend.generate(
        [{"role": "user", "content": "Write a long story about a dragon."}], GenerationParams(max_tokens=5)
    )
    assert (reply.finish_reason, reply.completion_tokens) == ("length", 5)
    assert reply.text


@pytest.mark.slow
def test_a_stop_string_cuts_the_reply_before_it(backend: TokenStreamBackend) -> None:
    whole = backend.generate(JSON_CHAT).text
    stop = whole[len(whole) // 2 : len(whole) // 2 + 2]
    reply = backend.generate(JSON_CHAT, GenerationParams(stop=[stop]))
    assert reply.finish_reason == "stop"
    assert reply.text == whole[: whole.index(stop)]
    assert "".join(backend.stream(JSON_CHAT, GenerationParams(stop=[stop]))) == reply.text


@pytest.mark.slow
def test_sampling_with_a_seed_repeats(backend: TokenStreamBackend) -> None:
    params = GenerationParams(temperature=0.9, max_tokens=8, seed=7)
    assert backend.generate(JSON_CHAT, params).text == backend.generate(JSON_CHAT, params).text


@pytest.mark.slow
def test_messages_the_template_cannot_render_are_a_user_error(backend: TokenStreamBackend) -> None:
    with pytest.raises(TuneloopError, match="chat template refused"):
        backend.generate([{"role": "user", "content": None}])


@pytest.mark.slow
def test_both_engines_format_the_chat_into_the_same_tokens(converted_home: Path) -> None:
    base = resolve_base(DEFAULT_BASE)
    llamacpp = get_backend("llamacpp", base)
    transformers = get_backend("transformers", base, TransformersOptions(cache_dir=converted_home / "cache"))
    assert isinstance(llamacpp, LlamaCppBackend) and isinstance(transformers, TransformersBackend)
    llama_ids = llamacpp.llama.tokenize(llamacpp.format_prompt(JSON_CHAT).encode(), add_bos=False, special=True)
    assert llama_ids == transformers.prompt_ids(JSON_CHAT)[0].tolist()

    replies = [engine.generate(JSON_CHAT) for engine in (llamacpp, transformers)]
    llamacpp.close()
    assert all(reply.text and reply.finish_reason == "stop" for reply in replies)
    assert replies[0].prompt_tokens == replies[1].prompt_tokens == len(llama_ids)


def test_token_first_grammar_decodes_what_llama_cpp_s_own_grammar_sampler_does() -> None:
    """Greedy decoding checks only the argmax against the grammar and masks the whole vocabulary only when
    it is refused; the text must be exactly what llama.cpp's sampler, which masks every step, produces."""
    from tuneloop.serve.grammar import llama_grammar
    from tuneloop.task import load_task

    backend = LlamaCppBackend(resolve_base(DEFAULT_BASE))
    schema = load_task("liability-extraction").output_schema
    chats = [
        JSON_CHAT,  # a base asked for JSON in its own words: the grammar has to refuse its first choices
        [{"role": "user", "content": "Payoff $182,440.19, escrow $2,310.55, due 2025-06-01, Lakeview, loan 4821."}],
    ]
    try:
        for chat in chats:
            ours = backend.generate(chat, GenerationParams(max_tokens=60, json_schema=schema))
            prompt = backend.llama.tokenize(backend.format_prompt(chat).encode(), add_bos=False, special=True)
            theirs = []
            for token in backend.llama.generate(prompt, temp=0.0, top_k=0, min_p=0.0, grammar=llama_grammar(schema)):
                if backend._is_end_of_turn(backend._vocab, token) or len(theirs) == 60:
                    break
                theirs.append(token)
            assert ours.text == backend.llama.detokenize(theirs).decode("utf-8", errors="replace")
            assert ours.text.startswith("{")
    finally:
        backend.close()


# --- llama.cpp on float weights ----------------------------------------------------------------------


def test_unknown_llamacpp_weights_are_refused_before_loading() -> None:
    with pytest.raises(TuneloopError, match=r"unknown llama\.cpp weights 'q8'") as caught:
        get_backend("llamacpp", resolve_base(DEFAULT_BASE), LlamaCppOptions(weights="q8"))
    assert "native, f16, f32" in (caught.value.hint or "")


@pytest.mark.slow
def test_the_f32_rewrite_holds_the_dequantized_weights_and_the_same_metadata(converted_home: Path) -> None:
    import gguf
    import numpy as np

    from tuneloop.bases.widen import llamacpp_weights_path

    base = resolve_base(DEFAULT_BASE)
    path = llamacpp_weights_path(base, "f32", cache_dir=converted_home / "cache")
    assert path != base.gguf_path and llamacpp_weights_path(base, "native") == base.gguf_path
    source, rewrite = gguf.GGUFReader(base.gguf_path), gguf.GGUFReader(path)
    assert rewrite.fields["general.file_type"].contents() == gguf.LlamaFileType.ALL_F32
    for key in ("tokenizer.chat_template", "tokenizer.ggml.tokens", "llama.block_count", "llama.rope.freq_base"):
        assert rewrite.fields[key].contents() == source.fields[key].contents()
    rewritten = {tensor.name: tensor for tensor in rewrite.tensors}
    assert len(rewritten) == len(source.tensors)
    for tensor in source.tensors:
        assert rewritten[tensor.name].tensor_type == gguf.GGMLQuantizationType.F32
        expected = gguf.quants.dequantize(tensor.data, tensor.tensor_type)
        assert np.array_equal(
            np.asarray(rewritten[tensor.name].data), expected.reshape(rewritten[tensor.name].data.shape)
        )
    # Made once: a second call finds it.
    assert llamacpp_weights_path(base, "f32", cache_dir=converted_home / "cache").stat().st_mtime_ns == (
        path.stat().st_mtime_ns
    )


@pytest.mark.slow
def test_llama_cpp_on_f32_weights_decodes_what_transformers_decodes(converted_home: Path) -> None:
    """The quantized file answers differently from transformers' float32 (8-bit activations in its matmuls);
    its f32 rewrite gives the same greedy text."""
    base = resolve_base(DEFAULT_BASE)
    cache = converted_home / "cache"
    chats = [
        JSON_CHAT,
        [{"role": "user", "content": "Payoff $182,440.19, escrow $2,310.55, due 2025-06-01. Summarize the letter."}],
    ]
    params = GenerationParams(max_tokens=48)
    llamacpp = get_backend("llamacpp", base, LlamaCppOptions(weights="f32", cache_dir=cache))
    try:
        ours = [llamacpp.generate(chat, params).text for chat in chats]
    finally:
        llamacpp.close()
    transformers = get_backend("transformers", base, TransformersOptions(cache_dir=cache, max_batch_size=1))
    try:
        reference = [transformers.generate(chat, params).text for chat in chats]
    finally:
        transformers.close()
    assert ours == reference

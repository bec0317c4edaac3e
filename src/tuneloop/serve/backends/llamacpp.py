"""llama.cpp on CPU, through llama-cpp-python used as a library (the serving engine for laptops and CPUs).

The chat is formatted with the chat template stored in the GGUF file (or the catalog's, for a bundled
base whose GGUF has none: ``Base.chat_template``), the same template the transformers backend gets from
its tokenizer, so both engines see the same prompt tokens. The token loop
is ``Llama.generate`` itself rather than ``create_completion``: that gives exact token counts and the
time of the first token for streamed and whole replies alike.

Adapters: each version's GGUF LoRA is loaded once (``llama_adapter_lora_init``, tens of milliseconds),
kept in an LRU of ``max_adapters`` handles, and set on the one context per request. The context's
prefix cache is dropped on every request that runs with an adapter: keys and values computed under one
adapter are wrong under another, and (measured with llama-cpp-python 0.3.36) reusing a prefix even under
the same adapter changes greedy output, while a fresh prefill reproduces it exactly. Requests to the bare
base keep the prefix cache.
"""

from __future__ import annotations

import codecs
import ctypes
import random
from collections import OrderedDict
from collections.abc import Generator
from typing import Any, ClassVar

from tuneloop.bases import Base, load_llamacpp
from tuneloop.errors import TuneloopError
from tuneloop.serve.backends.base import (
    Adapter,
    FinishReason,
    GenerationParams,
    Message,
    TokenLogprob,
    TokenRun,
    TokenStreamBackend,
    chat_template_error,
    top_logprobs_of,
)
from tuneloop.serve.backends.options import LlamaCppOptions
from tuneloop.serve.grammar import LlamaGrammarFirst, llama_grammar


class LlamaCppBackend(TokenStreamBackend):
    name: ClassVar[str] = "llamacpp"

    def __init__(self, base: Base, options: LlamaCppOptions | None = None):
        super().__init__()
        import llama_cpp
        from llama_cpp.llama_chat_format import Jinja2ChatFormatter

        options = options or LlamaCppOptions()
        self.base = base
        self.max_adapters = options.max_adapters
        # Greedy structured output checks the argmax against the grammar first (serve/grammar.py); False
        # masks the whole vocabulary every step, as llama.cpp's grammar sampler does (benchmarks compare).
        self.grammar_first = options.grammar_first
        self._adapters: OrderedDict[str, Any] = OrderedDict()  # version id -> llama.cpp adapter handle
        self._active: str | None = None  # the version id whose adapter is set on the context
        # "native" serves the GGUF file as it is; "f16"/"f32" its float rewrite (bases/widen.py).
        self.llama = load_llamacpp(
            base,
            n_ctx=options.n_ctx,
            n_threads=options.n_threads,
            weights=options.weights,
            cache_dir=options.cache_dir,
        )
        self._vocab = llama_cpp.llama_model_get_vocab(self.llama.model)
        self._is_end_of_turn = llama_cpp.llama_vocab_is_eog
        # The catalog's template when it gives one (the GGUF carries none), the same the transformers
        # conversion stores with its tokenizer; else the GGUF's own.
        template = base.chat_template or self.llama.metadata.get("tokenizer.chat_template")
        if not template:
            raise TuneloopError(
                "the GGUF file has no chat template (tokenizer.chat_template), so chats can't be formatted",
                where=base.id,
                hint="use an instruct/chat model's GGUF",
            )
        self._formatter = Jinja2ChatFormatter(
            template=template,
            eos_token=_token_text(self.llama, self.llama.token_eos()),
            bos_token=_token_text(self.llama, self.llama.token_bos()),
            add_generation_prompt=True,
        )

    def close(self) -> None:
        # Explicitly, not in Llama.__del__: at interpreter exit that runs after llama_cpp's globals are
        # gone and prints a TypeError.
        import llama_cpp

        with self._lock:
            llama_cpp.llama_set_adapters_lora(self.llama.ctx, None, 0, None)
            for handle in self._adapters.values():
                llama_cpp.llama_adapter_lora_free(handle)
            self._adapters.clear()
            self.llama.close()

    @property
    def loaded_adapters(self) -> list[str]:
        """Version ids of the adapters in memory, least recently used first."""
        return list(self._adapters)

    def _use_adapter(self, adapter: Adapter | None) -> None:
        import llama_cpp

        wanted = adapter.id if adapter else None
        if wanted is not None:
            handle = self._adapters.get(wanted)
            if handle is None:
                handle = self._load_adapter(adapter)
            self._adapters.move_to_end(wanted)
        if wanted is not None or self._active is not None:
            self.llama.reset()  # see the module docstring: no prefix reuse with adapters
        if wanted == self._active:
            return
        if wanted is None:
            llama_cpp.llama_set_adapters_lora(self.llama.ctx, None, 0, None)
        else:
            handles = (llama_cpp.llama_adapter_lora_p_ctypes * 1)(handle)
            if llama_cpp.llama_set_adapters_lora(self.llama.ctx, handles, 1, (ctypes.c_float * 1)(1.0)):
                raise TuneloopError("llama.cpp refused to set the adapter", where=wanted)
        self._active = wanted

    def _load_adapter(self, adapter: Adapter) -> Any:
        import llama_cpp

        if adapter.before_load is not None:
            adapter.before_load()  # e.g. the server's hash check: raises to refuse the files
        if adapter.gguf_path is None or not adapter.gguf_path.is_file():
            raise TuneloopError(
                "this version has no GGUF LoRA export, which llama.cpp needs",
                where=adapter.id,
                hint="re-register the version, or serve it with --backend transformers",
            )
        handle = llama_cpp.llama_adapter_lora_init(self.llama.model, str(adapter.gguf_path).encode())
        if not handle:
            raise TuneloopError(
                "llama.cpp could not load the adapter (is it for this base?)",
                where=f"{adapter.id} ({adapter.gguf_path})",
            )
        self._adapters[adapter.id] = handle
        while len(self._adapters) > self.max_adapters:
            _, evicted = self._adapters.popitem(last=False)  # the newest, just loaded, is never evicted
            llama_cpp.llama_adapter_lora_free(evicted)
        return handle

    def format_prompt(self, messages: list[Message]) -> str:
        """The chat rendered by the model's template, ending with the assistant's turn opening."""
        import jinja2

        try:
            return self._formatter(messages=messages).prompt
        except (jinja2.TemplateError, ValueError, TypeError) as exc:
            raise chat_template_error(exc, self.base.id) from None

    def _start(self, messages: list[Message], params: GenerationParams, adapter: Adapter | None) -> TokenRun:
        self._use_adapter(adapter)
        # add_bos=False: the template writes every special token itself (as llama-cpp-python's own
        # chat handler does), so a BOS is not added twice.
        prompt = self.llama.tokenize(self.format_prompt(messages).encode(), add_bos=False, special=True)
        room = self.llama.n_ctx() - len(prompt)
        if room < 1:
            raise TuneloopError(
                f"the prompt is {len(prompt)} tokens, and the context window is {self.llama.n_ctx()}",
                where=self.base.id,
                hint="shorten the input, or load the backend with a larger n_ctx",
            )
        logprobs: list[TokenLogprob] = []
        return TokenRun(len(prompt), self._pieces(prompt, min(params.max_tokens, room), params, logprobs), logprobs)

    def _pieces(
        self, prompt: list[int], max_new: int, params: GenerationParams, logprobs: list[TokenLogprob]
    ) -> Generator[str, None, FinishReason]:
        # temperature 0 makes llama.cpp's sampler chain plain argmax. When sampling, top_k and min_p are
        # off so that only the OpenAI parameters (temperature, top_p) shape the distribution.
        self.llama.set_seed(params.seed if params.seed is not None else random.randrange(2**32))
        decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
        from llama_cpp import LogitsProcessorList

        grammar = None
        if params.json_schema is not None:
            grammar = LlamaGrammarFirst(
                self._vocab,
                self.llama.n_vocab(),
                llama_grammar(params.json_schema),
                greedy=params.temperature == 0 and self.grammar_first,
            )
        tokens = self.llama.generate(
            prompt,
            temp=params.temperature,
            top_p=params.top_p,
            top_k=0,
            min_p=0.0,
            repeat_penalty=1.0,
            logits_processor=LogitsProcessorList([grammar]) if grammar is not None else None,
        )
        try:
            for produced, token in enumerate(tokens, start=1):
                if self._is_end_of_turn(self._vocab, token):
                    return "stop"
                if grammar is not None:
                    grammar.accept(token)
                data = self.llama.detokenize([token])
                if params.logprobs:
                    logprobs.append(self._logprob(token, data, params.top_logprobs))
                yield decoder.decode(data)
                if produced >= max_new:
                    return "length"
            return "length"
        finally:
            if grammar is not None:
                grammar.close()

    def _logprob(self, token: int, data: bytes, top: int) -> TokenLogprob:
        """The chosen token's entry, from the logits it was sampled from.

        Right after ``generate`` yields a token, the context still holds the logits of the last position
        it evaluated, the ones the sampler just drew from (``llama_get_logits_ith(ctx, -1)``), so the
        model need not keep logits for every position (``logits_all``).
        """
        import llama_cpp
        import numpy as np

        row = llama_cpp.llama_get_logits_ith(self.llama.ctx, -1)
        logits = np.ctypeslib.as_array(row, shape=(self.llama.n_vocab(),))

        def token_bytes(token_id: int) -> bytes:
            # The chosen token's bytes are exactly what went into the text; alternatives are shown with
            # their special-token text, so the end of the turn reads as "<|im_end|>", not "".
            return data if token_id == token else self.llama.detokenize([token_id], special=True)

        return top_logprobs_of(logits, token, top, token_bytes)


def _token_text(llama: Any, token_id: int) -> str:
    return llama.detokenize([token_id], special=True).decode("utf-8", errors="replace") if token_id >= 0 else ""

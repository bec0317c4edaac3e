"""llama.cpp on CPU, through llama-cpp-python used as a library (the serving engine for laptops and CPUs).

The chat is formatted with the chat template stored in the GGUF file (or the catalog's, for a bundled
base whose GGUF has none: ``Base.chat_template``), the same template the transformers backend gets from
its tokenizer, so both engines see the same prompt tokens. The token loop is our own, over
``Llama.eval``: it gives exact token counts and the time of the first token, and lets a run of tokens the
grammar forces go into the model in one step.

Adapters: each version's GGUF LoRA is loaded once (``llama_adapter_lora_init``, tens of milliseconds),
kept in an LRU of ``max_adapters`` handles, and set on the one context per request.

What makes an extraction request fast on a CPU, each measured alone in benchmarks/serve_bench.py:
- the prompt's head (template opening and system prompt) is prefilled once per version and its KV
  restored after (``prompt_cache.py``); every request is otherwise prefilled from scratch, so an answer
  never depends on which request came before;
- tokens the grammar forces (JSON keys, quotes, colons) are appended in one step (``ForcedTokens``);
- ``n_threads="auto"`` measures the thread counts at load (``threads.py``).
"""

from __future__ import annotations

import codecs
import ctypes
import logging
import warnings
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
from tuneloop.serve.backends.prompt_cache import PrefixCache
from tuneloop.serve.backends.threads import ThreadChoice, choose_threads
from tuneloop.serve.grammar import ForcedTokens, LlamaGrammarFirst, llama_grammar

log = logging.getLogger(__name__)


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
        self.forced_tokens = options.forced_tokens
        self.forced_total = 0  # tokens appended without a decode step of their own, since load
        self.prefix_cache = PrefixCache(options.prefix_cache_mb * 2**20)
        self._adapters: OrderedDict[str, Any] = OrderedDict()  # version id -> llama.cpp adapter handle
        self._active: str | None = None  # the version id whose adapter is set on the context
        self._llg_tokenizer: Any = None  # llguidance's view of the vocabulary, built on first use (~0.6 s)
        # "native" serves the GGUF file as it is; "f16"/"f32" its float rewrite (bases/widen.py).
        self.llama = load_llamacpp(
            base,
            n_ctx=options.n_ctx,
            n_threads=None if options.n_threads == "auto" else options.n_threads,
            weights=options.weights,
            cache_dir=options.cache_dir,
        )
        self.threads: ThreadChoice | None = None  # what --threads auto measured and chose
        if options.n_threads == "auto":
            self.threads = choose_threads(self.llama)
            chosen = self.threads
            log.info("llama.cpp threads for %s: %d decoding, %d prefill", base.id, chosen.decode, chosen.batch)
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
            self.prefix_cache.clear()
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
        prompt = self._tokenize(self.format_prompt(messages))
        room = self.llama.n_ctx() - len(prompt)
        if room < 1:
            raise TuneloopError(
                f"the prompt is {len(prompt)} tokens, and the context window is {self.llama.n_ctx()}",
                where=self.base.id,
                hint="shorten the input, or load the backend with a larger n_ctx",
            )
        head = self.prefix_cache.head_length(messages, prompt, self.format_prompt, self._tokenize)
        logprobs: list[TokenLogprob] = []
        pieces = self._pieces(prompt, head, min(params.max_tokens, room), params, logprobs)
        return TokenRun(len(prompt), pieces, logprobs)

    def _tokenize(self, text: str) -> list[int]:
        return self.llama.tokenize(text.encode(), add_bos=False, special=True)

    def _prefill(self, prompt: list[int], head: int, then: list[int]) -> None:
        """Fill the context with ``prompt`` followed by ``then`` (tokens forced before the first choice).

        A cacheable head is restored, or prefilled alone and saved: either way the rest is computed in
        the same separate step, so both paths give the same bits (prompt_cache.py)."""
        self.llama.reset()
        if head and not self.prefix_cache.restore(self.llama, self._active, prompt[:head]):
            self.llama.eval(prompt[:head])
            self.prefix_cache.save(self.llama, self._active, prompt[:head])
        self.llama.eval(prompt[head:] + then)

    def _forcing(self, params: GenerationParams) -> ForcedTokens | None:
        """The forced-token tracker for a request, when it has a schema and no per-token logprobs
        (forced tokens are appended without a step of their own, so they have no logits)."""
        if not self.forced_tokens or params.json_schema is None or params.logprobs:
            return None
        if self._llg_tokenizer is None:
            from llguidance.llamacpp import lltokenizer_from_vocab

            with warnings.catch_warnings():  # it reads each token's attributes through a deprecated name
                warnings.simplefilter("ignore", DeprecationWarning)
                self._llg_tokenizer = lltokenizer_from_vocab(self._vocab)
        try:
            return ForcedTokens(self._llg_tokenizer, params.json_schema)
        except TuneloopError:  # a schema llguidance can't take: decode token by token
            return None

    def _pieces(
        self, prompt: list[int], head: int, max_new: int, params: GenerationParams, logprobs: list[TokenLogprob]
    ) -> Generator[str, None, FinishReason]:
        import llama_cpp
        import numpy as np

        decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
        rng = np.random.default_rng(params.seed)
        grammar = None
        if params.json_schema is not None:
            grammar = LlamaGrammarFirst(
                self._vocab,
                self.llama.n_vocab(),
                llama_grammar(params.json_schema),
                greedy=params.temperature == 0 and self.grammar_first,
            )
        forcing = self._forcing(params)
        pending = forcing.initial()[:max_new] if forcing else []
        produced = 0

        def emit(token: int) -> str:
            if grammar is not None:
                grammar.accept(token)
            return decoder.decode(self.llama.detokenize([token]))

        try:
            self._prefill(prompt, head, pending)
            while True:
                self.forced_total += len(pending)
                for token in pending:  # forced: in the context already, emitted as they are
                    produced += 1
                    yield emit(token)
                if produced >= max_new:
                    return "length"
                row = llama_cpp.llama_get_logits_ith(self.llama.ctx, -1)
                logits = np.ctypeslib.as_array(row, shape=(self.llama.n_vocab(),))
                token = _sample(grammar(None, logits) if grammar is not None else logits, params, rng)
                if self._is_end_of_turn(self._vocab, token):
                    return "stop"
                if params.logprobs:  # from this step's logits, before the next step overwrites them
                    logprobs.append(self._logprob(token, self.llama.detokenize([token]), params.top_logprobs))
                produced += 1
                yield emit(token)
                if produced >= max_new:
                    return "length"
                pending = forcing.after(token)[: max_new - produced] if forcing else []
                self.llama.eval([token, *pending])
        finally:
            if grammar is not None:
                grammar.close()

    def _logprob(self, token: int, data: bytes, top: int) -> TokenLogprob:
        """The chosen token's entry, from the logits it was sampled from.

        Right after a token is sampled, the context still holds the logits of the last position it
        evaluated, the ones the token was drawn from (``llama_get_logits_ith(ctx, -1)``), so the model
        need not keep logits for every position (``logits_all``).
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


def _sample(logits: Any, params: GenerationParams, rng: Any) -> int:
    """The next token from one step's logits: the argmax at temperature 0, else a draw from the softmax
    at the temperature, within the top_p nucleus (temperature first, then top_p, as OpenAI and vLLM)."""
    import numpy as np

    if params.temperature == 0:
        return int(np.argmax(logits))
    scaled = np.asarray(logits, dtype=np.float64) / params.temperature
    probs = np.exp(scaled - scaled.max())
    probs /= probs.sum()
    if params.top_p < 1.0:
        order = np.argsort(-probs, kind="stable")
        keep = order[: int(np.searchsorted(np.cumsum(probs[order]), params.top_p)) + 1]
        return int(rng.choice(keep, p=probs[keep] / probs[keep].sum()))
    return int(rng.choice(len(probs), p=probs))


def _token_text(llama: Any, token_id: int) -> str:
    return llama.detokenize([token_id], special=True).decode("utf-8", errors="replace") if token_id >= 0 else ""

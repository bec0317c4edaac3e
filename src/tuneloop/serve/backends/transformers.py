"""HF transformers: the exact reference backend (same weights and code path as training), slow on CPU.

``model.generate`` runs in a worker thread and hands each new token id over a queue, so whole and
streamed replies share one path with exact token counts. (``TextIteratorStreamer`` hands over text
split at word boundaries, which loses the per-token count and the first-token time.)

Structured output: a request's JSON schema becomes an llguidance matcher (``serve/grammar.py``) that
masks every step's logits to the tokens the schema still allows, as a logits processor. Log probabilities
are read by another logits processor placed before the mask, so they are the model's own.

Adapters: PEFT injects LoRA layers into the one loaded base in place; each version is loaded once under
its own adapter name, kept in an LRU of ``max_adapters``, and switched per request (``set_adapter``), or
switched off for requests to the bare base.
"""

from __future__ import annotations

import hashlib
import queue
import threading
from collections import OrderedDict
from collections.abc import Generator
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

from tuneloop.bases import Base, end_of_turn_token, load_transformers
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

if TYPE_CHECKING:
    import torch

_DONE = object()


class TransformersBackend(TokenStreamBackend):
    name: ClassVar[str] = "transformers"

    def __init__(
        self,
        base: Base,
        *,
        device: str = "cpu",
        dtype: torch.dtype | None = None,
        cache_dir: Path | None = None,
        max_adapters: int = 8,
    ):
        super().__init__()
        self.base = base
        self.device = device
        self.max_adapters = max_adapters
        self._peft: Any = None  # the PeftModel wrapping self.model, once a first adapter is loaded
        self._loaded: OrderedDict[str, str] = OrderedDict()  # version id -> PEFT adapter name, LRU order
        self.model, self.tokenizer = load_transformers(base, dtype, device=device, cache_dir=cache_dir)
        if not self.tokenizer.chat_template:
            raise TuneloopError(
                "the tokenizer has no chat template, so chats can't be formatted",
                where=base.id,
                hint="use an instruct/chat model",
            )
        end_ids = {self.tokenizer.eos_token_id}
        if (eot := end_of_turn_token(self.tokenizer)) is not None:
            end_ids.add(self.tokenizer.convert_tokens_to_ids(eot))
        self._end_of_turn_ids = sorted(i for i in end_ids if i is not None)
        self._max_positions = getattr(self.model.config, "max_position_embeddings", None)
        self._llg_tokenizer: Any = None  # llguidance's view of the vocabulary, built on first use (~1 s)

    @property
    def llg_tokenizer(self) -> Any:
        """llguidance's tokenizer over this model's vocabulary: grammars and each token's bytes."""
        if self._llg_tokenizer is None:
            import llguidance.hf

            # The end of the turn is what a finished grammar allows; the logits' width is the model's
            # vocabulary, which may be padded beyond the tokenizer's.
            self._llg_tokenizer = llguidance.hf.from_tokenizer(
                self.tokenizer, n_vocab=self._vocab_size(), eos_token=self._end_of_turn_ids
            )
        return self._llg_tokenizer

    def _vocab_size(self) -> int:
        return int(self.model.get_output_embeddings().weight.shape[0])

    def token_bytes(self, token_id: int) -> bytes:
        """A token's bytes (a byte-level token may hold part of a UTF-8 character)."""
        return bytes(self.llg_tokenizer.decode_bytes([token_id]))

    def prompt_ids(self, messages: list[Message]) -> torch.Tensor:
        """The chat's token ids (1 x n), ending with the assistant's turn opening."""
        import jinja2

        try:
            encoded = self.tokenizer.apply_chat_template(
                messages, add_generation_prompt=True, return_tensors="pt", return_dict=True
            )
        except (jinja2.TemplateError, ValueError, TypeError) as exc:
            raise chat_template_error(exc, self.base.id) from None
        return encoded["input_ids"].to(self.device)

    def _use_adapter(self, adapter: Adapter | None) -> None:
        """Make ``adapter`` (None: the bare base) the one the next generation runs with."""
        if adapter is None:
            if self._peft is not None:
                self._peft.base_model.disable_adapter_layers()
            return
        name = self._loaded.get(adapter.id)
        if name is None:
            name = self._load_adapter(adapter)
        self._loaded.move_to_end(adapter.id)
        self._peft.base_model.enable_adapter_layers()
        self._peft.set_adapter(name)

    def _load_adapter(self, adapter: Adapter) -> str:
        from peft import PeftModel

        # PEFT adapter names become module keys, which may not contain "." or "@".
        name = "v_" + hashlib.sha256(adapter.id.encode()).hexdigest()[:16]
        try:
            if self._peft is None:
                self._peft = PeftModel.from_pretrained(self.model, str(adapter.peft_dir), adapter_name=name)
                self._peft.eval()
            else:
                self._peft.load_adapter(str(adapter.peft_dir), adapter_name=name)
        except (OSError, ValueError, KeyError, RuntimeError) as exc:
            raise TuneloopError(
                f"could not load the adapter: {exc}", where=f"{adapter.id} ({adapter.peft_dir})"
            ) from None
        self._loaded[adapter.id] = name
        while len(self._loaded) > self.max_adapters:
            _, evicted = self._loaded.popitem(last=False)  # never the one just loaded: it is the newest
            self._peft.delete_adapter(evicted)
        return name

    @property
    def loaded_adapters(self) -> list[str]:
        """Version ids of the adapters in memory, least recently used first."""
        return list(self._loaded)

    def _start(self, messages: list[Message], params: GenerationParams, adapter: Adapter | None) -> TokenRun:
        self._use_adapter(adapter)
        input_ids = self.prompt_ids(messages)
        prompt_tokens = int(input_ids.shape[1])
        max_new = params.max_tokens
        if self._max_positions:
            room = self._max_positions - prompt_tokens
            if room < 1:
                raise TuneloopError(
                    f"the prompt is {prompt_tokens} tokens, and the model's context is {self._max_positions}",
                    where=self.base.id,
                    hint="shorten the input",
                )
            max_new = min(max_new, room)
        logprobs: list[TokenLogprob] = []
        return TokenRun(prompt_tokens, self._pieces(input_ids, max_new, params, logprobs), logprobs)

    def _pieces(
        self, input_ids: torch.Tensor, max_new: int, params: GenerationParams, logprobs: list[TokenLogprob]
    ) -> Generator[str, None, FinishReason]:
        import torch
        from transformers import LogitsProcessor, LogitsProcessorList, StoppingCriteria, StoppingCriteriaList
        from transformers.generation.streamers import BaseStreamer

        tokens: queue.Queue[Any] = queue.Queue()
        cancelled = threading.Event()
        failure: list[BaseException] = []

        class TokenQueue(BaseStreamer):
            """Receives the prompt first, then each new token id."""

            prompt_seen = False

            def put(self, value: torch.Tensor) -> None:
                if not self.prompt_seen:
                    self.prompt_seen = True
                    return
                for token_id in value.reshape(-1).tolist():
                    tokens.put(token_id)

            def end(self) -> None:
                pass  # the worker signals the end itself, also when generate raises

        class Cancelled(StoppingCriteria):
            def __call__(self, input_ids: torch.Tensor, scores: torch.Tensor, **kwargs: Any) -> torch.Tensor:
                return torch.full((input_ids.shape[0],), cancelled.is_set(), dtype=torch.bool)

        decoding: dict[str, Any] = (
            {"do_sample": False}
            if params.greedy
            else {"do_sample": True, "temperature": params.temperature, "top_p": params.top_p, "top_k": 0}
        )
        steps: queue.Queue[torch.Tensor] = queue.Queue()  # each step's raw logits, when logprobs are asked for

        class RecordLogprobs(LogitsProcessor):
            """Keeps each step's distribution as the model gave it (first in the list: before any mask)."""

            def __call__(self, input_ids: torch.Tensor, scores: torch.Tensor) -> torch.Tensor:
                steps.put(scores[0].detach().to("cpu", torch.float32).clone())
                return scores

        # Custom processors run after transformers' own and before temperature/top_p, so top_p picks
        # among the tokens the grammar allows (never an empty set).
        processors: list[Any] = []
        if params.logprobs:
            processors.append(RecordLogprobs())
        if params.json_schema is not None:
            processors.append(self._grammar_mask(params.json_schema, prompt_length=int(input_ids.shape[1])))

        def work() -> None:
            try:
                with torch.random.fork_rng(devices=[]):  # a seed must not reset the process-wide RNG
                    if params.seed is not None:
                        torch.manual_seed(params.seed)
                    self.model.generate(
                        input_ids,
                        attention_mask=torch.ones_like(input_ids),
                        max_new_tokens=max_new,
                        eos_token_id=self._end_of_turn_ids,
                        pad_token_id=self.tokenizer.pad_token_id,
                        streamer=TokenQueue(),
                        stopping_criteria=StoppingCriteriaList([Cancelled()]),
                        logits_processor=LogitsProcessorList(processors),
                        **decoding,
                    )
            except BaseException as exc:
                failure.append(exc)
            finally:
                tokens.put(_DONE)

        worker = threading.Thread(target=work, name="tuneloop-transformers-generate", daemon=True)
        worker.start()
        generated: list[int] = []
        emitted = ""
        try:
            while (token_id := tokens.get()) is not _DONE:
                if token_id in self._end_of_turn_ids:
                    return "stop"
                generated.append(token_id)
                if params.logprobs:
                    logprobs.append(top_logprobs_of(steps.get(), token_id, params.top_logprobs, self.token_bytes))
                # Decode the whole reply each time: tokens can merge into one character (UTF-8
                # bytes split across byte-level BPE tokens), shown as U+FFFD until complete.
                text = self.tokenizer.decode(generated, skip_special_tokens=True)
                if text.endswith("\ufffd"):
                    yield ""
                    continue
                piece, emitted = text[len(emitted) :], text
                yield piece
            if failure:
                raise failure[0]
            return "length"
        finally:
            cancelled.set()
            worker.join()

    def _grammar_mask(self, schema: dict[str, Any], *, prompt_length: int) -> Any:
        """A logits processor that keeps only the tokens ``schema``'s grammar allows next."""
        import numpy as np
        import torch
        from llguidance import LLMatcher
        from transformers import LogitsProcessor

        from tuneloop.serve.grammar import llguidance_grammar

        matcher = LLMatcher(self.llg_tokenizer, llguidance_grammar(schema), log_level=0)
        vocab = self._vocab_size()
        end_of_turn = self._end_of_turn_ids

        class GrammarMask(LogitsProcessor):
            consumed = 0

            def __call__(self, input_ids: torch.Tensor, scores: torch.Tensor) -> torch.Tensor:
                # Called once per step with everything so far: feed the matcher the token chosen last step.
                for token in input_ids[0, prompt_length + self.consumed :].tolist():
                    matcher.consume_token(token)
                    self.consumed += 1
                if matcher.is_error():
                    # Cannot happen for tokens it allowed; if it does, end the turn: validation after
                    # decoding reports the broken answer instead of the model running on unconstrained.
                    allowed = np.zeros(vocab, dtype=bool)
                    allowed[end_of_turn] = True
                else:
                    bits = np.frombuffer(matcher.compute_bitmask(), dtype=np.uint8)
                    allowed = np.unpackbits(bits, bitorder="little")[:vocab].astype(bool)
                mask = torch.from_numpy(~allowed).to(scores.device)
                width = min(scores.shape[-1], mask.shape[0])
                masked = scores.clone()
                masked[:, :width] = masked[:, :width].masked_fill(mask[:width], float("-inf"))
                masked[:, width:] = float("-inf")
                return masked

        return GrammarMask()

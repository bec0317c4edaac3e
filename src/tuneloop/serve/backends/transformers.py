"""HF transformers: the exact reference backend (same weights and code path as training), slow on CPU.

Batching: calls are not serialised. Each call tokenizes its chat in the caller's thread and queues a
*row*; one scheduler thread owns the model, takes the first waiting row, gathers more for at most
``batch_wait_ms`` (up to ``max_batch_size``) and decodes them together: the prompts left-padded with an
attention mask and explicit position ids, one forward pass per step for the whole batch. Each row keeps
its own adapter, sampling parameters (temperature, top_p, its own seeded RNG), grammar, logprobs and
``max_tokens``; a row that ends (end of turn, ``max_tokens``, or its caller stopped reading: a stop
string, a closed stream) leaves the batch at the next step, its KV cache rows dropped, so it holds nobody
up. Rows that arrive while a batch runs wait for the next one (no joining mid-decode). Every new token id
goes to its row's queue; ``TokenStreamBackend`` turns that into text, stop strings and streaming, as for
llama.cpp. Greedy results equal one-at-a-time results (tests/test_batching.py); the loop is our own
rather than ``model.generate`` because generate applies one temperature, top_p and set of logits
processors to the whole batch.

Structured output: a request's JSON schema becomes an llguidance matcher (``serve/grammar.py``) per row
that masks the row's logits to the tokens the schema still allows. Log probabilities are read from the
raw logits before the mask, so they are the model's own.

Adapters: PEFT injects LoRA layers into the one loaded base in place; each version is loaded once under
its own adapter name, kept in an LRU of ``max_adapters``. A batch mixes them through PEFT's mixed-batch
inference: ``adapter_names=[...]`` gives every row its adapter (``"__base__"``: the bare base), so the
base's matmuls are shared and each LoRA runs on its own rows only. A batch holds at most
``max_adapters`` distinct versions, so loading one for it never evicts another it needs; rows beyond
that wait, first in line, for the next batch.
"""

from __future__ import annotations

import hashlib
import inspect
import queue
import threading
import time
from collections import OrderedDict, deque
from collections.abc import Generator
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass, field
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
from tuneloop.serve.backends.options import TransformersOptions

if TYPE_CHECKING:
    import torch

BASE_ADAPTER = "__base__"  # PEFT's name, in ``adapter_names``, for rows that run on the bare base
_CLOSE = object()


@dataclass(eq=False)
class _Row:
    """One call's generation as the scheduler sees it. ``out`` receives ``("token", id, raw logits or
    None)`` per generated token, then ``("end", finish reason)`` or ``("error", exception)``."""

    input_ids: list[int]
    params: GenerationParams
    max_new: int
    adapter: Adapter | None
    out: queue.Queue[tuple[Any, ...]] = field(default_factory=queue.Queue)
    cancelled: threading.Event = field(default_factory=threading.Event)
    generated: int = 0
    grammar: Any = None  # _Grammar, built in the scheduler when the batch starts
    rng: Any = None  # torch.Generator for sampled rows

    def finish(self, kind: str, value: Any) -> None:
        self.out.put((kind, value))


class TransformersBackend(TokenStreamBackend):
    name: ClassVar[str] = "transformers"

    def __init__(self, base: Base, options: TransformersOptions | None = None):
        super().__init__()
        options = options or TransformersOptions()
        if options.max_batch_size < 1:
            raise TuneloopError(f"must be at least 1, got {options.max_batch_size}", where="max_batch_size")
        if options.max_adapters < 1:
            raise TuneloopError(f"must be at least 1, got {options.max_adapters}", where="max_adapters")
        self.base = base
        self.device = options.device
        self.max_adapters = options.max_adapters
        self.max_batch_size = options.max_batch_size
        self.batch_wait_s = options.batch_wait_ms / 1000
        self._peft: Any = None  # the PeftModel wrapping self.model, once a first adapter is loaded
        self._loaded: OrderedDict[str, str] = OrderedDict()  # version id -> PEFT adapter name, LRU order
        self._loaded_lock = threading.Lock()  # the scheduler changes it while the engine reads it
        self.model, self.tokenizer = load_transformers(
            base, options.dtype, device=self.device, cache_dir=options.cache_dir
        )
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
        # Left padding is masked out, so any id will do; the pad token when the tokenizer has one.
        pad = self.tokenizer.pad_token_id
        self._pad_id = int(pad if pad is not None else self._end_of_turn_ids[0])
        self._max_positions = getattr(self.model.config, "max_position_embeddings", None)
        # transformers 5 renamed the forward's ``past_key_values`` to ``cache`` (the old name warns, then goes).
        forward_parameters = inspect.signature(self.model.forward).parameters
        self._cache_kwarg = "cache" if "cache" in forward_parameters else "past_key_values"
        self._llg_tokenizer: Any = None  # llguidance's view of the vocabulary, built on first use (~1 s)
        self._llg_lock = threading.Lock()  # built from callers' threads and the scheduler's
        # Callers tokenize in their own threads; a fast tokenizer that changes its padding/truncation
        # settings while another thread encodes fails ("Already borrowed"), so encoding is one at a time.
        self._tokenize_lock = threading.Lock()
        self._requests: queue.Queue[Any] = queue.Queue()
        self._held: deque[_Row] = deque()  # rows a full batch left out: first in line for the next one
        self._closed = False
        # Batches decoded, rows in them, and row-steps (a row's share of a forward pass): what tests look at.
        self._batches = self._batched_rows = self._row_steps = 0
        self._scheduler = threading.Thread(target=self._schedule, name="tuneloop-transformers-batch", daemon=True)
        self._scheduler.start()

    def _exclusive(self) -> AbstractContextManager[Any]:
        # The scheduler thread is the only one touching the model; callers only queue rows and read.
        return nullcontext()

    @property
    def llg_tokenizer(self) -> Any:
        """llguidance's tokenizer over this model's vocabulary: grammars and each token's bytes."""
        with self._llg_lock:
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
            with self._tokenize_lock:
                encoded = self.tokenizer.apply_chat_template(
                    messages, add_generation_prompt=True, return_tensors="pt", return_dict=True
                )
        except (jinja2.TemplateError, ValueError, TypeError) as exc:
            raise chat_template_error(exc, self.base.id) from None
        return encoded["input_ids"].to(self.device)

    @property
    def loaded_adapters(self) -> list[str]:
        """Version ids of the adapters in memory, least recently used first."""
        with self._loaded_lock:
            return list(self._loaded)

    @property
    def batch_stats(self) -> tuple[int, int, int]:
        """(batches decoded, rows in them, row-steps): rows / batches is the mean batch size; row-steps
        count each row once per forward pass it took part in (finished rows leave, so they stop counting)."""
        return self._batches, self._batched_rows, self._row_steps

    def close(self) -> None:
        """Stop the scheduler after the batch it is decoding; calls still waiting get an error."""
        if not self._closed:
            self._closed = True
            self._requests.put(_CLOSE)  # wakes the scheduler if it waits for a first row
            self._scheduler.join()

    # --- the caller's side -------------------------------------------------------------------------

    def _start(self, messages: list[Message], params: GenerationParams, adapter: Adapter | None) -> TokenRun:
        if self._closed:
            raise TuneloopError("the transformers backend is closed", where=self.base.id)
        input_ids = self.prompt_ids(messages)[0].tolist()
        prompt_tokens = len(input_ids)
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
        if params.json_schema is not None:
            _ = self.llg_tokenizer  # built here, in the caller's thread, not while a batch waits on it
        row = _Row(input_ids, params, max_new, adapter)
        self._requests.put(row)
        logprobs: list[TokenLogprob] = []
        return TokenRun(prompt_tokens, self._pieces(row, logprobs), logprobs)

    def _pieces(self, row: _Row, logprobs: list[TokenLogprob]) -> Generator[str, None, FinishReason]:
        generated: list[int] = []
        emitted = ""
        try:
            while True:
                kind, *rest = row.out.get()
                if kind == "error":
                    raise rest[0]
                if kind == "end":
                    return rest[0]
                token_id, raw = rest
                generated.append(token_id)
                if row.params.logprobs:
                    logprobs.append(top_logprobs_of(raw, token_id, row.params.top_logprobs, self.token_bytes))
                # Decode the whole reply each time: tokens can merge into one character (UTF-8
                # bytes split across byte-level BPE tokens), shown as U+FFFD until complete.
                text = self.tokenizer.decode(generated, skip_special_tokens=True)
                if text.endswith("\ufffd"):
                    yield ""
                    continue
                piece, emitted = text[len(emitted) :], text
                yield piece
        finally:
            # Reached the end, or the caller stopped reading (a stop string, a closed stream): either
            # way the scheduler drops the row from its batch at the next step.
            row.cancelled.set()

    # --- the scheduler's side ----------------------------------------------------------------------

    def _schedule(self) -> None:
        while not self._closed:
            batch = self._gather()
            if batch:
                self._run(batch)
        leftover = list(self._held)
        self._held.clear()
        while True:
            try:
                item = self._requests.get_nowait()
            except queue.Empty:
                break
            if item is not _CLOSE:
                leftover.append(item)
        for row in leftover:
            row.finish("error", TuneloopError("the transformers backend was closed", where=self.base.id))

    def _gather(self) -> list[_Row]:
        """The next batch: the first row waiting, then whatever else arrives within ``batch_wait_s``, up
        to ``max_batch_size`` rows over at most ``max_adapters`` versions (empty when woken to close)."""
        candidates = self._held
        self._held = deque()
        left_out: list[_Row] = []
        batch: list[_Row] = []
        versions: set[str] = set()
        deadline: float | None = None
        while len(batch) < self.max_batch_size:
            if candidates:
                item: Any = candidates.popleft()
            else:
                try:
                    if not batch and not left_out:
                        item = self._requests.get()  # idle: wait for the first row, however long
                    else:
                        if deadline is None:
                            deadline = time.monotonic() + self.batch_wait_s
                        item = self._requests.get(timeout=max(deadline - time.monotonic(), 0))
                except queue.Empty:
                    break
            if item is _CLOSE:
                break
            row: _Row = item
            if row.cancelled.is_set():
                row.finish("end", "length")
                continue
            version = row.adapter.id if row.adapter is not None else None
            if version is not None and version not in versions and len(versions) >= self.max_adapters:
                left_out.append(row)
                continue
            if version is not None:
                versions.add(version)
            batch.append(row)
        self._held = deque([*left_out, *candidates])
        return batch

    def _run(self, batch: list[_Row]) -> None:
        import torch

        rows = self._prepare(batch)
        if not rows:
            return
        self._batches += 1
        self._batched_rows += len(rows)
        try:
            with torch.inference_mode():
                self._decode(rows)
        except Exception as exc:  # the engine failed: every row still running hears of it, the next batch runs
            for row in rows:
                row.finish("error", exc)

    def _prepare(self, batch: list[_Row]) -> list[_Row]:
        """Load the batch's adapters (rows whose adapter fails get the error) and build each row's
        grammar and RNG; the rows ready to decode."""
        import torch

        # Touch the loaded ones first, so loading the others evicts none this batch needs.
        with self._loaded_lock:
            for row in batch:
                if row.adapter is not None and row.adapter.id in self._loaded:
                    self._loaded.move_to_end(row.adapter.id)
        ready = []
        failed: dict[str, Exception] = {}
        for row in batch:
            try:
                if row.adapter is not None and row.adapter.id not in self._loaded:
                    if row.adapter.id in failed:
                        raise failed[row.adapter.id]
                    try:
                        self._load_adapter(row.adapter)
                    except Exception as exc:
                        failed[row.adapter.id] = exc
                        raise
                if row.params.json_schema is not None:
                    row.grammar = _Grammar(self, row.params.json_schema)
                if not row.params.greedy:
                    # A seeded row repeats whatever it is batched with; an unseeded one draws its seed from
                    # torch's global RNG (so torch.manual_seed still makes a whole run repeatable).
                    seed = row.params.seed if row.params.seed is not None else int(torch.randint(2**62, ()).item())
                    row.rng = torch.Generator(device=self.device).manual_seed(seed % 2**63)
            except Exception as exc:
                row.finish("error", exc)
                continue
            ready.append(row)
        return ready

    def _load_adapter(self, adapter: Adapter) -> str:
        from peft import PeftModel

        # PEFT adapter names become module keys, which may not contain "." or "@".
        name = "v_" + hashlib.sha256(adapter.id.encode()).hexdigest()[:16]
        if adapter.before_load is not None:
            adapter.before_load()  # e.g. the server's hash check: raises to refuse the files
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
        with self._loaded_lock:
            self._loaded[adapter.id] = name
            evicted = []
            while len(self._loaded) > self.max_adapters:
                evicted.append(self._loaded.popitem(last=False)[1])  # the batch's own were touched last
        for old in evicted:
            self._peft.delete_adapter(old)
        return name

    def _decode(self, rows: list[_Row]) -> None:
        """Prefill the left-padded prompts, then one token per row per step until every row has ended."""
        import torch

        width = max(len(row.input_ids) for row in rows)
        input_ids = torch.tensor(
            [[self._pad_id] * (width - len(row.input_ids)) + row.input_ids for row in rows], device=self.device
        )
        attention = torch.tensor(
            [[0] * (width - len(row.input_ids)) + [1] * len(row.input_ids) for row in rows], device=self.device
        )
        # Each row counts its positions from its own first token, as it would alone: left padding must
        # not shift the rotary positions (the model would otherwise derive them from the cache length).
        positions = (attention.cumsum(-1) - 1).clamp(min=0)
        names = [self._loaded[row.adapter.id] if row.adapter is not None else BASE_ADAPTER for row in rows]
        cache: Any = None
        while rows:
            options: dict[str, Any] = {"adapter_names": names} if self._peft is not None else {}
            model = self._peft if self._peft is not None else self.model
            output = model(
                input_ids=input_ids,
                attention_mask=attention,
                position_ids=positions,
                use_cache=True,
                logits_to_keep=1,
                **{self._cache_kwarg: cache},
                **options,
            )
            cache = output["cache"] if "cache" in output else output["past_key_values"]
            self._row_steps += len(rows)
            logits = output.logits[:, -1, :].float()
            keep: list[int] = []
            next_ids: list[int] = []
            for index, row in enumerate(rows):
                if row.cancelled.is_set():  # its caller stopped reading: drop it, say nothing more
                    continue
                token = self._next_token(row, logits[index])
                if token in self._end_of_turn_ids:
                    row.finish("end", "stop")
                    continue
                raw = logits[index].to("cpu").clone() if row.params.logprobs else None
                row.out.put(("token", token, raw))
                row.generated += 1
                if row.generated >= row.max_new:
                    row.finish("end", "length")
                    continue
                if row.grammar is not None:
                    row.grammar.consume(token)
                keep.append(index)
                next_ids.append(token)
            if not keep:
                return
            if len(keep) < len(rows):
                # Finished rows leave: their KV cache rows, mask and positions go with them.
                kept = torch.tensor(keep, device=self.device)
                cache.batch_select_indices(kept)
                attention, positions = attention[kept], positions[kept]
                rows = [rows[index] for index in keep]
                names = [names[index] for index in keep]
            input_ids = torch.tensor(next_ids, device=self.device).unsqueeze(-1)
            attention = torch.cat([attention, attention.new_ones((len(rows), 1))], dim=-1)
            positions = positions[:, -1:] + 1

    def _next_token(self, row: _Row, logits: torch.Tensor) -> int:
        """The row's next token from its logits: grammar mask, then greedy, or temperature, top_p and
        a draw from the row's own RNG (the order transformers' generate uses)."""
        import torch

        scores = row.grammar.mask(logits) if row.grammar is not None else logits
        params = row.params
        if params.greedy:
            return int(scores.argmax())
        scores = scores / params.temperature
        if params.top_p < 1:
            # Keep the smallest set of likeliest tokens whose probability reaches top_p (at least one).
            ordered, order = torch.sort(scores, descending=False)
            cumulative = ordered.softmax(-1).cumsum(-1)
            remove = cumulative <= 1 - params.top_p
            remove[-1] = False
            scores = scores.clone()
            scores[order[remove]] = float("-inf")
        return int(torch.multinomial(scores.softmax(-1), 1, generator=row.rng))


class _Grammar:
    """One row's llguidance matcher: masks the row's logits to what the schema allows next."""

    def __init__(self, backend: TransformersBackend, schema: dict[str, Any]) -> None:
        from llguidance import LLMatcher

        from tuneloop.serve.grammar import llguidance_grammar

        self.matcher = LLMatcher(backend.llg_tokenizer, llguidance_grammar(schema), log_level=0)
        self.vocab = backend._vocab_size()
        self.end_of_turn = backend._end_of_turn_ids

    def consume(self, token: int) -> None:
        self.matcher.consume_token(token)

    def mask(self, scores: torch.Tensor) -> torch.Tensor:
        import numpy as np
        import torch

        if self.matcher.is_error():
            # Cannot happen for tokens it allowed; if it does, end the turn: validation after decoding
            # reports the broken answer instead of the model running on unconstrained.
            allowed = np.zeros(self.vocab, dtype=bool)
            allowed[self.end_of_turn] = True
        else:
            bits = np.frombuffer(self.matcher.compute_bitmask(), dtype=np.uint8)
            allowed = np.unpackbits(bits, bitorder="little")[: self.vocab].astype(bool)
        mask = torch.from_numpy(~allowed).to(scores.device)
        width = min(scores.shape[-1], mask.shape[0])
        masked = scores.clone()
        masked[:width] = masked[:width].masked_fill(mask[:width], float("-inf"))
        masked[width:] = float("-inf")
        return masked

"""The keys and values of prompt heads, computed once per version and restored (llama.cpp).

Requests to one version mostly share their head: the chat template's opening and the task's system
prompt, about a hundred tokens that cost a second of prefill on two CPU cores. The head's KV under a
given adapter is the same every time, so it is saved after its first prefill (``llama_state_seq_get_data``,
the one sequence, a few MB) and restored for the next request (milliseconds).

Cached and uncached answers are bit-identical because every request with a cacheable head is prefilled
in the same two steps, the head and then the rest: restoring the head's saved KV leaves the context exactly
as prefilling it would, and the rest is then computed identically. (Prefilling in one step instead can
round differently from two, so a cache that split only when it had a hit would change answers.)

The head ends where the first non-system message's content begins; it is found by rendering the chat's
system messages before two different placeholder contents and taking what the renderings share, so it
works for any chat template. Entries are keyed by the version (None: the bare base) and the head's tokens,
and evicted least recently used past ``max_bytes``.
"""

from __future__ import annotations

import ctypes
import hashlib
from collections import OrderedDict
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from tuneloop.errors import TuneloopError
from tuneloop.generation import Message
from tuneloop.serve.backends.base import SYSTEM_ROLES

# Heads shorter than this are prefilled with the rest in one step: restoring saves too little to matter.
MIN_CACHED_HEAD_TOKENS = 32


@dataclass
class PrefixCacheStats:
    hits: int = 0
    misses: int = 0
    evictions: int = 0


class PrefixCache:
    """Saved KV of prompt heads for one llama.cpp context, LRU within ``max_bytes`` (0: off)."""

    def __init__(self, max_bytes: int) -> None:
        self.max_bytes = max_bytes
        self.stats = PrefixCacheStats()
        self._entries: OrderedDict[tuple[str | None, str], bytes] = OrderedDict()
        self._heads: OrderedDict[str, str | None] = OrderedDict()  # system messages (JSON) -> head text

    @property
    def enabled(self) -> bool:
        return self.max_bytes > 0

    @property
    def bytes_used(self) -> int:
        return sum(len(state) for state in self._entries.values())

    def head_length(self, messages: list[Message], prompt: Sequence[int], render: Callable, tokenize: Callable) -> int:
        """How many of ``prompt``'s tokens are the chat's head (0: none worth caching).

        ``render(messages)`` is the chat template, ``tokenize(text)`` the model's tokenizer."""
        if not self.enabled:
            return 0
        count = 0
        while count < len(messages) and messages[count]["role"] in SYSTEM_ROLES:
            count += 1
        if count == len(messages):
            return 0  # nothing after the system messages: the head would be the whole prompt
        key = repr((messages[:count], messages[count]["role"]))
        if key not in self._heads:
            self._heads[key] = _shared_head(messages[:count], messages[count]["role"], render)
            while len(self._heads) > 256:
                self._heads.popitem(last=False)
        self._heads.move_to_end(key)
        text = self._heads[key]
        if text is None:
            return 0
        head = tokenize(text)
        # The head must be a token prefix of the whole prompt (a template could merge across the boundary).
        if len(head) < MIN_CACHED_HEAD_TOKENS or list(prompt[: len(head)]) != list(head):
            return 0
        return len(head)

    def restore(self, llama: Any, version: str | None, head: Sequence[int]) -> bool:
        """Put the head's saved KV in the context (True), or False when it is not cached."""
        import llama_cpp

        key = _key(version, head)
        state = self._entries.get(key)
        if state is None:
            self.stats.misses += 1
            return False
        self._entries.move_to_end(key)
        llama.reset()
        llama_cpp.llama_memory_seq_rm(llama_cpp.llama_get_memory(llama.ctx), -1, -1, -1)
        buffer = (ctypes.c_uint8 * len(state)).from_buffer_copy(state)
        if llama_cpp.llama_state_seq_set_data(llama.ctx, buffer, len(state), 0) != len(state):
            del self._entries[key]  # unusable: prefill instead
            self.stats.misses += 1
            return False
        # Tell llama-cpp-python what the context holds, as its own eval would have.
        llama.input_ids[: len(head)] = head
        llama.n_tokens = len(head)
        self.stats.hits += 1
        return True

    def save(self, llama: Any, version: str | None, head: Sequence[int]) -> None:
        """Save the context's KV, which holds exactly the head, under (version, head)."""
        import llama_cpp

        size = llama_cpp.llama_state_seq_get_size(llama.ctx, 0)
        if size > self.max_bytes:
            return
        buffer = (ctypes.c_uint8 * size)()
        written = llama_cpp.llama_state_seq_get_data(llama.ctx, buffer, size, 0)
        self._entries[_key(version, head)] = bytes(buffer[:written])
        while self.bytes_used > self.max_bytes:
            self._entries.popitem(last=False)
            self.stats.evictions += 1

    def clear(self) -> None:
        self._entries.clear()


def _key(version: str | None, head: Sequence[int]) -> tuple[str | None, str]:
    return version, hashlib.sha256(",".join(map(str, head)).encode()).hexdigest()


def _shared_head(system: list[Message], next_role: str, render: Callable) -> str | None:
    """The rendered text the chat shares whatever the first non-system message says."""
    try:
        first = render([*system, {"role": next_role, "content": "\x01"}])
        second = render([*system, {"role": next_role, "content": "\x02"}])
    except TuneloopError:  # a template that refuses the shortened chat: no head, prefill in one step
        return None
    length = 0
    for a, b in zip(first, second, strict=False):
        if a != b:
            break
        length += 1
    return first[:length] or None

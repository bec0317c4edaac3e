"""Sending prompts through an OpenAI-compatible endpoint (usually the gateway), e.g. the demo's traffic.

The official client does the talking; with the gateway as ``base_url`` every call is captured, tagged
with ``metadata`` (``{"task": ..., "run": ...}``), which ``tuneloop data from-logs --filter tag.…`` then
selects.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any


def send_prompts(
    base_url: str,
    model: str,
    prompts: Sequence[list[dict[str, Any]]],
    *,
    metadata: dict[str, str] | None = None,
    api_key: str | None = None,
    concurrency: int = 4,
    max_tokens: int | None = None,
    on_done: Callable[[int, str | None], None] | None = None,
) -> list[str | None]:
    """Ask ``model`` each prompt (greedy), ``concurrency`` at a time; the answers in order (None where a call failed).

    ``on_done(index, answer)`` is called as each finishes (a progress bar's ``advance``, say).
    """
    import openai

    client = openai.OpenAI(base_url=base_url, api_key=api_key or "not-needed", max_retries=2)
    extra: dict[str, Any] = {"metadata": metadata} if metadata else {}
    if max_tokens is not None:
        extra["max_tokens"] = max_tokens

    def ask(index: int) -> str | None:
        try:
            completion = client.chat.completions.create(model=model, messages=prompts[index], temperature=0, **extra)  # type: ignore[arg-type]
            answer = completion.choices[0].message.content if completion.choices else None
        except openai.OpenAIError:
            answer = None
        if on_done is not None:
            on_done(index, answer)
        return answer

    with ThreadPoolExecutor(max_workers=max(1, concurrency), thread_name_prefix="send-prompts") as pool:
        return list(pool.map(ask, range(len(prompts))))

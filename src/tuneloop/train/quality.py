"""A quick quality check of a base or a fine-tune on held-out rows: batched greedy decoding, scored by evals.

The full evaluation is ``tuneloop eval run`` (the evals stage: caching, latency, cost, report). This is the
training stage's own yardstick, for the demo and the quality figures in ``docs/training.md``: the same
prompt (the rows' system and user turns, rendered by the chat template), greedy decoding as the task's
decoding defaults ask, and the one scorer (``tuneloop.evals.scoring``). It decodes many documents at once
(left padding), several times faster on CPU than one at a time.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tuneloop.bases import Base, end_of_turn_token, load_transformers
from tuneloop.evals.scoring import RecordScore, Summary, score_record, summarize
from tuneloop.task import Task


@dataclass
class QualityResult:
    summary: Summary
    scores: list[RecordScore]
    outputs: list[str]
    seconds: float


def load_model(base: Base, adapter_dir: Path | None = None) -> tuple[Any, Any]:
    """(model, tokenizer) for greedy generation: the base, with the adapter merged in when given."""
    model, tokenizer = load_transformers(base)
    if adapter_dir is not None:
        from peft import PeftModel

        model = PeftModel.from_pretrained(model, str(adapter_dir)).merge_and_unload()
        model.eval()
    return model, tokenizer


def generate_greedy(
    model: Any,
    tokenizer: Any,
    chats: list[list[dict[str, Any]]],
    *,
    max_new_tokens: int,
    batch_size: int = 16,
    on_progress: Callable[[int], None] | None = None,
) -> list[str]:
    """The greedy reply to each chat, decoded ``batch_size`` at a time (longest first, left-padded)."""
    import torch

    end_ids = {tokenizer.eos_token_id}
    if (eot := end_of_turn_token(tokenizer)) is not None:
        end_ids.add(tokenizer.convert_tokens_to_ids(eot))
    end_ids.discard(None)
    prompts = [
        tokenizer.apply_chat_template(chat, add_generation_prompt=True, tokenize=True, return_dict=True)["input_ids"]
        for chat in chats
    ]
    order = sorted(range(len(prompts)), key=lambda i: -len(prompts[i]))
    outputs: list[str] = [""] * len(prompts)
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    for start in range(0, len(order), batch_size):
        chunk = order[start : start + batch_size]
        width = max(len(prompts[i]) for i in chunk)
        input_ids = torch.full((len(chunk), width), pad, dtype=torch.long)
        attention = torch.zeros((len(chunk), width), dtype=torch.long)
        for row, index in enumerate(chunk):
            ids = prompts[index]
            input_ids[row, width - len(ids) :] = torch.tensor(ids)
            attention[row, width - len(ids) :] = 1
        with torch.inference_mode():
            generated = model.generate(
                input_ids=input_ids.to(model.device),
                attention_mask=attention.to(model.device),
                max_new_tokens=max_new_tokens,
                do_sample=False,
                eos_token_id=sorted(end_ids),
                pad_token_id=pad,
            )
        for row, index in enumerate(chunk):
            outputs[index] = tokenizer.decode(generated[row, width:], skip_special_tokens=True)
        if on_progress:
            on_progress(len(chunk))
    return outputs


def evaluate_rows(
    task: Task,
    rows: list[dict[str, Any]],
    base: Base,
    adapter_dir: Path | None = None,
    *,
    batch_size: int = 16,
    on_progress: Callable[[int], None] | None = None,
) -> QualityResult:
    """Field error of the base (or base + adapter) on dataset rows that carry ``metadata.fields`` (gold)."""
    started = time.perf_counter()
    model, tokenizer = load_model(base, adapter_dir)
    chats = [[m for m in row["messages"] if m["role"] != "assistant"] for row in rows]
    outputs = generate_greedy(
        model,
        tokenizer,
        chats,
        max_new_tokens=task.decoding.max_tokens,
        batch_size=batch_size,
        on_progress=on_progress,
    )
    scores = [
        score_record(task, str(row.get("id", index)), output, row["metadata"]["fields"])
        for index, (row, output) in enumerate(zip(rows, outputs, strict=True))
    ]
    return QualityResult(summarize(task, scores), scores, outputs, time.perf_counter() - started)

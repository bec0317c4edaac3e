"""Training data: read it, check every row, and tokenize it with assistant-only labels, before any training.

Everything a run needs from the data is done here, in the launching process: rows are read (a JSONL file or a
stored dataset), each is checked (an assistant turn to learn from, no longer than the maximum length), and
encoded to ``input_ids`` and ``labels`` where only the assistant's answer and its end-of-turn token carry a
label (everything else is ``-100``). The result is saved as a ``datasets`` folder that the training
processes, in-process or under ``accelerate launch``, load as is; they never tokenize.

The label mask is read off the chat template itself: for the k-th message, an assistant turn, the text
rendered for ``messages[:k]`` with the generation prompt ends where the answer begins, and the text
rendered for ``messages[:k+1]`` runs through the turn's end-of-turn token. The characters between are the
answer; tokens that start inside that span are labelled. This works for any template whose renderings
are prefixes of one another (ChatML, Llama 3, Gemma, Mistral, ...), and is refused with a clear error for
one that is not.

Each labelled token is also marked when it lies inside one of the answer's JSON values (``weights.py``):
under ``value_weight`` the training split carries a loss weight per token from that mark.
"""

from __future__ import annotations

import hashlib
import json
import random
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from tuneloop.bases import end_of_turn_token
from tuneloop.data.jsonl import read_rows
from tuneloop.errors import TuneloopError
from tuneloop.train.weights import answer_value_spans, loss_weights, overlapping_tokens

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerBase

IGNORE_INDEX = -100
DATASET_PREFIX = "dataset:"
MAX_PROBLEMS_SHOWN = 5
PROMPTS_FILE = "validation_prompts.jsonl"


@dataclass(frozen=True)
class SourceRow:
    """One conversation to learn from, with where it came from (``file:line`` or ``dataset X entry N``)."""

    messages: list[dict[str, Any]]
    where: str


@dataclass(frozen=True)
class SourceData:
    rows: list[SourceRow]
    ref: str  # what the registry records: "dataset:NAME" or the file's absolute path
    sha256: str  # over the rows used, in order
    left_out_test: int = 0  # rows of a file marked metadata.split == "test", never trained on


@dataclass
class Encoded:
    input_ids: list[int]
    labels: list[int]
    value_mask: list[bool]  # per token: labelled and inside one of the answer's JSON values (weights.py)

    @property
    def trained_tokens(self) -> int:
        return sum(label != IGNORE_INDEX for label in self.labels)


@dataclass
class PreparedData:
    """What ``prepare`` wrote: the tokenized train and validation splits, and counts for the run's record."""

    train_dir: Path
    eval_dir: Path | None
    train_examples: int
    eval_examples: int
    train_tokens: int
    longest: int
    prompts_file: Path | None = None  # the validation rows' prompts and answers (validation_prompts)
    stats: dict[str, Any] = field(default_factory=dict)


# --- reading ---------------------------------------------------------------------------------------


def load_source(data: str) -> SourceData:
    """Rows from ``FILE.jsonl`` (its train split when rows carry ``metadata.split``) or ``dataset:NAME``."""
    if data.startswith(DATASET_PREFIX):
        return _load_dataset(data.removeprefix(DATASET_PREFIX))
    path = Path(data).expanduser()
    rows = read_rows(path)  # checks the chat format, naming file:line and field
    lines = _row_line_numbers(path)
    kept: list[SourceRow] = []
    left_out = 0
    for row, line in zip(rows, lines, strict=True):
        split = (row.get("metadata") or {}).get("split") if isinstance(row.get("metadata"), dict) else None
        if split == "test":
            left_out += 1
            continue
        kept.append(SourceRow(row["messages"], f"{path}:{line}"))
    if not kept:
        raise TuneloopError(
            "no training rows: the file is empty or every row is in the test split",
            where=str(path),
            hint="add rows, or mark some with metadata.split = train",
        )
    return SourceData(kept, str(path.resolve()), _rows_sha256(kept), left_out)


def _row_line_numbers(path: Path) -> list[int]:
    """The line of each row ``read_rows`` returns (it skips blank lines the same way)."""
    text = path.read_text(encoding="utf-8")
    return [number for number, line in enumerate(text.splitlines(), start=1) if line.strip()]


def _load_dataset(name: str) -> SourceData:
    """The dataset's train split as the data stage resolves it: one entry per input (human-verified over
    teacher over logged answers), entries failing the task's checks left out."""
    from tuneloop.data.datasets import training_entries

    try:
        entries = training_entries(name, split="train")
    except TuneloopError as error:
        raise TuneloopError(error.message, where=f"--data dataset:{name}", hint=error.hint) from None
    rows = [SourceRow(list(entry.messages), f"dataset {name} entry {entry.id}") for entry in entries]
    if not rows:
        raise TuneloopError(f"dataset {name!r} has no train-split entries", where=f"--data dataset:{name}")
    return SourceData(rows, f"{DATASET_PREFIX}{name}", _rows_sha256(rows))


def with_system_prompt(rows: list[SourceRow], instructions: str, prompt: str) -> tuple[list[SourceRow], int]:
    """Rows as a version trained with ``prompt`` in place of the task's ``instructions`` sees them (prompt
    distillation): a row whose chat opens with a system message holding exactly the instructions (whitespace
    at the ends aside) gets ``prompt`` there, or loses that message when ``prompt`` is empty. Other rows are
    kept as they are. Returns the rows and how many were changed. Serving applies the same swap
    (serve/backends/base.py ``served_messages``), so the model sees at serve time what it was trained on."""
    out: list[SourceRow] = []
    changed = 0
    for row in rows:
        first = row.messages[0] if row.messages else {}
        content = first.get("content")
        if (
            first.get("role") in ("system", "developer")
            and isinstance(content, str)
            and content.strip() == instructions.strip()
        ):
            rest = row.messages[1:]
            messages = [{**first, "content": prompt}, *rest] if prompt else list(rest)
            out.append(SourceRow(messages, row.where))
            changed += 1
        else:
            out.append(row)
    return out, changed


def _rows_sha256(rows: list[SourceRow]) -> str:
    digest = hashlib.sha256()
    for row in rows:
        digest.update(json.dumps(row.messages, sort_keys=True, ensure_ascii=False).encode())
        digest.update(b"\n")
    return digest.hexdigest()


# --- encoding --------------------------------------------------------------------------------------


class ChatTemplateMismatch(ValueError):
    """The template renders a conversation's prefix differently from the conversation's start."""


def encode_conversation(tokenizer: PreTrainedTokenizerBase, messages: list[dict[str, Any]]) -> Encoded:
    """``input_ids`` of the whole chat and ``labels`` that keep only the assistant turns (with end-of-turn)."""
    full = _render(tokenizer, messages, add_generation_prompt=False)
    eot = end_of_turn_token(tokenizer) or tokenizer.eos_token
    spans: list[tuple[int, int]] = []
    values: list[tuple[int, int]] = []  # the answers' JSON values (weights.py), as characters of ``full``
    for index, message in enumerate(messages):
        if message["role"] != "assistant":
            continue
        before = _render(tokenizer, messages[:index], add_generation_prompt=True) if index else ""
        through = _render(tokenizer, messages[: index + 1], add_generation_prompt=False)
        if not full.startswith(before) or not full.startswith(through) or len(through) < len(before):
            raise ChatTemplateMismatch(
                "the chat template renders the conversation's start differently on its own, so the assistant's "
                "tokens can't be told apart"
            )
        turn = through[len(before) :]
        end = len(through.rstrip())
        if eot and (found := turn.rfind(eot)) >= 0:
            end = len(before) + found + len(eot)
        spans.append((len(before), end))
        values += answer_value_spans(full, message["content"], len(before), end)
    encoded = tokenizer(full, add_special_tokens=False, return_offsets_mapping=True)
    input_ids = list(encoded["input_ids"])
    labels = [IGNORE_INDEX] * len(input_ids)
    span_index = 0
    for position, (start, _end) in enumerate(encoded["offset_mapping"]):
        while span_index < len(spans) and start >= spans[span_index][1]:
            span_index += 1
        if span_index < len(spans) and spans[span_index][0] <= start < spans[span_index][1]:
            labels[position] = input_ids[position]
    in_values = overlapping_tokens(list(encoded["offset_mapping"]), values)
    value_mask = [is_value and label != IGNORE_INDEX for is_value, label in zip(in_values, labels, strict=True)]
    return Encoded(input_ids, labels, value_mask)


def _render(tokenizer: PreTrainedTokenizerBase, messages: list[dict[str, Any]], *, add_generation_prompt: bool) -> str:
    return tokenizer.apply_chat_template(
        [{"role": m["role"], "content": m["content"]} for m in messages],
        tokenize=False,
        add_generation_prompt=add_generation_prompt,
    )


def check_row(row: SourceRow) -> str | None:
    """Why a row can't be trained on (before tokenizing), or None."""
    roles = [message["role"] for message in row.messages]
    if "assistant" not in roles:
        return "messages: no assistant message (the answer to learn); the last message must have role assistant"
    if roles[-1] != "assistant":
        return f"messages[{len(roles) - 1}].role: the conversation ends with a {roles[-1]} message, not the answer"
    last = row.messages[-1]["content"]
    if not last.strip():
        return f"messages[{len(roles) - 1}].content: the assistant's answer is empty"
    return None


def encode_rows(rows: list[SourceRow], tokenizer: PreTrainedTokenizerBase, max_length: int | None) -> list[Encoded]:
    """Encode every row, or raise one error listing the rows that can't be trained on (file:line, field)."""
    problems: list[tuple[str, str]] = []
    encoded: list[Encoded] = []
    for row in rows:
        problem = check_row(row)
        if problem is None:
            try:
                item = encode_conversation(tokenizer, row.messages)
            except ChatTemplateMismatch as exc:
                raise TuneloopError(
                    str(exc), where=row.where, hint="use a base whose chat template is prefix-stable"
                ) from None
            if max_length is not None and len(item.input_ids) > max_length:
                problem = (
                    f"messages: the conversation is {len(item.input_ids)} tokens, longer than the maximum "
                    f"length {max_length}"
                )
            elif item.trained_tokens == 0:
                problem = "messages: the assistant's answer tokenizes to nothing to learn"
            else:
                encoded.append(item)
        if problem is not None:
            problems.append((row.where, problem))
    if problems:
        shown = [f"{where}: {problem}" for where, problem in problems[:MAX_PROBLEMS_SHOWN]]
        more = len(problems) - len(shown)
        if more:
            shown.append(f"... and {more} more")
        too_long = any("longer than the maximum length" in problem for _, problem in problems)
        hint = "fix or remove these rows"
        if too_long:
            hint += "; or raise max_length in the training config (sft: {max_length: N})"
        raise TuneloopError(
            f"{len(problems)} row{'s' if len(problems) > 1 else ''} can't be trained on:\n  " + "\n  ".join(shown),
            where=problems[0][0],
            hint=hint,
        )
    return encoded


# --- preparing a run's data ------------------------------------------------------------------------


def split_validation(count: int, fraction: float, seed: int) -> tuple[list[int], list[int]]:
    """(train indices, validation indices): a seeded share held back, none for tiny datasets."""
    held = round(count * fraction)
    if count < 20 or held < 1:
        return list(range(count)), []
    order = list(range(count))
    random.Random(f"tuneloop-validation:{seed}").shuffle(order)
    held_back = sorted(order[:held])
    chosen = set(held_back)
    return [i for i in range(count) if i not in chosen], held_back


def save_encoded(items: list[Encoded], directory: Path, value_weight: float = 1.0) -> None:
    """A ``datasets`` folder of ``input_ids`` and ``labels``, and ``loss_weights`` under a value weight
    other than 1 (without the column the trainer takes the plain token mean, exactly as before it existed)."""
    from datasets import Dataset

    columns: dict[str, list[Any]] = {
        "input_ids": [item.input_ids for item in items],
        "labels": [item.labels for item in items],
    }
    if value_weight != 1.0:
        columns["loss_weights"] = [loss_weights(item.value_mask, value_weight) for item in items]
    Dataset.from_dict(columns).save_to_disk(str(directory))


def load_encoded(directory: Path):  # -> datasets.Dataset
    from datasets import load_from_disk

    return load_from_disk(str(directory))


def prompt_length(tokenizer: PreTrainedTokenizerBase, messages: list[dict[str, Any]]) -> int:
    """Tokens of a chat's prompt (everything before its last message, with the generation prompt)."""
    prompt = _render(tokenizer, messages[:-1], add_generation_prompt=True)
    return len(tokenizer(prompt, add_special_tokens=False)["input_ids"])


def validation_prompts(rows: list[SourceRow], tokenizer: PreTrainedTokenizerBase) -> list[dict[str, Any]]:
    """What a model is asked for each row (its chat up to the last answer, with the generation prompt, as
    serving tokenizes it) and the answer it should give: for the field error during training."""
    prompts = []
    for row in rows:
        prompt = _render(tokenizer, row.messages[:-1], add_generation_prompt=True)
        prompt_ids = list(tokenizer(prompt, add_special_tokens=False)["input_ids"])
        prompts.append({"where": row.where, "prompt_ids": prompt_ids, "answer": row.messages[-1]["content"]})
    return prompts


def prepare(
    encoded: list[Encoded],
    out_dir: Path,
    *,
    validation_fraction: float,
    seed: int,
    value_weight: float = 1.0,
    prompts_from: tuple[list[SourceRow], PreTrainedTokenizerBase] | None = None,
) -> PreparedData:
    """Hold back the validation share and save both splits under ``out_dir`` (train/, validation/).

    The training split carries the loss weights of ``value_weight``; the validation split never does, so
    the validation loss is the plain token mean whatever the weight (runs compare on it). With
    ``prompts_from`` (the rows ``encoded`` came from, and the tokenizer), the validation rows' prompts and
    answers are saved too (``validation_prompts.jsonl``), for the field error of ``selection.py``.
    """
    train_idx, eval_idx = split_validation(len(encoded), validation_fraction, seed)
    train_items = [encoded[i] for i in train_idx]
    eval_items = [encoded[i] for i in eval_idx]
    out_dir.mkdir(parents=True, exist_ok=True)
    save_encoded(train_items, out_dir / "train", value_weight)
    eval_dir = prompts_file = None
    if eval_items:
        eval_dir = out_dir / "validation"
        save_encoded(eval_items, eval_dir)
        if prompts_from is not None:
            rows, tokenizer = prompts_from
            prompts_file = out_dir / PROMPTS_FILE
            lines = validation_prompts([rows[i] for i in eval_idx], tokenizer)
            prompts_file.write_text("".join(json.dumps(line, ensure_ascii=False) + "\n" for line in lines))
    lengths = [len(item.input_ids) for item in encoded]
    value_tokens = sum(sum(item.value_mask) for item in encoded)
    return PreparedData(
        train_dir=out_dir / "train",
        eval_dir=eval_dir,
        train_examples=len(train_items),
        eval_examples=len(eval_items),
        train_tokens=sum(len(item.input_ids) for item in train_items),
        longest=max(lengths),
        prompts_file=prompts_file,
        stats={
            "mean_tokens": sum(lengths) / len(lengths),
            "mean_trained_tokens": sum(item.trained_tokens for item in encoded) / len(encoded),
            "value_token_share": value_tokens / max(1, sum(item.trained_tokens for item in encoded)),
        },
    )

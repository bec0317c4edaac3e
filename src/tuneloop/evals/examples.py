"""What an eval runs on: examples with a prompt and a human-verified answer, from JSONL or the store.

A gold row is a dataset row: ``id``, ``messages`` whose last message is the assistant's verified JSON
answer, and optionally ``metadata.fields`` (the same answer, parsed). Every gold answer must fit the
task's output schema; one that does not stops the eval before anything runs or is stored, with the
file:line and the field. A text task's row ends in its reference answer instead (any non-empty text).
Saved predictions are ``{"id": ..., "output": "<raw text>"}`` rows.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import sqlalchemy as sa

from tuneloop.answers import parse_answer
from tuneloop.data.datasets import all_entries, best_entry_per_input
from tuneloop.data.jsonl import read_rows
from tuneloop.errors import TuneloopError
from tuneloop.generation import Message
from tuneloop.store import SPLITS, Dataset, session_scope
from tuneloop.task import Task

DATASET_PREFIX = "dataset:"
DEFAULT_DATASET_SPLIT = "test"


@dataclass(frozen=True)
class Example:
    id: str
    prompt: list[Message]  # the chat up to the answer
    gold: dict[str, Any]  # the verified answer's fields ({} for a text task)
    where: str  # file:line or dataset entry, for error messages
    reference: str | None = None  # a text task's reference answer, which the judge compares answers with


def load_examples(task: Task, data_ref: str, *, limit: int | None = None, require_ids: bool = False) -> list[Example]:
    """Examples from ``FILE.jsonl`` or ``dataset:NAME[:split]`` (default split: test), in order."""
    if limit is not None and limit < 1:
        raise TuneloopError(f"must be at least 1, got {limit}", where="--limit")
    if data_ref.startswith(DATASET_PREFIX):
        examples = _dataset_examples(task, data_ref, limit)
    else:
        examples = _file_examples(task, Path(data_ref), limit, require_ids)
    if not examples:
        raise TuneloopError("no examples to evaluate on", where=data_ref, hint="the data has no rows")
    return examples


def canonical_data_ref(data_ref: str) -> str:
    """The stored name of the data: an absolute path, or ``dataset:NAME:split``."""
    if data_ref.startswith(DATASET_PREFIX):
        name, split = parse_dataset_ref(data_ref)
        return f"{DATASET_PREFIX}{name}:{split}"
    return str(Path(data_ref).expanduser().resolve())


def fingerprint(examples: list[Example]) -> str:
    """sha256 of the examples (ids, prompts, gold answers): a resumed run must see the same data."""
    digest = hashlib.sha256()
    for example in examples:
        payload: dict[str, Any] = {"id": example.id, "prompt": example.prompt, "gold": example.gold}
        if example.reference is not None:  # text tasks only: JSON runs keep the fingerprints they had
            payload["reference"] = example.reference
        digest.update(json.dumps(payload, sort_keys=True, ensure_ascii=False).encode())
        digest.update(b"\n")
    return digest.hexdigest()


def gold_example(task: Task, row: dict[str, Any], where: str, default_id: str | None = None) -> Example:
    """One dataset row as an example; raises TuneloopError naming ``where`` and the field."""
    example_id = row.get("id", default_id)
    if example_id is None:
        raise TuneloopError("missing field `id`", where=where, hint="predictions are matched to gold rows by id")
    if not isinstance(example_id, str | int) or isinstance(example_id, bool):
        raise TuneloopError(f"field `id` must be a string or an integer, got {example_id!r}", where=where)
    messages = row["messages"]
    last = len(messages) - 1
    if messages[last]["role"] != "assistant" or last == 0:
        raise TuneloopError(
            f"the last message (messages[{last}]) must be the assistant's verified answer, after the prompt",
            where=where,
            hint="end each row with {'role': 'assistant', 'content': '<the verified JSON answer>'}",
        )
    if task.is_text:  # a reference answer: any non-empty text (fields and metadata.fields do not apply)
        reference = messages[last]["content"]
        if not isinstance(reference, str) or not reference.strip():
            raise TuneloopError(
                f"field `messages[{last}].content`: the reference answer is empty",
                where=where,
                hint=f"task {task.name} answers in free text: end the row with the reference answer's text",
            )
        return Example(str(example_id), messages[:last], {}, where, reference=reference.strip())
    answer, problem = parse_answer(task, messages[last]["content"])
    if answer is None:
        raise TuneloopError(
            f"field `messages[{last}].content`: the verified answer {problem}",
            where=where,
            hint=f"gold answers must fit the output schema of task {task.name}",
        )
    fields = (row.get("metadata") or {}).get("fields")
    if fields is not None:
        _check_metadata_fields(task, fields, answer, where)
    return Example(str(example_id), messages[:last], answer, where)


def _check_metadata_fields(task: Task, fields: Any, answer: dict[str, Any], where: str) -> None:
    if not isinstance(fields, dict):
        raise TuneloopError("field `metadata.fields` must be an object", where=where)
    problems = task.schema_errors(fields, check_formats=False)
    if problems:
        raise TuneloopError(f"field `metadata.fields.{problems[0]}`", where=where)
    for name in task.field_names:
        if fields.get(name) != answer.get(name):
            raise TuneloopError(
                f"field `metadata.fields.{name}` is {fields.get(name)!r} but the assistant's answer says "
                f"{answer.get(name)!r}",
                where=where,
                hint="the two must agree: fix whichever is wrong",
            )


def _file_examples(task: Task, path: Path, limit: int | None, require_ids: bool) -> list[Example]:
    rows = read_rows(path)
    lines = _row_lines(path)
    examples: list[Example] = []
    seen: dict[str, str] = {}
    for row, line in zip(rows, lines, strict=True):
        where = f"{path}:{line}"
        example = gold_example(task, row, where, default_id=None if require_ids else f"line-{line}")
        if example.id in seen:
            raise TuneloopError(
                f"id {example.id!r} is also on {seen[example.id]}", where=where, hint="ids must be unique"
            )
        seen[example.id] = where
        examples.append(example)
        if limit is not None and len(examples) >= limit:
            break
    return examples


def _row_lines(path: Path) -> list[int]:
    # The line number of each row read_rows returns (it skips blank lines, and so does this).
    text = path.read_text(encoding="utf-8")
    return [number for number, line in enumerate(text.splitlines(), start=1) if line.strip()]


def parse_dataset_ref(data_ref: str) -> tuple[str, str]:
    spec = data_ref.removeprefix(DATASET_PREFIX)
    name, _, split = spec.rpartition(":")
    if not name or split not in SPLITS:  # no split given (or a name with ':' in it)
        name, split = spec, DEFAULT_DATASET_SPLIT
    if not name:
        raise TuneloopError("no dataset name", where=data_ref, hint="write dataset:NAME or dataset:NAME:test")
    return name, split


def _dataset_examples(task: Task, data_ref: str, limit: int | None) -> list[Example]:
    name, split = parse_dataset_ref(data_ref)
    with session_scope() as session:
        dataset = session.scalar(sa.select(Dataset).where(Dataset.name == name))
        if dataset is None:
            known = session.scalars(sa.select(Dataset.name).order_by(Dataset.name).limit(20)).all()
            raise TuneloopError(
                f"no dataset named {name!r} in the store",
                where=data_ref,
                hint=("datasets in the store: " + ", ".join(known))
                if known
                else "the store has no datasets yet; pass a JSONL file with --data instead",
            )
        if dataset.task is not None and dataset.task != task.name:
            raise TuneloopError(
                f"dataset {name!r} is for task {dataset.task!r}, not {task.name!r}",
                where=data_ref,
                hint=f"use --task {dataset.task}, or another dataset",
            )
        # The gold of an input is its resolved answer (human > teacher > upload > log, passing checks), the
        # same one training reads: superseded log answers and failing ones are not gold.
        resolved = best_entry_per_input(all_entries(session, dataset, split))[:limit]
        entries = [(entry.id, entry.messages, entry.fields) for entry in resolved]
    if not entries:
        raise TuneloopError(f"dataset {name!r} has no {split} entries", where=data_ref)
    return [
        gold_example(
            task,
            {"id": entry_id, "messages": messages, "metadata": {"fields": fields} if fields is not None else {}},
            where=f"{data_ref} entry {entry_id}",
        )
        for entry_id, messages, fields in entries
    ]


def load_predictions(path: Path) -> dict[str, str | None]:
    """``{id: output}`` from a predictions JSONL file; problems name file:line and the field."""
    rows = read_rows(path, require_messages=False)
    predictions: dict[str, str | None] = {}
    lines: dict[str, int] = {}
    for row, line in zip(rows, _row_lines(path), strict=True):
        where = f"{path}:{line}"
        if "id" not in row:
            raise TuneloopError("missing field `id`", where=where, hint='rows look like {"id": ..., "output": "..."}')
        example_id = row["id"]
        if not isinstance(example_id, str | int) or isinstance(example_id, bool):
            raise TuneloopError(f"field `id` must be a string or an integer, got {example_id!r}", where=where)
        if "output" not in row:
            raise TuneloopError("missing field `output`", where=where, hint="the raw text the model returned")
        output = row["output"]
        if output is not None and not isinstance(output, str):
            raise TuneloopError(
                "field `output` must be the raw text the model returned (a string), or null",
                where=where,
                hint="if you stored parsed JSON, write it back as a string (json.dumps)",
            )
        key = str(example_id)
        if key in predictions:
            raise TuneloopError(f"id {key!r} is also on line {lines[key]}", where=where, hint="one prediction per id")
        predictions[key], lines[key] = output, line
    return predictions

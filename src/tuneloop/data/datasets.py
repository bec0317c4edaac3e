"""Datasets in the store: entries content-hashed and deduplicated, with provenance, a stable split and lineage.

An entry is one example: chat messages ending in the assistant's answer, plus the request options that
shape the answer (``tools``, ``tool_choice``, ``response_format``). It is identified by two hashes:

- ``input_hash``: sha256 of the canonical JSON of the prompt (every message before the answer) and the
  options. The same question asked twice has one input hash, wherever it came from.
- ``output_hash``: sha256 of the canonical answer. With a task, an answer that parses is stored as the
  task's canonical answer JSON (``Task.answer_json``), so formatting differences neither split duplicates
  nor reach training.

A dataset holds a given (input, output) pair once. An input's split is fixed by its first entry in the
dataset, so every answer to it (the logged one, a teacher's, a human's) lands in the same split and the test
split never leaks into training. That first split is the row's ``metadata.split`` when an import carries one
(synthetic data chooses its split to keep near-copies apart), else a function of the input hash alone
(``test`` when its first 64 bits / 2^64 < ``test_fraction``): stable across runs.

Provenance says where the answer came from: ``log`` (a captured call), ``upload`` (an imported file),
``teacher`` (relabelled by a teacher model) or ``human`` (verified by a person). Lineage:
``source_request_id`` is the logged call an entry came from, ``parent_entry_id`` the entry it relabels.

One input may thus have several answers. What trains (and what ``export`` writes by default) is the
*resolved* view: per input, the most trusted answer that passed the task's checks, human > teacher >
upload > log, newest first within a provenance. Entries whose answer is invalid for the task or fails its
plausibility checks (``check_failures``) stay in the dataset, visible in ``show``, and are never trained on.
"""

from __future__ import annotations

import hashlib
import json
from collections import Counter, defaultdict
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import sqlalchemy as sa
from sqlalchemy.orm import Session

from tuneloop.data.jsonl import read_rows
from tuneloop.errors import TuneloopError
from tuneloop.store import PROVENANCES, SPLITS, Dataset, DatasetEntry, RequestLog, session_scope
from tuneloop.task import Task, load_task

DEFAULT_TEST_FRACTION = 0.1
# Request fields beside the messages that change what the answer should be.
OPTION_KEYS = ("tools", "tool_choice", "response_format", "parallel_tool_calls")
# Lower is more trusted: what the resolved view prefers for an input.
PROVENANCE_RANK = {"human": 0, "teacher": 1, "upload": 2, "log": 3}
_MESSAGE_KEYS = ("role", "content", "name", "tool_calls", "tool_call_id")


# --- hashing -------------------------------------------------------------------------------------


def canonical_json(value: Any) -> str:
    return json.dumps(value, sort_keys=True, ensure_ascii=False, separators=(",", ":"))


def clean_message(message: dict[str, Any]) -> dict[str, Any]:
    """The parts of a chat message that carry meaning (no nulls, no provider extras)."""
    return {key: message[key] for key in _MESSAGE_KEYS if message.get(key) is not None}


def request_options(request: dict[str, Any]) -> dict[str, Any] | None:
    options = {key: request[key] for key in OPTION_KEYS if request.get(key) is not None}
    return options or None


def input_hash(prompt: list[dict[str, Any]], options: dict[str, Any] | None) -> str:
    payload = {"messages": [clean_message(m) for m in prompt], "options": options or {}}
    return hashlib.sha256(canonical_json(payload).encode("utf-8")).hexdigest()


def output_hash(answer: dict[str, Any]) -> str:
    return hashlib.sha256(canonical_json(clean_message(answer)).encode("utf-8")).hexdigest()


def _unit_interval(text: str) -> float:
    return int(hashlib.sha256(text.encode("utf-8")).hexdigest()[:16], 16) / 2**64


def split_for(input_digest: str, test_fraction: float) -> str:
    """``test`` or ``train``, by the input hash alone: the same input always lands in the same split."""
    return "test" if int(input_digest[:16], 16) / 2**64 < test_fraction else "train"


def sampled(input_digest: str, fraction: float, seed: int = 0) -> bool:
    """A deterministic sample by input (independent of the split): rerunning picks the same inputs."""
    return fraction >= 1 or _unit_interval(f"{seed}:{input_digest}") < fraction


# --- adding entries ------------------------------------------------------------------------------


@dataclass
class EntryDraft:
    """An example to add: the whole chat (the last message is the answer) and where it came from."""

    messages: list[dict[str, Any]]
    provenance: str
    options: dict[str, Any] | None = None
    source_request_id: int | None = None
    parent_entry_id: int | None = None
    source_model: str | None = None
    split: str | None = None  # None: by input hash
    where: str = ""  # for error messages (file:line, log id)


@dataclass
class AddResult:
    added: int = 0
    duplicates: int = 0
    failing: int = 0  # added, but unfit for training (invalid or failed checks)
    by_split: Counter[str] = field(default_factory=Counter)
    entry_ids: list[int] = field(default_factory=list)


def judge_answer(
    task: Task | None, answer: dict[str, Any]
) -> tuple[dict[str, Any], dict[str, Any] | None, list[str] | None]:
    """(the answer to store, its parsed fields, why it is unfit for training) for a task.

    Without a task nothing is parsed or checked (fields and failures are None).
    """
    answer = clean_message(answer)
    if task is None:
        return answer, None, None
    content = answer.get("content")
    if not isinstance(content, str):
        return answer, None, ["no text answer (the assistant only called tools)"]
    if task.is_text:  # a free-text answer is its text: no fields to parse, only its presence to check
        text = content.strip()
        if not text:
            return answer, None, ["invalid answer: the answer is empty"]
        return {**answer, "content": text}, None, task.run_checks(text)
    from tuneloop.answers import parse_answer

    fields, problem = parse_answer(task, content)
    if fields is None:
        return answer, None, [f"invalid answer: {problem}"]
    canonical = {**answer, "content": task.answer_json(fields)}
    return canonical, fields, task.run_checks(fields)


def get_or_create_dataset(session: Session, name: str, task: str | None, description: str | None = None) -> Dataset:
    dataset = session.scalar(sa.select(Dataset).where(Dataset.name == name))
    if dataset is None:
        dataset = Dataset(name=name, task=task, description=description)
        session.add(dataset)
        session.flush()
        return dataset
    if task is not None and dataset.task is not None and dataset.task != task:
        raise TuneloopError(
            f"dataset {name!r} is for task {dataset.task!r}, not {task!r}",
            where="--task",
            hint=f"use --task {dataset.task}, or another --name",
        )
    if dataset.task is None and task is not None:
        dataset.task = task
    return dataset


def add_entries(
    session: Session, dataset: Dataset, drafts: Iterable[EntryDraft], task: Task | None, test_fraction: float
) -> AddResult:
    """Add drafts to a dataset, skipping (input, output) pairs it already holds."""
    rows = session.execute(
        sa.select(DatasetEntry.input_hash, DatasetEntry.output_hash, DatasetEntry.split).where(
            DatasetEntry.dataset_id == dataset.id
        )
    ).all()
    existing = {(row.input_hash, row.output_hash) for row in rows}
    # An input keeps the split it first had in this dataset: all its answers train, or all test.
    split_of_input = {row.input_hash: row.split for row in rows}
    result = AddResult()
    new_entries: list[DatasetEntry] = []
    for draft in drafts:
        if draft.provenance not in PROVENANCES:
            raise TuneloopError(f"unknown provenance {draft.provenance!r}", where=draft.where or None)
        if len(draft.messages) < 2 or draft.messages[-1].get("role") != "assistant":
            raise TuneloopError(
                "the last message must be the assistant's answer, after at least one prompt message",
                where=draft.where or None,
                hint="end each row with {'role': 'assistant', 'content': '...'}",
            )
        prompt = [clean_message(m) for m in draft.messages[:-1]]
        answer, fields, failures = judge_answer(task, draft.messages[-1])
        digest_in, digest_out = input_hash(prompt, draft.options), output_hash(answer)
        if (digest_in, digest_out) in existing:
            result.duplicates += 1
            continue
        existing.add((digest_in, digest_out))
        split = split_of_input.get(digest_in) or (
            draft.split if draft.split in SPLITS else split_for(digest_in, test_fraction)
        )
        split_of_input[digest_in] = split
        entry = DatasetEntry(
            dataset_id=dataset.id,
            input_hash=digest_in,
            output_hash=digest_out,
            messages=[*prompt, answer],
            fields=fields,
            options=draft.options,
            check_failures=failures,
            source_model=draft.source_model,
            provenance=draft.provenance,
            split=split,
            source_request_id=draft.source_request_id,
            parent_entry_id=draft.parent_entry_id,
        )
        new_entries.append(entry)
        result.added += 1
        result.failing += bool(failures)
        result.by_split[split] += 1
    session.add_all(new_entries)
    session.flush()
    result.entry_ids = [entry.id for entry in new_entries]
    return result


def _check_fraction(value: float, where: str, *, upper_open: bool = False) -> None:
    if not 0 <= value <= 1 or (upper_open and value >= 1):
        raise TuneloopError(f"must be between 0 and 1, got {value}", where=where)


def _load_task_or_none(task: str | None) -> Task | None:
    return load_task(task) if task else None


# --- import, from logs ----------------------------------------------------------------------------


def import_jsonl(
    path: Path,
    name: str,
    *,
    task: str | None = None,
    provenance: str = "upload",
    test_fraction: float = DEFAULT_TEST_FRACTION,
    url: str | None = None,
) -> AddResult:
    """Add the rows of an OpenAI chat JSONL file (``messages``, optional ``tools``; ``metadata.split`` kept)."""
    if provenance not in ("upload", "human"):
        raise TuneloopError(f"an import is 'upload' or 'human', not {provenance!r}", where="--provenance")
    _check_fraction(test_fraction, "--test-fraction", upper_open=True)
    rows = read_rows(path)
    drafts = []
    for number, row in enumerate(rows, start=1):
        metadata = row.get("metadata") if isinstance(row.get("metadata"), dict) else {}
        drafts.append(
            EntryDraft(
                messages=row["messages"],
                provenance=provenance,
                options=request_options(row),
                split=metadata.get("split"),
                where=f"{path} row {number}",
            )
        )
    with session_scope(url) as session:
        dataset = get_or_create_dataset(session, name, task, description=f"imported from {path.name}")
        spec = _load_task_or_none(dataset.task)
        return add_entries(session, dataset, drafts, spec, test_fraction)


@dataclass
class FromLogsResult(AddResult):
    matched: int = 0  # logged calls the filter selected
    sampled_out: int = 0
    unusable: int = 0  # no answer in the response (errors, empty choices)


def dataset_from_logs(
    name: str,
    log_filter: Any,
    *,
    task: str | None = None,
    sample: float = 1.0,
    seed: int = 0,
    test_fraction: float = DEFAULT_TEST_FRACTION,
    url: str | None = None,
) -> FromLogsResult:
    """Add the successful logged calls that match ``log_filter`` (a ``store.logs.LogFilter``).

    The task defaults to the filter's ``tag.task``. Running it again later adds only what is new.
    """
    from tuneloop.store.logs import apply_filter

    _check_fraction(sample, "--sample")
    _check_fraction(test_fraction, "--test-fraction", upper_open=True)
    task = task or log_filter.metadata.get("task") or log_filter.task
    result = FromLogsResult()
    drafts: list[EntryDraft] = []
    with session_scope(url) as session:
        query = apply_filter(session, sa.select(RequestLog), log_filter).where(RequestLog.status == "ok")
        for row in session.scalars(query.order_by(RequestLog.id).execution_options(yield_per=500)):
            result.matched += 1
            draft = _draft_from_log(row)
            if draft is None:
                result.unusable += 1
                continue
            if not sampled(input_hash(draft.messages[:-1], draft.options), sample, seed):
                result.sampled_out += 1
                continue
            drafts.append(draft)
        if result.matched == 0:  # raising inside the session rolls back: no empty dataset is left behind
            raise TuneloopError(
                f"no successful logged calls match ({log_filter.describe()})",
                hint="check the filter with `tuneloop logs list --filter ...`",
            )
        dataset = get_or_create_dataset(session, name, task, description=f"from logs: {log_filter.describe()}")
        spec = _load_task_or_none(dataset.task)
        added = add_entries(session, dataset, drafts, spec, test_fraction)
    for key, value in vars(added).items():
        setattr(result, key, value)
    return result


def _draft_from_log(row: RequestLog) -> EntryDraft | None:
    request, response = row.request or {}, row.response or {}
    messages = request.get("messages")
    choices = response.get("choices") if isinstance(response, dict) else None
    if not isinstance(messages, list) or not messages or not isinstance(choices, list) or not choices:
        return None
    answer = (choices[0] or {}).get("message")
    if not isinstance(answer, dict) or (answer.get("content") is None and not answer.get("tool_calls")):
        return None
    answer = {**answer, "role": "assistant"}
    return EntryDraft(
        messages=[*messages, answer],
        provenance="log",
        options=request_options(request),
        source_request_id=row.id,
        source_model=row.model_resolved or row.model_requested,
        where=f"logged call {row.id}",
    )


# --- reading -------------------------------------------------------------------------------------


def get_dataset(session: Session, name: str) -> Dataset:
    dataset = session.scalar(sa.select(Dataset).where(Dataset.name == name))
    if dataset is None:
        known = session.scalars(sa.select(Dataset.name).order_by(Dataset.name).limit(20)).all()
        raise TuneloopError(
            f"no dataset named {name!r}",
            hint=("datasets: " + ", ".join(known))
            if known
            else "create one with `tuneloop data import FILE --name D` or `tuneloop data from-logs --name D`",
        )
    return dataset


def all_entries(session: Session, dataset: Dataset, split: str | None = None) -> list[DatasetEntry]:
    query = sa.select(DatasetEntry).where(DatasetEntry.dataset_id == dataset.id)
    if split is not None:
        query = query.where(DatasetEntry.split == split)
    return list(session.scalars(query.order_by(DatasetEntry.id)))


def trainable(entry: DatasetEntry) -> bool:
    return not entry.check_failures


def best_entry_per_input(entries: Iterable[DatasetEntry]) -> list[DatasetEntry]:
    """Per input, the most trusted passing answer (human > teacher > upload > log, newest first); by id."""
    best: dict[str, DatasetEntry] = {}
    for entry in entries:
        if not trainable(entry):
            continue
        current = best.get(entry.input_hash)
        if current is None or (PROVENANCE_RANK[entry.provenance], -entry.id) < (
            PROVENANCE_RANK[current.provenance],
            -current.id,
        ):
            best[entry.input_hash] = entry
    return sorted(best.values(), key=lambda entry: entry.id)


def training_entries(name: str, split: str | None = None, url: str | None = None) -> list[DatasetEntry]:
    """The entries that train (and that evals should read as gold): one per input, passing checks."""
    if split is not None and split not in SPLITS:
        raise TuneloopError(f"unknown split {split!r}", where="--split", hint="use train or test")
    with session_scope(url) as session:
        return best_entry_per_input(all_entries(session, get_dataset(session, name), split))


def entry_row(entry: DatasetEntry) -> dict[str, Any]:
    """An entry as a dataset JSONL row: OpenAI chat fine-tuning format plus ``metadata``."""
    row: dict[str, Any] = {"id": entry.id, "messages": entry.messages}
    row.update(entry.options or {})
    metadata: dict[str, Any] = {"split": entry.split, "provenance": entry.provenance}
    if entry.fields is not None:
        metadata["fields"] = entry.fields
    metadata.update(
        {
            "input_hash": entry.input_hash,
            "output_hash": entry.output_hash,
            "source_request_id": entry.source_request_id,
            "parent_entry_id": entry.parent_entry_id,
            "source_model": entry.source_model,
        }
    )
    if entry.check_failures:
        metadata["check_failures"] = entry.check_failures
    row["metadata"] = metadata
    return row


def export_rows(
    name: str, split: str | None = None, *, everything: bool = False, url: str | None = None
) -> list[dict[str, Any]]:
    """Rows of the resolved view (what trains), or with ``everything`` every entry including failing ones."""
    if split is not None and split not in SPLITS:
        raise TuneloopError(f"unknown split {split!r}", where="--split", hint="use train or test")
    with session_scope(url) as session:
        entries = all_entries(session, get_dataset(session, name), split)
    chosen = entries if everything else best_entry_per_input(entries)
    return [entry_row(entry) for entry in chosen]


@dataclass
class DatasetSummary:
    name: str
    task: str | None
    description: str | None
    created_at: str
    entries: int
    inputs: int
    by_split_provenance: dict[tuple[str, str], int]
    resolved_by_split: Counter[str]
    failing: list[tuple[int, str, list[str]]]  # (entry id, provenance, failures)
    sources: Counter[str]  # source models


def summarize_dataset(name: str, url: str | None = None) -> DatasetSummary:
    with session_scope(url) as session:
        dataset = get_dataset(session, name)
        entries = all_entries(session, dataset)
    by_split_provenance: dict[tuple[str, str], int] = defaultdict(int)
    for entry in entries:
        by_split_provenance[(entry.split, entry.provenance)] += 1
    resolved = best_entry_per_input(entries)
    return DatasetSummary(
        name=dataset.name,
        task=dataset.task,
        description=dataset.description,
        created_at=dataset.created_at.isoformat(timespec="seconds"),
        entries=len(entries),
        inputs=len({entry.input_hash for entry in entries}),
        by_split_provenance=dict(by_split_provenance),
        resolved_by_split=Counter(entry.split for entry in resolved),
        failing=[(e.id, e.provenance, e.check_failures or []) for e in entries if not trainable(e)],
        sources=Counter(entry.source_model or entry.provenance for entry in entries),
    )

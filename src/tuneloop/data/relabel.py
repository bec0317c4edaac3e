"""Relabelling a dataset with a teacher model (distillation).

For every input of the dataset (one per input hash), the teacher is asked the same prompt with the same
tools, tool_choice and response_format, with the task's decoding settings. Its answer is judged like any
other (parsed for the task, plausibility checks run) and added as a ``teacher`` entry whose parent is
the entry it relabels and whose source request is that entry's. Answers that fail are kept out of
training, counted and listed (they stay visible in ``tuneloop data show``).

- Inputs with a human-verified entry are never sent: a person's answer is not overwritten.
- Answers are cached by (teacher, input hash) in the store (``teacher_labels``): an input is never paid
  for twice, in this dataset or another, and an interrupted run resumes where it stopped when run again.
- 429 and 5xx answers, timeouts and connection errors are retried with exponential backoff (honouring
  ``Retry-After``) by the official client, ``max_retries`` times; an input that still fails is reported,
  and the next run tries it again.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass, field
from typing import Any

import sqlalchemy as sa
from rich.console import Console

from tuneloop.data.datasets import EntryDraft, add_entries, all_entries, get_dataset
from tuneloop.errors import TuneloopError
from tuneloop.progress import progress_bar
from tuneloop.store import DatasetEntry, TeacherLabel, session_scope
from tuneloop.task import Task, load_task
from tuneloop.upstreams import Endpoint, resolve_endpoint, sampling_arguments

DEFAULT_MAX_RETRIES = 5


def resolve_teacher(teacher: str) -> Endpoint:
    """A teacher id (``upstream/model`` or ``http://host/v1#model``) → its endpoint, with the key from the env."""
    from tuneloop.registry.ids import EndpointRef, parse_model_id

    ref = parse_model_id(teacher)
    if not isinstance(ref, EndpointRef):
        raise TuneloopError(
            "a teacher must be a model behind an OpenAI-compatible endpoint",
            where=f"--teacher {teacher}",
            hint="name it upstream/model (openai/gpt-4o-mini) or http://host:port/v1#model; serve a local "
            "model first to use it as a teacher",
        )
    return resolve_endpoint(ref, teacher).require_key(f"--teacher {teacher}")


TEACHER_ENV = "TUNELOOP_TEACHER"
DEFAULT_OPENAI_TEACHER = "openai/gpt-4o-mini"


def default_teacher() -> str | None:
    """The teacher to use when none is named: ``$TUNELOOP_TEACHER``, else ``openai/gpt-4o-mini`` when
    ``OPENAI_API_KEY`` is set, else None (then there is no teacher: keep the human-verified labels)."""
    import os

    if os.environ.get(TEACHER_ENV):
        return os.environ[TEACHER_ENV]
    return DEFAULT_OPENAI_TEACHER if os.environ.get("OPENAI_API_KEY") else None


def teacher_arguments(task: Task | None, model: str, options: dict[str, Any] | None) -> dict[str, Any]:
    """Sampling settings from the task (greedy by default; none for reasoning models) plus the entry's options."""
    from tuneloop.generation import GenerationParams

    if task is not None:
        decoding = task.decoding
        params = GenerationParams(
            max_tokens=decoding.max_tokens, temperature=decoding.temperature, top_p=decoding.top_p
        )
    else:
        params = GenerationParams()
    return {**sampling_arguments(model, params), **(options or {})}


@dataclass
class Answer:
    message: dict[str, Any]
    finish_reason: str | None
    model_resolved: str | None
    prompt_tokens: int | None
    completion_tokens: int | None
    latency_ms: float


Ask = Callable[[list[dict[str, Any]], dict[str, Any]], Answer]


def openai_asker(endpoint: Endpoint, max_retries: int = DEFAULT_MAX_RETRIES) -> Ask:
    """Ask the teacher through the official client (which retries 429/5xx/timeouts with backoff)."""
    client = endpoint.client(max_retries)

    def ask(messages: list[dict[str, Any]], arguments: dict[str, Any]) -> Answer:
        started = time.perf_counter()
        completion = client.chat.completions.create(model=endpoint.model, messages=messages, **arguments)  # type: ignore[arg-type]
        latency_ms = (time.perf_counter() - started) * 1000
        if not completion.choices:
            raise RuntimeError("the teacher returned no choices")
        choice = completion.choices[0]
        message = choice.message.model_dump(exclude_none=True, include={"role", "content", "tool_calls"})
        usage = completion.usage
        return Answer(
            message={**message, "role": "assistant"},
            finish_reason=choice.finish_reason,
            model_resolved=completion.model,
            prompt_tokens=usage.prompt_tokens if usage else None,
            completion_tokens=usage.completion_tokens if usage else None,
            latency_ms=latency_ms,
        )

    return ask


@dataclass
class RelabelResult:
    teacher: str
    inputs: int = 0  # distinct inputs in the dataset
    skipped_human: int = 0  # a person's answer exists: never sent
    already_done: int = 0  # this teacher's entry exists from an earlier run
    cached: int = 0  # answered from the (teacher, input) cache, not asked again
    asked: int = 0  # sent to the teacher in this run
    kept: int = 0  # new teacher entries that pass the task's checks
    agreed: int = 0  # the teacher gave the answer the dataset already had for that input
    failing: list[tuple[int, list[str]]] = field(default_factory=list)  # (entry id, failures): out of training
    errors: list[tuple[str, str]] = field(default_factory=list)  # (input hash, error): retried next run
    cost_usd: float = 0.0
    interrupted: bool = False


def _work_items(entries: list[DatasetEntry], teacher: str, result: RelabelResult) -> list[DatasetEntry]:
    """One entry per input to relabel: the logged one if any (best lineage), else the oldest."""
    by_input: dict[str, list[DatasetEntry]] = {}
    for entry in entries:
        by_input.setdefault(entry.input_hash, []).append(entry)
    result.inputs = len(by_input)
    items = []
    for group in by_input.values():
        if any(entry.provenance == "human" for entry in group):
            result.skipped_human += 1
            continue
        if any(entry.provenance == "teacher" and entry.source_model == teacher for entry in group):
            result.already_done += 1
            continue
        group.sort(key=lambda entry: (entry.provenance != "log", entry.id))
        items.append(group[0])
    return items


def relabel(
    name: str,
    teacher: str,
    *,
    concurrency: int = 16,
    limit: int | None = None,
    max_retries: int = DEFAULT_MAX_RETRIES,
    console: Console | None = None,
    ask: Ask | None = None,
    url: str | None = None,
) -> RelabelResult:
    """Relabel dataset ``name`` with ``teacher``; see the module docstring. Ctrl-C stops cleanly (resumable)."""
    if concurrency < 1:
        raise TuneloopError(f"must be at least 1, got {concurrency}", where="--concurrency")
    console = console or Console(stderr=True)
    with session_scope(url) as session:
        dataset = get_dataset(session, name)
        task_name = dataset.task
        entries = all_entries(session, dataset)
    task = load_task(task_name) if task_name else None
    result = RelabelResult(teacher)
    items = _work_items(entries, teacher, result)
    if limit is not None:
        items = items[:limit]
    if not items:
        return result
    endpoint: Endpoint | None = None
    if ask is None:
        endpoint = resolve_teacher(teacher)
        ask = openai_asker(endpoint, max_retries)
    model_name = endpoint.model if endpoint else teacher.rpartition("/")[2]
    prices = _price_lookup(endpoint)

    with session_scope(url) as session:
        cached = {
            row.input_hash: row
            for row in session.scalars(
                sa.select(TeacherLabel).where(
                    TeacherLabel.teacher == teacher, TeacherLabel.input_hash.in_([e.input_hash for e in items])
                )
            )
        }

    def record(entry: DatasetEntry, label: TeacherLabel, fresh: bool) -> None:
        with session_scope(url) as session:
            if fresh:
                session.add(label)
            dataset_row = get_dataset(session, name)
            draft = EntryDraft(
                messages=[*entry.messages[:-1], label.message],
                provenance="teacher",
                options=entry.options,
                source_request_id=entry.source_request_id,
                parent_entry_id=entry.id,
                source_model=teacher,
                split=entry.split,
                where=f"entry {entry.id}",
            )
            added = add_entries(session, dataset_row, [draft], task, test_fraction=0.0)
        if added.duplicates:
            result.agreed += 1
        elif added.failing:
            result.failing.append((added.entry_ids[0], _failures_of(added.entry_ids[0], url)))
        else:
            result.kept += 1

    stop = threading.Event()

    def work(entry: DatasetEntry) -> Answer | None:
        if stop.is_set():
            return None
        arguments = teacher_arguments(task, model_name, entry.options)
        return ask(entry.messages[:-1], arguments)

    with progress_bar(console, unit="input") as progress:
        bar = progress.add_task(f"relabel with {teacher}", total=len(items))
        to_ask = []
        for entry in items:
            if entry.input_hash in cached:
                result.cached += 1
                record(entry, cached[entry.input_hash], fresh=False)
                progress.advance(bar)
            else:
                to_ask.append(entry)
        executor = ThreadPoolExecutor(max_workers=concurrency, thread_name_prefix="relabel")
        pending: dict[Future[Answer | None], DatasetEntry] = {}
        queue = iter(to_ask)

        def collect(future: Future[Answer | None]) -> None:
            """Store one finished request's answer (or its error); KeyboardInterrupt propagates."""
            entry = pending.pop(future)
            result.asked += 1
            try:
                answer = future.result()
            except Exception as exc:  # failed after its retries: reported, and retried on the next run
                result.errors.append((entry.input_hash, f"{type(exc).__name__}: {exc}"[:500]))
            else:
                if answer is not None:
                    label = _label(teacher, entry.input_hash, answer, prices)
                    result.cost_usd += label.cost_usd or 0.0
                    record(entry, label, fresh=True)
            progress.advance(bar)

        try:
            for entry in queue:
                pending[executor.submit(work, entry)] = entry
                if len(pending) >= concurrency * 2:
                    break
            while pending:
                done, _ = wait(pending, return_when=FIRST_COMPLETED)
                # Answers first: an interrupt seen in the same round must not lose an answer already paid for.
                for future in sorted(done, key=lambda f: isinstance(f.exception(), KeyboardInterrupt)):
                    collect(future)
                    next_entry = next(queue, None)
                    if next_entry is not None:
                        pending[executor.submit(work, next_entry)] = next_entry
        except KeyboardInterrupt:
            result.interrupted = True
            stop.set()  # nothing new is sent; requests in flight finish and are kept (Ctrl-C again abandons them)
            for future in pending:
                future.cancel()
            executor.shutdown(wait=True, cancel_futures=True)
            for future in [f for f in pending if f.done() and not f.cancelled()]:
                if not isinstance(future.exception(), BaseException):
                    collect(future)
        finally:
            executor.shutdown(wait=False, cancel_futures=True)
    return result


def _failures_of(entry_id: int, url: str | None) -> list[str]:
    with session_scope(url) as session:
        entry = session.get(DatasetEntry, entry_id)
        return list(entry.check_failures or []) if entry else []


def _price_lookup(endpoint: Endpoint | None) -> Callable[[Answer], tuple[float | None, str | None]]:
    from tuneloop.cost import load_price_table

    table = load_price_table()

    def price(answer: Answer) -> tuple[float | None, str | None]:
        if endpoint is None or answer.prompt_tokens is None or answer.completion_tokens is None:
            return None, None
        for model in (answer.model_resolved, endpoint.model):
            priced = table.lookup(model, endpoint.upstream_name) if model else None
            if priced is not None:
                return priced[1].request_cost(answer.prompt_tokens, answer.completion_tokens), table.version
        return None, None

    return price


def _label(
    teacher: str, digest: str, answer: Answer, prices: Callable[[Answer], tuple[float | None, str | None]]
) -> TeacherLabel:
    cost, version = prices(answer)
    return TeacherLabel(
        teacher=teacher,
        input_hash=digest,
        message=answer.message,
        finish_reason=answer.finish_reason,
        model_resolved=answer.model_resolved,
        prompt_tokens=answer.prompt_tokens,
        completion_tokens=answer.completion_tokens,
        cost_usd=cost,
        price_table_version=version,
        latency_ms=answer.latency_ms,
    )

"""Preference pairs from the store: for one task, an answer a person or a better model preferred over one given.

Every human correction is a pair (the model's draft, what it should have said), and so is every logged answer
that a verified label or a teacher contradicts. Three sources, each giving pairs of (chosen, rejected) answers
to one input:

- ``corrections``: a review item a person corrected (``review_items.status = corrected``): the corrected fields
  (chosen) over the model's draft (rejected), the draft as it was written when it did not parse.
- ``checks``: a logged answer that failed the task's checks (``requests.checks_passed`` false, else
  ``tuneloop.checks.passed`` false in its response; or an answer that is not valid for the task at all) whose
  input has a verified answer (a human-provenance dataset entry that passes the checks, or an approved or
  corrected review item): the verified answer over the failed one.
- ``teacher``: a teacher's label (``teacher_labels``, written by ``tuneloop data relabel``) that is valid for the
  task, passes its checks and differs from a logged answer to the same input: the teacher's over the logged
  one. Left out where a person verified a different answer for that input (the person wins).

Answers are compared and written in the task's canonical answer JSON (``Task.answer_json``) when they parse,
so formatting never makes a pair; an answer that does not parse stays as it was written (invalid JSON is worth
learning to avoid). A pair whose chosen and rejected answers are the same after that is dropped. One pair per
input (the input hash datasets use: the prompt's messages and the request options): corrections first, then
checks, then teacher; within a source, the newest. The prompt is the logged request's messages (the task's own
format, ``Task.build_messages``), so a pair trains on what the model is asked in production.

A pair set has a sha256 over its pairs in order (prompt, chosen, rejected), as a dataset's rows have: a version
trained on it records the hash. ``trl_row`` writes a pair in TRL's conversational preference format (what
``DPOTrainer`` reads): ``{"prompt": [messages], "chosen": [assistant], "rejected": [assistant]}``.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import sqlalchemy as sa
from sqlalchemy.orm import Session

from tuneloop.data.datasets import canonical_json, clean_message, input_hash, request_options
from tuneloop.data.jsonl import read_rows, write_rows
from tuneloop.errors import TuneloopError
from tuneloop.store import Dataset, DatasetEntry, RequestLog, ReviewItem, TeacherLabel, session_scope
from tuneloop.task import Task, load_task

SOURCES = ("corrections", "checks", "teacher")  # also the order of precedence for one input
PAIRS_PREFIX = "pairs:"  # `--data pairs:corrections,teacher` (train --method dpo)
_CHUNK = 500  # input hashes per IN (...) query


@dataclass(frozen=True)
class PreferencePair:
    """One input, the answer preferred (chosen) and the one it is preferred over (rejected)."""

    source: str  # corrections | checks | teacher
    input_hash: str
    prompt: list[dict[str, Any]]  # the messages before the answer
    chosen: str
    rejected: str
    # Where it came from: review_item, request (the logged call), entry (the verified dataset entry),
    # teacher_label, teacher; None where it does not apply. The same keys on every pair (one JSONL schema).
    ids: dict[str, Any] = field(default_factory=dict)
    created_at: datetime | None = field(default=None, compare=False)

    def trl_row(self, *, metadata: bool = True) -> dict[str, Any]:
        """The pair in TRL's conversational preference format (explicit prompt), plus where it came from."""
        row: dict[str, Any] = {
            "prompt": self.prompt,
            "chosen": [{"role": "assistant", "content": self.chosen}],
            "rejected": [{"role": "assistant", "content": self.rejected}],
        }
        if metadata:
            row["metadata"] = {"source": self.source, "input_hash": self.input_hash, **self.ids}
        return row


@dataclass(frozen=True)
class SourceCount:
    """What one source gave: pairs found, dropped as identical or as another pair's input, and kept."""

    found: int = 0
    identical: int = 0  # chosen == rejected after canonicalisation
    duplicate: int = 0  # an input already paired (by an earlier source, or a newer pair of this one)
    limited: int = 0  # left out by --limit
    kept: int = 0


@dataclass(frozen=True)
class PairSet:
    task: str
    sources: tuple[str, ...]
    pairs: list[PreferencePair]
    counts: dict[str, SourceCount]
    sha256: str
    ref: str = ""  # where the pairs came from: ``pairs:<sources>`` (the store), or a file's path

    def __post_init__(self) -> None:
        if not self.ref:
            object.__setattr__(self, "ref", PAIRS_PREFIX + ",".join(self.sources))


# --- building ---------------------------------------------------------------------------------------


def parse_sources(text: str | None, where: str = "--source") -> tuple[str, ...]:
    """``corrections,teacher`` → the sources in precedence order; None or ``all`` → every source."""
    if text is None or text.strip() in ("", "all"):
        return SOURCES
    names = [name.strip() for name in text.split(",") if name.strip()]
    unknown = [name for name in names if name not in SOURCES]
    if unknown:
        raise TuneloopError(
            f"unknown pair source(s) {', '.join(map(repr, unknown))}",
            where=where,
            hint=f"use one or more of {', '.join(SOURCES)} (comma-separated), or all",
        )
    return tuple(source for source in SOURCES if source in names)


def build_pairs(
    task: str | Task,
    sources: tuple[str, ...] | list[str] | str | None = None,
    *,
    limit: int | None = None,
    url: str | None = None,
) -> PairSet:
    """The preference pairs of ``task`` in the store, from ``sources`` (default: all); see the module docstring.

    ``limit`` keeps the first N pairs (by precedence, then newest first) and is part of what the hash covers.
    """
    spec = task if isinstance(task, Task) else load_task(task)
    chosen_sources = parse_sources(sources) if sources is None or isinstance(sources, str) else tuple(sources)
    unknown = [source for source in chosen_sources if source not in SOURCES]
    if unknown:
        raise TuneloopError(f"unknown pair source(s) {unknown}", where="--source", hint=f"use {', '.join(SOURCES)}")
    if limit is not None and limit < 1:
        raise TuneloopError(f"must be at least 1, got {limit}", where="--limit")
    with session_scope(url) as session:
        verified = _verified_answers(session, spec)
        logged = list(_logged_answers(session, spec)) if {"checks", "teacher"} & set(chosen_sources) else []
        found: dict[str, list[PreferencePair]] = {}
        for source in chosen_sources:
            if source == "corrections":
                found[source] = _from_corrections(session, spec)
            elif source == "checks":
                found[source] = _from_checks(spec, logged, verified)
            else:
                found[source] = _from_teacher(session, spec, logged, verified)

    pairs: list[PreferencePair] = []
    counts: dict[str, SourceCount] = {}
    seen: set[str] = set()
    for source in chosen_sources:
        candidates = sorted(found[source], key=_newest_first)
        identical = duplicate = limited = kept = 0
        for pair in candidates:
            if pair.chosen == pair.rejected:
                identical += 1
            elif pair.input_hash in seen:
                duplicate += 1
            elif limit is not None and len(pairs) >= limit:
                limited += 1
            else:
                seen.add(pair.input_hash)
                pairs.append(pair)
                kept += 1
        counts[source] = SourceCount(len(candidates), identical, duplicate, limited, kept)
    return PairSet(spec.name, chosen_sources, pairs, counts, pairs_sha256(pairs))


def pairs_sha256(pairs: list[PreferencePair]) -> str:
    """sha256 over the pairs in order: what they train on (prompt, chosen, rejected), not where they came from."""
    digest = hashlib.sha256()
    for pair in pairs:
        digest.update(canonical_json([pair.prompt, pair.chosen, pair.rejected]).encode("utf-8"))
        digest.update(b"\n")
    return digest.hexdigest()


def _newest_first(pair: PreferencePair) -> tuple[float, str]:
    stamp = pair.created_at.timestamp() if pair.created_at is not None else 0.0
    return (-stamp, pair.input_hash)


def _ids(**given: Any) -> dict[str, Any]:
    keys = ("review_item", "request", "entry", "teacher_label", "teacher")
    return {key: given.get(key) for key in keys}


# --- answers in the task's canonical form -----------------------------------------------------------


@dataclass(frozen=True)
class _Answer:
    text: str  # canonical answer JSON when it parses, else the text as written (stripped)
    valid: bool  # parses for the task (fits its schema)
    failures: list[str]  # the task's checks it fails (when valid)


def _judge(spec: Task, content: str) -> _Answer:
    """An answer's canonical text, whether it is valid for the task, and the checks it fails."""
    if spec.is_text:
        text = content.strip()
        return _Answer(text, bool(text), spec.run_checks(text) if text else [])
    from tuneloop.answers import parse_answer

    fields, _problem = parse_answer(spec, content)
    if fields is None:
        return _Answer(content.strip(), False, [])
    return _Answer(spec.answer_json(fields), True, spec.run_checks(fields))


def _fields_text(spec: Task, fields: Any) -> str | None:
    """A verified answer (fields a person set) as canonical text; None when it is not one."""
    if spec.is_text:
        return (fields.strip() or None) if isinstance(fields, str) else None
    if not isinstance(fields, dict):
        return None
    return spec.answer_json(fields)


def _prompt(messages: Any) -> list[dict[str, Any]] | None:
    """The messages before the answer, as datasets keep them; None when there are none."""
    if not isinstance(messages, list) or not messages or not all(isinstance(m, dict) for m in messages):
        return None
    prompt = [clean_message(message) for message in messages]
    return prompt if prompt[-1].get("role") != "assistant" else None


# --- the sources -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Verified:
    text: str
    entry: int | None
    review_item: int | None
    at: datetime | None


def _verified_answers(session: Session, spec: Task) -> dict[str, _Verified]:
    """Per input hash, the newest answer a person verified: human dataset entries of the task's datasets that
    pass its checks, and approved or corrected review items."""
    verified: dict[str, _Verified] = {}

    def offer(digest: str, answer: _Verified) -> None:
        current = verified.get(digest)
        if current is None or _stamp(answer.at) >= _stamp(current.at):
            verified[digest] = answer

    entries = session.scalars(
        sa.select(DatasetEntry)
        .join(Dataset, DatasetEntry.dataset_id == Dataset.id)
        .where(Dataset.task == spec.name, DatasetEntry.provenance == "human")
        .order_by(DatasetEntry.id)
    )
    for entry in entries:
        if entry.check_failures:  # kept out of training, so not a label to train towards either
            continue
        content = (entry.messages[-1] or {}).get("content") if entry.messages else None
        if not isinstance(content, str):
            continue
        answer = _judge(spec, content)
        if answer.valid:
            offer(entry.input_hash, _Verified(answer.text, entry.id, None, entry.created_at))
    items = session.scalars(
        sa.select(ReviewItem)
        .where(ReviewItem.task == spec.name, ReviewItem.status.in_(("approved", "corrected")))
        .order_by(ReviewItem.id)
    )
    for item in items:
        prompt = _item_prompt(session, item)
        draft = item.draft or {}
        # What the person decided: the correction, else the draft approved (a text task's draft is its text).
        decided = item.correction if item.correction is not None else draft.get("content" if spec.is_text else "fields")
        text = _fields_text(spec, decided)
        if prompt is None or text is None:
            continue
        digest = input_hash(prompt, request_options(item.request or {}))
        offer(digest, _Verified(text, item.verified_entry_id, item.id, item.resolved_at or item.created_at))
    return verified


def _stamp(moment: datetime | None) -> float:
    return moment.timestamp() if moment is not None else float("-inf")


def _item_prompt(session: Session, item: ReviewItem) -> list[dict[str, Any]] | None:
    """The item's request messages, else (an item made from a dataset entry) the entry's prompt."""
    prompt = _prompt((item.request or {}).get("messages"))
    if prompt is None and item.entry_id is not None:
        entry = session.get(DatasetEntry, item.entry_id)
        prompt = _prompt(entry.messages[:-1]) if entry is not None else None
    return prompt


def _from_corrections(session: Session, spec: Task) -> list[PreferencePair]:
    pairs = []
    items = session.scalars(
        sa.select(ReviewItem)
        .where(ReviewItem.task == spec.name, ReviewItem.status == "corrected")
        .order_by(ReviewItem.id)
    )
    for item in items:
        prompt = _item_prompt(session, item)
        chosen = _fields_text(spec, item.correction)
        draft = item.draft or {}
        if draft.get("fields") is not None and not spec.is_text:
            rejected: str | None = spec.answer_json(draft["fields"])
        else:
            content = draft.get("content")
            rejected = _judge(spec, content).text if isinstance(content, str) and content.strip() else None
        if prompt is None or chosen is None or rejected is None:
            continue
        pairs.append(
            PreferencePair(
                "corrections",
                input_hash(prompt, request_options(item.request or {})),
                prompt,
                chosen,
                rejected,
                _ids(review_item=item.id, request=item.request_id, entry=item.verified_entry_id),
                item.resolved_at or item.created_at,
            )
        )
    return pairs


@dataclass(frozen=True)
class _Logged:
    request: int
    input_hash: str
    prompt: list[dict[str, Any]]
    answer: _Answer
    failed: bool  # failed the task's checks as recorded (or is not valid for the task)
    at: datetime | None


def _logged_answers(session: Session, spec: Task) -> Iterator[_Logged]:
    """The task's successful logged calls with a text answer: the task named by the row, else by the checks
    the policy recorded in the response (``tuneloop.checks.task``)."""
    query = (
        sa.select(RequestLog)
        .where(RequestLog.status == "ok", sa.or_(RequestLog.task == spec.name, RequestLog.task.is_(None)))
        .order_by(RequestLog.id)
        .execution_options(yield_per=500)
    )
    for row in session.scalars(query):
        response = row.response if isinstance(row.response, dict) else {}
        extension = response.get("tuneloop") if isinstance(response.get("tuneloop"), dict) else {}
        checks = extension.get("checks") if isinstance(extension.get("checks"), dict) else {}
        if (row.task or checks.get("task")) != spec.name:
            continue
        request = row.request or {}
        prompt = _prompt(request.get("messages"))
        choices = response.get("choices")
        message = (choices[0] or {}).get("message") if isinstance(choices, list) and choices else None
        content = message.get("content") if isinstance(message, dict) else None
        if prompt is None or not isinstance(content, str) or not content.strip():
            continue
        answer = _judge(spec, content)
        recorded = row.checks_passed if row.checks_passed is not None else checks.get("passed")
        failed = recorded is False or not answer.valid
        yield _Logged(row.id, input_hash(prompt, request_options(request)), prompt, answer, failed, row.created_at)


def _from_checks(spec: Task, logged: list[_Logged], verified: dict[str, _Verified]) -> list[PreferencePair]:
    pairs = []
    for call in logged:
        label = verified.get(call.input_hash)
        if not call.failed or label is None:
            continue
        pairs.append(
            PreferencePair(
                "checks",
                call.input_hash,
                call.prompt,
                label.text,
                call.answer.text,
                _ids(review_item=label.review_item, request=call.request, entry=label.entry),
                call.at,
            )
        )
    return pairs


def _from_teacher(
    session: Session, spec: Task, logged: list[_Logged], verified: dict[str, _Verified]
) -> list[PreferencePair]:
    by_input: dict[str, list[_Logged]] = {}
    for call in logged:
        by_input.setdefault(call.input_hash, []).append(call)
    digests = list(by_input)
    labels: dict[str, tuple[TeacherLabel, _Answer]] = {}
    for start in range(0, len(digests), _CHUNK):
        rows = session.scalars(
            sa.select(TeacherLabel)
            .where(TeacherLabel.input_hash.in_(digests[start : start + _CHUNK]))
            .order_by(TeacherLabel.created_at, TeacherLabel.id)
        )
        for label in rows:  # oldest first: the newest usable label of an input is the one kept
            content = (label.message or {}).get("content")
            if not isinstance(content, str):
                continue
            answer = _judge(spec, content)
            if answer.valid and not answer.failures:
                labels[label.input_hash] = (label, answer)
    pairs = []
    for digest, (label, answer) in labels.items():
        person = verified.get(digest)
        if person is not None and person.text != answer.text:
            continue  # a person verified another answer: not the teacher's to overrule
        for call in by_input[digest]:
            pairs.append(
                PreferencePair(
                    "teacher",
                    digest,
                    call.prompt,
                    answer.text,
                    call.answer.text,
                    _ids(request=call.request, teacher_label=label.id, teacher=label.teacher),
                    call.at,
                )
            )
    return pairs


def no_pairs_message(task: str, sources: tuple[str, ...], counts: dict[str, SourceCount] | None = None) -> str:
    """Which sources gave no pair (and why, when they found some), and how each gets pairs."""
    how = {
        "corrections": f"correct drafts in the review queue (`tuneloop review list --task {task}`, "
        "`tuneloop review correct ID --set FIELD=VALUE`)",
        "checks": "logged answers that failed the task's checks, for inputs with a verified answer (approve or "
        "correct review items, or import verified labels: `tuneloop data import FILE --name D --provenance human`)",
        "teacher": "relabel a dataset built from logged calls with a teacher (`tuneloop data from-logs --name D "
        f"--task {task}`, then `tuneloop data relabel D --teacher upstream/model`)",
    }
    lines = [f"no preference pairs for task {task}: no source gave one ({', '.join(sources)})"]
    for source in sources:
        count = (counts or {}).get(source)
        found = (
            f"{count.found} found, all with the same chosen and rejected answer; "
            if count is not None and count.found
            else ""
        )
        lines.append(f"  {source}: {found}{how[source]}")
    return "\n".join(lines)


# --- files -----------------------------------------------------------------------------------------


def write_pairs(path: str | Path, pairs: list[PreferencePair]) -> int:
    """Write pairs as TRL preference JSONL (atomically), with each pair's source and ids under ``metadata``."""
    return write_rows(path, (pair.trl_row() for pair in pairs))


def pairs_from_file(path: str | Path, task: Task) -> PairSet:
    """The pairs of a TRL preference JSONL file (conversational, explicit prompt; what ``write_pairs`` writes),
    checked row by row, answers canonicalised for the task as the store's are; pairs whose answers are then the
    same are dropped (counted). Errors name the file, line and field."""
    path = Path(path).expanduser()
    rows = read_rows(path, require_messages=False)
    text = path.read_text(encoding="utf-8")
    lines = [number for number, line in enumerate(text.splitlines(), start=1) if line.strip()]
    pairs: list[PreferencePair] = []
    identical = 0
    for row, line in zip(rows, lines, strict=True):
        where = f"{path}:{line}"
        prompt = row.get("prompt")
        if _prompt(prompt) is None or any(not isinstance(m.get("content"), str) for m in prompt):
            raise TuneloopError(
                "field `prompt` must be a non-empty list of chat messages ({role, content}) before the answer",
                where=where,
                hint='write TRL\'s conversational format: {"prompt": [...], "chosen": [{"role": "assistant", '
                '"content": ...}], "rejected": [...]} (tuneloop data pairs --out writes it)',
            )
        answers = []
        for key in ("chosen", "rejected"):
            value = row.get(key)
            message = value[0] if isinstance(value, list) and len(value) == 1 else None
            if not isinstance(message, dict) or message.get("role") != "assistant":
                raise TuneloopError(
                    f"field `{key}` must be a list of one assistant message",
                    where=where,
                    hint=f'"{key}": [{{"role": "assistant", "content": "..."}}]',
                )
            if not isinstance(message.get("content"), str):
                raise TuneloopError(f"field `{key}[0].content` is missing or not a string", where=where)
            answers.append(_judge(task, message["content"]).text)
        metadata = row.get("metadata") if isinstance(row.get("metadata"), dict) else {}
        prompt = _prompt(prompt) or []
        pair = PreferencePair(
            str(metadata.get("source") or "file"),
            input_hash(prompt, None),
            prompt,
            answers[0],
            answers[1],
            _ids(**{key: metadata.get(key) for key in ("review_item", "request", "entry", "teacher_label", "teacher")}),
        )
        if pair.chosen == pair.rejected:
            identical += 1
        else:
            pairs.append(pair)
    count = SourceCount(found=len(rows), identical=identical, kept=len(pairs))
    return PairSet(task.name, ("file",), pairs, {"file": count}, pairs_sha256(pairs), ref=str(path.resolve()))

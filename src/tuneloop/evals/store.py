"""Eval runs and their per-example results in the store, and the answer cache built on them.

The cache is the results table itself: every answer is stored with the sha256 of (what ran, the
messages, the decoding settings), and a later run that would ask the same thing copies the stored
answer instead (``cached=True``). Results are written in batches as they finish, so an interrupted run
keeps what it had, and resuming (or re-running) it asks the model only for the rest.
"""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import sqlalchemy as sa

from tuneloop.errors import TuneloopError
from tuneloop.generation import GenerationParams, Message
from tuneloop.serve.grammar import GRAMMAR_REVISION
from tuneloop.store import EvalResult, EvalRun, session_scope, utcnow

RUN_STATUSES = ("running", "done", "interrupted", "failed")
_IN_CHUNK = 500  # keys per IN (...) query: well under SQLite's and PostgreSQL's parameter limits


def cache_key(model_identity: str, messages: Sequence[Message], params: GenerationParams) -> str:
    """sha256 over what decides an answer: the model that runs, the chat, the decoding settings."""
    payload = {
        "model": model_identity,
        "messages": [{"role": m["role"], "content": m["content"]} for m in messages],
        "decoding": {
            "temperature": params.temperature,
            "top_p": params.top_p,
            "max_tokens": params.max_tokens,
            "stop": params.stop,
            "seed": params.seed,
        },
    }
    if params.json_schema is not None:  # constrained decoding answers differently (key absent otherwise: old keys hold)
        payload["json_schema"] = params.json_schema
        payload["grammar"] = GRAMMAR_REVISION  # how a schema becomes a grammar changed: answers may too
    return hashlib.sha256(json.dumps(payload, sort_keys=True, ensure_ascii=False).encode()).hexdigest()


@dataclass
class StoredResult:
    """One row of ``eval_results``, detached from the session (what reports are built from)."""

    example_id: str
    model: str
    output: str | None
    field_verdicts: dict[str, str] | None
    valid: bool
    error: str | None
    check_failures: list[str] | None
    latency_ms: float | None
    ttft_ms: float | None
    prompt_tokens: int | None
    completion_tokens: int | None
    cost_usd: float | None
    cache_key: str | None
    cached: bool = False

    @classmethod
    def from_row(cls, row: EvalResult) -> StoredResult:
        return cls(
            example_id=row.example_id,
            model=row.model,
            output=row.output,
            field_verdicts=row.field_verdicts,
            valid=row.valid,
            error=row.error,
            check_failures=row.check_failures,
            latency_ms=row.latency_ms,
            ttft_ms=row.ttft_ms,
            prompt_tokens=row.prompt_tokens,
            completion_tokens=row.completion_tokens,
            cost_usd=row.cost_usd,
            cache_key=row.cache_key,
            cached=row.cached,
        )

    def to_row(self, run_id: int) -> EvalResult:
        return EvalResult(
            run_id=run_id,
            example_id=self.example_id,
            model=self.model,
            output=self.output,
            field_verdicts=self.field_verdicts,
            valid=self.valid,
            error=self.error,
            check_failures=self.check_failures,
            latency_ms=self.latency_ms,
            ttft_ms=self.ttft_ms,
            prompt_tokens=self.prompt_tokens,
            completion_tokens=self.completion_tokens,
            cost_usd=self.cost_usd,
            cache_key=self.cache_key,
            cached=self.cached,
        )


@dataclass
class RunInfo:
    id: int
    task: str
    data_ref: str
    status: str
    config: dict[str, Any]
    summary: dict[str, Any] | None
    created_at: datetime
    finished_at: datetime | None

    @classmethod
    def from_row(cls, row: EvalRun) -> RunInfo:
        return cls(row.id, row.task, row.data_ref, row.status, row.config, row.summary, row.created_at, row.finished_at)


def create_run(task: str, data_ref: str, config: dict[str, Any]) -> int:
    with session_scope() as session:
        run = EvalRun(task=task, data_ref=data_ref, status="running", config=config)
        session.add(run)
        session.flush()
        return run.id


def mark_run(run_id: int, status: str, summary: dict[str, Any] | None = None) -> None:
    assert status in RUN_STATUSES, status
    with session_scope() as session:
        run = session.get(EvalRun, run_id)
        assert run is not None, f"eval run {run_id} vanished"
        run.status = status
        if summary is not None:
            run.summary = summary
        run.finished_at = None if status == "running" else utcnow()


def get_run(run_id: int) -> RunInfo:
    with session_scope() as session:
        run = session.get(EvalRun, run_id)
        if run is None:
            raise TuneloopError(f"no eval run {run_id}", hint="`tuneloop eval list` shows the stored runs")
        return RunInfo.from_row(run)


def list_runs(task: str | None = None, limit: int = 20) -> list[RunInfo]:
    with session_scope() as session:
        query = sa.select(EvalRun).order_by(EvalRun.id.desc()).limit(limit)
        if task is not None:
            query = query.where(EvalRun.task == task)
        return [RunInfo.from_row(run) for run in session.scalars(query)]


def run_results(run_id: int, model: str | None = None) -> list[StoredResult]:
    with session_scope() as session:
        query = sa.select(EvalResult).where(EvalResult.run_id == run_id).order_by(EvalResult.id)
        if model is not None:
            query = query.where(EvalResult.model == model)
        return [StoredResult.from_row(row) for row in session.scalars(query)]


def cached_answers(keys: Iterable[str]) -> dict[str, StoredResult]:
    """The newest stored answer per cache key. Failed requests (no output) are not answers."""
    wanted = sorted(set(keys))
    found: dict[str, StoredResult] = {}
    with session_scope() as session:
        for start in range(0, len(wanted), _IN_CHUNK):
            chunk = wanted[start : start + _IN_CHUNK]
            query = (
                sa.select(EvalResult)
                .where(EvalResult.cache_key.in_(chunk), EvalResult.output.is_not(None))
                .order_by(EvalResult.id)
            )
            for row in session.scalars(query):
                assert row.cache_key is not None
                found[row.cache_key] = StoredResult.from_row(row)  # ordered by id: the newest wins
    return found


@dataclass
class ResultWriter:
    """Buffers results and commits them in batches: a commit per answer would slow fast models down,
    and a crash or Ctrl-C loses at most the last ``max_wait_s`` of answers (which the cache has not
    got either, so resuming asks for them again)."""

    run_id: int
    batch_size: int = 32
    max_wait_s: float = 2.0
    written: int = 0
    _pending: list[StoredResult] = field(default_factory=list)
    _last_flush: float = field(default_factory=time.monotonic)

    def add(self, result: StoredResult) -> None:
        self._pending.append(result)
        if len(self._pending) >= self.batch_size or time.monotonic() - self._last_flush >= self.max_wait_s:
            self.flush()

    def flush(self) -> None:
        if self._pending:
            with session_scope() as session:
                session.add_all([result.to_row(self.run_id) for result in self._pending])
            self.written += len(self._pending)
            self._pending = []
        self._last_flush = time.monotonic()

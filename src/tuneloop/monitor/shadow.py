"""Shadow: replay a sample of live traffic to a candidate before promoting it.

``tuneloop monitor shadow --candidate T@5 --against T@prod --sample 0.1`` takes the logged calls the
``--against`` version answered (``T@4``, also behind a gateway upstream), keeps a stable sample of them
(chosen by input hash, so the same calls every run), sends each request to the candidate through the
serve engine library (the same code as ``tuneloop serve``), and reports:

- **agreement**: the share of calls where the candidate's answer agrees with production's on every
  field, and per field (the task's comparators decide what agrees);
- **field error on reviewed items**: for calls a person approved or corrected, the share of fields each
  model got wrong against the human answer: the number that says whether the candidate is better.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import sqlalchemy as sa

from tuneloop.errors import TuneloopError
from tuneloop.store import RequestLog, ReviewItem, session_scope
from tuneloop.task import load_task

NOT_REPLAYED = ("metadata", "store", "stream", "stream_options", "logprobs", "top_logprobs")


@dataclass
class ShadowReport:
    candidate: str
    against: str  # the resolved production version
    task: str
    matched: int = 0  # logged calls of the production version
    replayed: int = 0
    failed: int = 0  # replays the candidate could not answer
    agreed: int = 0  # every field agrees
    field_agreement: dict[str, float] = field(default_factory=dict)
    reviewed: int = 0
    candidate_field_error: float | None = None
    production_field_error: float | None = None
    errors: list[str] = field(default_factory=list)

    @property
    def agreement(self) -> float | None:
        return self.agreed / self.replayed if self.replayed else None


def shadow_replay(
    candidate: str,
    against: str,
    *,
    sample: float = 0.1,
    since: datetime | None = None,
    limit: int = 500,
    seed: int = 0,
    engine: Any = None,
    url: str | None = None,
    backend: str = "llamacpp",
) -> ShadowReport:
    """Replay a stable ``sample`` of ``against``'s logged calls (at most ``limit``) to ``candidate``.

    ``engine``: a running ``ServeEngine`` that serves the candidate (the demo and tests pass theirs);
    by default one is built for it on ``backend``, as ``tuneloop serve --models <candidate>`` would, and closed
    after.
    """
    from tuneloop.data.datasets import input_hash, request_options, sampled
    from tuneloop.monitor.drift import logged_model

    if not 0 < sample <= 1:
        raise TuneloopError(f"must be in (0, 1], got {sample}", where="--sample")
    production, task_name = logged_model(against)
    candidate_id, candidate_task = logged_model(candidate)
    task_name = task_name or candidate_task
    if task_name is None:
        raise TuneloopError("shadow compares task versions", where="--against", hint="name versions like T@prod, T@5")
    if candidate_task is not None and candidate_task != task_name:
        raise TuneloopError(f"{candidate} is a version of {candidate_task}, not {task_name}", where="--candidate")
    spec = load_task(task_name)
    report = ShadowReport(candidate_id, production, spec.name)

    with session_scope(url) as session:
        query = sa.select(RequestLog).where(
            sa.or_(RequestLog.model_resolved == production, RequestLog.model_resolved.like(f"%/{production}")),
            RequestLog.status == "ok",
        )
        if since is not None:
            query = query.where(RequestLog.created_at >= since)
        calls = []
        for row in session.scalars(query.order_by(RequestLog.id)):
            report.matched += 1
            request = row.request or {}
            messages = request.get("messages")
            if not isinstance(messages, list) or not sampled(
                input_hash(messages, request_options(request)), sample, seed
            ):
                continue
            if len(calls) < limit:  # keep counting: ``matched`` is all the version's logged calls
                calls.append((row.id, row.capture_id, dict(request), row.response or {}))
        gold = _human_answers(session, calls)
    if not calls:
        raise TuneloopError(
            f"no logged calls of {production} to replay"
            + (f" (of {report.matched}, none sampled)" if report.matched else ""),
            where="--against",
            hint="log traffic through the gateway first, or raise --sample",
        )

    own_engine = engine is None
    if own_engine:
        from tuneloop.serve.engine import build_engine

        engine = build_engine(backend=backend, models=[candidate_id])
    try:
        answers = asyncio.run(_replay(engine, candidate_id, [request for _, _, request, _ in calls]))
    finally:
        if own_engine:
            engine.close()

    from tuneloop.comparators import compare_field
    from tuneloop.review.policy import answer_text, check_answer

    agree_counts = dict.fromkeys(spec.field_names, 0)
    wrong = {"candidate": 0, "production": 0}
    reviewed_fields = 0
    for (request_id, capture_id, _, response), answer in zip(calls, answers, strict=True):
        if isinstance(answer, Exception):
            report.failed += 1
            report.errors.append(f"call {request_id}: {answer}")
            continue
        report.replayed += 1
        new = check_answer(spec, answer_text(answer)).fields or {}
        old = check_answer(spec, answer_text(response)).fields or {}
        same = [compare_field(spec.field_spec(name), new.get(name), old.get(name)).value == "correct"
                for name in spec.field_names]  # fmt: skip
        for name, agrees in zip(spec.field_names, same, strict=True):
            agree_counts[name] += agrees
        report.agreed += all(same)
        human = gold.get(request_id) or gold.get(capture_id or "")
        if human is not None:
            report.reviewed += 1
            for name in spec.field_names:
                reviewed_fields += 1
                for label, fields in (("candidate", new), ("production", old)):
                    wrong[label] += compare_field(spec.field_spec(name), fields.get(name), human.get(name)).is_error
    if report.replayed:
        report.field_agreement = {name: count / report.replayed for name, count in agree_counts.items()}
    if reviewed_fields:
        report.candidate_field_error = wrong["candidate"] / reviewed_fields
        report.production_field_error = wrong["production"] / reviewed_fields
    return report


def _human_answers(session: Any, calls: list[tuple[Any, ...]]) -> dict[Any, dict[str, Any]]:
    """Per request id (or capture id): the fields a person approved or corrected."""
    request_ids = [call[0] for call in calls]
    capture_ids = [call[1] for call in calls if call[1]]
    query = sa.select(ReviewItem).where(
        ReviewItem.status.in_(("approved", "corrected")),
        sa.or_(ReviewItem.request_id.in_(request_ids), ReviewItem.capture_id.in_(capture_ids)),
    )
    found: dict[Any, dict[str, Any]] = {}
    for item in session.scalars(query):
        fields = item.correction if item.correction is not None else (item.draft or {}).get("fields")
        if not isinstance(fields, dict):
            continue
        if item.request_id is not None:
            found[item.request_id] = fields
        if item.capture_id:
            found[item.capture_id] = fields
    return found


async def _replay(engine: Any, model: str, requests: list[dict[str, Any]]) -> list[Any]:
    from tuneloop.protocol import ChatCompletionRequest, OpenAIError

    results: list[Any] = []
    for request in requests:  # one at a time: the engine runs one generation at a time anyway
        body = {key: value for key, value in request.items() if key not in NOT_REPLAYED}
        body["model"] = model
        try:
            results.append(await engine.complete(ChatCompletionRequest.model_validate(body)))
        except (OpenAIError, TuneloopError, ValueError) as exc:
            results.append(exc)
    return results

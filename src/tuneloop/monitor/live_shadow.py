"""Live shadow: the candidate's answer to a mirrored call, compared field by field with production's.

The gateway mirrors a sample of an alias's calls to the shadow's candidate after production answered
(tuneloop.capture.rollouts). :func:`compare_answers` judges one pair as it arrives; the result is stored
on the shadow call's log row (``requests.comparison``, the row's ``shadow_of`` naming the production
call), and :func:`shadow_status` adds up a window of them. The offline replay of logged calls stays in
tuneloop.monitor.shadow.

Agreement is the task's comparators' (numbers within tolerance, dates in the task's formats). An answer
that is not a JSON object fitting the task's schema, or no answer at all (the candidate failed), disagrees
on every field: "null agrees with null" would make a broken candidate look perfect on sparse fields.

A free-text task (``output: text``) has no fields: two answers agree when their texts are the same after
case and whitespace are normalised, and each pair also gets a ``similarity`` (difflib's ratio over the
normalised words, 0..1), whose mean is the shadow's ``text_similarity``: paraphrases rarely match exactly,
so the mean is what moves when a candidate answers differently. An empty or missing answer scores 0.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime, timedelta
from difflib import SequenceMatcher
from typing import Any

import sqlalchemy as sa

from tuneloop.comparators import compare_field, normalize_text
from tuneloop.registry.rollouts import Rollout
from tuneloop.review.policy import CheckResult, check_completion
from tuneloop.store import RequestLog, session_scope, utcnow
from tuneloop.task import Task

DEFAULT_WINDOW_S = 3600.0


def _valid(check: CheckResult) -> bool:
    return check.fields is not None and not any(failure.startswith("schema:") for failure in check.failures)


def compare_answers(spec: Task, production: dict[str, Any] | None, candidate: dict[str, Any] | None) -> dict[str, Any]:
    """The comparison of one mirrored call (JSON, stored on the shadow's log row): per field whether the
    candidate agrees with production, whether each answer was valid, and the candidate's check failures.
    ``candidate`` None: the candidate gave no answer (an error)."""
    prod = check_completion(spec, production) if production is not None else None
    cand = check_completion(spec, candidate) if candidate is not None else None
    if spec.is_text:
        return _compare_texts(prod, cand, candidate is not None)
    prod_valid = prod is not None and _valid(prod)
    cand_valid = cand is not None and _valid(cand)
    if prod_valid and cand_valid:
        assert prod is not None and cand is not None and prod.fields is not None and cand.fields is not None
        fields = {
            name: compare_field(spec.field_spec(name), cand.fields.get(name), prod.fields.get(name)).value == "correct"
            for name in spec.field_names
        }
    else:
        fields = dict.fromkeys(spec.field_names, False)
    return {
        "agreed": bool(fields) and all(fields.values()),
        "fields": fields,
        "production_valid": prod_valid,
        "candidate_valid": cand_valid,
        "candidate_answered": candidate is not None,
        "check_failures": cand.failures if cand is not None else ["no answer"],
    }


def _compare_texts(prod: CheckResult | None, cand: CheckResult | None, answered: bool) -> dict[str, Any]:
    prod_words = normalize_text(prod.text).split() if prod is not None and prod.text else []
    cand_words = normalize_text(cand.text).split() if cand is not None and cand.text else []
    both = bool(prod_words) and bool(cand_words)
    similarity = SequenceMatcher(None, prod_words, cand_words, autojunk=False).ratio() if both else 0.0
    return {
        "agreed": both and prod_words == cand_words,
        "fields": {},
        "similarity": round(similarity, 4),
        "production_valid": bool(prod_words),
        "candidate_valid": bool(cand_words),
        "candidate_answered": answered,
        "check_failures": cand.failures if cand is not None else ["no answer"],
    }


@dataclass
class ShadowStatus:
    rollout_id: int
    window_s: float
    calls: int = 0  # shadow calls in the window
    errors: int = 0  # the candidate gave no answer
    invalid: int = 0  # the candidate's answer did not fit the schema
    agreed: int = 0
    check_failures: int = 0
    field_agreed: dict[str, int] = field(default_factory=dict)
    similarities: list[float] = field(default_factory=list)  # a text task's pairs
    at: datetime | None = None

    @property
    def text_similarity(self) -> float | None:
        """A text task's mean word similarity of the two answers (None for a JSON task)."""
        return sum(self.similarities) / len(self.similarities) if self.similarities else None

    @property
    def agreement(self) -> float | None:
        return self.agreed / self.calls if self.calls else None

    @property
    def check_failure_rate(self) -> float | None:
        return self.check_failures / self.calls if self.calls else None

    @property
    def field_agreement(self) -> dict[str, float]:
        return {name: count / self.calls for name, count in self.field_agreed.items()} if self.calls else {}

    def to_json(self) -> dict[str, Any]:
        return {
            "kind": "shadow",
            "at": self.at.isoformat(timespec="seconds") if self.at else None,
            "window_s": self.window_s,
            "calls": self.calls,
            "errors": self.errors,
            "invalid": self.invalid,
            "agreement": self.agreement,
            "check_failure_rate": self.check_failure_rate,
            "field_agreement": self.field_agreement,
            "text_similarity": self.text_similarity,
        }


def shadow_status(
    rollout: Rollout, *, window_s: float = DEFAULT_WINDOW_S, now: datetime | None = None, url: str | None = None
) -> ShadowStatus:
    """The shadow's comparisons over the last ``window_s`` seconds (since it started, if later)."""
    now = now or utcnow()
    since = max(now - timedelta(seconds=window_s), rollout.started_at)
    status = ShadowStatus(rollout.id, window_s, at=now)
    with session_scope(url) as session:
        rows = session.execute(
            sa.select(RequestLog.comparison).where(
                RequestLog.rollout_id == rollout.id,
                RequestLog.rollout_arm == "shadow",
                RequestLog.created_at >= since,
            )
        )
        for (comparison,) in rows:
            if not isinstance(comparison, dict):
                continue
            status.calls += 1
            status.errors += not comparison.get("candidate_answered", True)
            status.invalid += comparison.get("candidate_answered", True) and not comparison.get("candidate_valid")
            status.agreed += bool(comparison.get("agreed"))
            status.check_failures += bool(comparison.get("check_failures"))
            for name, agrees in (comparison.get("fields") or {}).items():
                status.field_agreed[name] = status.field_agreed.get(name, 0) + bool(agrees)
            if isinstance(comparison.get("similarity"), int | float):
                status.similarities.append(float(comparison["similarity"]))
    return status

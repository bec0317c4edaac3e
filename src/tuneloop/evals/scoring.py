"""Scoring a model's raw outputs against human-verified answers, field by field.

The unit is the field, not the record: a record with five right fields and one wrong counts one error in
six, so the error rate means what a user of the answers would see. An output that is not a JSON object
fitting the task's schema makes every field of its record wrong (and the record *invalid*).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

# One record's score lives in the core (answers.py), so training's reward (train/reward.py) scores answers
# exactly as evals do; it is re-exported here, where evals and their callers have always found it.
from tuneloop.answers import RecordScore, score_record
from tuneloop.comparators import Verdict
from tuneloop.task import Task

__all__ = [
    "RecordScore",
    "Summary",
    "clustered_wilson_interval",
    "score_record",
    "summarize",
    "summarize_fields",
]


@dataclass
class Summary:
    """What a table row shows for one model: rates over records and fields."""

    n: int
    # None for a text task (no fields): its answers are weighed by a judge (evals/judge.py), not scored here
    field_error_rate: float | None
    field_error_ci95: tuple[float, float] | None
    per_field: dict[str, float]
    exact_match_rate: float
    invalid_rate: float
    hallucinations: int
    misses: int
    check_failure_rate: float
    invented: int = 0  # wrong values of extractive fields that their input does not hold

    def to_dict(self) -> dict[str, Any]:
        return {
            "n": self.n,
            "field_error_rate": self.field_error_rate,
            "field_error_ci95": list(self.field_error_ci95) if self.field_error_ci95 is not None else None,
            "per_field": self.per_field,
            "exact_match_rate": self.exact_match_rate,
            "invalid_rate": self.invalid_rate,
            "hallucinations": self.hallucinations,
            "misses": self.misses,
            "check_failure_rate": self.check_failure_rate,
            "invented": self.invented,
        }


def summarize(task: Task, scores: list[RecordScore]) -> Summary:
    return summarize_fields(task.field_names, scores)


def summarize_fields(fields: list[str], scores: list[RecordScore]) -> Summary:
    """``summarize`` over named fields: stored eval results are summarised with the fields of their run."""
    if not scores:
        raise ValueError("nothing to summarise: no scored examples")
    n = len(scores)
    errors = [s.errors for s in scores]
    total_fields = n * len(fields)
    rate = sum(errors) / total_fields if fields else None
    every = [v for s in scores for v in s.verdicts.values()]
    return Summary(
        n=n,
        field_error_rate=rate,
        field_error_ci95=clustered_wilson_interval(errors, len(fields)) if fields else None,
        per_field={f: sum(s.verdicts[f].is_error for s in scores) / n for f in fields},
        exact_match_rate=sum(s.exact and s.valid for s in scores) / n,
        invalid_rate=sum(not s.valid for s in scores) / n,
        hallucinations=sum(v is Verdict.HALLUCINATION for v in every),
        misses=sum(v is Verdict.MISS for v in every),
        check_failure_rate=sum(bool(s.check_failures) for s in scores if s.valid) / n,
        invented=sum(v is Verdict.INVENTED for v in every),
    )


def clustered_wilson_interval(
    errors_per_record: list[int], fields_per_record: int, z: float = 1.96
) -> tuple[float, float]:
    """95 % interval for the field error rate, honest about fields of one record failing together.

    Fields of a record are correlated (a confused model gets several wrong at once), so the binomial
    count of fields overstates the evidence. We shrink it to an effective sample size by the design
    effect measured from the per-record errors (cluster variance of a ratio estimator), never below the
    number of records, then take Wilson's score interval, which behaves at rates of 0 and 1.
    """
    n = len(errors_per_record)
    m = fields_per_record
    total = n * m
    p = sum(errors_per_record) / total
    if n > 1 and 0 < p < 1:
        cluster_var = n / (n - 1) * sum((e - p * m) ** 2 for e in errors_per_record) / total**2
        effective = p * (1 - p) / cluster_var if cluster_var > 0 else total
        effective = min(total, max(n, effective))
    else:
        effective = n  # no spread to measure: assume every record moves as one
    denom = 1 + z * z / effective
    centre = (p + z * z / (2 * effective)) / denom
    half = z * math.sqrt(p * (1 - p) / effective + z * z / (4 * effective * effective)) / denom
    return max(0.0, centre - half), min(1.0, centre + half)

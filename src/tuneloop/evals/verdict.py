"""The verdict: does a model meet the task's requirements on error rate, p95 latency and cost?

A requirement passes when the measurement is at or under its ceiling. The error requirement is
judged on the point estimate of the field error rate, as the tables show it; the 95 % interval beside
it says how sure that is. ``meets_all`` is true only when every requirement in scope was measured and
passed: a missing measurement (an API model with no price) is not a pass. Scoring saved predictions
(``eval score``) measures no latency or cost, so there only the error rate is in scope.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from tuneloop.task import Requirements

# requirement -> what it is measured on, in the order tables show them
REQUIREMENT_MEASURES = {
    "max_error_rate": "field_error_rate",
    "max_p95_latency_ms": "p95_latency_ms",
    "max_cost_per_1k_requests_usd": "cost_per_1k_usd",
}


@dataclass(frozen=True)
class RequirementsVerdict:
    """Per requirement the task sets: True (met), False (not met) or None (not measured)."""

    checks: dict[str, bool | None]
    meets_all: bool

    def to_dict(self) -> dict[str, Any]:
        return {**self.checks, "meets_all": self.meets_all}


def judge(
    requirements: Requirements,
    *,
    field_error_rate: float | None,
    p95_latency_ms: float | None = None,
    cost_per_1k_usd: float | None = None,
    error_only: bool = False,
) -> RequirementsVerdict:
    """Judge one model. ``error_only`` leaves latency and cost out of scope (saved predictions)."""
    measured = {
        "field_error_rate": field_error_rate,
        "p95_latency_ms": p95_latency_ms,
        "cost_per_1k_usd": cost_per_1k_usd,
    }
    checks: dict[str, bool | None] = {}
    for requirement, measure in REQUIREMENT_MEASURES.items():
        ceiling = getattr(requirements, requirement)
        if ceiling is None or (error_only and requirement != "max_error_rate"):
            continue
        value = measured[measure]
        checks[requirement] = None if value is None else value <= ceiling
    return RequirementsVerdict(checks, meets_all=all(passed is True for passed in checks.values()))

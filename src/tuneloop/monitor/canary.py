"""The canary's guard: is the candidate measurably worse than production on live traffic?

Over the last ``guard.window_s`` seconds of a canary's logged calls (``requests.rollout_id``, by arm), per arm:

- **error rate**: calls that failed for a server reason (5xx, timeouts, broken streams), out of all calls;
  a client's 4xx is nobody's fault but the client's and is left out of both arms;
- **check-failure rate**: answers that failed the task's checks (``requests.checks_passed``), out of the
  checked answers;
- **p95 latency** of the whole call.

Each is tested one-sided against a margin, so a candidate is switched off only for a difference that is
both real and large enough to matter:

- rates: H0 ``p_candidate - p_production <= margin``, the Wald z of the difference less the margin
  (unpooled, as for a non-inferiority test); trips when ``z`` exceeds the ``1 - alpha`` quantile;
- p95: production's p95 × (1 + margin) is the bar; under H0 (the candidate's p95 is at most the bar) at
  most 5 % of its calls exceed it, so the count that do is tested with the exact binomial tail.

Nothing is tested until both arms have ``guard.min_calls`` calls in the window (``waiting`` says so). The
three tests share ``alpha`` (Bonferroni), since any one of them trips the guard.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from datetime import datetime, timedelta
from typing import Any

import sqlalchemy as sa

from tuneloop.registry.rollouts import Guard, Rollout
from tuneloop.stats import binomial_upper_tail
from tuneloop.store import RequestLog, session_scope, utcnow

ARMS = ("production", "candidate")
P95 = 0.95


@dataclass
class ArmFigures:
    calls: int = 0
    errors: int = 0
    checked: int = 0
    check_failures: int = 0
    latencies_ms: list[float] = field(default_factory=list, repr=False)

    @property
    def error_rate(self) -> float | None:
        return self.errors / self.calls if self.calls else None

    @property
    def check_failure_rate(self) -> float | None:
        return self.check_failures / self.checked if self.checked else None

    def quantile_ms(self, q: float) -> float | None:
        return quantile(self.latencies_ms, q)

    def to_json(self) -> dict[str, Any]:
        return {
            "calls": self.calls,
            "errors": self.errors,
            "error_rate": self.error_rate,
            "checked": self.checked,
            "check_failures": self.check_failures,
            "check_failure_rate": self.check_failure_rate,
            "p50_ms": self.quantile_ms(0.5),
            "p95_ms": self.quantile_ms(P95),
        }


@dataclass
class GuardTest:
    metric: str  # error_rate | check_failure_rate | p95_latency
    production: float | None
    candidate: float | None
    margin: float
    statistic: float | None
    p_value: float | None
    failed: bool

    def describe(self) -> str:
        def shown(value: float | None) -> str:
            if value is None:
                return "-"
            return f"{value:.0f} ms" if self.metric == "p95_latency" else f"{value:.1%}"

        margin = f"+{self.margin:.0%}" if self.metric == "p95_latency" else f"+{self.margin * 100:g} points"
        p = f"p={self.p_value:.2g}" if self.p_value is not None else "not tested"
        return (
            f"{self.metric}: candidate {shown(self.candidate)} vs production {shown(self.production)} "
            f"(margin {margin}, {p})"
        )


@dataclass
class CanaryStatus:
    rollout_id: int
    window_s: float
    arms: dict[str, ArmFigures]
    tests: list[GuardTest]
    waiting: str | None  # why nothing was tested yet (too few calls), else None
    at: datetime

    @property
    def trip(self) -> bool:
        return any(test.failed for test in self.tests)

    @property
    def reasons(self) -> list[str]:
        return [test.describe() for test in self.tests if test.failed]

    def to_json(self) -> dict[str, Any]:
        return {
            "kind": "canary",
            "at": self.at.isoformat(timespec="seconds"),
            "window_s": self.window_s,
            "arms": {name: arm.to_json() for name, arm in self.arms.items()},
            "tests": [asdict(test) for test in self.tests],
            "waiting": self.waiting,
            "trip": self.trip,
        }


def canary_status(rollout: Rollout, *, now: datetime | None = None, url: str | None = None) -> CanaryStatus:
    """The canary's arms over its guard's window, and the guard's tests on them."""
    guard = rollout.guard
    now = now or utcnow()
    since = max(now - timedelta(seconds=guard.window_s), rollout.started_at)
    arms = {name: ArmFigures() for name in ARMS}
    with session_scope(url) as session:
        rows = session.execute(
            sa.select(
                RequestLog.rollout_arm,
                RequestLog.status,
                RequestLog.http_status,
                RequestLog.checks_passed,
                RequestLog.latency_ms,
            ).where(RequestLog.rollout_id == rollout.id, RequestLog.created_at >= since)
        )
        for arm_name, status, http_status, passed, latency_ms in rows:
            arm = arms.get(arm_name or "")
            if arm is None:
                continue
            if http_status is not None and 400 <= http_status < 500 and http_status != 422:
                continue  # the client's mistake (a 422 is a rejected answer: a check failure)
            arm.calls += 1
            arm.errors += status == "error" and http_status != 422
            if passed is not None:
                arm.checked += 1
                arm.check_failures += not passed
            if latency_ms is not None and status == "ok":
                arm.latencies_ms.append(latency_ms)
    return _judge(rollout.id, guard, arms, now)


def _judge(rollout_id: int, guard: Guard, arms: dict[str, ArmFigures], now: datetime) -> CanaryStatus:
    production, candidate = arms["production"], arms["candidate"]
    status = CanaryStatus(rollout_id, guard.window_s, arms, [], None, now)
    short = [name for name, arm in arms.items() if arm.calls < guard.min_calls]
    if short:
        status.waiting = ", ".join(f"{name} {arms[name].calls}/{guard.min_calls} calls" for name in short)
        return status
    alpha = guard.alpha / 3  # three tests, any of which trips the guard
    status.tests.append(
        _rate_test(
            "error_rate",
            production.errors,
            production.calls,
            candidate.errors,
            candidate.calls,
            guard.max_error_increase,
            alpha,
        )
    )
    if production.checked >= guard.min_calls and candidate.checked >= guard.min_calls:
        status.tests.append(
            _rate_test(
                "check_failure_rate",
                production.check_failures,
                production.checked,
                candidate.check_failures,
                candidate.checked,
                guard.max_check_failure_increase,
                alpha,
            )
        )
    if len(production.latencies_ms) >= guard.min_calls and len(candidate.latencies_ms) >= guard.min_calls:
        status.tests.append(_p95_test(production, candidate, guard.max_p95_increase, alpha))
    return status


def _rate_test(
    metric: str, x_prod: int, n_prod: int, x_cand: int, n_cand: int, margin: float, alpha: float
) -> GuardTest:
    """One-sided test of H0: candidate rate - production rate <= margin (Wald, unpooled)."""
    p_prod, p_cand = x_prod / n_prod, x_cand / n_cand
    excess = p_cand - p_prod - margin
    variance = p_cand * (1 - p_cand) / n_cand + p_prod * (1 - p_prod) / n_prod
    if variance == 0:  # both rates 0 or 1: the difference is exact
        z, p_value = (math.inf if excess > 0 else -math.inf), (0.0 if excess > 0 else 1.0)
    else:
        z = excess / math.sqrt(variance)
        p_value = 0.5 * math.erfc(z / math.sqrt(2))
    return GuardTest(metric, p_prod, p_cand, margin, z if math.isfinite(z) else None, p_value, p_value < alpha)


def _p95_test(production: ArmFigures, candidate: ArmFigures, margin: float, alpha: float) -> GuardTest:
    """Exact binomial test of H0: at most 5 % of the candidate's calls exceed production's p95 × (1 + margin)."""
    bar = (production.quantile_ms(P95) or 0.0) * (1 + margin)
    over = sum(latency > bar for latency in candidate.latencies_ms)
    n = len(candidate.latencies_ms)
    p_value = binomial_upper_tail(over, n, 1 - P95)
    return GuardTest(
        "p95_latency",
        production.quantile_ms(P95),
        candidate.quantile_ms(P95),
        margin,
        over / n,
        p_value,
        p_value < alpha,
    )


def quantile(values: list[float], q: float) -> float | None:
    """The ``q`` quantile by linear interpolation between order statistics (numpy's default); None if empty."""
    if not values:
        return None
    ordered = sorted(values)
    position = (len(ordered) - 1) * q
    low = math.floor(position)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (position - low)

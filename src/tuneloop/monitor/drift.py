"""Drift: did a model's traffic change between a baseline window and the latest window?

``tuneloop monitor drift --model T@prod --baseline 7d --window 1d`` reads the logged calls (``requests``)
answered by the model's resolved version (``T@4``, also behind a gateway upstream: ``local/T@4``) in the
last ``window`` and in the ``baseline`` before it, and compares:

- **check-failure rate**: answers failing the task's checks (as the policy recorded them in
  ``tuneloop.checks``, else the checks run now); two-proportion z-test;
- **human-correction rate**: calls whose review item a person corrected; two-proportion z-test
  (corrections come later than traffic, so a fresh window can look better than it will);
- **null rate per field**: two-proportion z-test;
- **field value distributions**: of number and date fields, and **latency**, by the two-sample
  Kolmogorov-Smirnov test; of text fields (a servicer's name, a currency code) by a chi-square test of
  homogeneity over their values (the most frequent ``MAX_CATEGORIES``, the rest pooled as one), its
  effect the total variation distance between the two windows' shares;
- **answer length** of a free-text task (``output: text``: no fields), in words, by the KS test.

A change is flagged when its p-value is below ``alpha`` divided by the number of tests run (Bonferroni:
many fields are tested at once, so a stable window must not light up by chance), and the effect is large
enough to matter (``MIN_RATE_CHANGE`` for rates, ``MIN_KS_DISTANCE`` for distributions), and each window
holds at least ``min_samples`` values. The statistics are written out here (a few lines each) rather
than taken from SciPy, which tuneloop does not otherwise need.
"""

from __future__ import annotations

import math
from bisect import bisect_right
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

import sqlalchemy as sa

from tuneloop.errors import TuneloopError
from tuneloop.store import RequestLog, ReviewItem, session_scope, utcnow
from tuneloop.task import Task, load_task

DEFAULT_ALPHA = 0.01
MIN_RATE_CHANGE = 0.02  # absolute change in a rate below which nothing is flagged
MIN_KS_DISTANCE = 0.1  # KS distance below which nothing is flagged
MIN_TV_DISTANCE = 0.1  # total variation distance between text-value shares below which nothing is flagged
MAX_CATEGORIES = 20  # text values compared one by one; rarer ones are pooled
DEFAULT_MIN_SAMPLES = 20


# --- statistics ------------------------------------------------------------------------------------


def two_proportion_z_test(x1: int, n1: int, x2: int, n2: int) -> tuple[float, float]:
    """(z, two-sided p) for H0: the two proportions x1/n1 and x2/n2 are equal (pooled standard error)."""
    if n1 == 0 or n2 == 0:
        return 0.0, 1.0
    pooled = (x1 + x2) / (n1 + n2)
    se = math.sqrt(pooled * (1 - pooled) * (1 / n1 + 1 / n2))
    if se == 0:
        return 0.0, 1.0
    z = (x2 / n2 - x1 / n1) / se
    return z, math.erfc(abs(z) / math.sqrt(2))


def ks_two_sample(a: list[float], b: list[float]) -> tuple[float, float]:
    """(D, p) of the two-sample Kolmogorov-Smirnov test: the largest gap between the empirical CDFs, and
    its asymptotic p-value (Kolmogorov's distribution with Stephens' small-sample correction)."""
    if not a or not b:
        return 0.0, 1.0
    xs, ys = sorted(a), sorted(b)
    n, m = len(xs), len(ys)
    distance = max(abs(bisect_right(xs, v) / n - bisect_right(ys, v) / m) for v in (*xs, *ys))
    effective = math.sqrt(n * m / (n + m))
    lam = (effective + 0.12 + 0.11 / effective) * distance
    if lam < 1e-3:
        return distance, 1.0
    p = 2 * sum((-1) ** (k - 1) * math.exp(-2 * k * k * lam * lam) for k in range(1, 101))
    return distance, min(1.0, max(0.0, p))


def chi_square_homogeneity(a: list[str], b: list[str]) -> tuple[float, float, float]:
    """(chi2, p, total variation distance) for H0: the values of ``a`` and ``b`` come from one distribution.
    Up to ``MAX_CATEGORIES`` frequent values are compared one by one, the rest pooled as one."""
    if not a or not b:
        return 0.0, 1.0, 0.0
    counts_a, counts_b = Counter(a), Counter(b)
    # A value is compared on its own only where both windows expect it 5 times or more (the chi-square
    # approximation's rule); identifiers and other rare values are pooled, else they alone would "drift".
    smaller = min(len(a), len(b)) / (len(a) + len(b))
    pooled = (counts_a + counts_b).most_common(MAX_CATEGORIES)
    top = [value for value, count in pooled if count * smaller >= 5]
    rest_a, rest_b = len(a) - sum(counts_a[v] for v in top), len(b) - sum(counts_b[v] for v in top)
    table = [(counts_a[v], counts_b[v]) for v in top] + ([(rest_a, rest_b)] if rest_a + rest_b else [])
    n_a, n_b = len(a), len(b)
    chi2 = 0.0
    for x, y in table:
        expected_a, expected_b = (x + y) * n_a / (n_a + n_b), (x + y) * n_b / (n_a + n_b)
        chi2 += (x - expected_a) ** 2 / expected_a + (y - expected_b) ** 2 / expected_b
    distance = sum(abs(x / n_a - y / n_b) for x, y in table) / 2
    return chi2, chi_square_sf(chi2, len(table) - 1), distance


def chi_square_sf(x: float, df: int) -> float:
    """P(X >= x) for X ~ chi-square with ``df`` degrees of freedom: the regularized upper incomplete gamma
    function Q(df/2, x/2), by its series (small x) or continued fraction (large x), as Numerical Recipes."""
    if df <= 0 or x <= 0:
        return 1.0
    s, z = df / 2, x / 2
    log_prefix = s * math.log(z) - z - math.lgamma(s)
    if z < s + 1:  # series for the lower function P
        term = total = 1 / s
        k = s
        while abs(term) > abs(total) * 1e-14:
            k += 1
            term *= z / k
            total += term
        return min(1.0, max(0.0, 1 - total * math.exp(log_prefix)))
    tiny = 1e-300  # Lentz's continued fraction for Q
    b, c, d = z + 1 - s, 1 / tiny, 1 / (z + 1 - s)
    h = d
    for i in range(1, 300):
        an = -i * (i - s)
        b += 2
        d = an * d + b
        d = tiny if abs(d) < tiny else d
        c = b + an / c
        c = tiny if abs(c) < tiny else c
        d = 1 / d
        h *= d * c
        if abs(d * c - 1) < 1e-14:
            break
    return min(1.0, max(0.0, h * math.exp(log_prefix)))


# --- the report ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class DriftRow:
    metric: str  # "check-failure rate", "null rate: payoff_amount", "values: payoff_amount", "latency ms"
    test: str  # "z-test" | "KS" | "chi2"
    baseline: float | None  # the rate, the median, or the share of the most frequent text value
    window: float | None
    n_baseline: int
    n_window: int
    statistic: float | None  # z, the KS distance, or the total variation distance
    p_value: float | None
    flagged: bool
    note: str = ""


@dataclass
class DriftReport:
    model: str
    resolved: str
    task: str
    baseline_range: tuple[datetime, datetime]
    window_range: tuple[datetime, datetime]
    alpha: float
    threshold: float  # the per-test p-value threshold after Bonferroni
    rows: list[DriftRow] = field(default_factory=list)

    @property
    def flagged(self) -> list[DriftRow]:
        return [row for row in self.rows if row.flagged]


@dataclass
class _Sample:
    answers: int = 0
    failed: int = 0
    corrected: int = 0
    nulls: dict[str, int] = field(default_factory=dict)
    present: dict[str, int] = field(default_factory=dict)  # rows whose answer parsed (null-rate denominator)
    values: dict[str, list[float]] = field(default_factory=dict)
    texts: dict[str, list[str]] = field(default_factory=dict)  # text fields' values
    latencies: list[float] = field(default_factory=list)
    lengths: list[float] = field(default_factory=list)  # a text task's answers, in words


def drift_report(
    model: str,
    *,
    baseline: timedelta,
    window: timedelta,
    now: datetime | None = None,
    task: str | None = None,
    alpha: float = DEFAULT_ALPHA,
    min_samples: int = DEFAULT_MIN_SAMPLES,
    url: str | None = None,
) -> DriftReport:
    """Compare the last ``window`` of ``model``'s logged traffic with the ``baseline`` before it."""
    if baseline <= timedelta(0) or window <= timedelta(0):
        raise TuneloopError("both windows must be longer than zero", where="--baseline/--window", hint="e.g. 7d and 1d")
    if not 0 < alpha < 1:
        raise TuneloopError(f"must be between 0 and 1, got {alpha}", where="--alpha")
    resolved, version_task = logged_model(model)
    task_name = task or version_task
    now = now or utcnow()
    window_start = now - window
    baseline_start = window_start - baseline
    with session_scope(url) as session:
        match = sa.or_(RequestLog.model_resolved == resolved, RequestLog.model_resolved.like(f"%/{resolved}"))
        rows = session.execute(
            sa.select(
                RequestLog.id,
                RequestLog.capture_id,
                RequestLog.created_at,
                RequestLog.response,
                RequestLog.latency_ms,
                RequestLog.task,
            ).where(match, RequestLog.created_at >= baseline_start, RequestLog.created_at < now)
        ).all()
        if task_name is None:
            task_name = next((row.task for row in rows if row.task), None)
        corrected_ids, corrected_captures = _corrections(session, rows)
    if task_name is None:
        raise TuneloopError(
            f"no task known for {model}", where="--model", hint="pass --task NAME (the task whose checks apply)"
        )
    spec = load_task(task_name)
    samples = {"baseline": _Sample(), "window": _Sample()}
    for row in rows:
        sample = samples["window" if row.created_at >= window_start else "baseline"]
        _add(spec, sample, row, row.id in corrected_ids or (row.capture_id in corrected_captures))
    report = DriftReport(model, resolved, spec.name, (baseline_start, window_start), (window_start, now), alpha, alpha)
    report.rows = _compare(spec, samples["baseline"], samples["window"], alpha, min_samples)
    report.threshold = alpha / max(1, sum(row.p_value is not None for row in report.rows))
    return report


def logged_model(model: str) -> tuple[str, str | None]:
    """(the immutable id logs carry, its task) for a version or alias; a base or endpoint stays as given."""
    from tuneloop.registry.ids import VersionRef, parse_model_id

    ref = parse_model_id(model)
    if isinstance(ref, VersionRef):
        from tuneloop.registry.versions import resolve_version

        info = resolve_version(ref, verify=False)
        return info.id, info.task
    return model, None


def _corrections(session: Any, rows: list[Any]) -> tuple[set[int], set[str]]:
    ids = {row.id for row in rows}
    captures = {row.capture_id for row in rows if row.capture_id}
    found_ids: set[int] = set()
    found_captures: set[str] = set()
    query = sa.select(ReviewItem.request_id, ReviewItem.capture_id).where(ReviewItem.status == "corrected")
    for request_id, capture_id in session.execute(query):
        if request_id in ids:
            found_ids.add(request_id)
        if capture_id in captures:
            found_captures.add(capture_id)
    return found_ids, found_captures


def _add(spec: Task, sample: _Sample, row: Any, corrected: bool) -> None:
    from tuneloop.comparators import parse_date
    from tuneloop.review.policy import answer_text, check_answer

    response = row.response if isinstance(row.response, dict) else {}
    if not isinstance(response.get("choices"), list):
        return  # no answer (an upstream error): nothing to compare
    sample.answers += 1
    sample.corrected += corrected
    if row.latency_ms is not None:
        sample.latencies.append(float(row.latency_ms))
    recorded = (response.get("tuneloop") or {}).get("checks") if isinstance(response.get("tuneloop"), dict) else None
    check = check_answer(spec, answer_text(response))
    failed = not recorded["passed"] if isinstance(recorded, dict) and "passed" in recorded else not check.passed
    sample.failed += failed
    if spec.is_text:
        sample.lengths.append(float(len((check.text or "").split())))
    if check.fields is None:
        return
    for name in spec.field_names:
        value = check.fields.get(name)
        sample.present[name] = sample.present.get(name, 0) + 1
        if value is None:
            sample.nulls[name] = sample.nulls.get(name, 0) + 1
            continue
        number = _numeric(spec, name, value, parse_date)
        if number is not None:
            sample.values.setdefault(name, []).append(number)
        elif isinstance(value, str):
            sample.texts.setdefault(name, []).append(value)


def _numeric(spec: Task, name: str, value: Any, parse_date: Any) -> float | None:
    prop = spec.output_schema["properties"].get(name, {})
    kinds = prop.get("type", [])
    kinds = [kinds] if isinstance(kinds, str) else kinds
    if ("number" in kinds or "integer" in kinds) and isinstance(value, int | float) and not isinstance(value, bool):
        return float(value)
    if prop.get("format") == "date":
        parsed = parse_date(value)
        return float(parsed.toordinal()) if parsed is not None else None
    return None


def _compare(spec: Task, base: _Sample, new: _Sample, alpha: float, min_samples: int) -> list[DriftRow]:
    rows: list[DriftRow] = []

    def add(
        metric: str, test: str, shown: tuple[Any, Any], counts: tuple[int, int], run: Callable[[], tuple[float, float]]
    ) -> None:
        """One row: ``run()`` gives (statistic, p) once both windows hold ``min_samples``."""
        if min(counts) < min_samples:
            rows.append(DriftRow(metric, test, *shown, *counts, None, None, False,
                                 f"too few ({min_samples} needed in each window)"))  # fmt: skip
            return
        rows.append(DriftRow(metric, test, *shown, *counts, *run(), False))

    def rate(metric: str, x1: int, n1: int, x2: int, n2: int) -> None:
        add(metric, "z-test", (_ratio(x1, n1), _ratio(x2, n2)), (n1, n2), lambda: two_proportion_z_test(x1, n1, x2, n2))

    def distribution(metric: str, a: list[float], b: list[float]) -> None:
        add(metric, "KS", (_median(a), _median(b)), (len(a), len(b)), lambda: ks_two_sample(a, b))

    def categories(metric: str, a: list[str], b: list[str]) -> None:
        top = Counter(a + b).most_common(1)[0][0] if a or b else None
        shares = (a.count(top) / len(a) if a else None), (b.count(top) / len(b) if b else None)

        def run() -> tuple[float, float]:
            _, p, distance = chi_square_homogeneity(a, b)
            return distance, p  # the effect size is the statistic shown

        add(metric, "chi2", shares, (len(a), len(b)), run)

    rate("check-failure rate", base.failed, base.answers, new.failed, new.answers)
    rate("human-correction rate", base.corrected, base.answers, new.corrected, new.answers)
    for name in spec.field_names:
        rate(f"null rate: {name}", base.nulls.get(name, 0), base.present.get(name, 0),
             new.nulls.get(name, 0), new.present.get(name, 0))  # fmt: skip
    for name in spec.field_names:
        if name in base.values or name in new.values:
            distribution(f"values: {name} (median)", base.values.get(name, []), new.values.get(name, []))
        elif name in base.texts or name in new.texts:
            categories(f"values: {name} (top value share)", base.texts.get(name, []), new.texts.get(name, []))
    if spec.is_text:
        distribution("answer length in words (median)", base.lengths, new.lengths)
    distribution("latency ms (median)", base.latencies, new.latencies)

    tested = sum(row.p_value is not None for row in rows)
    threshold = alpha / max(1, tested)
    flagged_rows = []
    for row in rows:
        if row.p_value is None:
            flagged_rows.append(row)
            continue
        if row.test == "z-test":
            big = abs((row.window or 0) - (row.baseline or 0)) >= MIN_RATE_CHANGE
        else:
            big = (row.statistic or 0) >= (MIN_KS_DISTANCE if row.test == "KS" else MIN_TV_DISTANCE)
        flagged = row.p_value < threshold and big
        flagged_rows.append(DriftRow(**{**row.__dict__, "flagged": flagged}))
    return flagged_rows


def _ratio(x: int, n: int) -> float | None:
    return x / n if n else None


def _median(values: list[float]) -> float | None:
    if not values:
        return None
    ordered = sorted(values)
    middle = len(ordered) // 2
    return ordered[middle] if len(ordered) % 2 else (ordered[middle - 1] + ordered[middle]) / 2

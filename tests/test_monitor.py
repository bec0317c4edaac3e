"""Monitoring: drift between windows of logged traffic, and the statistics under it."""

from __future__ import annotations

import json
import random
from datetime import timedelta

import pytest
from typer.testing import CliRunner

from tuneloop.cli.main import app
from tuneloop.monitor.drift import (
    chi_square_homogeneity,
    chi_square_sf,
    drift_report,
    ks_two_sample,
    two_proportion_z_test,
)
from tuneloop.store import RequestLog, ReviewItem, session_scope, utcnow

TASK = "liability-extraction"
MODEL = "local/liability-extraction@4"  # as the gateway logs a version behind its upstream `local`


def log_calls(count: int, *, days_ago: tuple[float, float], seed: int, payoff: float, fail_rate: float,
              latency: float = 80.0, corrected_rate: float = 0.0,
              servicers: tuple[str, ...] = ("Lakeview", "Lakeview", "PennyMac")) -> None:  # fmt: skip
    """``count`` logged answers spread over the given age range, drawn from the given distributions."""
    rng = random.Random(seed)
    now = utcnow()
    with session_scope() as session:
        for index in range(count):
            fields = {
                "payoff_amount": round(rng.gauss(payoff, payoff * 0.1), 2),
                "escrow_balance": round(rng.uniform(100, 900), 2),
                "next_due_date": "2025-06-01",
                "interest_rate": 61.0 if rng.random() < fail_rate else round(rng.uniform(3, 8), 3),
                "account_last4": None if rng.random() < 0.3 else f"{rng.randrange(10_000):04d}",
                "servicer": rng.choice(servicers),
            }
            row = RequestLog(
                created_at=now - timedelta(days=rng.uniform(*days_ago)),
                task=TASK,
                model_requested="extractor",
                model_resolved=MODEL,
                status="ok",
                request={"messages": [{"role": "user", "content": f"document {seed}-{index}"}]},
                response={"choices": [{"index": 0, "message": {"role": "assistant", "content": json.dumps(fields)}}]},
                latency_ms=rng.gauss(latency, 10),
                capture_id=f"{seed}-{index}",
            )
            session.add(row)
            if rng.random() < corrected_rate:
                session.add(ReviewItem(task=TASK, capture_id=row.capture_id, status="corrected", failed_checks=[]))


def flagged(report) -> set[str]:
    return {row.metric for row in report.flagged}


def test_a_real_shift_is_flagged() -> None:
    log_calls(300, days_ago=(1.05, 7.9), seed=1, payoff=150_000, fail_rate=0.05, corrected_rate=0.02)
    log_calls(120, days_ago=(0.01, 0.95), seed=2, payoff=240_000, fail_rate=0.30, latency=140, corrected_rate=0.2,
              servicers=("Lakeview", "Mr. Cooper", "Mr. Cooper", "PennyMac"))  # fmt: skip
    report = drift_report(MODEL, baseline=timedelta(days=7), window=timedelta(days=1), task=TASK)
    rows = {row.metric: row for row in report.rows}
    failure = rows["check-failure rate"]
    assert (failure.n_baseline, failure.n_window) == (300, 120)
    assert failure.baseline < 0.1 and failure.window > failure.baseline + 0.1
    assert {
        "check-failure rate",
        "human-correction rate",
        "values: payoff_amount (median)",
        "values: servicer (top value share)",
        "latency ms (median)",
    } <= flagged(report)
    servicer = rows["values: servicer (top value share)"]
    assert servicer.test == "chi2" and servicer.baseline == pytest.approx(2 / 3, abs=0.08)
    # What did not change is not flagged.
    assert "null rate: account_last4" not in flagged(report)
    assert "values: account_last4 (top value share)" not in flagged(report)  # identifiers: no false alarm
    assert "values: escrow_balance (median)" not in flagged(report)


def test_a_stable_window_is_not_flagged() -> None:
    log_calls(300, days_ago=(1.05, 7.9), seed=3, payoff=150_000, fail_rate=0.05, corrected_rate=0.02)
    log_calls(120, days_ago=(0.01, 0.95), seed=4, payoff=150_000, fail_rate=0.05, corrected_rate=0.02)
    report = drift_report(MODEL, baseline=timedelta(days=7), window=timedelta(days=1), task=TASK)
    assert report.flagged == []
    assert all(row.p_value is not None for row in report.rows)  # everything was tested


def log_summaries(count: int, *, days_ago: tuple[float, float], seed: int, words: int) -> None:
    """``count`` answers of the free-text task, each about ``words`` words long."""
    rng = random.Random(seed)
    now = utcnow()
    with session_scope() as session:
        for index in range(count):
            text = " ".join(
                rng.choice(("order", "ships", "late", "refund", "asked")) for _ in range(words + rng.randrange(-2, 3))
            )
            session.add(
                RequestLog(
                    created_at=now - timedelta(days=rng.uniform(*days_ago)),
                    task="message-summary",
                    model_requested="summarizer",
                    model_resolved="local/message-summary@2",
                    status="ok",
                    request={"messages": [{"role": "user", "content": f"message {seed}-{index}"}]},
                    response={"choices": [{"index": 0, "message": {"role": "assistant", "content": text}}]},
                    latency_ms=rng.gauss(80, 10),
                )
            )


def test_a_text_task_drifts_by_answer_length() -> None:
    # No fields to compare: the length of the answers is what shows a summarizer starting to ramble.
    log_summaries(200, days_ago=(1.05, 7.9), seed=7, words=12)
    log_summaries(80, days_ago=(0.01, 0.95), seed=8, words=12)
    model = "local/message-summary@2"
    stable = drift_report(model, baseline=timedelta(days=7), window=timedelta(days=1), task="message-summary")
    length = {row.metric: row for row in stable.rows}["answer length in words (median)"]
    assert length.p_value is not None and stable.flagged == [] and length.baseline == pytest.approx(12, abs=1)
    log_summaries(80, days_ago=(0.01, 0.95), seed=9, words=40)
    longer = drift_report(model, baseline=timedelta(days=7), window=timedelta(days=1), task="message-summary")
    assert "answer length in words (median)" in flagged(longer)


def test_too_few_calls_are_reported_not_tested() -> None:
    log_calls(300, days_ago=(1.05, 7.9), seed=5, payoff=150_000, fail_rate=0.05)
    log_calls(5, days_ago=(0.01, 0.95), seed=6, payoff=400_000, fail_rate=0.9)
    report = drift_report(MODEL, baseline=timedelta(days=7), window=timedelta(days=1), task=TASK)
    assert report.flagged == []
    assert all("too few" in row.note for row in report.rows)


def test_drift_cli_prints_a_table_and_can_fail() -> None:
    log_calls(300, days_ago=(1.05, 7.9), seed=7, payoff=150_000, fail_rate=0.05)
    log_calls(120, days_ago=(0.01, 0.95), seed=8, payoff=150_000, fail_rate=0.40)
    runner = CliRunner(env={"COLUMNS": "250"})  # wide enough that rich does not fold the table
    args = ["monitor", "drift", "--model", MODEL, "--task", TASK, "--baseline", "7d", "--window", "1d"]
    shown = runner.invoke(app, args)
    assert shown.exit_code == 0, shown.output
    assert "check-failure rate" in shown.output and "FLAGGED" in shown.output
    assert runner.invoke(app, [*args, "--fail-on-drift"]).exit_code == 1
    bad = runner.invoke(app, [*args[:-1], "yesterday"])
    assert bad.exit_code != 0 and "not a duration" in str(bad.exception)


def test_the_z_test_and_ks_test_agree_with_known_values() -> None:
    # Textbook: 45/100 vs 60/100 → z ≈ 2.12, p ≈ 0.034.
    z, p = two_proportion_z_test(45, 100, 60, 100)
    assert z == pytest.approx(2.1243, abs=1e-3) and p == pytest.approx(0.0336, abs=1e-3)
    assert two_proportion_z_test(0, 50, 0, 50) == (0.0, 1.0)
    # Identical samples: D = 0, p = 1; disjoint ones: D = 1, p tiny.
    assert ks_two_sample([1.0, 2.0, 3.0], [1.0, 2.0, 3.0]) == (0.0, 1.0)
    distance, p = ks_two_sample([float(i) for i in range(50)], [float(i) + 100 for i in range(50)])
    assert distance == 1.0 and p < 1e-10
    # Two samples of one distribution: a small distance, and a p-value that is not small.
    rng = random.Random(0)
    distance, p = ks_two_sample([rng.gauss(0, 1) for _ in range(200)], [rng.gauss(0, 1) for _ in range(150)])
    assert distance < 0.15 and p > 0.05


def test_the_chi_square_test_agrees_with_known_values() -> None:
    # Table values: the 5 % critical points of 1, 3 and 10 degrees of freedom; df = 2 is exp(-x/2).
    assert chi_square_sf(3.841459, 1) == pytest.approx(0.05, abs=1e-5)
    assert chi_square_sf(7.814728, 3) == pytest.approx(0.05, abs=1e-5)
    assert chi_square_sf(18.307038, 10) == pytest.approx(0.05, abs=1e-5)
    assert chi_square_sf(2.0, 2) == pytest.approx(0.367879, abs=1e-5)
    assert chi_square_sf(100.0, 2) < 1e-20
    # 2×2: 30/70 vs 50/50 → chi2 = 8.33 (1 df), p ≈ 0.0039; half the values moved: TV distance 0.2.
    chi2, p, distance = chi_square_homogeneity(["a"] * 30 + ["b"] * 70, ["a"] * 50 + ["b"] * 50)
    assert chi2 == pytest.approx(8.333, abs=1e-3) and p == pytest.approx(0.00389, abs=1e-4)
    assert distance == pytest.approx(0.2)
    assert chi_square_homogeneity(["x"] * 40, ["x"] * 40)[1] == 1.0
